"""Tiles or images as tasks on a ``dask.distributed`` cluster.

``cluster(workers=N)`` starts a local cluster on 127.0.0.1 (N worker processes, one thread each);
``cluster(scheduler="tcp://host:8786")`` joins an existing one. :func:`run_tasks` submits one task per
item and hands back results as they complete (the caller stores and merges them exactly as in one
process). Each worker builds the mask generator once and keeps it (:func:`worker_generator`, a cache
keyed by the generator's description); a generator object passed by the caller is sent once to every
worker (scattered) instead.
"""

from __future__ import annotations

import contextlib
import json
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional

from sam_core.errors import SamError
from sam_core.progress import CancelToken, check


@dataclass(frozen=True)
class GeneratorSpec:
    """How to build an automatic mask generator: a zoo model name or checkpoint, device and parameters."""

    model: Optional[str] = "demo"
    checkpoint: Optional[str] = None
    device: Optional[str] = None
    params_json: str = "{}"

    @classmethod
    def create(cls, model=None, checkpoint=None, device=None, params: Optional[dict] = None) -> "GeneratorSpec":
        """Parameters left out of ``params`` are the model's recommended ones (:func:`sam_core.zoo.automask_defaults`)."""
        from sam_core.zoo import automask_defaults

        if checkpoint is not None and model == "demo":
            model = None  # a checkpoint file: its configuration is inferred from the weights
        return cls(
            model=model,
            checkpoint=None if checkpoint is None else str(checkpoint),
            device=None if device is None else str(device),
            params_json=json.dumps({**automask_defaults(model), **(params or {})}, sort_keys=True),
        )

    @property
    def params(self) -> dict:
        return json.loads(self.params_json)

    def build(self) -> Any:
        """A new :class:`~sam_core.automask.AutomaticMaskGenerator` on a freshly loaded model."""
        from sam_core.automask import AutomaticMaskGenerator
        from sam_core.predictor import Predictor
        from sam_core.runtime import keep_freed_memory

        keep_freed_memory()  # Dask workers trim freed memory eagerly; the encoder would fault it back in
        predictor = Predictor(self.model, checkpoint=self.checkpoint, device=self.device)
        try:
            return AutomaticMaskGenerator(predictor, **self.params)
        except TypeError as error:
            raise SamError(f"unknown automatic mask parameter: {error}") from error


# Seconds to wait for an existing scheduler to answer.
CONNECT_TIMEOUT = 20

_GENERATORS: dict = {}
_LOCK = threading.Lock()


def worker_generator(spec: Any) -> Any:
    """The generator for ``spec`` in this process, built on first use and kept (one model per worker).

    A :class:`GeneratorSpec` is built once; any other object is a generator already and is returned.
    """
    if not isinstance(spec, GeneratorSpec):
        return spec
    with _LOCK:
        if spec not in _GENERATORS:
            _GENERATORS[spec] = spec.build()
        return _GENERATORS[spec]


@contextlib.contextmanager
def cluster(workers: Optional[int] = None, scheduler: Optional[str] = None) -> Iterator[Any]:
    """A ``dask.distributed.Client``: a new local cluster of ``workers`` processes, or ``scheduler``'s."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as error:  # pragma: no cover - depends on the installation
        raise SamError("parallel runs need dask: pip install 'sam-suite[geo]'") from error
    if workers is not None and scheduler is not None:
        raise SamError("give either --workers (a local cluster) or --scheduler (an existing one), not both")
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT)
        except Exception as error:
            raise SamError(f"cannot reach the Dask scheduler at {scheduler}: {str(error).splitlines()[0]}") from error
        try:
            yield client
        finally:
            client.close()
        return
    if workers is None or int(workers) < 1:
        raise SamError(f"the number of workers must be at least 1, got {workers}")
    local = LocalCluster(
        n_workers=int(workers),
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        silence_logs=40,
    )
    client = Client(local)
    try:
        yield client
    finally:
        client.close()
        local.close()


def run_tasks(
    client: Any,
    func: Callable[..., Any],
    items: Iterable[Any],
    *args: Any,
    broadcast: Optional[Any] = None,
    cancel: Optional[CancelToken] = None,
) -> Iterator[tuple[Any, Any]]:
    """Run ``func(item, *args, generator)`` for each item on the cluster; yield ``(item, result)`` as done.

    ``broadcast`` (e.g. a generator object or a :class:`GeneratorSpec`) is sent once to every worker and
    passed as the last argument. Cancelling stops pending tasks and raises
    :class:`~sam_core.progress.Cancelled`. Task errors are raised here (a SamError keeps its message).
    """
    from dask.distributed import as_completed

    items = list(items)
    if not items:
        return
    shared = client.scatter(broadcast, broadcast=True) if broadcast is not None else None
    futures = {}
    for item in items:
        future = client.submit(func, item, *args, shared, pure=False, retries=0)
        futures[future] = item
    try:
        for future in as_completed(futures):
            check(cancel)
            yield futures[future], future.result()
    finally:
        for future in futures:
            future.cancel()
