"""Compiled programs kept on disk between runs, and a count of what this process compiles.

On a CPU, XLA takes seconds to compile a train step, longer than a whole epoch of a small job, and
every process would compile again the programs the last one compiled. `StoredJit` is `jax.jit`
whose compiled executables are also written to a per-user folder and loaded by later processes:
a second run of the same job compiles nothing and traces none of its steps. JAX's own
persistent cache is keyed by the lowered program, so it must trace and lower each program before
looking it up (about a second for a train step, most of a small warm job's start-up); here the
key is what determines the program without tracing it: the source of the code that builds it,
its settings, the shapes, dtypes and shardings of its arguments, the library versions, XLA's
flags and the devices. A stale program is never loaded; a stored program is trusted code, so
the folder is the user's own.
JAX's own cache still serves every other program (`xla/` inside the folder: small ones, such as
the slices a multi-device checkpoint compiles). An executable it loaded cannot be serialised
again, so a program JAX's cache served is never stored here; it is traced and loaded as before.

`CompileStats` counts what reached XLA (a program compiled, or loaded from either cache) and the
seconds spent tracing, lowering, compiling and loading. After each compile, the memory the
compiler freed is handed back to the operating system: glibc keeps it otherwise, and a few
compiles would hold hundreds of MB that a CPU run never uses again.
"""
from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import json
import os
import pickle
import threading
import time
from dataclasses import dataclass
from functools import lru_cache, wraps
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
from jax import monitoring
from jax.experimental import serialize_executable

COMPILE_CACHE_ENV = "ASTRA_COMPILE_CACHE"
PROGRAMS_MAX_BYTES = 1 << 30  # least recently used programs go beyond this (~5 MB a train step)
XLA_CACHE_MAX_BYTES = 256 << 20  # the same for JAX's cache of the other programs
PROGRAM_FORMAT = 1  # bumped when what a stored program file holds changes
TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"
LOWER_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # a cache hit's load included
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"  # JAX's own cache


@dataclass
class CompileStats:
    """Since the process started counting (`track_compiles`): XLA programs requested (compiled
    or loaded from the cache), how many of them were cache hits, and the seconds spent tracing,
    lowering and compiling (or loading) them."""
    programs: int = 0
    cache_hits: int = 0
    seconds: float = 0.0

    @property
    def compiled(self) -> int:
        """Programs XLA compiled: those the cache did not have."""
        return self.programs - self.cache_hits

    def since(self, start: CompileStats) -> CompileStats:
        return CompileStats(self.programs - start.programs, self.cache_hits - start.cache_hits,
                            self.seconds - start.seconds)


_STATS = CompileStats()
_tracking = False
_TRACKING_LOCK = threading.Lock()
_configured = False
_program_dir: Path | None = None
_malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc only


def _on_duration(event: str, seconds: float, **_: str | int) -> None:
    if event == COMPILE_EVENT:
        _STATS.programs += 1
        if _malloc_trim is not None:
            _malloc_trim(0)
    if event in (TRACE_EVENT, LOWER_EVENT, COMPILE_EVENT):
        _STATS.seconds += seconds


def _on_event(event: str, **_: str | int) -> None:
    if event == CACHE_HIT_EVENT:
        _STATS.cache_hits += 1


def track_compiles() -> None:
    """Start counting compilations in this process and trimming memory after each (once; later
    calls do nothing)."""
    global _tracking
    with _TRACKING_LOCK:  # trainings in two threads may both start it
        if not _tracking:
            monitoring.register_event_duration_secs_listener(_on_duration)
            monitoring.register_event_listener(_on_event)
            _tracking = True


def compile_stats() -> CompileStats:
    """A snapshot of the counts since `track_compiles`."""
    return CompileStats(_STATS.programs, _STATS.cache_hits, _STATS.seconds)


def compile_cache_dir(env: Mapping[str, str]) -> Path | None:
    """Where compiled programs are kept between runs: `$ASTRA_COMPILE_CACHE` (`off` for none),
    else the per-user cache folder (`$XDG_CACHE_HOME` or `~/.cache`, then `astra-jax/programs`)."""
    value = env.get(COMPILE_CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in ("", "off", "0", "none") else Path(value)
    return Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "astra-jax" / "programs"


def default_compile_cache() -> None:
    """The folder of `compile_cache_dir(os.environ)`, unless this process chose one already:
    commands call it before they compile anything, and the first stored program calls it, so
    a notebook or script that trains through the library keeps its programs too."""
    if not _configured:
        enable_compile_cache(compile_cache_dir(os.environ))


def enable_compile_cache(cache_dir: Path | None) -> None:
    """Keep compiled programs in `cache_dir` (None: compile in every process): the stored
    programs in it, JAX's persistent cache for all others in `cache_dir/xla`, for programs of
    any size and compile time. JAX's part takes effect only before the process compiles its
    first program."""
    global _program_dir, _configured
    track_compiles()
    _program_dir, _configured = cache_dir, True
    jax.config.update("jax_enable_compilation_cache", cache_dir is not None)
    if cache_dir is None:
        return
    (cache_dir / "xla").mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(cache_dir / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    jax.config.update("jax_compilation_cache_max_size", XLA_CACHE_MAX_BYTES)
    # JAX would also keep XLA's GPU autotuning results in the folder, and that puts the folder's
    # path into every cache key: a cache moved or copied elsewhere would never hit
    jax.config.update("jax_persistent_cache_enable_xla_caches", "none")


# the code stored train, eval and prediction programs run: changing any of it compiles afresh
PROGRAM_SOURCES = ("astra_jax.train", "astra_jax.configs", "astra_jax.losses", "astra_jax.state",
                   "astra_jax.model", "astra_jax.batching", "data_gen.dhcg", "data_gen.trace")


@lru_cache(maxsize=None)
def source_digest(*modules: str) -> str:
    """A digest of the source files of `modules` (dotted names): a stored program built by other
    code must never be loaded."""
    h = hashlib.sha256()
    for name in modules:
        h.update(name.encode())
        h.update(Path(importlib.util.find_spec(name).origin).read_bytes())
    return h.hexdigest()


@lru_cache(maxsize=1)
def _platform() -> tuple:
    """What beside the program decides its machine code: libraries, XLA flags, the devices."""
    versions = tuple(metadata.version(p) for p in ("jax", "jaxlib", "flax", "optax"))
    config = tuple(str(getattr(jax.config, f)) for f in (
        "jax_enable_x64", "jax_default_prng_impl", "jax_default_matmul_precision",
        "jax_threefry_partitionable"))
    devices = tuple((d.platform, d.device_kind) for d in jax.devices())
    return (PROGRAM_FORMAT, versions, config, os.environ.get("XLA_FLAGS", ""), devices,
            jax.process_count(), jax.devices()[0].client.platform_version)


def _leaf_signature(x: Any) -> tuple:
    """What of an argument its program depends on (hashable; `repr` gives the stored form)."""
    return tuple(x.shape), str(x.dtype), bool(getattr(x, "weak_type", False)), \
        getattr(x, "sharding", None)


def shared_programs(maxsize: int) -> Callable[[Callable], Callable]:
    """`lru_cache(maxsize)` for a function that builds `StoredJit`s from settings, computed under
    a lock: threads asking for the same settings at once get the same objects, so each program
    compiles once."""
    def decorate(fn: Callable) -> Callable:
        cached, lock = lru_cache(maxsize=maxsize)(fn), threading.Lock()

        @wraps(fn)
        def build(*args: Any) -> Any:
            with lock:
                return cached(*args)
        return build
    return decorate


class StoredJit:
    """`jax.jit(fn, **jit_kwargs)` whose compiled programs are also stored on disk (see the
    module's docstring) under `static`, which must name everything `fn` closes over that
    changes its program: its settings and `source_digest` of the code it runs. Arguments and
    results must be pytrees of arrays whose structure pickles (dicts, tuples, NamedTuples,
    registered dataclasses with no static functions); a program that cannot be stored still
    runs, compiled as by `jax.jit`. Threads may share one: it loads or compiles one program at
    a time (XLA already keeps every core busy with one), so a program two of them need at once
    is compiled by the first while the other waits for it."""

    def __init__(self, fn: Callable, static: str, **jit_kwargs: Any):
        self.jitted = jax.jit(fn, **jit_kwargs)
        self.static = static
        self._programs: dict[tuple, Any] = {}
        self._lock = threading.Lock()

    def __call__(self, *args: Any) -> Any:
        leaves, treedef = jax.tree_util.tree_flatten(args)
        signature = (treedef, tuple(_leaf_signature(x) for x in leaves))
        program = self._programs.get(signature)
        if program is None:
            with self._lock:
                program = self._programs.get(signature)
                if program is None:
                    program = self._programs[signature] = self._load_or_compile(args)
        return program(*args)

    def _path(self, args: tuple) -> Path | None:
        default_compile_cache()
        if _program_dir is None or jax.process_count() > 1:  # one process's devices only
            return None
        paths = jax.tree_util.tree_flatten_with_path(args)[0]
        described = [(jax.tree_util.keystr(k), repr(_leaf_signature(x))) for k, x in paths]
        key = json.dumps([self.static, _platform(), described], default=str)
        return _program_dir / f"{hashlib.sha256(key.encode()).hexdigest()}.program"

    def _load_or_compile(self, args: tuple) -> Any:
        path = self._path(args)
        if path is not None and path.exists():
            t0 = time.perf_counter()
            try:
                blob, in_tree, out_tree, device_ids = pickle.loads(path.read_bytes())
                devices = {d.id: d for d in jax.local_devices()}
                program = serialize_executable.deserialize_and_load(
                    blob, in_tree, out_tree, execution_devices=[devices[i] for i in device_ids])
            except Exception:  # a torn or foreign file: compiled again and replaced below
                program = None
            if program is not None:
                os.utime(path)  # recently used: evicted last
                _STATS.programs += 1
                _STATS.cache_hits += 1
                _STATS.seconds += time.perf_counter() - t0
                return program
        hits = _STATS.cache_hits
        program = self.jitted.lower(*args).compile()
        if path is not None and _STATS.cache_hits == hits:  # not one JAX's cache loaded
            _store(program, path)
        return program


def _store(program: Any, path: Path) -> None:
    """Write `program` and the devices it runs on, in order, to `path` atomically, then drop the
    least recently used programs beyond PROGRAMS_MAX_BYTES. A program that cannot be serialised
    is simply not stored."""
    try:
        devices = [d.id for d in program._executable.xla_executable.local_devices()]
        data = pickle.dumps((*serialize_executable.serialize(program), devices))
    except (ValueError, TypeError, AttributeError, pickle.PicklingError, NotImplementedError):
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}-{threading.get_ident()}")
        tmp.write_bytes(data)
        tmp.replace(path)
        files = sorted(path.parent.glob("*.program"), key=lambda f: f.stat().st_mtime,
                       reverse=True)
        total = 0
        for f in files:
            total += f.stat().st_size
            if total > PROGRAMS_MAX_BYTES:
                f.unlink(missing_ok=True)
    except OSError:
        pass  # a full or read-only disk costs a compile next time, nothing else
