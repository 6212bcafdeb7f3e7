"""Build the zip of the QGIS plugin that plugins.qgis.org (and "Install from ZIP") accepts.

    python scripts/build_qgis_zip.py [--out dist/] [--engine-wheel sam_suite-VERSION-py3-none-any.whl]

The zip holds one top folder ``qgis_sam/`` with ``metadata.txt``, ``__init__.py``, ``LICENSE``, the icon,
the plugin's modules and ``engine/sam_suite-VERSION-py3-none-any.whl``: the engine, built from this tree
with ``pip wheel`` (or the wheel given), which the first-run dialog installs. ``metadata.txt`` gets its
``version`` from ``sam_core.__version__`` (the project's one version number) and its ``changelog`` from
CHANGELOG.md. No ``__pycache__``, compiled files or hidden files. Standard library and pip only.
"""

from __future__ import annotations

import argparse
import configparser
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "qgis_sam"
REQUIRED_METADATA = ("name", "qgisMinimumVersion", "description", "about", "author", "email", "repository")
GENERATED_METADATA = ("version", "changelog")  # written by this script, never in the source metadata.txt
ENGINE_SOURCES = ("pyproject.toml", "README.md", "LICENSE", "sam_core", "napari_sam", "qgis_sam")
WHEEL_NAME = re.compile(r"^sam_suite-(?P<version>[^-]+)-py3-none-any\.whl$")
EXCLUDED_PARTS = {"__pycache__"}
EXCLUDED_SUFFIXES = {".pyc", ".pyo", ".orig", ".rej"}


def project_version(root: Path = ROOT) -> str:
    """``sam_core.__version__``, read as text from ``sam_core/__init__.py`` (the one place it is defined)."""
    text = (root / "sam_core" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", text, re.MULTILINE)
    if not match:
        raise ValueError(f"{root / 'sam_core' / '__init__.py'} defines no __version__")
    return match.group(1)


def changelog_text(version: str, changelog: Path = ROOT / "CHANGELOG.md") -> str:
    """The QGIS ``changelog`` value: every ``## VERSION`` section of CHANGELOG.md up to ``version``, newest
    first, as ``VERSION`` lines followed by their ``- `` entries. Raises ValueError when ``version`` has no
    section."""
    if not changelog.is_file():
        raise ValueError(f"{changelog} is missing")
    sections: list[tuple[str, list[str]]] = []
    for line in changelog.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            sections.append((line[3:].split()[0], []))
        elif sections and line.startswith("- "):
            sections[-1][1].append(line[2:].strip())
        elif sections and line.startswith("  ") and sections[-1][1]:
            sections[-1][1][-1] += " " + line.strip()
    names = [name for name, _ in sections]
    if version not in names:
        raise ValueError(f"CHANGELOG.md has no section '## {version}': add the release notes of version {version}")
    lines = []
    for name, entries in sections[names.index(version):]:
        lines.append(name)
        lines += [f"  - {entry}" for entry in entries]
    return "\n".join(lines)


def read_metadata(plugin: Path = PLUGIN) -> configparser.ConfigParser:
    """``metadata.txt`` of the plugin folder; raises ValueError when a required key is missing, or when it
    holds a key this script generates (version, changelog)."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # keep key case (qgisMinimumVersion)
    if not parser.read(plugin / "metadata.txt", encoding="utf-8"):
        raise ValueError(f"{plugin / 'metadata.txt'} is missing")
    general = parser["general"]
    missing = [key for key in REQUIRED_METADATA if not general.get(key, "").strip()]
    if missing:
        raise ValueError(f"metadata.txt lacks {', '.join(missing)}")
    generated = [key for key in GENERATED_METADATA if key in general]
    if generated:
        raise ValueError(f"metadata.txt must not set {', '.join(generated)}: this script writes them "
                         "(version from sam_core.__version__, changelog from CHANGELOG.md)")
    for name in ("__init__.py", "LICENSE", general.get("icon", "icon.png")):
        if not (plugin / name).is_file():
            raise ValueError(f"the plugin folder lacks {name}")
    return parser


def release_metadata(plugin: Path = PLUGIN, root: Path = ROOT) -> tuple[str, str]:
    """(version, text of the zip's metadata.txt with version and changelog filled in)."""
    parser = read_metadata(plugin)
    if parser.sections() != ["general"]:
        raise ValueError("metadata.txt must hold only its [general] section")
    version = project_version(root)
    changelog = changelog_text(version, root / "CHANGELOG.md").replace("\n", "\n    ")
    text = (plugin / "metadata.txt").read_text(encoding="utf-8").rstrip("\n")
    return version, f"{text}\nversion={version}\nchangelog={changelog}\n"


def plugin_files(plugin: Path = PLUGIN) -> list[Path]:
    """Files of the plugin folder that go into the zip, relative to it, sorted (metadata.txt excluded: the
    zip gets the generated one)."""
    files = []
    for path in sorted(plugin.rglob("*")):
        relative = path.relative_to(plugin)
        if not path.is_file() or EXCLUDED_PARTS & set(relative.parts) or relative == Path("metadata.txt"):
            continue
        if path.suffix in EXCLUDED_SUFFIXES or any(part.startswith(".") for part in relative.parts):
            continue
        files.append(relative)
    return files


def build_engine_wheel(out_dir: Path, root: Path = ROOT) -> Path:
    """Build the ``sam-suite`` wheel of this tree into ``out_dir`` with ``pip wheel`` (from a clean copy
    of the sources, so nothing is written into the tree); raises ValueError with pip's last lines."""
    with tempfile.TemporaryDirectory(prefix="sam_engine_src_") as tmp:
        source = Path(tmp) / "src"
        source.mkdir()
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".*")
        for name in ENGINE_SOURCES:
            path = root / name
            if path.is_dir():
                shutil.copytree(path, source / name, ignore=ignore)
            elif path.is_file():
                shutil.copy2(path, source / name)
            else:
                raise ValueError(f"{path} is missing: the engine wheel cannot be built")
        done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(out_dir),
                               str(source)], capture_output=True, text=True)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            raise ValueError(f"pip could not build the engine wheel:\n{tail}")
    wheels = [path for path in out_dir.glob("*.whl") if WHEEL_NAME.match(path.name)]
    if len(wheels) != 1:
        raise ValueError(f"pip wheel made {[p.name for p in out_dir.glob('*')]}, not one sam_suite wheel")
    return wheels[0]


def check_engine_wheel(wheel: Path, version: str) -> None:
    """Raise ValueError unless ``wheel`` is a sam_suite wheel of ``version`` with the engine and demo in it."""
    match = WHEEL_NAME.match(wheel.name)
    if not wheel.is_file() or not match:
        raise ValueError(f"{wheel} is not a sam_suite-VERSION-py3-none-any.whl file")
    if match.group("version") != version:
        raise ValueError(f"the engine wheel {wheel.name} is version {match.group('version')}, the plugin is "
                         f"{version}: build the wheel from the same tree (or leave --engine-wheel out)")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("sam_core/__init__.py", "sam_core/engine.py", "sam_core/data/demo.pt"):
        if needed not in names:
            raise ValueError(f"the engine wheel {wheel.name} lacks {needed}")


def build_zip(out_dir: Path, plugin: Path = PLUGIN, engine_wheel: Path | None = None, root: Path = ROOT) -> Path:
    """Write ``<out_dir>/qgis_sam-<version>.zip`` (atomically) with the engine wheel inside and return its
    path. ``engine_wheel`` (default: built from ``root`` now) must be of the plugin's version."""
    version, metadata = release_metadata(plugin, root)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{plugin.name}-{version}.zip"
    partial = target.with_name(f".{target.name}.part")
    with tempfile.TemporaryDirectory(prefix="sam_engine_wheel_") as tmp:
        wheel = engine_wheel if engine_wheel is not None else build_engine_wheel(Path(tmp), root)
        check_engine_wheel(wheel, version)
        try:
            with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
                archive.writestr(f"{plugin.name}/metadata.txt", metadata)
                for relative in plugin_files(plugin):
                    archive.write(plugin / relative, f"{plugin.name}/{relative.as_posix()}")
                archive.write(wheel, f"{plugin.name}/engine/{wheel.name}", zipfile.ZIP_STORED)
            partial.replace(target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "dist"), help="output folder (default: dist/)")
    parser.add_argument("--engine-wheel", type=Path, default=None,
                        help="a sam_suite wheel of this version to bundle (default: built from this tree)")
    args = parser.parse_args(argv)
    try:
        path = build_zip(Path(args.out), engine_wheel=args.engine_wheel)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
