"""Time and memory of `astra attribute` on logs of many steps, each size in a fresh process.

    python bench/long_logs.py [--sizes 1000,5000,20000,100000] [--otlp] [--repeats 2]
                              [--log data/who_and_when/Hand-Crafted/1.json] [--phases]

A log of N steps repeats the steps of one real log (by default the 29-step Magentic-One log
Hand-Crafted/1.json) until it has N, renumbered, with `refs` shifted to the copy's own steps,
each copy's texts tagged so that every text is distinct, and the label on the first copy: a
valid native trace. `--otlp` also writes the same trace as OTLP
JSON with the repo's writer (`data_gen.otlp_write.to_otlp`) and measures reading that. One warm-up
run first fills the compile cache, so rows measure a user's second run. Each row is the best of
`--repeats` runs by wall time; peak RSS is the child's own (`wait4`). The machine this was
written on has 2 cores shared with other jobs: timings are noisy, the load average is printed.

`--phases` runs bench/long_log_phases.py on each size instead: RSS after each phase of one
attribution in one process.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from astra_cli.table import format_table  # noqa: E402

ASTRA = [sys.executable, "-m", "astra_cli.main"]
DEFAULT_LOG = ROOT / "data" / "who_and_when" / "Hand-Crafted" / "1.json"


def copy_tag(copy: int) -> str:
    """A word of letters that names a copy (no digits: a number would be a reusable value)."""
    word = ""
    while True:
        copy, r = divmod(copy, 26)
        word = chr(ord("a") + r) + word
        if not copy:
            return word


def repeated_trace(log: Path, n_steps: int):
    """The trace of `log` with its steps repeated (renumbered, refs shifted) to `n_steps`; each
    copy after the first ends its non-empty texts with its own tag, so that no two steps' texts
    are alike (the featuriser embeds each distinct text once, as a real long log needs)."""
    from data_gen.readers import load_valid_traces
    from data_gen.trace import check_trace

    base = load_valid_traces([log])[0]
    m = len(base.steps)
    steps = []
    for i in range(n_steps):
        s = base.steps[i % m]
        shift, copy = i - s.index, i // m
        content = s.content
        if copy and content.strip():
            content = f"{content}\n(copy {copy_tag(copy)})"
        steps.append(dataclasses.replace(s, index=i, content=content,
                                         refs=tuple(r + shift for r in s.refs), extra={}))
    t = dataclasses.replace(base, trace_id=f"{base.trace_id}-x{n_steps}", steps=tuple(steps),
                            source={})
    if t.label is not None and t.label.step >= n_steps:
        t = dataclasses.replace(t, label=None)
    problems = [p for p in check_trace(t) if not p.startswith("warning")]
    if problems:
        raise RuntimeError(f"repeated trace is not valid: {problems[:3]}")
    return t


def write_logs(log: Path, n_steps: int, out: Path, otlp: bool) -> dict[str, Path]:
    from data_gen.readers import encode_native, encode_otlp

    t = repeated_trace(log, n_steps)
    files = {"native": out / f"long-{n_steps}.json"}
    files["native"].write_text(encode_native(t), encoding="utf-8")
    if otlp:
        files["otlp"] = out / f"long-{n_steps}.otlp.json"
        files["otlp"].write_text(encode_otlp(t), encoding="utf-8")
    return files


@dataclasses.dataclass
class Run:
    seconds: float
    peak_mib: float
    stdout: str


def run(cmd: list[str]) -> Run:
    """`cmd` as a child process: its wall time and its own peak RSS (`wait4`)."""
    t0 = time.perf_counter()
    env = dict(os.environ, ASTRA_MAX_STEPS="0")  # measure every size, refuse none
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         cwd=ROOT, env=env)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{out[-3000:]}")
    scale = 1024 if sys.platform != "darwin" else 1024 * 1024  # KiB on Linux, bytes on macOS
    return Run(seconds, usage.ru_maxrss / scale, out)


def sizes_arg(text: str) -> list[int]:
    return [int(x.replace("k", "000")) for x in text.split(",") if x]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=sizes_arg, default=[1000, 5000, 20000],
                    help="comma-separated step counts (1k, 5k, 20k by default; add 100k)")
    ap.add_argument("--log", type=Path, default=DEFAULT_LOG, help="the real log to repeat")
    ap.add_argument("--otlp", action="store_true", help="also measure the same trace as OTLP")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--phases", action="store_true",
                    help="RSS after each phase (bench/long_log_phases.py) instead")
    ap.add_argument("--extra", default="", help="extra arguments for `astra attribute`")
    args = ap.parse_args()
    load = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        warm = write_logs(args.log, 29, root, False)["native"]
        run([*ASTRA, "attribute", str(warm)])
        for n in args.sizes:
            files = write_logs(args.log, n, root, args.otlp)
            for fmt, path in files.items():
                if args.phases:
                    r = run([sys.executable, str(ROOT / "bench" / "long_log_phases.py"),
                             str(path)])
                    print(f"\n{n} steps ({fmt}, {path.stat().st_size / 2**20:.0f} MiB file)")
                    print(r.stdout.strip())
                    continue
                cmd = [*ASTRA, "attribute", str(path), *args.extra.split()]
                r = min((run(cmd) for _ in range(args.repeats)), key=lambda x: x.seconds)
                rows.append((n, fmt, path.stat().st_size / 2**20, r.seconds, r.peak_mib,
                             n / r.seconds, r.peak_mib / (n / 1000)))
            for path in files.values():
                path.unlink()
    if rows:
        print(format_table(("steps", "format", "file MiB", "seconds", "peak RSS MiB", "steps/s",
                            "MiB per 1k steps"), rows))
    print(f"best of {args.repeats} per row; load average before: "
          f"{' '.join(f'{x:.1f}' for x in load)}, after: "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
