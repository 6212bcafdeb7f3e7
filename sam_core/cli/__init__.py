"""``python -m sam_core COMMAND ...``: a thin layer over sam_core's public functions.

Each sub-command lives in its own module of this package, which defines ``register(subparsers)``
(adds its parser and sets ``func``). ``func(args)`` returns the exit code. A :class:`SamError`, and
any other failure to read or write a file (``OSError``: a full disk, a read-only folder), becomes one
``error:`` line on stderr and exit code 2, never a traceback. Ctrl-C (SIGINT) prints ``interrupted``
and exits 130, SIGTERM prints ``terminated`` and exits 143; both remove partial outputs, and the
commands that resume (``geo automask``, ``annotate``) continue where they stopped when run again.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from typing import Optional, Sequence

from sam_core.errors import SamError
from sam_core.progress import Cancelled

# Sub-command modules, in the order ``--help`` lists them.
COMMANDS = (
    "sam_core.cli.models_cmd",
    "sam_core.cli.segment_cmd",
    "sam_core.cli.automask_cmd",
    "sam_core.cli.find_cmd",
    "sam_core.cli.propagate_cmd",
    "sam_core.cli.engine_cmd",
    "sam_core.cli.geo_cmd",
    "sam_core.cli.annotate_cmd",
    "sam_core.cli.export_cmd",
    "sam_core.cli.finetune_cmd",
)


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM (see :func:`run_process`); a
    ``KeyboardInterrupt`` so that every clean-up that runs for Ctrl-C runs for it too."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sam_core",
        description="Segment Anything from the command line.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except SamError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a file the command reads or writes (a SamError when it is about an output)
        where = f" ({error.filename})" if getattr(error, "filename", None) else ""
        print(f"error: {error.strerror or error}{where}", file=sys.stderr)
        return 2
    except Cancelled:
        print("cancelled", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def run_process() -> int:
    """Entry point of ``python -m sam_core`` and the ``sam-core`` script: a process of its own.

    Such a process keeps the encoder's big freed buffers instead of faulting them back in from the
    kernel on every image (see :func:`sam_core.runtime.keep_freed_memory`); tests call :func:`main`.
    """
    from sam_core.runtime import keep_freed_memory

    keep_freed_memory()
    signal.signal(signal.SIGTERM, _terminate)
    return main()
