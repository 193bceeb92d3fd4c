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
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

__all__ = ["UsageError", "build_parser", "check_writable", "main"]


class UsageError(Exception):
    """A mistake in how the tool was called (bad argument, unknown name, unwritable path)."""


def check_writable(out: Path) -> None:
    """Create the output folder ``out`` and check a file can be written there; a
    :class:`UsageError` (one line, exit status 2) otherwise."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".hamopt-write-test"):
            pass
    except OSError as e:
        raise UsageError(f"cannot write to the output folder {out} ({e.strerror or e})") from None


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
