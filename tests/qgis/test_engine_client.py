"""The engine client against a stand-in engine process: what a crash message quotes."""

from __future__ import annotations

import stat
import sys
import textwrap

import pytest

from qgis_sam.engine_client import EngineClient, EngineCrashed

FAKE_ENGINE = """
import json, os, signal, sys
print(json.dumps({"id": None, "event": "ready", "protocol": 1}), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    if request["cmd"] == "warn":
        print("UserWarning: a stale line from an earlier request", file=sys.stderr, flush=True)
    elif request["cmd"] == "die":
        if request["params"].get("say"):
            print(request["params"]["say"], file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    print(json.dumps({"id": request["id"], "event": "result", "result": {}}), flush=True)
"""


@pytest.fixture
def fake_python(tmp_path):
    """An 'interpreter' whose engine answers 'warn' (logs a line) and 'die' (is killed) requests."""
    script = tmp_path / "fake_engine.py"
    script.write_text(FAKE_ENGINE)
    python = tmp_path / "python"
    python.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        exec {sys.executable} {script}
    """))
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    return str(python)


def test_crash_message_quotes_only_what_the_engine_logged_during_the_request(fake_python, monkeypatch):
    monkeypatch.delenv("SAM_ENGINE_PYTHON", raising=False)
    client = EngineClient(python=fake_python)
    try:
        client.request("warn")
        with pytest.raises(EngineCrashed) as error:
            client.request("die")
        message = str(error.value)
        assert "stale line" not in message
        assert "killed by signal 9 (SIGKILL" in message and "logged nothing" in message
        # the next request restarts the engine; a line logged by the failing request is quoted
        client.request("warn")
        with pytest.raises(EngineCrashed) as error:
            client.request("die", {"say": "MemoryError: cannot allocate the tile"})
        message = str(error.value)
        assert "MemoryError: cannot allocate the tile" in message and "stale line" not in message
    finally:
        client.stop()


def test_a_sam_core_folder_in_qgis_working_folder_is_not_imported_by_the_engine(tmp_path, monkeypatch):
    """QGIS may run in a folder holding a 'sam_core' checkout or a stray copy: the engine imports its own."""
    python = __import__("os").environ.get("SAM_ENGINE_PYTHON")
    if not python:
        pytest.fail("SAM_ENGINE_PYTHON must name the engine's Python (.ci/run sets it)")
    stray = tmp_path / "sam_core"
    stray.mkdir()
    (stray / "__init__.py").write_text("raise SystemExit('the stray sam_core was imported')\n")
    (stray / "__main__.py").write_text("raise SystemExit('the stray sam_core was imported')\n")
    monkeypatch.chdir(tmp_path)
    client = EngineClient(python=python)
    try:
        answer = client.request("hello")
        assert answer["version"]
    finally:
        client.stop()
