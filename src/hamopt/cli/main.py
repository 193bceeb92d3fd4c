"""Entry point of the ``hamopt`` command line tool.

Subcommands are discovered from the modules ``hamopt/cli/cmd_*.py``. Each defines ``NAME``,
``HELP``, ``ORDER`` (listing position), ``add_arguments(parser)`` and ``run(args) -> int``.
A user mistake raises :class:`UsageError` (or is an argparse error): the tool prints one
line, ``hamopt: error: ...``, and exits with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence
from types import ModuleType

__all__ = ["UsageError", "build_parser", "main"]


class UsageError(Exception):
    """A mistake in how the tool was called (bad argument, unknown name, unwritable path)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def _commands() -> list[ModuleType]:
    from . import __path__ as pkg_path

    mods = []
    for info in pkgutil.iter_modules(pkg_path):
        if info.name.startswith("cmd_"):
            mods.append(importlib.import_module(f"{__package__}.{info.name}"))
    return sorted(mods, key=lambda m: (getattr(m, "ORDER", 100), m.NAME))


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = _Parser(
        prog="hamopt",
        description="Memory-lean, theory-backed PyTorch optimizers: list, benchmark and inspect them.",
    )
    parser.add_argument("--version", action="version", version=f"hamopt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for mod in _commands():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP))
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except UsageError as e:
        sys.stderr.write(f"hamopt: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("hamopt: interrupted\n")
        return 130
