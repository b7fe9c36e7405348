"""The coarse stage's one config object, `TrainConfig`, and what acts on it: command-line
overrides, the config saved beside a run, which settings enter the compiled programs, and
which runs' parameters are interchangeable."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from astra_jax.model import ModelConfig, architecture


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = ModelConfig()
    epochs: int = 8
    batch_size: int = 16
    lr: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 1e-4
    clip_norm: float = 1.0
    seed: int = 0
    w_step: float = 1.0
    w_agent: float = 1.0
    w_mode: float = 0.3
    w_fail: float = 0.3
    w_balance: float = 0.01
    w_evidence: float = 0.01
    embedder: str = "hashing"
    shards: int = 0  # data-parallel sub-batches per global batch; 0: one per device
    real_weight: float = 0.5  # share of each epoch's traces that are real logs, when mixed
    drop_evidence: str = ""  # comma-separated evidence groups left out (ablations)
    init: str = ""  # a trained run to start from (fine-tuning); its model config must match

    def __post_init__(self) -> None:
        # a share of 0 or 1 would silently mean "no mixing": say so at the boundary instead
        if not 0 < self.real_weight < 1:
            raise ValueError(f"real_weight is the real logs' share of an epoch, strictly between "
                             f"0 and 1, not {self.real_weight}")

    @property
    def dropped(self) -> tuple[str, ...]:
        return tuple(g.strip() for g in self.drop_evidence.split(",") if g.strip())


# settings that never enter the compiled steps: they act on the host, through the shapes, or
# through the schedule's arguments
HOST_SETTINGS = ("seed", "init", "epochs", "real_weight", "embedder", "drop_evidence",
                 "batch_size", "shards", "lr", "warmup_steps")
OPTIMISER_SETTINGS = ("weight_decay", "clip_norm")  # the update only
LOSS_SETTINGS = ("w_step", "w_agent", "w_mode", "w_fail", "w_balance", "w_evidence")


def program_settings(cfg: TrainConfig, ignored: tuple[str, ...] = HOST_SETTINGS) -> TrainConfig:
    """`cfg` with the `ignored` settings at their defaults, so that runs differing only in
    them share their programs."""
    d = TrainConfig()
    return dataclasses.replace(cfg, **{f: getattr(d, f) for f in ignored})


def same_parameters(a: TrainConfig, b: TrainConfig) -> bool:
    """Whether parameters trained under `a` mean the same under `b`: same architecture,
    embedder and evidence columns (training-only settings may differ)."""
    return ((architecture(a.model), a.embedder, a.dropped)
            == (architecture(b.model), b.embedder, b.dropped))


def override(cfg: TrainConfig, settings: list[str]) -> TrainConfig:
    """Apply `key=value` settings (`epochs=4`, `model.d_model=64`), converting each value to the
    field's type; an unknown key or a bad value names itself."""
    for item in settings:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"setting {item!r}: expected KEY=VALUE")
        path = key.strip().split(".")
        if len(path) > 2 or (len(path) == 2 and path[0] != "model"):
            raise ValueError(f"setting {item!r}: unknown key {key!r}")
        target = cfg.model if len(path) == 2 else cfg
        fields = {f.name for f in dataclasses.fields(target)}
        if path[-1] not in fields or path[-1] == "model":
            raise ValueError(f"setting {item!r}: unknown key {key!r}; known: "
                             f"{', '.join(sorted(fields))}")
        kind = type(getattr(target, path[-1]))
        try:
            value = kind(raw) if kind is not bool else raw.lower() in ("1", "true", "yes")
        except ValueError:
            raise ValueError(f"setting {item!r}: {raw!r} is not a valid {kind.__name__}") from None
        try:
            new = dataclasses.replace(target, **{path[-1]: value})
        except ValueError as e:
            raise ValueError(f"setting {item!r}: {e}") from None
        cfg = dataclasses.replace(cfg, model=new) if len(path) == 2 else new
    return cfg


def config_from_dir(run_dir: Path) -> TrainConfig:
    d = json.loads((run_dir / "config.json").read_text())
    d["model"] = ModelConfig(**d["model"])
    return TrainConfig(**d)
