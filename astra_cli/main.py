"""The `astra` command: one entry point, subcommands contributed by each stage.

Stage modules are imported when their subcommand is parsed, so `astra traces validate` never pays
for importing JAX or PyTorch.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from astra_cli import coarse_commands, cv_command, data_commands, demo, pipeline_commands
from astra_jax import RunDirError


COMPILE_CACHE_ENV = "ASTRA_COMPILE_CACHE"


def compile_cache_dir(env: Mapping[str, str]) -> Path | None:
    """Where compiled programs are kept between runs: `$ASTRA_COMPILE_CACHE` (`off` for none),
    else the per-user cache folder (`$XDG_CACHE_HOME` or `~/.cache`, then `astra-jax/programs`)."""
    value = env.get(COMPILE_CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in ("", "off", "0", "none") else Path(value)
    return Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "astra-jax" / "programs"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="astra", description="Which agent failed, and when: failure "
                                "attribution for LLM multi-agent logs.")
    sub = p.add_subparsers(dest="command", required=True)
    data_commands.add_commands(sub)
    coarse_commands.add_commands(sub)
    pipeline_commands.add_commands(sub)
    cv_command.add_command(sub)
    demo.add_command(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "compiles", False):  # only commands that run JAX import it
        from astra_jax.compilation import enable_compile_cache
        enable_compile_cache(compile_cache_dir(os.environ))
    try:
        return args.func(args)
    except RunDirError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
