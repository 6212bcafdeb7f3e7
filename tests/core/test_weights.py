"""Downloads against a local HTTP server: good, resumed, truncated, corrupted, offline, cancelled."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import pytest

from helpers.http_server import FileServer, closed_port_url
from sam_core import weights
from sam_core.errors import SamError
from sam_core.progress import Cancelled, CancelToken

SIZE = 2_600_000  # a little over two 1 MiB read blocks


def payload(seed: int = 0, size: int = SIZE) -> bytes:
    """Deterministic pseudo-random bytes."""
    count = size // 32 + 1
    return b"".join(hashlib.sha256(f"{seed}:{i}".encode()).digest() for i in range(count))[:size]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    srv = FileServer().start()
    yield srv
    srv.stop()


@pytest.fixture
def served(server):
    data = payload()
    server.files["/model.pth"] = data
    return server, data


def visible_files(folder: Path) -> list:
    """Files a user would see (the hidden, empty download lock file aside)."""
    return [p.name for p in folder.iterdir() if not p.name.startswith(".")]


def ranges(server: FileServer) -> list:
    return [headers.get("Range") for _, headers in server.requests]


def test_folders_follow_arguments_then_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(weights.CHECKPOINTS_ENV, raising=False)
    monkeypatch.setenv(weights.HOME_ENV, str(tmp_path / "home"))
    assert weights.home_dir() == tmp_path / "home"
    assert weights.checkpoint_dir() == tmp_path / "home" / "checkpoints"
    monkeypatch.setenv(weights.CHECKPOINTS_ENV, str(tmp_path / "ckpt"))
    assert weights.checkpoint_dir() == tmp_path / "ckpt"
    assert weights.checkpoint_dir(tmp_path / "arg") == tmp_path / "arg"


def test_home_defaults_to_the_user_cache(monkeypatch):
    import platformdirs

    monkeypatch.delenv(weights.HOME_ENV, raising=False)
    assert weights.home_dir() == Path(platformdirs.user_cache_dir("sam_core"))


def test_good_download(served, tmp_path):
    server, data = served
    seen = []
    dest = tmp_path / "sub" / "model.pth"
    result = weights.download(
        server.url("/model.pth"), dest, sha256=sha(data), size=len(data), progress=lambda d, t, m: seen.append((d, t))
    )
    assert result == dest
    assert dest.read_bytes() == data
    assert not dest.with_name("model.pth.part").exists()
    assert seen[-1] == (len(data), len(data))
    assert all(total == len(data) for _, total in seen)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert ranges(server) == [None]
    # the verified hash is recorded, so the next check does not hash again
    assert weights.cached_sha256(dest) == sha(data)


def test_resume_continues_a_partial_file(served, tmp_path):
    server, data = served
    dest = tmp_path / "model.pth"
    dest.with_name("model.pth.part").write_bytes(data[:1_000_000])
    weights.download(server.url("/model.pth"), dest, sha256=sha(data), size=len(data))
    assert dest.read_bytes() == data
    assert ranges(server) == ["bytes=1000000-"]
    assert server.body_bytes_sent == len(data) - 1_000_000


def test_server_ignoring_range_gives_a_fresh_download(served, tmp_path):
    server, data = served
    server.ignore_range = True
    dest = tmp_path / "model.pth"
    dest.with_name("model.pth.part").write_bytes(data[:500_000])
    weights.download(server.url("/model.pth"), dest, sha256=sha(data), size=len(data))
    assert dest.read_bytes() == data
    assert ranges(server) == ["bytes=500000-"]
    assert server.body_bytes_sent == len(data)


def test_damaged_partial_file_is_downloaded_again(served, tmp_path):
    server, data = served
    dest = tmp_path / "model.pth"
    dest.with_name("model.pth.part").write_bytes(b"\0" * 700_000)
    weights.download(server.url("/model.pth"), dest, sha256=sha(data), size=len(data))
    assert dest.read_bytes() == data
    assert ranges(server) == ["bytes=700000-", None]


def test_truncated_transfer_keeps_the_part_and_a_rerun_resumes(served, tmp_path):
    server, data = served
    server.drop_after["/model.pth"] = 1_234_567
    dest = tmp_path / "model.pth"
    part = dest.with_name("model.pth.part")
    url = server.url("/model.pth")
    with pytest.raises(SamError) as info:
        weights.download(url, dest, sha256=sha(data), size=len(data))
    assert url in str(info.value) and str(tmp_path) in str(info.value)
    assert not dest.exists()
    assert part.read_bytes() == data[:1_234_567]

    weights.download(url, dest, sha256=sha(data), size=len(data))
    assert dest.read_bytes() == data
    assert ranges(server) == [None, "bytes=1234567-"]
    assert not part.exists()


def test_checksum_mismatch_never_leaves_a_file(served, tmp_path):
    server, data = served
    server.files["/model.pth"] = payload(seed=1)  # same size, other bytes
    dest = tmp_path / "model.pth"
    with pytest.raises(SamError, match="SHA-256"):
        weights.download(server.url("/model.pth"), dest, sha256=sha(data), size=len(data))
    assert visible_files(tmp_path) == []


def test_wrong_size_never_leaves_a_file(served, tmp_path):
    server, data = served
    server.files["/model.pth"] = data[:-10]
    dest = tmp_path / "model.pth"
    with pytest.raises(SamError, match="bytes"):
        weights.download(server.url("/model.pth"), dest, sha256=sha(data), size=len(data))
    assert visible_files(tmp_path) == []


def test_offline_error_names_the_url_and_the_folder(tmp_path):
    url = closed_port_url("/sam_vit_b.pth")
    dest = tmp_path / "checkpoints" / "sam_vit_b.pth"
    with pytest.raises(SamError) as info:
        weights.download(url, dest, sha256="0" * 64, size=10, timeout=5)
    message = str(info.value)
    assert url in message and str(dest.parent) in message and dest.name in message
    assert not dest.exists()


def test_http_error_is_a_user_error(server, tmp_path):
    url = server.url("/missing.pth")
    with pytest.raises(SamError, match="404"):
        weights.download(url, tmp_path / "missing.pth", sha256="0" * 64)
    assert not (tmp_path / "missing.pth").exists()


def test_cancel_keeps_the_part_for_a_later_resume(served, tmp_path):
    server, data = served
    token = CancelToken()

    def progress(done, total, message):
        if done > 0:
            token.cancel()

    dest = tmp_path / "model.pth"
    with pytest.raises(Cancelled):
        weights.download(server.url("/model.pth"), dest, sha256=sha(data), size=len(data), progress=progress, cancel=token)
    part = dest.with_name("model.pth.part")
    assert not dest.exists()
    kept = part.stat().st_size
    assert 0 < kept < len(data)
    weights.download(server.url("/model.pth"), dest, sha256=sha(data), size=len(data))
    assert dest.read_bytes() == data
    assert ranges(server)[-1] == f"bytes={kept}-"


def test_verify_file_hashes_once_per_file_version(tmp_path):
    data = payload(size=10_000)
    path = tmp_path / "file.bin"
    path.write_bytes(data)
    assert not weights.verify_file(tmp_path / "absent.bin", sha(data))
    assert weights.verify_file(path, sha(data))
    assert not weights.verify_file(path, sha(b"other"))
    record = path.with_name("file.bin.sha256")
    assert json.loads(record.read_text())["sha256"] == sha(data)

    # the record is trusted while size and mtime match: proof that nothing is re-hashed
    stored = json.loads(record.read_text())
    record.write_text(json.dumps(dict(stored, sha256="f" * 64)))
    assert weights.verify_file(path, "f" * 64)

    # a changed file (new mtime) is hashed again
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert weights.verify_file(path, sha(data))
    assert not weights.verify_file(path, "f" * 64)


def test_concurrent_downloads_of_one_file_fetch_it_once(served, tmp_path):
    server, data = served
    dest = tmp_path / "model.pth"
    results, errors = [], []

    def fetch():
        try:
            results.append(weights.download(server.url("/model.pth"), dest, sha256=sha(data), size=len(data)))
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=fetch) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == [] and results == [dest] * 3
    assert dest.read_bytes() == data
    assert len(server.requests) == 1


def test_complete_part_is_verified_and_used_without_network(tmp_path):
    data = payload(size=100_000)
    dest = tmp_path / "model.pth"
    dest.with_name("model.pth.part").write_bytes(data)  # e.g. interrupted just before the rename
    assert weights.download(closed_port_url(), dest, sha256=sha(data), size=len(data)) == dest
    assert dest.read_bytes() == data


def test_unsatisfiable_range_restarts_the_download(served, tmp_path):
    server, data = served
    dest = tmp_path / "model.pth"
    dest.with_name("model.pth.part").write_bytes(data)  # size unknown to the caller: asks for the rest
    weights.download(server.url("/model.pth"), dest, sha256=sha(data))
    assert dest.read_bytes() == data
    assert ranges(server) == [f"bytes={len(data)}-", None]
