"""sam_core's modules import each other one way: no cycle, counting every import (module level,
inside functions and under TYPE_CHECKING), and the front ends' rules (no Qt, napari or QGIS)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from sam_core.types import Box, Embedding, MaskGenerator, Prediction, PromptPredictor

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "sam_core"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The sam_core modules that ``path`` imports anywhere in its code (the package ``sam_core`` itself
    only re-exports lazily, so ``from sam_core import x`` counts as ``sam_core.x`` when that is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != "sam_core" and target != name:
                found.add(target)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of ``graph`` as a list of modules (first == last), or [] when there is none."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for child in sorted(graph[node]):
            if state.get(child) == 1:
                return stack[stack.index(child):] + [child]
            if child not in state:
                found = visit(child)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def test_sam_core_has_no_import_cycle():
    graph = _graph()
    assert "sam_core.predictor" in graph["sam_core.cache"] or "sam_core.types" in graph["sam_core.cache"]
    cycle = _cycle(graph)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) == []


def test_shared_types_sit_below_everything():
    """types imports nothing of sam_core but imaging (Preparation), errors and progress; cache and the
    predictor take Embedding from it, the exporter no private name from the predictor."""
    graph = _graph()
    assert graph["sam_core.types"] <= {"sam_core.imaging", "sam_core.errors", "sam_core.progress"}
    assert "sam_core.types" in graph["sam_core.cache"] and "sam_core.predictor" not in graph["sam_core.cache"]
    assert "sam_core.predictor" not in graph["sam_core.export"]
    assert "sam_core.onnx_backend" not in graph["sam_core.export"]


@pytest.mark.parametrize("module", sorted(_modules()))
def test_engine_never_imports_a_gui(module):
    source = _modules()[module].read_text()
    tree = ast.parse(source)
    names = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not names & {"qgis", "napari", "PyQt5", "PyQt6", "qtpy", "napari_sam", "qgis_sam"}


def test_predictors_and_generators_meet_the_protocols(small_vit_checkpoint):
    from sam_core.automask import AutomaticMaskGenerator
    from sam_core.predictor import Predictor
    from sam_core import predictor as predictor_module

    predictor = Predictor(None, checkpoint=small_vit_checkpoint)
    assert isinstance(predictor, PromptPredictor)
    assert isinstance(AutomaticMaskGenerator(predictor, points_per_side=2), MaskGenerator)
    assert predictor_module.Embedding is Embedding and predictor_module.Prediction is Prediction


def test_box_has_one_coordinate_order():
    box = Box.of((50, 10, 20, 40))  # corners in any order
    assert box.xyxy == (20.0, 10.0, 50.0, 40.0) and (box.width, box.height) == (30.0, 30.0)
    image = np.arange(100 * 100).reshape(100, 100)
    assert image[box.slices].shape == (30, 30) and image[box.slices][0, 0] == image[10, 20]
    assert box.contains(Box(20, 10, 30, 40)) and not box.contains(Box(0, 10, 30, 40))
    assert tuple(box) == box.xyxy and np.asarray(box).tolist() == [20.0, 10.0, 50.0, 40.0]


def test_a_box_goes_where_four_numbers_go(small_vit_checkpoint):
    from sam_core.predictor import Predictor

    predictor = Predictor(None, checkpoint=small_vit_checkpoint)
    embedding = predictor.encode(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8))
    a = predictor.predict(embedding, box=Box(10, 12, 60, 50))
    b = predictor.predict(embedding, box=(10, 12, 60, 50))
    np.testing.assert_array_equal(a.logits, b.logits)
