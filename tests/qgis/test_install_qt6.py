"""QGIS 4 (Qt6) readiness: the plugin declares Qt6 support and uses only code that runs on Qt5 and Qt6.

The scan reads every module of the plugin. Text rules catch what Qt6 removed (``exec_()``, PyQt5
imports, QRegExp, QDesktopWidget, ...). Enum rules are checked against the real classes in QGIS 3.22:
each ``Class.Member`` the plugin writes is resolved, and an enum value reached without its enum type
(``Qt.LeftButton`` instead of ``Qt.MouseButton.LeftButton``) is reported, since PyQt6 has only scoped
enums.
"""

from __future__ import annotations

import ast
import configparser
import enum
import importlib
import re
from pathlib import Path

from conftest import ROOT

PLUGIN = ROOT / "qgis_sam"

# (pattern, what to write instead) for Qt5-only idioms that Qt6 / PyQt6 removed.
QT5_ONLY = [
    (re.compile(r"\.exec_\s*\("), "exec() (exec_ is gone in PyQt6)"),
    (re.compile(r"\.print_\s*\("), "print() (print_ is gone in PyQt6)"),
    (re.compile(r"^\s*(from|import)\s+PyQt[45]\b", re.MULTILINE), "qgis.PyQt (never PyQt5 directly)"),
    (re.compile(r"^\s*(from|import)\s+sip\b", re.MULTILINE), "from qgis.PyQt import sip"),
    (re.compile(r"\bQRegExp\b"), "QRegularExpression"),
    (re.compile(r"\bQDesktopWidget\b|\.desktop\(\)"), "QScreen (QGuiApplication.screens())"),
    (re.compile(r"\bMidButton\b"), "Qt.MouseButton.MiddleButton"),
    (re.compile(r"\.setMargin\("), "setContentsMargins()"),
    (re.compile(r"\bQtWebKit"), "QtWebEngine or a browser"),
    (re.compile(r"(?<![.\w])QString(List)?\b"), "str"),
    (re.compile(r"\bQPalette\.(Background|Foreground)\b"), "QPalette.ColorRole.Window / WindowText"),
    (re.compile(r"\.width\(\s*['\"]"), "QFontMetrics.horizontalAdvance()"),
    (re.compile(r"\.delta\(\)"), "angleDelta()"),
]


def plugin_modules() -> list[Path]:
    return sorted(path for path in PLUGIN.rglob("*.py") if "__pycache__" not in path.parts)


def qt5_only_idioms(path: Path) -> list[str]:
    """``FILE:LINE: 'idiom': use ...`` for each Qt5-only idiom in the file."""
    text = path.read_text(encoding="utf-8")
    found = []
    for pattern, instead in QT5_ONLY:
        for match in pattern.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append(f"{path.name}:{line}: {match.group(0).strip()!r}: use {instead}")
    return found


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _is_enum_type(value) -> bool:
    """Whether ``value`` is an enum type: sip's (PyQt5, QGIS 3) or Python's (PyQt6)."""
    from qgis.PyQt.QtCore import Qt

    return isinstance(value, type(Qt.MouseButton)) or (isinstance(value, type) and issubclass(value, enum.Enum))


def unscoped_enums(path: Path) -> list[str]:
    """``Class.Member`` expressions whose value is an enum value reached without its enum type."""
    relative = path.relative_to(ROOT).with_suffix("")
    module = importlib.import_module(".".join(relative.parts))
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Attribute) or not node.attr[:1].isupper():
            continue
        base_name = _dotted(node.value)
        if base_name is None:
            continue
        try:
            base = eval(base_name, vars(module))  # names of the module only (classes, modules)
        except Exception:
            continue
        if not isinstance(base, type) or _is_enum_type(base):
            continue  # reached through its enum type (scoped) or not a class at all
        value = getattr(base, node.attr, None)
        if value is not None and _is_enum_type(type(value)):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {base_name}.{node.attr}: write "
                         f"{base_name}.{type(value).__name__}.{node.attr}")
    return found


def test_metadata_declares_qt6_support():
    meta = configparser.ConfigParser()
    meta.read(PLUGIN / "metadata.txt")
    assert meta["general"]["supportsQt6"] == "True"


def test_the_plugin_has_no_qt5_only_idioms():
    found = [problem for path in plugin_modules() for problem in qt5_only_idioms(path)]
    assert not found, "\n".join(found)


def test_the_plugin_uses_scoped_enums_only(qgis_app):
    found = [problem for path in plugin_modules() for problem in unscoped_enums(path)]
    assert not found, "\n".join(found)


def test_the_scan_finds_what_it_looks_for(qgis_app, tmp_path):
    """The rules themselves: a Qt5-only module is reported, its Qt6-neutral twin is not."""
    bad = tmp_path / "bad.py"
    bad.write_text("from PyQt5.QtCore import Qt\nimport sip\ndialog.exec_()\nQRegExp('a')\n")
    assert len(qt5_only_idioms(bad)) == 4
    good = tmp_path / "good.py"
    good.write_text("from qgis.PyQt.QtCore import Qt\nfrom qgis.PyQt import sip\ndialog.exec()\n")
    assert qt5_only_idioms(good) == []
    from qgis.PyQt.QtCore import Qt

    assert _is_enum_type(type(Qt.MouseButton.LeftButton)) and not _is_enum_type(Qt)

