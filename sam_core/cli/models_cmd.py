"""``python -m sam_core models`` (what is here) and ``python -m sam_core download NAME`` (fetch one)."""

from __future__ import annotations

import argparse
from typing import Optional

from sam_core.progress import TqdmProgress


def register(subparsers: argparse._SubParsersAction) -> None:
    models = subparsers.add_parser(
        "models",
        help="list the known models and whether each is present",
        description="List the known models, their size, and whether each checkpoint is present.",
    )
    models.add_argument("--cache-dir", metavar="DIR", help="checkpoint folder (default: $SAM_CORE_CHECKPOINTS or the user cache)")
    models.set_defaults(func=run_models)

    download = subparsers.add_parser(
        "download",
        help="download a model's checkpoint (resumes, verifies SHA-256)",
        description="Download an official checkpoint into the checkpoint folder, resuming a partial "
        "download and verifying its SHA-256 before use. Prints the file's path.",
    )
    download.add_argument("name", metavar="NAME", help="model name, as listed by 'models'")
    download.add_argument("--cache-dir", metavar="DIR", help="checkpoint folder (default: $SAM_CORE_CHECKPOINTS or the user cache)")
    download.add_argument("--quiet", action="store_true", help="no progress bar")
    download.add_argument("--token", default=None, help="Hugging Face token for gated models such as sam3 (default: $HF_TOKEN)")
    download.set_defaults(func=run_download)


def _size(size: Optional[int]) -> str:
    if size is None:
        return "-"
    if size >= 1e9:
        return f"{size / 1e9:.2f} GB"
    return f"{size / 1e6:.1f} MB"


def run_models(args: argparse.Namespace) -> int:
    from sam_core import weights, zoo

    rows = [("NAME", "SIZE", "STATUS", "DESCRIPTION")]
    details = []
    for status in zoo.list_models(args.cache_dir):
        state = "present" if status.present else "missing"
        rows.append((status.name, _size(status.size), state, status.description))
        if status.present:
            details.append(f"  {status.name}: {status.path}")
        else:
            token = " --token TOKEN" if zoo.MODELS[status.name].gated else ""
            hint = status.note or f"'python -m sam_core download {status.name}{token}' fetches it to {status.path}"
            if token:
                hint += " (gated: accept its licence on Hugging Face first)"
            details.append(f"  {status.name}: {hint}")
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths)) + "  " + row[3])
    print()
    print("\n".join(details))
    print()
    print(f"Checkpoint folder: {weights.checkpoint_dir(args.cache_dir)} (change it with --cache-dir or ${weights.CHECKPOINTS_ENV})")
    from sam_core.models.precision import describe_auto

    for device in zoo.available_devices():
        print(f"Precision: {describe_auto(device)} (choose with --precision)")
    return 0


def run_download(args: argparse.Namespace) -> int:
    from sam_core import zoo

    with TqdmProgress(desc=f"downloading {args.name} (MB)", disable=args.quiet) as bar:

        def progress(done: int, total: int, message: str = "") -> None:
            bar(done // 1_000_000, total // 1_000_000, message)

        path = zoo.ensure_checkpoint(args.name, args.cache_dir, progress=progress, token=args.token)
    print(path)
    return 0
