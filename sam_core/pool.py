"""Which model to run (:class:`ModelSpec`) and the predictors built from it (:class:`PredictorPool`).

Every front end describes its model the same way and gets its predictor from a pool: the command line,
the engine process of the QGIS plugin, the geo pipeline, Dask workers and napari. A pool belongs to
whoever runs the work (one per engine, per napari session, per Dask worker, per command); it builds a
predictor once per spec, keeps it with its embedding cache, and drops the least recently used when it
holds more than ``size``.

The one rule for naming a model (:meth:`ModelSpec.of`): a ``checkpoint`` file means the configuration is
inferred from the file's weights, unless an official model name (``vit_t``, ``vit_b``, ...) is given with
it, whose configuration is then used; ``demo`` names the bundled file, so with a checkpoint it names
nothing (front ends that default to ``demo`` need no special case). Neither name nor checkpoint means
``demo``.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from sam_core.errors import SamError
from sam_core.progress import CancelToken, ProgressFn, check

if TYPE_CHECKING:
    from sam_core.predictor import Predictor

__all__ = ["ModelSpec", "PredictorPool", "DEFAULT_MODEL"]

PathLike = Union[str, "os.PathLike[str]"]

DEFAULT_MODEL = "demo"


@dataclass(frozen=True)
class ModelSpec:
    """A predictor's model and settings, hashable (a pool key) and picklable (sent to Dask workers).

    ``name``: a zoo model (``demo``, ``vit_t``, ``vit_b``, ...), or None with ``checkpoint`` (the
    configuration is inferred from the weights). ``checkpoint``: a checkpoint file in the official
    format. ``device``: ``cpu``, ``cuda[:N]``, ``mps``, ``auto`` or None (CPU). ``precision``: the
    encoder's (see :mod:`sam_core.models.precision`), None keeps fp32. ``compile``: compile the encoder
    (``torch.compile``). ``cache_dir``: folder of the on-disk embedding cache (None: memory only);
    ``cache_memory_bytes``: the in-memory cache's bound. Build it with :meth:`of`, which applies the
    naming rule of this module.
    """

    name: Optional[str] = DEFAULT_MODEL
    checkpoint: Optional[str] = None
    device: Optional[str] = None
    precision: Optional[str] = None
    compile: bool = False
    cache_dir: Optional[str] = None
    cache_memory_bytes: int = 1 << 30

    def __post_init__(self) -> None:
        if self.name is None and self.checkpoint is None:
            raise SamError("choose a model name or a checkpoint file (use ModelSpec.of to default to demo)")

    @classmethod
    def of(
        cls,
        name: Optional[str] = None,
        checkpoint: Optional[PathLike] = None,
        *,
        device: Union[str, object, None] = None,
        precision: Optional[str] = None,
        compile: bool = False,
        cache_dir: Optional[PathLike] = None,
        cache_memory_bytes: int = 1 << 30,
    ) -> "ModelSpec":
        """The spec for what a user chose: ``name`` and/or ``checkpoint`` (see the module's naming rule)."""
        checkpoint = None if checkpoint in (None, "") else str(Path(checkpoint).expanduser())
        if checkpoint is not None and name == DEFAULT_MODEL:
            name = None  # the bundled demo's name says nothing about another file's configuration
        if name in (None, "") and checkpoint is None:
            name = DEFAULT_MODEL
        return cls(
            name=name or None,
            checkpoint=checkpoint,
            device=None if device in (None, "") else str(device),
            precision=precision or None,
            compile=bool(compile),
            cache_dir=None if cache_dir in (None, "") else str(Path(cache_dir).expanduser()),
            cache_memory_bytes=int(cache_memory_bytes),
        )

    @property
    def infers_config(self) -> bool:
        """True when the configuration comes from the checkpoint's weights (no name given)."""
        return self.name is None

    @property
    def label(self) -> str:
        """A short name for messages: the model name, or the checkpoint file's name."""
        if self.checkpoint is None:
            return str(self.name)
        return f"{self.name or 'file'}: {Path(self.checkpoint).name}"

    def with_cache(self, cache_dir: Optional[PathLike], cache_memory_bytes: Optional[int] = None) -> "ModelSpec":
        """The same model with another embedding cache."""
        return replace(
            self,
            cache_dir=None if cache_dir in (None, "") else str(Path(cache_dir).expanduser()),
            cache_memory_bytes=self.cache_memory_bytes if cache_memory_bytes is None else int(cache_memory_bytes),
        )

    @property
    def model_key(self) -> tuple:
        """What the loaded network depends on (not the cache): predictors of specs with the same key share it."""
        return (self.name, self.checkpoint, self.device, self.precision, self.compile)

    def load_model(self, *, progress: Optional[ProgressFn] = None, cancel: Optional[CancelToken] = None) -> Any:
        """The network of this spec, loaded (a zoo model is downloaded first, with ``progress`` and
        ``cancel``), at its precision and compiled when asked."""
        from sam_core import zoo

        if self.checkpoint is not None:
            if not Path(self.checkpoint).is_file():
                raise SamError(f"checkpoint file {self.checkpoint} does not exist: choose another file or a model name")
        else:
            zoo.check_prompt_model(self.name)  # before a download of a model that cannot be used here
            zoo.ensure_checkpoint(self.name, progress=progress, cancel=cancel)
        check(cancel)
        model = zoo.load_model(self.name, self.checkpoint, device=self.device)
        if self.precision is not None:
            if not hasattr(model, "set_precision"):
                raise SamError(f"model {self.label} has no precision setting")
            model.set_precision(self.precision)
        if self.compile:
            model.compile_encoder()
        return model

    def predictor(self, model: Any) -> "Predictor":
        """A :class:`~sam_core.predictor.Predictor` on ``model`` (from :meth:`load_model`) with this
        spec's embedding cache."""
        from sam_core.cache import EmbeddingCache
        from sam_core.predictor import Predictor

        return Predictor(model, cache=EmbeddingCache(memory_bytes=self.cache_memory_bytes, directory=self.cache_dir))

    def build(self, *, progress: Optional[ProgressFn] = None, cancel: Optional[CancelToken] = None) -> "Predictor":
        """A new predictor on a newly loaded model. Prefer :meth:`PredictorPool.get`, which keeps both."""
        return self.predictor(self.load_model(progress=progress, cancel=cancel))


class PredictorPool:
    """Predictors by :class:`ModelSpec`, built once and kept with their embedding caches (thread-safe).

    Specs that differ only in their embedding cache share one loaded network (:attr:`ModelSpec.model_key`).
    At most ``size`` networks are held; the least recently used is dropped first, with its predictors
    (their memory is freed when no caller holds them any more). ``loads`` counts networks loaded. A pool is
    owned by whoever runs the work: create one per engine, session, worker or command and pass it on.
    """

    def __init__(self, size: int = 2) -> None:
        if size < 1:
            raise SamError(f"a predictor pool holds at least one model, got size {size}")
        self.size = int(size)
        self.loads = 0
        self._models: "OrderedDict[tuple, Any]" = OrderedDict()
        self._predictors: "dict[ModelSpec, Predictor]" = {}
        self._lock = threading.Lock()

    def get(self, spec: ModelSpec, *, progress: Optional[ProgressFn] = None,
            cancel: Optional[CancelToken] = None) -> "Predictor":
        """The predictor for ``spec``: the one already built, or a new one (then kept)."""
        if not isinstance(spec, ModelSpec):
            raise TypeError(f"a PredictorPool takes a ModelSpec, got {type(spec).__name__}")
        key = spec.model_key
        with self._lock:
            model = self._models.get(key)
            if model is None:
                model = spec.load_model(progress=progress, cancel=cancel)
                self.loads += 1
                self._models[key] = model
                while len(self._models) > self.size:
                    dropped, _ = self._models.popitem(last=False)
                    for other in [s for s in self._predictors if s.model_key == dropped]:
                        del self._predictors[other]
            self._models.move_to_end(key)
            predictor = self._predictors.get(spec)
            if predictor is None:
                predictor = self._predictors[spec] = spec.predictor(model)
            return predictor

    def __contains__(self, spec: object) -> bool:
        with self._lock:
            return spec in self._predictors

    def __len__(self) -> int:
        """The number of loaded networks."""
        return len(self._models)

    def clear(self) -> None:
        """Drop every predictor and network (their memory is freed when no caller holds them)."""
        with self._lock:
            self._predictors.clear()
            self._models.clear()
