"""Reading JSON records from files and directories, with errors that say where.

A path is a `.json` file (one record, a list of records, or one chat run: a list of messages), a `.jsonl` file (one record per line;
a `.json` file whose first line is a whole JSON value is read this way too, as OpenTelemetry
Collectors write them) or a directory (every `.json`/`.jsonl` below it, in natural order so
`2.json` comes before `10.json`). Bad files and bad lines become `TraceError`s in the stream; the rest is still read.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import pickle
import re
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, TypeVar

from data_gen.chat import is_chat
from data_gen.trace import TraceError

MAX_FILE_BYTES = 256 * 1024 * 1024
RECORD_SUFFIXES = (".json", ".jsonl")
COMPACT_CHARS = 8_000_000  # a trace of more text than this is copied out of its decoded file
T = TypeVar("T")


@dataclass(frozen=True)
class RawRecord:
    source: str  # the file it came from
    record: int | None  # line number in a .jsonl file, position in a list, None for a lone record
    data: Any


def natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def record_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file() and p.suffix in RECORD_SUFFIXES
                 and not any(part.startswith(".") for part in p.relative_to(path).parts)]
        return sorted(files, key=natural_key)
    return [path]


def decode_utf8(raw: bytes, source: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise TraceError(f"not valid UTF-8: byte 0x{raw[e.start]:02x} at offset {e.start} "
                         f"(line {line})", source) from None


@contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for a while: decoding a large file builds millions
    of containers and no cycle, and each collection on the way walks all that are alive (a
    210 MB OTLP file decodes in 0.9 s without it, 4.7 s with it)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _json(text: str, source: str, record: int | None) -> Any:
    try:
        with gc_paused():
            return json.loads(text)
    except json.JSONDecodeError as e:
        raise TraceError(f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno}", source,
                         record) from None


def _json_lines(text: str) -> bool:
    """A `.json` file holding one object per line, as an OpenTelemetry Collector's file exporter
    writes it: the first line is a whole JSON value and more follow."""
    first, _, rest = text.lstrip().partition("\n")
    if not rest.strip():
        return False
    try:
        json.loads(first)
    except json.JSONDecodeError:
        return False
    return True


def iter_records(path: str | Path, max_file_bytes: int = MAX_FILE_BYTES
                 ) -> Iterator[RawRecord | TraceError]:
    path = Path(path)
    if not path.exists():
        yield TraceError("no such file or directory", str(path))
        return
    for f in record_files(path):
        source = str(f)
        try:
            size = f.stat().st_size
            if size > max_file_bytes:
                raise TraceError(f"file of {size:,} bytes exceeds the limit of {max_file_bytes:,}",
                                 source)
            text = decode_utf8(f.read_bytes(), source)
            if f.suffix == ".jsonl" or _json_lines(text):
                for n, line in enumerate(text.splitlines(), start=1):
                    if line.strip():
                        try:
                            yield RawRecord(source, n, _json(line, source, n))
                        except TraceError as e:
                            yield e
                continue
            data = _json(text, source, None)
        except TraceError as e:
            yield e
            continue
        except OSError as e:
            yield TraceError(f"cannot read: {e.strerror}", source)
            continue
        if isinstance(data, list) and not is_chat(data):  # a list of records, not of messages
            yield from (RawRecord(source, i, d) for i, d in enumerate(data))
        else:
            yield RawRecord(source, None, data)


def compacted(value: T) -> T:
    """`value` copied anew (a pickle round trip). What a reader keeps of a decoded JSON file
    (span ids, names, texts) lies scattered among the objects it drops, and pins their memory
    after they are freed: 0.8 GB left behind by a 210 MB OTLP file of 100,000 steps. A copy made
    while the decoded file is still alive lies apart from it, and `release_free_memory` can
    then give the freed memory back (docs/pipeline.md, "Long logs")."""
    return pickle.loads(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


@lru_cache(maxsize=1)
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def release_free_memory() -> None:
    """Give memory freed by the C allocator back to the system (glibc's `malloc_trim`); a no-op
    where there is none."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
