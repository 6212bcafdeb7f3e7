"""What the plugin zip carries besides the plugin: its version and the engine wheel of that version.

``scripts/build_qgis_zip.py`` writes the version (``sam_core.__version__``, the project's one version
number) into the zip's ``metadata.txt`` and puts the ``sam-suite`` wheel built from the same tree into
``qgis_sam/engine/``. In a source checkout (no version in ``metadata.txt``) the version is read from
``sam_core/__init__.py`` beside the plugin and the engine is the checkout itself. Standard library only.
"""

from __future__ import annotations

import configparser
import os
import re
from typing import Optional

PLUGIN_DIR = os.path.dirname(os.path.abspath(__file__))
ENGINE_DIR = os.path.join(PLUGIN_DIR, "engine")
DISTRIBUTION = "sam-suite"
_WHEEL = re.compile(r"^sam_suite-(?P<version>[^-]+)-.+\.whl$")
_VERSION_LINE = re.compile(r"""^__version__\s*=\s*["']([^"']+)["']""", re.MULTILINE)


class BundleError(Exception):
    """The plugin's bundled engine is missing or of another version; ``str()`` says what to do."""


def source_root(plugin_dir: str = PLUGIN_DIR) -> Optional[str]:
    """The source checkout the plugin runs from (with ``pyproject.toml`` and ``sam_core/``), or None."""
    root = os.path.dirname(plugin_dir)
    if os.path.isfile(os.path.join(root, "pyproject.toml")) and os.path.isdir(os.path.join(root, "sam_core")):
        return root
    return None


def version_in_source(path: str) -> Optional[str]:
    """``__version__`` of a ``sam_core/__init__.py`` file, read as text (never imported)."""
    try:
        with open(path, encoding="utf-8") as handle:
            match = _VERSION_LINE.search(handle.read())
    except OSError:
        return None
    return match.group(1) if match else None


def plugin_version(plugin_dir: str = PLUGIN_DIR) -> str:
    """The plugin's version: ``metadata.txt``'s (in a built zip), else the checkout's ``sam_core.__version__``."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(os.path.join(plugin_dir, "metadata.txt"), encoding="utf-8")
    version = parser.get("general", "version", fallback="").strip()
    if version:
        return version
    root = source_root(plugin_dir)
    found = version_in_source(os.path.join(root, "sam_core", "__init__.py")) if root else None
    return found or "unknown"


def bundled_wheels(engine_dir: str = ENGINE_DIR) -> list[str]:
    """Paths of the ``sam_suite-*.whl`` files in the plugin's ``engine/`` folder, sorted."""
    if not os.path.isdir(engine_dir):
        return []
    return sorted(os.path.join(engine_dir, name) for name in os.listdir(engine_dir) if _WHEEL.match(name))


def wheel_version(path: str) -> str:
    """The version in a wheel's file name (``sam_suite-0.1.0-py3-none-any.whl`` -> ``0.1.0``)."""
    match = _WHEEL.match(os.path.basename(path))
    if not match:
        raise BundleError(f"{path} is not a sam-suite wheel")
    return match.group("version")


def engine_package(plugin_dir: str = PLUGIN_DIR, engine_dir: Optional[str] = None) -> str:
    """What the first-run dialog asks pip to install: the bundled wheel with its ``[geo]`` extra, or in a
    source checkout the checkout itself. Raises :class:`BundleError` (with what to do) when the zip's
    engine is missing or of another version than the plugin."""
    engine_dir = engine_dir or os.path.join(plugin_dir, "engine")
    version = plugin_version(plugin_dir)
    wheels = bundled_wheels(engine_dir)
    if not wheels:
        root = source_root(plugin_dir)
        if root is not None:
            return f"{root}[geo]"
        raise BundleError(
            f"This copy of the plugin carries no engine (no sam_suite-{version}-*.whl in {engine_dir}). "
            "Reinstall the plugin from its official zip (Plugins > Manage and Install Plugins), or choose "
            f"an existing Python that has sam_core {version} installed.")
    matching = [path for path in wheels if wheel_version(path) == version]
    if not matching:
        found = ", ".join(os.path.basename(path) for path in wheels)
        raise BundleError(
            f"The plugin is version {version} but its bundled engine is {found}. The zip is damaged or was "
            "assembled by hand: reinstall the plugin from its official zip, or choose an existing Python "
            f"that has sam_core {version} installed.")
    return f"{matching[-1]}[geo]"
