"""The ``grn`` console script: ``grn studio ckpt=...`` (more subcommands may follow; ``train.py``,
``sample.py`` and ``eval.py`` stay the training and evaluation mains)."""

from __future__ import annotations

import sys

COMMANDS = {"studio": "serve the GRN studio web page on a checkpoint (docs/studio.md)"}


def usage() -> str:
    lines = ["usage: grn <command> [key=value ...]", "", "commands:"]
    lines += [f"  {name:<8} {text}" for name, text in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        sys.exit(0 if args else 2)
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}\n{usage()}", file=sys.stderr)
        sys.exit(2)
    from grn.entrypoints.studio import main as studio_main

    sys.argv = [f"grn {command}", *rest]  # Hydra reads its overrides from sys.argv
    studio_main()
