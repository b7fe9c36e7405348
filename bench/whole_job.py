"""Whole-process cost of a small real training job and of attributing one log, as a user meets it:
start-up, featurising, compiling, training, checkpointing, each command in a fresh process.

    python bench/whole_job.py [--repeats 2] [--epochs 3]

The job: 184 logs in Who&When format, the 126 development logs of
data/who_and_when/Algorithm-Generated and 58 ASTRA-Gen logs written by `astra gen --format whowhen`
(so it runs anywhere); every fifth log (sorted by name) is for validation, 147 train and 37
validate; `astra train --epochs 3` at the default d_model 128. It runs with a cold cache (an empty
compilation cache and no feature cache) and a warm one (both left by the cold run), then
`astra attribute` runs on one 53-step log with the trained model. Each row is the best of
`--repeats` runs; the load average is printed because other jobs on the machine slow every row.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from astra_cli.table import format_table  # noqa: E402

DEV_LOGS = ROOT / "data" / "who_and_when" / "Algorithm-Generated"
ASTRA = [sys.executable, "-m", "astra_cli.main"]


@dataclass
class Run:
    seconds: float  # whole process, wall clock
    cpu: float  # user + system seconds
    peak_mib: float  # maximum resident set size
    stdout: str


def run(cmd: list[str], env: dict[str, str]) -> Run:
    """Run `cmd` as a child process and measure it alone (`wait4` gives this child's usage)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         text=True, cwd=ROOT)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out}")
    scale = 1024 if sys.platform != "darwin" else 1024 * 1024  # ru_maxrss: KiB, bytes on macOS
    return Run(seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / scale, out)


def best(runs: list[Run]) -> Run:
    return min(runs, key=lambda r: r.seconds)


def make_job(root: Path) -> tuple[Path, Path, Path]:
    """train/ and val/ directories of the 184-log job, and the 53-step log to attribute."""
    sim, one = root / "sim", root / "one"
    env = dict(os.environ)
    for args, out in ((["--tasks", "75", "--seed", "7"], sim), (["--tasks", "1", "--seed", "67"],
                                                               one)):
        run([*ASTRA, "gen", *args, "--variants", "fatal", "--format", "whowhen", "--layout",
             "files", "--workers", "1", "--out", str(out)], env)
    logs = sorted([("dev-" + p.name, p) for p in DEV_LOGS.glob("*.json")]
                  + [(p.name, p) for p in sim.glob("*.json")])
    train, val = root / "train", root / "val"
    for i, (name, path) in enumerate(logs):
        dest = val if i % 5 == 0 else train
        dest.mkdir(exist_ok=True)
        shutil.copy(path, dest / name)
    log = next(one.glob("*.json"))
    n_train, n_val = len(list(train.iterdir())), len(list(val.iterdir()))
    steps = len(json.loads(log.read_text())["history"])
    if (len(logs), n_train, n_val, steps) != (184, 147, 37, 53):
        raise RuntimeError(f"unexpected job: {len(logs)} logs, {n_train}/{n_val}, {steps} steps")
    return train, val, log


def train_row(name: str, r: Run, run_dir: Path, n_train: int) -> tuple:
    """A table row from a finished `astra train`: its last epoch is compiled, so its rate is the
    steady one (validation included)."""
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    return (name, r.seconds, r.cpu, n_train / last["seconds"], last["xla_compiled"],
            last["xla_cache_hits"], last["compile_seconds"], r.peak_mib)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train, val, log = make_job(root)
        n_train = len(list(train.iterdir()))
        rows = []
        floor = [run([sys.executable, "-c", "import astra_jax.train, jax; jax.devices()"],
                     dict(os.environ)) for _ in range(args.repeats)]
        f = best(floor)
        rows.append(("import JAX, Flax, optax, orbax + CPU client", f.seconds, f.cpu, "-", "-",
                     "-", "-", f.peak_mib))
        for cache in ("cold", "warm"):
            runs = []
            for i in range(args.repeats):
                xla = root / ("xla" if cache == "warm" else f"xla-cold-{i}")
                out = root / f"run-{cache}-{i}"
                if cache == "warm":  # the first cold run's feature cache
                    shutil.copytree(root / "run-cold-0" / "feature_cache", out / "feature_cache")
                env = dict(os.environ, ASTRA_COMPILE_CACHE=str(xla))
                r = run([*ASTRA, "train", str(train), "--val", str(val), "--out", str(out),
                         "--epochs", str(args.epochs)], env)
                runs.append((r, out))
                if cache == "cold" and i == 0:
                    shutil.copytree(xla, root / "xla")
            r, out = min(runs, key=lambda x: x[0].seconds)
            rows.append(train_row(f"astra train, {cache} cache", r, out, n_train))
        env = dict(os.environ, ASTRA_COMPILE_CACHE=str(root / "xla"))
        model = root / "run-cold-0"
        attribute = [run([*ASTRA, "attribute", str(log), "--run", str(model)], env)
                     for _ in range(args.repeats + 1)]
        first, a = attribute[0], best(attribute[1:])
        for name, r in (("astra attribute, 53 steps, first (compiles)", first),
                        ("astra attribute, 53 steps, warm cache", a)):
            rows.append((name, r.seconds, r.cpu, "-", "-", "-", "-", r.peak_mib))
    print(f"{os.cpu_count()} CPUs; load average before {load_before[0]:.1f}, after "
          f"{os.getloadavg()[0]:.1f}; best of {args.repeats}")
    print(format_table((f"184 Who&When logs, 147 train / 37 val, {args.epochs} epochs",
                        "whole process s", "CPU s", "steady traces/s", "XLA compiled", "cache hits", "compile s",
                        "peak RSS MiB"), rows))


if __name__ == "__main__":
    main()
