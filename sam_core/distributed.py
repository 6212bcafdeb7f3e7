"""Tiles or images as tasks on a ``dask.distributed`` cluster.

``cluster(workers=N)`` starts a local cluster on 127.0.0.1 (N worker processes, one thread each);
``cluster(scheduler="tcp://host:8786")`` joins an existing one. :func:`run_tasks` submits one task per
item and hands back results as they complete (the caller stores and merges them exactly as in one
process). Each worker holds a :class:`~sam_core.pool.PredictorPool` (the :class:`WorkerModels` plugin,
registered by :func:`run_tasks`) and builds the mask generator of a :class:`GeneratorSpec` once on it
(:func:`worker_generator`); a generator object passed by the caller is sent once to every worker
(scattered) instead.
"""

from __future__ import annotations

import contextlib
import json
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional, Union

from sam_core.errors import SamError
from sam_core.pool import ModelSpec, PredictorPool

try:
    from distributed import WorkerPlugin
except ImportError:  # pragma: no cover - dask is the optional "geo" extra; cluster() says how to get it
    WorkerPlugin = object
from sam_core.progress import CancelToken, check


@dataclass(frozen=True)
class GeneratorSpec:
    """How to build an automatic mask generator: its model (a :class:`~sam_core.pool.ModelSpec`) and
    parameters (JSON, so that the spec is hashable and travels to workers)."""

    model: ModelSpec = ModelSpec()
    params_json: str = "{}"

    @classmethod
    def create(cls, model: Union[ModelSpec, str, None] = None, checkpoint: Any = None, device: Any = None,
               params: Optional[dict] = None) -> "GeneratorSpec":
        """A spec for ``model`` (a :class:`ModelSpec`, or a name with ``checkpoint`` and ``device`` as
        :meth:`ModelSpec.of` takes them). Parameters left out of ``params`` are the model's recommended
        ones (:func:`sam_core.zoo.automask_defaults`)."""
        from sam_core.zoo import automask_defaults

        spec = model if isinstance(model, ModelSpec) else ModelSpec.of(model, checkpoint, device=device)
        return cls(model=spec, params_json=json.dumps({**automask_defaults(spec.name), **(params or {})}, sort_keys=True))

    @property
    def params(self) -> dict:
        return json.loads(self.params_json)

    def build(self, pool: Optional[PredictorPool] = None) -> Any:
        """An :class:`~sam_core.automask.AutomaticMaskGenerator` on the predictor that ``pool`` holds for
        this spec's model (built there if missing; without a pool, a new predictor)."""
        from sam_core.automask import AutomaticMaskGenerator

        predictor = (pool or PredictorPool(size=1)).get(self.model)
        try:
            return AutomaticMaskGenerator(predictor, **self.params)
        except TypeError as error:
            raise SamError(f"unknown automatic mask parameter: {error}") from error


# Seconds to wait for an existing scheduler to answer.
CONNECT_TIMEOUT = 20

_PLUGIN = "sam-core-models"


class WorkerModels(WorkerPlugin):
    """A Dask worker plugin: the worker's :class:`~sam_core.pool.PredictorPool` and the generators built
    on it, so that each worker process loads a model once for all the tasks it runs."""

    name = _PLUGIN
    idempotent = True  # a cluster joined again keeps its workers' models

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self.pool: Optional[PredictorPool] = None
        self.generators: dict = {}
        self.lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {"size": self.size}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["size"])

    def setup(self, worker: Any = None) -> None:
        from sam_core.runtime import keep_freed_memory

        keep_freed_memory()  # Dask workers trim freed memory eagerly; the encoder would fault it back in
        self.pool = PredictorPool(size=self.size)

    def teardown(self, worker: Any = None) -> None:
        self.generators.clear()
        if self.pool is not None:
            self.pool.clear()

    def generator(self, spec: GeneratorSpec) -> Any:
        with self.lock:
            if spec not in self.generators:
                self.generators[spec] = spec.build(self.pool)
            return self.generators[spec]


def worker_generator(spec: Any) -> Any:
    """The generator for ``spec`` on this Dask worker, built on first use on the worker's pool (one model
    per worker); outside a worker, a new one. Any other object is a generator already and is returned."""
    if not isinstance(spec, GeneratorSpec):
        return spec
    try:
        from dask.distributed import get_worker

        plugin = get_worker().plugins.get(_PLUGIN)
    except (ImportError, ValueError):  # not running on a Dask worker
        plugin = None
    if plugin is None:
        return spec.build()
    return plugin.generator(spec)


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
    client.register_plugin(WorkerModels(), name=_PLUGIN)
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
