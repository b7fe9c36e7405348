"""JAX's persistent compilation cache, and a count of what this process compiles.

On a CPU, XLA takes seconds to compile a train step, longer than a whole epoch of a small job, and
every process compiles again the programs the last one compiled. With the cache on, a program
compiled once for its shapes is loaded from disk by every later process: a second run of the same
job compiles nothing. The cache is keyed by the program, its shapes, the JAX version and the
device, so a stale entry is never used; it is trusted code, so it lives in a per-user folder.

`CompileStats` counts through `jax.monitoring` what actually reached XLA (a program compiled, or
loaded from the cache) and the seconds spent tracing, lowering and compiling. After each one, the
memory the compiler freed is handed back to the operating system: glibc keeps it otherwise, and
a few compiles would hold hundreds of MB that a CPU run never uses again.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import jax
from jax import monitoring

CACHE_MAX_BYTES = 1 << 30  # least recently used entries go beyond this
TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"
LOWER_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # a cache hit's load included
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


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
    if not _tracking:
        monitoring.register_event_duration_secs_listener(_on_duration)
        monitoring.register_event_listener(_on_event)
        _tracking = True


def compile_stats() -> CompileStats:
    """A snapshot of the counts since `track_compiles`."""
    return CompileStats(_STATS.programs, _STATS.cache_hits, _STATS.seconds)


def enable_compile_cache(cache_dir: Path | None) -> None:
    """Use `cache_dir` as the persistent compilation cache (None: no cache), for programs of any
    size and compile time: the small programs of a CPU run are worth caching too. Takes effect
    only before the process compiles its first program."""
    track_compiles()
    jax.config.update("jax_enable_compilation_cache", cache_dir is not None)
    if cache_dir is None:
        return
    cache_dir.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)
    # JAX would also keep XLA's GPU autotuning results in the folder, and that puts the folder's
    # path into every cache key: a cache moved or copied elsewhere would never hit
    jax.config.update("jax_persistent_cache_enable_xla_caches", "none")
