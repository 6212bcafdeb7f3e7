"""``python -m sam_core engine``: serve the JSON-lines engine protocol on stdin/stdout (see sam_core.engine)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "engine",
        help="run the engine process (JSON lines on stdin/stdout) for the QGIS plugin",
        description="Serve sam_core over JSON lines on standard input and output, one request or event "
        "per line (protocol described in sam_core/engine.py). Used by the QGIS plugin; stops at end of input.",
    )
    parser.add_argument("--cache-dir", default=None,
                        help="folder of the on-disk embedding cache (default: <sam_core home>/embeddings)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sam_core.engine import main

    return main(args.cache_dir)
