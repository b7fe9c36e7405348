"""The `astra` command: one entry point, subcommands contributed by each stage.

Stage modules are imported when their subcommand is parsed, so `astra traces validate` never pays
for importing JAX or PyTorch.
"""
from __future__ import annotations

import argparse
import sys

from astra_cli import (adapt_command, coarse_commands, cv_command, data_commands, demo,
                       pipeline_commands)
from astra_jax import RunDirError
from data_gen.labels import LabelsError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="astra", description="Which agent failed, and when: failure "
                                "attribution for LLM multi-agent logs.")
    sub = p.add_subparsers(dest="command", required=True)
    data_commands.add_commands(sub)
    coarse_commands.add_commands(sub)
    pipeline_commands.add_commands(sub)
    cv_command.add_command(sub)
    adapt_command.add_command(sub)
    demo.add_command(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "compiles", False):  # only commands that run JAX import it
        from astra_jax.compilation import default_compile_cache
        default_compile_cache()
    try:
        return args.func(args)
    except (RunDirError, LabelsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
