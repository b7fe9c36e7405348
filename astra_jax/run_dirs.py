"""What a run directory holds besides its checkpoints: its ensemble members (`member-N`) and its
`metrics.jsonl` log (the best epoch, and the records a resumed run keeps)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from astra_jax import RunDirError


def member_dirs(run_dir: Path) -> list[Path]:
    """The run directories of a trained model: the directory itself, or its ensemble members."""
    if (run_dir / "config.json").exists():
        return [run_dir]
    members = {int(d.name[7:]): d for d in run_dir.glob("member-*")
               if d.name[7:].isdigit() and (d / "config.json").exists()}
    if not members:
        raise RunDirError(f"{run_dir}: no trained model here (no config.json, no "
                                f"member-N/config.json); train one with `astra train`")
    return [members[n] for n in sorted(members)]


def is_better(rec: dict[str, Any], best: dict[str, Any]) -> bool:
    """The checkpoint manager's rule: highest validation step accuracy, later epochs on ties."""
    return not best or rec["val_step_acc"] >= best.get("val_step_acc", -1)


def best_record(path: Path) -> dict[str, Any]:
    """The best epoch's record in a run's log (a resumed run picks up where it left off)."""
    best: dict[str, Any] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        rec = json.loads(line)
        if "val_step_acc" in rec and is_better(rec, best):
            best = rec
    return best


def keep_log_until(path: Path, epoch: int) -> None:
    """A run killed between logging an epoch and checkpointing it, or mid-line, leaves records
    past its last checkpoint; drop them so the resumed run's log is one clean curve."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("epoch", 0) <= epoch:
            kept.append(line)
    path.write_text("".join(f"{x}\n" for x in kept))
