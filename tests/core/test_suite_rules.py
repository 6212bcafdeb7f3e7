"""The test suite's own rules: a missing demo model fails (never skips), thread counts do not leak
between tests, and the fast suite (``-m "not slow"``) leaves out only tests marked slow."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from helpers.demo import require_demo

_THREADS_AT_START: list[int] = []


def test_a_missing_demo_model_fails_loudly(monkeypatch, tmp_path):
    from sam_core import zoo

    assert require_demo() == zoo.model_info("demo").bundled  # committed: present in every clone
    monkeypatch.setitem(zoo.MODELS, "demo", replace(zoo.MODELS["demo"], bundled=tmp_path / "demo.pt"))
    with pytest.raises(pytest.fail.Exception, match="is missing: it is committed"):
        require_demo()


def test_no_test_skips_for_a_missing_demo():
    """Tests that need demo take the ``demo_checkpoint`` fixture instead of a skip condition."""
    tests = Path(__file__).resolve().parents[1]
    offenders = [path.name for path in (tests / "core").glob("test_*.py") if path.name != Path(__file__).name
                 and ("not trained" in path.read_text() or "not built yet" in path.read_text())]
    assert offenders == []


def test_test_files_of_one_run_have_unique_names():
    """.ci/run collects tests/core, tests/napari and tests/reliability in one pytest run, whose folders are
    not packages: two test files of the same name stop the whole run at collection."""
    tests = Path(__file__).resolve().parents[1]
    names = [path.name for folder in ("core", "napari", "reliability") for path in (tests / folder).glob("test_*.py")]
    assert sorted({name for name in names if names.count(name) > 1}) == []


def test_a_test_that_changes_the_thread_count():
    _THREADS_AT_START.append(torch.get_num_threads())
    torch.set_num_threads(1 if torch.get_num_threads() != 1 else 2)
    assert torch.get_num_threads() != _THREADS_AT_START[0]  # changed here; the next test must not see it


def test_the_next_test_gets_the_thread_count_back():
    assert _THREADS_AT_START and torch.get_num_threads() == _THREADS_AT_START[0]
