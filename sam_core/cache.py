"""Embedding cache: an in-memory LRU bounded in bytes, and an optional on-disk store.

Keys (:func:`cache_key`) hash the pixel bytes, shape and dtype of the image as given, the model's
identity (``model_id``: name and checkpoint identity) and the preparation settings, so a changed pixel,
model or contrast gives a new key.

On disk each embedding is one file ``<directory>/<key>.samemb``::

    b"SAMEMB01" | header length (uint32, little endian) | header (UTF-8 JSON) | payload

The header holds the sizes, the model id, the preparation, the feature dtype and shape, and the SHA-256
of the payload (the features' bytes, then SAM 2.1's high-resolution features when there are some, then
the valid-pixel mask packed to bits when there is one).
Files are written atomically (temporary file + rename). A file that is truncated, corrupted or
otherwise does not match its header is deleted and reported as a miss, so the embedding is recomputed.
Results never depend on whether an embedding came from the cache. Features are stored losslessly, as
float32, by default, so a cache hit decodes exactly what the encoder gave (and what the official predictor
decodes). ``dtype="float16"`` halves the files; then :meth:`EmbeddingCache.put` rounds a fresh
embedding to float16 exactly as it is stored and hands back that rounded embedding, which the predictor
decodes, so the first run (cache miss) and every later run (cache hit, from memory or disk) still decode
from the same values. With ``disk_bytes`` the folder is kept under that many bytes: after each write the least
recently used files (by modification time, refreshed on every read) are deleted. In memory,
embeddings are kept as they were put (float32 on the model's device).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import struct
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Optional, Union

import numpy as np

from sam_core.errors import SamError
from sam_core.fileio import atomic_write
from sam_core.imaging import Preparation
from sam_core.types import Embedding

log = logging.getLogger(__name__)

_MAGIC = b"SAMEMB01"
_SUFFIX = ".samemb"
_DTYPES = {"float16": np.float16, "float32": np.float32}


def cache_key(image: np.ndarray, model_id: str, preparation: Optional[Preparation] = None) -> str:
    """A hex digest identifying (pixels, shape, dtype, model, preparation)."""
    array = np.ascontiguousarray(image)
    digest = hashlib.blake2b(digest_size=20)
    prep = preparation or Preparation()
    header = json.dumps(
        {"v": 1, "model": model_id, "prep": prep.key(), "dtype": array.dtype.str, "shape": list(array.shape)},
        sort_keys=True,
    )
    digest.update(header.encode())
    digest.update(memoryview(array.reshape(-1)).cast("B"))
    return digest.hexdigest()


def embedding_nbytes(embedding: Embedding) -> int:
    """Bytes an embedding holds in memory (features, SAM 2.1's high-resolution features, valid mask)."""
    size = sum(t.element_size() * t.nelement() for t in (embedding.features, *(embedding.high_res_features or ())))
    if embedding.valid is not None:
        size += embedding.valid.nbytes
    return int(size)


class EmbeddingCache:
    """Memory LRU bounded by ``memory_bytes`` plus, when ``directory`` is given, one file per embedding.

    ``dtype`` ("float16" or "float32") is the dtype of features on disk; ``disk_bytes`` (None: no
    limit) bounds the folder's size. Thread-safe.
    """

    def __init__(
        self,
        memory_bytes: int = 1 << 30,
        directory: Union[str, "os.PathLike[str]", None] = None,
        dtype: str = "float32",
        disk_bytes: Optional[int] = None,
    ) -> None:
        if disk_bytes is not None and disk_bytes < 0:
            raise SamError(f"disk_bytes must be >= 0, got {disk_bytes}")
        if dtype not in _DTYPES:
            raise SamError(f"cache dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        if memory_bytes < 0:
            raise SamError(f"memory_bytes must be >= 0, got {memory_bytes}")
        self.memory_bytes = int(memory_bytes)
        self.directory = Path(directory) if directory is not None else None
        self.dtype = dtype
        self.disk_bytes = disk_bytes
        self._entries: "OrderedDict[str, tuple[Embedding, int]]" = OrderedDict()
        self._used = 0
        self._lock = threading.RLock()

    # --- public API ---------------------------------------------------------------------------------

    @property
    def memory_used(self) -> int:
        """Bytes currently held in memory."""
        return self._used

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            if key in self._entries:
                return True
        return self.directory is not None and self.path_for(key).is_file()

    def get(self, key: str) -> Optional[Embedding]:
        """The embedding stored under ``key`` (memory first, then disk), or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry[0]
        if self.directory is None:
            return None
        embedding = self._read(key)
        if embedding is not None:
            self._remember(key, embedding)
        return embedding

    def put(self, key: str, embedding: Embedding) -> Embedding:
        """Store ``embedding`` in memory (evicting the least recently used) and on disk if configured;
        returns it as stored (see :meth:`as_stored`): decode from this one, not the one passed in."""
        embedding = self.as_stored(embedding)
        self._remember(key, embedding)
        if self.directory is not None:
            self._write(key, embedding)
            if self.disk_bytes is not None:
                self._trim_disk(keep=key)
        return embedding

    def as_stored(self, embedding: Embedding) -> Embedding:
        """``embedding`` with the values a later :meth:`get` returns: features rounded to float16 (kept in
        their own dtype and device) when this cache stores float16 on disk, else unchanged."""
        if self.directory is None or self.dtype == "float32":
            return embedding
        import torch

        def rounded(tensor: "torch.Tensor") -> "torch.Tensor":
            return tensor.to(torch.float16).to(tensor.dtype)

        high_res = embedding.high_res_features
        return dataclasses.replace(embedding, features=rounded(embedding.features),
                                   high_res_features=None if high_res is None else tuple(rounded(t) for t in high_res))

    def clear(self, disk: bool = False) -> None:
        """Forget everything in memory; with ``disk=True`` also delete this cache's files."""
        with self._lock:
            self._entries.clear()
            self._used = 0
        if disk and self.directory is not None and self.directory.is_dir():
            for path in self.directory.glob(f"*{_SUFFIX}"):
                path.unlink(missing_ok=True)

    def path_for(self, key: str) -> Path:
        """The file that holds (or would hold) ``key`` on disk."""
        if self.directory is None:
            raise SamError("this embedding cache has no directory")
        return self.directory / f"{key}{_SUFFIX}"

    # --- memory -------------------------------------------------------------------------------------

    def _remember(self, key: str, embedding: Embedding) -> None:
        size = embedding_nbytes(embedding)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._used -= old[1]
            if size > self.memory_bytes:
                return
            self._entries[key] = (embedding, size)
            self._used += size
            while self._used > self.memory_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._used -= dropped

    # --- disk ---------------------------------------------------------------------------------------

    def _write(self, key: str, embedding: Embedding) -> None:
        features = embedding.features.detach().to("cpu").numpy().astype(_DTYPES[self.dtype])
        features = np.ascontiguousarray(features)
        payload = [features.tobytes()]
        high_res = [np.ascontiguousarray(t.detach().to("cpu").numpy().astype(_DTYPES[self.dtype]))
                    for t in embedding.high_res_features or ()]
        payload.extend(t.tobytes() for t in high_res)
        valid_bytes = 0
        if embedding.valid is not None:
            packed = np.packbits(np.asarray(embedding.valid, dtype=bool), axis=None).tobytes()
            payload.append(packed)
            valid_bytes = len(packed)
        digest = hashlib.sha256()
        for part in payload:
            digest.update(part)
        header = {
            "version": 1,
            "key": key,
            "model_id": embedding.model_id,
            "preparation": json.loads(embedding.preparation.key()),
            "original_size": list(embedding.original_size),
            "input_size": list(embedding.input_size),
            "dtype": self.dtype,
            "shape": list(features.shape),
            "valid_shape": list(embedding.valid.shape) if embedding.valid is not None else None,
            "features_nbytes": features.nbytes,
            "high_res_shapes": [list(t.shape) for t in high_res] if high_res else None,
            "high_res_nbytes": sum(t.nbytes for t in high_res),
            "valid_nbytes": valid_bytes,
            "sha256": digest.hexdigest(),
        }
        header_bytes = json.dumps(header, sort_keys=True).encode()
        try:
            with atomic_write(self.path_for(key)) as handle:
                handle.write(_MAGIC)
                handle.write(struct.pack("<I", len(header_bytes)))
                handle.write(header_bytes)
                for part in payload:
                    handle.write(part)
        except OSError as error:
            # A full or read-only disk must not stop segmentation: the embedding stays in memory.
            log.warning("could not write the embedding cache file for %s: %s", key, error)

    def _trim_disk(self, keep: str) -> None:
        """Delete the least recently used files until the folder holds at most ``disk_bytes``."""
        files = []
        for path in self.directory.glob(f"*{_SUFFIX}"):
            try:
                stat = path.stat()
            except FileNotFoundError:  # removed by another process meanwhile
                continue
            files.append((stat.st_mtime_ns, stat.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.disk_bytes:
                break
            if path.name == f"{keep}{_SUFFIX}":
                continue
            path.unlink(missing_ok=True)
            total -= size

    def _read(self, key: str) -> Optional[Embedding]:
        path = self.path_for(key)
        try:
            data = path.read_bytes()
            if self.disk_bytes is not None:
                os.utime(path)  # most recently used: trimmed last
        except FileNotFoundError:
            return None
        except OSError as error:
            log.warning("could not read embedding cache file %s: %s", path, error)
            return None
        try:
            return _decode(data, key)
        except Exception as error:  # any defect of the file: never trusted, never a crash
            log.warning("embedding cache file %s is damaged (%s); deleting it and recomputing", path, error)
            path.unlink(missing_ok=True)
            return None


def _decode(data: bytes, key: str) -> Embedding:
    import torch

    if data[: len(_MAGIC)] != _MAGIC:
        raise ValueError("not an embedding cache file")
    start = len(_MAGIC) + 4
    (header_len,) = struct.unpack("<I", data[len(_MAGIC) : start])
    header = json.loads(data[start : start + header_len].decode())
    if header.get("version") != 1 or header.get("key") != key:
        raise ValueError("the header does not belong to this key")
    payload = memoryview(data)[start + header_len :]
    features_nbytes = int(header["features_nbytes"])
    valid_nbytes = int(header["valid_nbytes"])
    high_res_nbytes = int(header.get("high_res_nbytes", 0))
    expected = features_nbytes + high_res_nbytes + valid_nbytes
    if len(payload) != expected:
        raise ValueError(f"payload has {len(payload)} bytes, expected {expected}")
    if hashlib.sha256(payload).hexdigest() != header["sha256"]:
        raise ValueError("checksum mismatch")
    dtype = _DTYPES[header["dtype"]]
    shape = tuple(int(v) for v in header["shape"])
    features = np.frombuffer(payload[:features_nbytes], dtype=dtype).reshape(shape)
    high_res, offset = [], features_nbytes
    for level in header.get("high_res_shapes") or ():
        count = int(np.prod(level)) * np.dtype(dtype).itemsize
        high_res.append(torch.from_numpy(np.frombuffer(payload[offset : offset + count], dtype=dtype).reshape(level).copy()))
        offset += count
    valid = None
    if header["valid_shape"] is not None:
        vh, vw = (int(v) for v in header["valid_shape"])
        bits = np.frombuffer(payload[offset:], dtype=np.uint8)
        valid = np.unpackbits(bits, count=vh * vw).reshape(vh, vw).astype(bool)
    return Embedding(
        features=torch.from_numpy(features.copy()),
        original_size=tuple(int(v) for v in header["original_size"]),
        input_size=tuple(int(v) for v in header["input_size"]),
        model_id=header["model_id"],
        preparation=Preparation.from_dict(header["preparation"]),
        key=key,
        valid=valid,
        high_res_features=tuple(high_res) or None,
    )
