"""A trained coarse model as one compact file, for inference: the parameters of every member of a
run or ensemble, serialised with `flax.serialization` (msgpack), and a JSON header that says what
the model is, how it was made and how well it did. No optimiser state.

The header pins everything the parameters' meaning depends on (model config, embedder, featuriser
version, the evidence columns); loading refuses a file whose header does not match this code, so
a model never silently reads features it was not trained on.
"""
from __future__ import annotations

import dataclasses
import json
from importlib import metadata
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

from astra_jax import RunDirError
from astra_jax.configs import TrainConfig
from astra_jax.features import FEATURISER_VERSION, META_DIM
from astra_jax.model import ModelConfig
from data_gen.evidence import EVIDENCE_COLUMNS

MODEL_FORMAT = "astra.model/v1"
DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "default.msgpack"
# the simulated pre-training (no real log) that `astra adapt` fine-tunes on a team's own logs
PRETRAINED_MODEL = DEFAULT_MODEL.with_name("sim_pretrained.msgpack")
DTYPES = ("float32", "float16")


class ModelFileError(RunDirError):
    """A model file that cannot be used: truncated, foreign, or made for other code."""


def _version() -> str:
    try:
        return metadata.version("astra-jax")
    except metadata.PackageNotFoundError:
        return "unknown"


def compatibility(cfg: TrainConfig) -> dict[str, Any]:
    """The header fields that must equal this code's for the parameters to mean the same."""
    return {"featuriser_version": FEATURISER_VERSION, "meta_dim": META_DIM,
            "evidence_columns": list(EVIDENCE_COLUMNS), "embedder": cfg.embedder,
            "drop_evidence": cfg.drop_evidence}


def export_model(cfg: TrainConfig, members: list[Any], out: Path, provenance: dict[str, Any],
                 dtype: str = "float32") -> dict[str, Any]:
    """Write `members` (parameter trees) and their header to `out`; returns the header."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: choose {' or '.join(DTYPES)}")
    config = dataclasses.asdict(dataclasses.replace(cfg, init=""))
    header = {"format": MODEL_FORMAT, "package_version": _version(), "config": config,
              "members": len(members), "dtype": dtype, **compatibility(cfg), **provenance}
    cast = lambda x: np.asarray(x, dtype=dtype)  # noqa: E731
    body = {"header": json.dumps(header),
            "members": {str(i): serialization.to_state_dict(jax.tree_util.tree_map(cast, p))
                        for i, p in enumerate(members)}}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_bytes(serialization.msgpack_serialize(body))
    tmp.replace(out)
    return header


def read_header(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and the raw members of a model file; a clear error for anything else."""
    try:
        body = serialization.msgpack_restore(path.read_bytes())
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such model file") from None
    except Exception as e:  # msgpack raises several types for truncated or foreign bytes
        raise ModelFileError(f"{path}: not a readable model file ({type(e).__name__}: {e}); "
                             f"it may be truncated; export it again with `astra export`") from None
    if not isinstance(body, dict) or not isinstance(body.get("header"), str) or not isinstance(
            body.get("members"), dict):
        raise ModelFileError(f"{path}: not an ASTRA-JAX model file (no header and members)")
    try:
        header = json.loads(body["header"])
    except json.JSONDecodeError as e:
        raise ModelFileError(f"{path}: its header is not JSON ({e})") from None
    if header.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{path}: format {header.get('format')!r}; this version reads "
                             f"{MODEL_FORMAT!r}")
    return header, body["members"]


def load_model(path: Path) -> tuple[TrainConfig, list[Any], dict[str, Any]]:
    """The config, the members' float32 parameters and the header of a model file. Refuses a
    header made for other features than this code computes."""
    header, raw = read_header(path)
    try:
        cfg_d = dict(header["config"])
        cfg = TrainConfig(**{**cfg_d, "model": ModelConfig(**cfg_d["model"])})
    except (KeyError, TypeError) as e:
        raise ModelFileError(f"{path}: its header's config does not fit this version ({e})") \
            from None
    want = compatibility(cfg)
    for key, value in want.items():
        if header.get(key) != value:
            raise ModelFileError(
                f"{path}: made for {key} {header.get(key)!r}, this version has {value!r} "
                f"(package {header.get('package_version')} vs {_version()}); export the model "
                f"again from a run trained with this version")
    if len(raw) != header.get("members"):
        raise ModelFileError(f"{path}: header says {header.get('members')} members, the file "
                             f"holds {len(raw)}")
    members = [jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), raw[str(i)])
               for i in range(len(raw))]
    return cfg, members, header


def run_provenance(run: Path, eval_json: Path | None, command: str) -> dict[str, Any]:
    """What the header says of how a run was made: the command, each member's seed, best epoch
    and training data (how many traces, and which), and the overall table of `eval_json`."""
    from astra_jax.run_dirs import best_record, member_dirs

    members = []
    for d in member_dirs(run):
        cfg = json.loads((d / "config.json").read_text())
        data = json.loads((d / "data.json").read_text()) if (d / "data.json").exists() else {}
        best = best_record(d / "metrics.jsonl")
        members.append({"seed": cfg["seed"], "epochs": cfg["epochs"], "best_epoch":
                        best.get("epoch"), "init": _beside(cfg.get("init", ""), run.parent),
                        "train_traces": len(data.get("train", [])),
                        "train_ids": data.get("train", [])})
    out: dict[str, Any] = {"command": command, "training": members}
    if eval_json is not None:
        report = json.loads(eval_json.read_text())
        keys = ("n", "agent_acc", "step_acc", "step_acc_pm1", "topk_agent_recall", "ece")
        out["evaluation"] = {"source": _beside(str(eval_json), run.parent),
                             "method": report.get("method"),
                             "overall": {m: {k: s.get(k) for k in keys}
                                         for m, s in report["overall"].items()},
                             "cv": report.get("cv")}
    return out


def _beside(path: str, base: Path) -> str:
    """`path` relative to `base` when it lies under it: a header names the run's own folders,
    not the build machine's."""
    if not path:
        return path
    try:
        return str(Path(path).resolve().relative_to(base.resolve()))
    except ValueError:
        return path
