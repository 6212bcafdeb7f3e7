"""Build the zip of the QGIS plugin that plugins.qgis.org (and "Install from ZIP") accepts.

    python scripts/build_qgis_zip.py [--out dist/]

The zip holds one top folder ``qgis_sam/`` with ``metadata.txt``, ``__init__.py``, ``LICENSE``, the icon
and the plugin's modules; no ``__pycache__``, compiled files or hidden files. Standard library only.
"""

from __future__ import annotations

import argparse
import configparser
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "qgis_sam"
REQUIRED_METADATA = ("name", "qgisMinimumVersion", "description", "about", "version", "author", "email",
                     "repository")
EXCLUDED_PARTS = {"__pycache__"}
EXCLUDED_SUFFIXES = {".pyc", ".pyo", ".orig", ".rej"}


def read_metadata(plugin: Path = PLUGIN) -> configparser.SectionProxy:
    """The ``[general]`` section of ``metadata.txt``; raises ValueError when a required key is missing."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # keep key case (qgisMinimumVersion)
    if not parser.read(plugin / "metadata.txt", encoding="utf-8"):
        raise ValueError(f"{plugin / 'metadata.txt'} is missing")
    general = parser["general"]
    missing = [key for key in REQUIRED_METADATA if not general.get(key, "").strip()]
    if missing:
        raise ValueError(f"metadata.txt lacks {', '.join(missing)}")
    for name in ("__init__.py", "LICENSE", general.get("icon", "icon.png")):
        if not (plugin / name).is_file():
            raise ValueError(f"the plugin folder lacks {name}")
    return general


def plugin_files(plugin: Path = PLUGIN) -> list[Path]:
    """Files that go into the zip, relative to the plugin folder, sorted."""
    files = []
    for path in sorted(plugin.rglob("*")):
        relative = path.relative_to(plugin)
        if not path.is_file() or EXCLUDED_PARTS & set(relative.parts):
            continue
        if path.suffix in EXCLUDED_SUFFIXES or any(part.startswith(".") for part in relative.parts):
            continue
        files.append(relative)
    return files


def build_zip(out_dir: Path, plugin: Path = PLUGIN) -> Path:
    """Write ``<out_dir>/qgis_sam-<version>.zip`` (atomically) and return its path."""
    general = read_metadata(plugin)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{plugin.name}-{general['version']}.zip"
    partial = target.with_name(f".{target.name}.part")
    try:
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
            for relative in plugin_files(plugin):
                archive.write(plugin / relative, f"{plugin.name}/{relative.as_posix()}")
        partial.replace(target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "dist"), help="output folder (default: dist/)")
    args = parser.parse_args(argv)
    try:
        path = build_zip(Path(args.out))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
