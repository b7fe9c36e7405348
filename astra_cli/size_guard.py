"""Refusing, before any work, a log too long for this machine's memory.

The coarse stage's peak memory grows linearly with a log's steps (docs/pipeline.md, "Long
logs"): about `BASE_MIB` for the process (JAX, the model, compiled programs), plus the batch the
model runs on, which grows with the log up to `BATCH_MIB` (a long log runs in windows that
share batches of bounded size), plus `MIB_PER_STEP` per step for the log, its graph and its
features; measured on a real log repeated to 1k-100k steps with the shipped model. A log whose
estimate exceeds the memory available (cgroup limit, else /proc/meminfo MemAvailable, else
physical memory) would be killed by the kernel half-way, or swap the machine to a halt; it is
refused up front instead. `--max-steps N` (or `ASTRA_MAX_STEPS=N`) sets the limit in steps
itself; 0 means no limit.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENV = "ASTRA_MAX_STEPS"
BASE_MIB = 400.0  # process and model, before the first step (measured: about 330 MiB)
BATCH_MIB_PER_STEP = 0.1  # the batch, up to BATCH_MIB (measured: ~500 MiB at 5,000 steps)
BATCH_MIB = 600.0
MIB_PER_STEP = 0.012  # measured 0.008 from 5,000 to 100,000 steps (room to spare)
HEADROOM = 0.9  # share of the available memory a run may plan to use


def available_bytes() -> int | None:
    """Memory this process may still use: the cgroup's limit less its usage where one is set,
    else MemAvailable, else physical memory; None when none can be read."""
    candidates = []
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            candidates.append(int(limit) - used)
    except (OSError, ValueError):
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                candidates.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    if not candidates:
        try:
            candidates.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return None
    return max(0, min(candidates))


def estimate_bytes(n_steps: int) -> float:
    """Peak memory of attributing one log of `n_steps` steps."""
    return (BASE_MIB + min(BATCH_MIB_PER_STEP * n_steps, BATCH_MIB)
            + MIB_PER_STEP * n_steps) * 2**20


@dataclass(frozen=True)
class StepLimit:
    steps: int | None  # None: no limit
    why: str  # where the limit comes from, for messages


def step_limit(override: int | None = None) -> StepLimit:
    """The longest log this machine takes: `override` (from --max-steps), else $ASTRA_MAX_STEPS,
    else what the available memory holds. 0 in either means no limit."""
    if override is None and os.environ.get(ENV, "").strip():
        try:
            override = int(os.environ[ENV])
        except ValueError:
            raise SystemExit(f"error: {ENV}={os.environ[ENV]!r} is not a whole number") from None
        source = f"{ENV}={override}"
    else:
        source = f"--max-steps {override}"
    if override is not None:
        return StepLimit(None if override <= 0 else override, source)
    avail = available_bytes()
    if avail is None:
        return StepLimit(None, "memory unknown")
    room = avail * HEADROOM / 2**20 - BASE_MIB
    full_batch = BATCH_MIB / BATCH_MIB_PER_STEP  # steps from which the batch stops growing
    if room < full_batch * (BATCH_MIB_PER_STEP + MIB_PER_STEP):
        steps = int(room / (BATCH_MIB_PER_STEP + MIB_PER_STEP))
    else:
        steps = int((room - BATCH_MIB) / MIB_PER_STEP)
    return StepLimit(max(steps, 0), f"{avail / 2**30:.1f} GB available")


def refusal(trace, limit: StepLimit) -> str | None:
    """Why `trace` is too long for `limit`, or None when it is not."""
    n = len(trace.steps)
    if limit.steps is None or n <= limit.steps:
        return None
    name = trace.source.get("path", trace.trace_id)
    return (f"{name} ({trace.trace_id}): {n} steps, an estimated "
            f"{estimate_bytes(n) / 2**30:.1f} GB of memory; the limit is {limit.steps} steps "
            f"({limit.why}). Give --max-steps N (or {ENV}=N; 0: no limit) to try anyway")


def add_max_steps_arg(p) -> None:
    p.add_argument("--max-steps", type=int, default=None, metavar="N",
                   help=f"refuse logs of more than N steps (default: what this machine's "
                   f"available memory holds, estimated at {BASE_MIB + BATCH_MIB:.0f} MiB plus "
                   f"{MIB_PER_STEP * 1000:.0f} MiB per 1000 steps for a long log; also ${ENV}; "
                   f"0: no limit)")
