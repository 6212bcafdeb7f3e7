"""The engine process: sam_core behind a small JSON-lines protocol on standard streams.

The QGIS plugin keeps QGIS's own Python free of torch, rasterio and numpy by running all model work in
this process (``python -m sam_core engine``). The same protocol can run over any pair of byte streams
(a pipe, an SSH session, a socket), so an engine can also live on another machine.

Protocol (version :data:`PROTOCOL_VERSION`), one UTF-8 JSON object per line:

Requests (stdin)::

    {"id": "7", "cmd": "segment_at", "lane": "interactive", "params": {...}}
    {"id": "8", "cmd": "cancel", "params": {"target": "7"}}
    {"id": "9", "cmd": "shutdown"}

Events (stdout)::

    {"id": null, "event": "ready", "protocol": 1, "version": "0.1.0", "pid": 123}   (once, at start)
    {"id": "7", "event": "progress", "done": 2, "total": 9, "message": "tile 2/9"}
    {"id": "7", "event": "result", "result": {...}}
    {"id": "7", "event": "error", "kind": "user" | "cancelled" | "internal", "message": "..."}

Every request ends with exactly one ``result`` or ``error`` event, whatever it holds: events are strict
JSON, so an id that strict JSON cannot carry (``NaN``, ``Infinity``, sent by a lenient writer) comes back
as text (``"NaN"``); a parameter of the wrong JSON type is a ``user`` error naming the parameter; a
lane is a name of at most 64 characters, at most :data:`MAX_LANES` of them. ``kind: "user"`` carries a
:class:`~sam_core.errors.SamError` message written for the user; ``"cancelled"`` means the request
stopped between tiles after a ``cancel``; ``"internal"`` is a bug (its traceback goes to stderr).
``cancel`` and ``shutdown`` are handled at once; other requests run in order within their ``lane``
(default ``"main"``), and lanes run side by side, so a long Processing job does not hold back map clicks.

The engine keeps its models in one :class:`~sam_core.pool.PredictorPool` (a predictor per model, device
and embedding cache, all requests alike), so the clicks after the first on an encoded tile only run the
mask decoder and an automatic-mask run does not load the model again.
End of input (the client went away) cancels running requests and stops the engine.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import queue
import sys
import threading
import traceback
from pathlib import Path
from typing import IO, Any, Callable, Optional

from sam_core.errors import SamError
from sam_core.progress import CancelToken, Cancelled

PROTOCOL_VERSION = 1

# Bytes of tile embeddings an automatic-mask run keeps in memory (for the seam repair's windows).
_RUN_CACHE_BYTES = 256 << 20
# Lanes one engine runs side by side (one thread each); a request naming another lane is refused.
MAX_LANES = 16

Params = dict[str, Any]
Emit = Callable[[dict], None]

def _setting_names(*groups: str) -> tuple[str, ...]:
    """Names of the settings fields in ``groups``: "tiling" (all of TilingSettings), "shared" (the tiling
    settings every geo command takes), "find" (those of find) and "output" (OutputSettings)."""
    from sam_core.geo.settings import FIND_TILING, SHARED_TILING, OutputSettings, TilingSettings, option_fields

    chosen = {"tiling": option_fields(TilingSettings), "shared": option_fields(TilingSettings, SHARED_TILING),
              "find": option_fields(TilingSettings, FIND_TILING), "output": option_fields(OutputSettings)}
    return tuple(f.name for group in groups for f in chosen[group])


# Parameters each geo command accepts, from JSON names to the geo function's keyword arguments; the
# settings objects' fields (sam_core.geo.settings) join them by name, with their types.
_MODEL_OPTIONS = ("model", "checkpoint", "device")
_COMMAND_PARAMS = {
    "automask_raster": ("raster", "output", "generator_params") + _MODEL_OPTIONS + _setting_names("tiling", "output"),
    "segment_prompts": ("raster", "prompts", "output", "label_field") + _MODEL_OPTIONS
                       + _setting_names("shared", "output"),
    "encode_raster": ("raster", "cache_dir") + _MODEL_OPTIONS + _setting_names("shared"),
    "segment_at": ("raster", "points", "labels", "box", "crs") + _MODEL_OPTIONS + _setting_names("shared"),
    "find_raster": ("raster", "output", "text", "exemplars", "exemplar_crs", "threshold") + _MODEL_OPTIONS
                   + _setting_names("find", "output"),
    "models": (),
    "concept_models": (),
    "hello": (),
    "info": (),
}
_REQUIRED = {
    "automask_raster": ("raster", "output"),
    "segment_prompts": ("raster", "prompts", "output"),
    "encode_raster": ("raster",),
    "segment_at": ("raster", "points", "labels"),
    "find_raster": ("raster", "output"),
}


def _jsonable(value: Any) -> Any:
    """Turn results (dataclasses, paths, tuples, numpy scalars) into JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return value.item()
    if hasattr(value, "tolist") and callable(value.tolist):  # small arrays
        return value.tolist()
    return value


# -- parameter types ------------------------------------------------------------------------------------
# Each parameter's JSON type is checked before a command runs, so that a wrong type is a user error that
# names the parameter (never an internal error deep inside). Values of the right type are checked further
# by the functions they reach (ranges, files, CRSs).


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value: Any) -> bool:
    return _number(value) and float(value).is_integer()


def _numbers(count: Optional[int]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and (count is None or len(v) == count) and all(_number(x) for x in v)


def _text(value: Any) -> bool:
    return isinstance(value, str) and value != "" and "\0" not in value


def _points(value: Any) -> bool:
    return isinstance(value, list) and all(_numbers(2)(p) for p in value)


def _labels(value: Any) -> bool:
    return isinstance(value, list) and all(_whole(v) and v in (0, 1) for v in value)


def _bands(value: Any) -> bool:
    return _text(value) or (isinstance(value, list) and len(value) in (1, 3) and all(_whole(b) and b >= 1 for b in value))


def _prompt_groups(value: Any) -> bool:
    if _text(value):
        return True
    allowed = {"points", "labels", "box", "crs", "name"}
    return isinstance(value, list) and bool(value) and all(
        isinstance(g, dict) and set(g) <= allowed
        and _points(g.get("points", [])) and _labels(g.get("labels", [1] * len(g.get("points", []))))
        and (g.get("box") is None or _numbers(4)(g["box"])) and (g.get("crs") is None or _crs(g["crs"]))
        and (g.get("name") is None or isinstance(g["name"], (str, int)) and not isinstance(g["name"], bool))
        for g in value
    )


def _exemplars(value: Any) -> bool:
    return _text(value) or (isinstance(value, list) and all(_numbers(4)(box) for box in value))


def _crs(value: Any) -> bool:
    return _text(value) or (_whole(value) and value > 0)


def _generator_params(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    names = _generator_names()
    return all(key in names and (isinstance(v, bool) or _number(v)) for key, v in value.items())


def _generator_names() -> tuple[str, ...]:
    import inspect

    from sam_core.automask import AutomaticMaskGenerator

    skip = {"self", "predictor", "point_grids", "output_mode"}
    return tuple(n for n in inspect.signature(AutomaticMaskGenerator.__init__).parameters if n not in skip)


_PATH = (_text, "a file path (text)")
_PARAM_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "raster": _PATH,
    "output": _PATH,
    "checkpoint": _PATH,
    "cache_dir": (_text, "a folder path (text)"),
    "model": (_text, "a model name (text)"),
    "device": (_text, "a device name (text), e.g. cpu or cuda"),
    "label_field": (_text, "a field name (text)"),
    "prompts": (_prompt_groups, "a vector file path, or a list of prompt groups "
                                "{points: [[x, y], ...], labels: [1, 0, ...], box: [xmin, ymin, xmax, ymax], crs}"),
    "points": (_points, "a list of [x, y] pairs of numbers"),
    "labels": (_labels, "a list of 1 (positive) and 0 (negative)"),
    "box": (_numbers(4), "four numbers [xmin, ymin, xmax, ymax]"),
    "crs": (_crs, "a CRS as text (e.g. 'EPSG:4326') or an EPSG code"),
    "text": (lambda v: isinstance(v, str) and "\0" not in v, "a word or short phrase (text)"),
    "exemplars": (_exemplars, "a vector file path (points or polygons, any CRS), or a list of boxes "
                              "[xmin, ymin, xmax, ymax] in map coordinates"),
    "exemplar_crs": (_crs, "a CRS as text (e.g. 'EPSG:4326') or an EPSG code"),
    "threshold": (_number, "a score between 0 and 1"),
    "generator_params": (_generator_params, "an object of automatic mask generator parameters (numbers or true/false)"),
}
# JSON types of the settings fields, by their kind (sam_core.geo.settings.KINDS)
_KIND_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "whole": (_whole, "a whole number"),
    "number": (_number, "a number"),
    "size": (lambda v: _number(v) or _numbers(2)(v), "a pixel size (a number, or [x, y] numbers)"),
    "box": (_numbers(4), "four numbers [xmin, ymin, xmax, ymax]"),
    "bands": (_bands, "band numbers as text ('4,3,2') or a list of 1 or 3 band numbers"),
    "switch": (lambda v: isinstance(v, bool), "true or false"),
}


def _setting_kinds() -> dict[str, str]:
    from sam_core.geo.settings import OutputSettings, TilingSettings, option_fields

    return {f.name: f.metadata["kind"] for cls in (TilingSettings, OutputSettings) for f in option_fields(cls)}


_PARAM_TYPES.update({name: _KIND_TYPES[kind] for name, kind in _setting_kinds().items()})


def _show(value: Any) -> str:
    """A short JSON rendering of a value for error messages."""
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_params(cmd: str, params: Params) -> Params:
    allowed = _COMMAND_PARAMS[cmd]
    unknown = sorted(str(k) for k in set(params) - set(allowed))
    if unknown:
        raise SamError(f"{cmd}: unknown parameter(s) {', '.join(unknown)}; accepted: {', '.join(allowed) or 'none'}")
    missing = [name for name in _REQUIRED.get(cmd, ()) if params.get(name) in (None, "")]
    if missing:
        raise SamError(f"{cmd}: missing parameter(s) {', '.join(missing)}")
    params = {k: v for k, v in params.items() if v is not None}
    for name, value in params.items():
        accepts, description = _PARAM_TYPES[name]
        if not accepts(value):
            if name == "generator_params" and isinstance(value, dict):
                description += f"; known names: {', '.join(_generator_names())}"
            raise SamError(f"{cmd}: parameter {name!r} must be {description}, got {_show(value)}")
    for name, kind in _setting_kinds().items():
        if name in params and kind == "whole":
            params[name] = int(params[name])
        elif name in params and kind == "box":
            params[name] = tuple(float(v) for v in params[name])
    return params


def _wire_id(value: Any) -> Any:
    """A request id as it can travel back in strict JSON: as sent when it can, else as text (``NaN``)."""
    try:
        json.dumps(value, allow_nan=False)
        return value
    except (ValueError, TypeError):
        return json.dumps(value, default=str)


class Engine:
    """Runs requests; keeps predictors (and their embedding caches) between requests."""

    def __init__(self, cache_dir: Optional[str] = None) -> None:
        """``cache_dir``: the on-disk embedding cache shared by every predictor (default
        ``<sam_core home>/embeddings``), so that tiles encoded once (``encode_raster``, earlier sessions)
        are not encoded again."""
        from sam_core.pool import PredictorPool

        self.cache_dir = cache_dir
        self.pool = PredictorPool(size=2)
        self._concept: Optional[tuple[tuple, Any]] = None  # the last concept predictor, with its key
        self._concept_lock = threading.Lock()

    # -- commands -------------------------------------------------------------------------------
    def run(self, cmd: str, params: Params, progress: Callable[[int, int, str], None],
            cancel: CancelToken) -> Any:
        """Run one request and return its JSON-able result; raises SamError / Cancelled."""
        if cmd not in _COMMAND_PARAMS:
            raise SamError(f"unknown command {cmd!r}; known: {', '.join(sorted(_COMMAND_PARAMS))}, cancel, shutdown")
        params = _check_params(cmd, params)
        return _jsonable(getattr(self, f"_cmd_{cmd}")(params, progress, cancel))

    def _cmd_hello(self, params: Params, progress, cancel) -> dict:
        import sam_core

        return {"protocol": PROTOCOL_VERSION, "version": sam_core.__version__, "pid": os.getpid(),
                "python": sys.executable}

    def _cmd_info(self, params: Params, progress, cancel) -> dict:
        import torch

        from sam_core.zoo import available_devices

        info = self._cmd_hello(params, progress, cancel)
        info.update(torch=torch.__version__, devices=available_devices(),
                    models=self._cmd_models(params, progress, cancel))
        return info

    def _cmd_models(self, params: Params, progress, cancel) -> Any:
        from sam_core.zoo import list_models

        return list_models()

    def _cmd_concept_models(self, params: Params, progress, cancel) -> list[str]:
        from sam_core.concepts import concept_models

        return concept_models()

    def _cmd_find_raster(self, params: Params, progress, cancel) -> Any:
        from sam_core.geo.find import find_raster
        from sam_core.geo.settings import OutputSettings, TilingSettings, pop_settings

        predictor = self.concept_predictor(params.pop("model", None), params.pop("checkpoint", None),
                                           params.pop("device", None))
        return find_raster(params.pop("raster"), params.pop("output"), tiling=pop_settings(TilingSettings, params),
                           polygons=pop_settings(OutputSettings, params), predictor=predictor,
                           progress=progress, cancel=cancel, **params)

    def _cmd_automask_raster(self, params: Params, progress, cancel) -> Any:
        from sam_core import geo
        from sam_core.geo.settings import GeneratorSpec, OutputSettings, TilingSettings, pop_settings

        # the model comes from this engine's pool (loaded once for clicks and runs alike); tiles of a run
        # are not kept in the on-disk embedding cache
        spec = self.spec(params.pop("model", None), params.pop("checkpoint", None), params.pop("device", None))
        generator = GeneratorSpec.create(spec.with_cache(None, _RUN_CACHE_BYTES),
                                         params=params.pop("generator_params", None)).build(self.pool)
        return geo.automask_raster(params.pop("raster"), params.pop("output"), generator=generator,
                                   tiling=pop_settings(TilingSettings, params),
                                   polygons=pop_settings(OutputSettings, params),
                                   progress=progress, cancel=cancel, **params)

    def _cmd_segment_prompts(self, params: Params, progress, cancel) -> Any:
        from sam_core import geo
        from sam_core.geo.settings import OutputSettings, TilingSettings, pop_settings

        predictor = self.predictor(params.pop("model", None), params.pop("checkpoint", None),
                                   params.pop("device", None))
        return geo.segment_prompts(params.pop("raster"), params.pop("prompts"), params.pop("output"),
                                   tiling=pop_settings(TilingSettings, params),
                                   polygons=pop_settings(OutputSettings, params),
                                   predictor=predictor, progress=progress, cancel=cancel, **params)

    def _cmd_encode_raster(self, params: Params, progress, cancel) -> dict:
        from sam_core import geo
        from sam_core.geo.settings import TilingSettings, pop_settings

        predictor = self.predictor(params.pop("model", None), params.pop("checkpoint", None),
                                   params.pop("device", None), params.pop("cache_dir", None))
        tiles = geo.encode_raster(params.pop("raster"), tiling=pop_settings(TilingSettings, params),
                                  predictor=predictor, progress=progress, cancel=cancel, **params)
        return {"tiles": tiles}

    def _cmd_segment_at(self, params: Params, progress, cancel) -> dict:
        from sam_core import geo
        from sam_core.geo.settings import TilingSettings, pop_settings

        predictor = self.predictor(params.pop("model", None), params.pop("checkpoint", None),
                                   params.pop("device", None))
        tiling = pop_settings(TilingSettings, params)
        box = params.pop("box", None)
        progress(0, 1, "segmenting (the first click on a tile encodes it)")
        polygons = geo.segment_at(params.pop("raster"), params.pop("points"), params.pop("labels"),
                                  None if box is None else tuple(float(v) for v in box),
                                  tiling=tiling, predictor=predictor, **params)
        progress(1, 1, "segmented")
        return {"polygons": polygons}

    # -- state ----------------------------------------------------------------------------------
    def spec(self, model: Optional[str], checkpoint: Optional[str], device: Optional[str],
             cache_dir: Optional[str] = None) -> Any:
        """The :class:`~sam_core.pool.ModelSpec` of a request, with this engine's on-disk embedding cache, at
        the plugins' precision (``auto``)."""
        from sam_core.models.precision import PLUGIN_PRECISION
        from sam_core.pool import ModelSpec
        from sam_core.weights import home_dir

        directory = str(cache_dir or self.cache_dir or home_dir() / "embeddings")
        return ModelSpec.of(model, checkpoint, device=device, precision=PLUGIN_PRECISION, cache_dir=directory)

    def predictor(self, model: Optional[str], checkpoint: Optional[str], device: Optional[str],
                  cache_dir: Optional[str] = None) -> Any:
        """The predictor for (model, checkpoint, device) from this engine's pool: built once, kept with
        its embedding cache."""
        return self.pool.get(self.spec(model, checkpoint, device, cache_dir))

    def concept_predictor(self, model: Optional[str], checkpoint: Optional[str], device: Optional[str]) -> Any:
        """The :class:`~sam_core.concepts.ConceptPredictor` for (model, checkpoint, device): the last one is
        kept (one SAM 3 model in memory at most), so that repeated queries do not load it again."""
        from sam_core.concepts import ConceptPredictor, load_concept_model

        key = (model, checkpoint, device)
        with self._concept_lock:
            if self._concept is None or self._concept[0] != key:
                self._concept = None  # free the previous model before loading the next
                self._concept = (key, ConceptPredictor(load_concept_model(model, checkpoint, device=device)))
            return self._concept[1]


class _Server:
    """Reads requests, runs them in per-lane worker threads and writes events (thread-safe)."""

    def __init__(self, engine: Engine, instream: IO[bytes], outstream: IO[bytes]) -> None:
        self.engine = engine
        self.instream = instream
        self.outstream = outstream
        self._write_lock = threading.Lock()
        self._tokens: dict[str, CancelToken] = {}
        self._lanes: dict[str, queue.Queue] = {}
        self._threads: list[threading.Thread] = []

    def emit(self, event: dict) -> None:
        """Write one event; one that is not strict JSON (NaN in a result) becomes an internal error event."""
        try:
            text = json.dumps(event, ensure_ascii=False, allow_nan=False)
        except (ValueError, TypeError) as error:
            text = json.dumps({"id": _wire_id(event.get("id")), "event": "error", "kind": "internal",
                               "message": f"internal error in the engine: the {event.get('event')} is not JSON: {error}"})
        line = text.encode("utf-8") + b"\n"
        with self._write_lock:
            try:
                self.outstream.write(line)
                self.outstream.flush()
            except (BrokenPipeError, OSError, ValueError):
                pass  # the client is gone; end of input will stop the engine

    def _error(self, request_id: Any, kind: str, message: str) -> None:
        self.emit({"id": request_id, "event": "error", "kind": kind, "message": message})

    def _execute(self, request_id: Any, cmd: str, params: Params) -> None:
        token = self._tokens.setdefault(str(request_id), CancelToken())

        def progress(done: int, total: int, message: str = "") -> None:
            self.emit({"id": request_id, "event": "progress", "done": int(done), "total": int(total),
                       "message": str(message)})

        try:
            if token.cancelled:
                raise Cancelled("cancelled by the user")
            result = self.engine.run(cmd, params, progress, token)
        except SamError as error:
            self._error(request_id, "user", str(error))
        except Cancelled:
            self._error(request_id, "cancelled", "cancelled by the user")
        except Exception as error:  # a bug: keep serving, report it, log the traceback
            traceback.print_exc(file=sys.stderr)
            sys.stderr.flush()
            self._error(request_id, "internal", f"internal error in the engine: {type(error).__name__}: {error}")
        else:
            self.emit({"id": request_id, "event": "result", "result": result})
        finally:
            self._tokens.pop(str(request_id), None)

    def _lane_worker(self, lane: queue.Queue) -> None:
        while True:
            item = lane.get()
            if item is None:
                return
            try:
                self._execute(*item)
            except BaseException:  # never end the lane: later requests on it would wait for ever
                traceback.print_exc(file=sys.stderr)
                sys.stderr.flush()

    def _submit(self, lane_name: str, request_id: Any, cmd: str, params: Params) -> None:
        lane = self._lanes.get(lane_name)
        if lane is None and len(self._lanes) >= MAX_LANES:
            self._error(request_id, "user", f"too many lanes: at most {MAX_LANES} ({', '.join(sorted(self._lanes))}); "
                                            "reuse one of them")
            return
        if lane is None:
            lane = self._lanes[lane_name] = queue.Queue()
            thread = threading.Thread(target=self._lane_worker, args=(lane,), name=f"lane-{lane_name}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)
        self._tokens.setdefault(str(request_id), CancelToken())
        lane.put((request_id, cmd, params))

    def _cancel_all(self) -> None:
        for token in list(self._tokens.values()):
            token.cancel()

    def serve(self) -> None:
        import sam_core

        self.emit({"id": None, "event": "ready", "protocol": PROTOCOL_VERSION, "version": sam_core.__version__,
                   "pid": os.getpid()})
        try:
            for raw in self.instream:
                if not raw.strip():
                    continue
                try:
                    request = json.loads(raw.decode("utf-8"))
                    if not isinstance(request, dict):
                        raise ValueError("a request is a JSON object")
                except ValueError as error:
                    self._error(None, "user", f"bad request line (not a JSON object): {error}")
                    continue
                request_id = _wire_id(request.get("id"))
                cmd = request.get("cmd")
                params = request.get("params") or {}
                lane = request.get("lane") or "main"
                if not isinstance(params, dict):
                    self._error(request_id, "user", "'params' must be a JSON object")
                elif not (isinstance(lane, str) and len(lane) <= 64):
                    self._error(request_id, "user", f"'lane' must be a name (text of at most 64 characters), got {_show(lane)}")
                elif cmd == "cancel":
                    token = self._tokens.get(str(params.get("target")))
                    if token is not None:
                        token.cancel()
                    self.emit({"id": request_id, "event": "result", "result": {"cancelled": token is not None}})
                elif cmd == "shutdown":
                    self.emit({"id": request_id, "event": "result", "result": {"shutdown": True}})
                    break
                else:
                    self._submit(lane, request_id, str(cmd), params)
        finally:
            self._cancel_all()
            for lane in self._lanes.values():
                lane.put(None)
            for thread in self._threads:
                thread.join()


def serve(instream: IO[bytes], outstream: IO[bytes], engine: Optional[Engine] = None) -> None:
    """Serve requests from ``instream`` until end of input or ``shutdown``; events go to ``outstream``."""
    _Server(engine or Engine(), instream, outstream).serve()


def main(cache_dir: Optional[str] = None) -> int:
    """Entry point of ``python -m sam_core engine``: the protocol on the process's stdin and stdout.

    Anything else that prints to stdout (libraries, warnings) is sent to stderr, so that stdout carries
    protocol lines only.
    """
    from sam_core.runtime import keep_freed_memory

    keep_freed_memory()  # faster encoding on Linux (see sam_core.runtime)
    protocol_out = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    serve(sys.stdin.buffer, protocol_out, Engine(cache_dir))
    return 0
