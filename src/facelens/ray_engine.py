"""``facelens predict --engine ray``: the batch prediction of ``facelens.infer.batch`` spread over a Ray cluster.

The driver (this process) expands the inputs exactly as the local engine does, turns the list
into a Ray dataset of file paths, and streams it through one actor-pool stage: each actor loads
the models once and runs ``Analyzer.analyze_many`` (decode, detect, crop, both models) on a
batch of files, returning each photo's ``facelens/1`` record as JSON text. The driver dedupes
by input path and writes the records as atomic shards (``facelens.infer.shards``).

Why one fused stage by default rather than detection feeding a separate model pool: a face's
crops (~75 KB) would go through the object store, and on small machines a second pool of
processes fights the first for the cores; measured slower here (``layout="split"`` keeps that
variant for GPU clusters; ``benchmarks/bench_ray.py``, docs/scale-out.md). Within an actor, one
prefetch thread still overlaps decoding and detection with the model calls, as the local
engine does with two.

Why the workers open the photos themselves (by absolute path) instead of receiving bytes read
by the driver: the photos are the bulk of the data, so they must not all pass through one
machine; on a cluster they must be at the same paths on every node (a shared volume). The ONNX
models, ~12 MB, are the opposite case: the driver checks them and sends their bytes
(``ship_models``), so worker nodes need no model files. The output folder lives on the driver.

Through Ray Client (``ray://``), whose process cannot run Ray Data's executor, the dataset runs
in a ``ClusterDriver`` actor and the records come back batch by batch.

Ray is imported only here, and only when this engine runs: the local engine never loads it.

Why beside ``api`` rather than in ``infer/``: every actor runs an ``Analyzer``, so this engine sits
on top of the public API, as the CLI and the service do (imports run downhill, tests/test_layering.py).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facelens.errors import DeviceError, FacelensError, ModelLoadError
from facelens.infer.batch import BatchSummary
from facelens.infer.shards import ERRORS_FILE, ShardWriter

RAY_INSTALL_HINT = "pip install 'facelens[ray]'"
#: Files handed to an actor per call: small enough to spread 2 x workers batches over short runs and
#: to lose little on a retry, big enough that Ray's per-task overhead (~ms) stays below 1% of the work.
DEFAULT_FILES_PER_BATCH = 32
#: A worker process that dies (OOM kill, preempted node) is restarted and its batch re-run this many times.
MAX_RETRIES = 3


def require_ray():
    """Import Ray (and Ray Data), or raise FacelensError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise FacelensError(f"--engine ray needs Ray, which is not installed: {RAY_INSTALL_HINT}") from exc
    return ray


@dataclass
class RayOptions:
    """How to run on Ray; the CLI's ``--ray-address``, ``--workers``, ``--gpus-per-worker``, ``--format``, ``--shard-size``."""

    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    fmt: str = "jsonl"
    shard_size: int = 1000
    files_per_batch: int = DEFAULT_FILES_PER_BATCH
    #: Prefetch threads inside each actor (decode + detect of the next photos while the models run).
    prepare_threads: int = 1
    #: "fused": one actor pool does decode, detection, crops and models. "split": decode, detection and
    #: crops in one pool, the models in another, crops passed through the object store; for GPU
    #: clusters, where the models want few GPU actors and detection many CPU ones (docs/scale-out.md).
    layout: str = "fused"
    flush_seconds: float = 60.0
    progress: bool = True
    #: Testing aid for the retry path: the first actor to process a batch creates this file and kills
    #: its own process (os._exit), as an OOM kill would. Never set in normal use.
    kill_once_marker: str | None = None


@dataclass
class ModelSpec:
    """What each actor needs to build its Analyzer: plain values, so it pickles to any node."""

    age_model: str | bool
    eye_model: str | bool
    backend: str = "auto"
    device: str = "cpu"
    detect_max_side: int | None = None
    batch_size: int = 32
    onnx_threads: int = 1
    #: The ONNX model files' bytes by path (``ship_models``): the workers load these, not their own disk.
    shipped: dict[str, bytes] = field(default_factory=dict, repr=False)


def resolve_models(age_model: Path | None, eye_model: Path | None, no_age: bool, no_eyes: bool) -> tuple[str | bool, str | bool]:
    """Absolute model paths (False to skip a task), decided once on the driver so every worker loads the same files.

    Same defaults as ``Analyzer``: the shipped model when none is given, and no such task when no
    shipped model exists; a given path that does not exist is an error naming it.
    """
    from facelens.api import default_model_path

    out: list[str | bool] = []
    for task, given, skip in (("age", age_model, no_age), ("eyes", eye_model, no_eyes)):
        if skip:
            out.append(False)
            continue
        path = Path(given) if given is not None else default_model_path(task)
        if not path.is_file():
            if given is not None:
                raise ModelLoadError(f"{path}: model file not found")
            out.append(False)
            continue
        out.append(str(path.resolve()))
    if out == [False, False]:
        raise ModelLoadError("no models to run: none given and no shipped defaults found")
    return out[0], out[1]


def _open_model(path: str | bool, task: str, spec: ModelSpec):
    """A loaded predictor for ``path``; ONNX files get ``spec.onnx_threads`` threads (the actor's CPU share).

    Why not leave it to ``Analyzer``: it gives ONNX Runtime every core of the machine, and with one
    actor per core two actors' thread pools would each try to use both cores.
    """
    if path is False:
        return False
    if _is_onnx(path, spec):
        from facelens.infer.predictor import OnnxPredictor

        if path not in spec.shipped:
            pred = OnnxPredictor(Path(path), threads=spec.onnx_threads, spin=False, device=spec.device)
        else:  # the driver's copy, written where this process can load it, removed once loaded
            folder = Path(tempfile.mkdtemp(prefix="facelens-models-"))
            local = folder / Path(path).name
            try:
                local.write_bytes(spec.shipped[path])
                pred = OnnxPredictor(local, threads=spec.onnx_threads, spin=False, device=spec.device)
            except FacelensError as exc:  # name the file the user gave, not the temporary copy
                raise type(exc)(str(exc).replace(str(local), f"{path} (sent by the driver)")) from exc
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        if pred.model_meta.task != task:
            raise ModelLoadError(f"{path}: is a {pred.model_meta.task!r} model, expected a {task!r} model")
        return pred
    return path  # torch checkpoints and explicit backends: the Analyzer's own loading


def _is_onnx(path: str | bool, spec: ModelSpec) -> bool:
    return path is not False and spec.backend in ("auto", "onnx") and str(path).endswith(".onnx")


def ship_models(spec: ModelSpec) -> ModelSpec:
    """Check the ONNX models on the driver and attach their bytes to ``spec`` for the workers.

    Why: a worker node has its own disk, where the driver's model paths (the shipped models beside
    its facelens, or a file on a laptop) do not exist; the files are ~12 MB, cheap to send once per
    actor. Loading them here first also turns a corrupt or wrong-task model into the usual one-line
    error before any Ray process starts. Torch checkpoints (``--backend torch``) are not shipped:
    they must be at the same path on every node.
    """
    check = ModelSpec(**{**vars(spec), "device": "cpu", "shipped": {}})
    shipped = {}
    for path, task in ((spec.age_model, "age"), (spec.eye_model, "eyes")):
        if _is_onnx(path, spec):
            _open_model(path, task, check)
            shipped[path] = Path(path).read_bytes()
    return ModelSpec(**{**vars(spec), "shipped": shipped})


def build_analyzer(spec: ModelSpec):
    """The Analyzer an actor (or the benchmark's local baseline) runs."""
    from facelens.api import Analyzer

    return Analyzer(age_model=_open_model(spec.age_model, "age", spec), eye_model=_open_model(spec.eye_model, "eyes", spec),
                    backend=spec.backend, device=spec.device, detect_max_side=spec.detect_max_side)


class PredictWorker:
    """Ray Data actor: loads the models once, then turns batches of file paths into ``facelens/1`` records.

    Every input gets exactly one record; a broken file becomes a record with ``error`` set (the
    Analyzer never raises for one), so a bad photo cannot fail a batch and trigger retries.
    """

    def __init__(self, spec: ModelSpec, prepare_threads: int = 1, kill_once_marker: str | None = None) -> None:
        # libgomp (yuface) must not spin idle threads against the other actor's cores (tests/conftest.py).
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        self.spec = spec
        self.analyzer = build_analyzer(spec)
        self.prepare_threads = prepare_threads
        self.kill_once_marker = kill_once_marker

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        labels = [str(x) for x in batch["path"]]
        files = [Path(str(x)) for x in batch["file"]]
        if self.kill_once_marker:
            marker = Path(self.kill_once_marker)
            try:
                marker.touch(exist_ok=False)
            except FileExistsError:
                pass
            else:
                os._exit(137)  # like an OOM kill: no cleanup, no exception for Ray to report
        results = self.analyzer.analyze_many(files, names=labels, batch_size=self.spec.batch_size,
                                             workers=self.prepare_threads)
        records = [json.dumps(r.to_dict()) for r in results]
        return {"path": np.array(labels, dtype=object), "record": np.array(records, dtype=object)}


class PrepareWorker:
    """``layout="split"``, stage 1: decode, detect and cut the crops; the prepared photos go on pickled.

    It loads the models too (on the CPU), only for what cropping reads from them: input sizes
    and the face template.
    """

    def __init__(self, spec: ModelSpec) -> None:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        self.analyzer = build_analyzer(ModelSpec(**{**vars(spec), "device": "cpu"}))

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import pickle

        import numpy as np

        labels = [str(x) for x in batch["path"]]
        prepared = [pickle.dumps(self.analyzer._prepare(Path(str(f)), label), protocol=pickle.HIGHEST_PROTOCOL)
                    for f, label in zip(batch["file"], labels, strict=True)]
        return {"path": np.array(labels, dtype=object), "prepared": np.array(prepared, dtype=object)}


class ModelWorker:
    """``layout="split"``, stage 2: the age and eye models on the crops of stage 1, faces batched across photos."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.analyzer = build_analyzer(spec)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import pickle

        import numpy as np

        items = ((True, pickle.loads(b)) for b in batch["prepared"])
        results = self.analyzer._batched(items, self.spec.batch_size, with_crops=False)
        return {"path": np.array([str(x) for x in batch["path"]], dtype=object),
                "record": np.array([json.dumps(r.to_dict()) for r in results], dtype=object)}


def _quiet_ray_logs() -> None:
    """Keep Ray Data's per-run INFO lines and progress bars off the terminal: facelens prints its own summary."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    logging.getLogger("ray").setLevel(logging.WARNING)
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its warnings here are about the progress bars turned off


def connect(address: str | None, workers: int | None) -> tuple[bool, str]:
    """Join the cluster at ``address`` / $RAY_ADDRESS, or start a private local runtime; (started_here, where).

    The local runtime listens on the loopback interface only, without the dashboard, with
    ``workers`` (default: all) CPUs, and is shut down at the end of the run. An already
    initialised Ray (a notebook, the tests) is used as it is and left running.
    """
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not address:
        # Must be set before Ray is imported: it makes Ray take 127.0.0.1 as this node's address, so
        # the GCS, raylet and workers bind to loopback, not to every interface.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports from a private runtime
    ray = require_ray()
    if ray.is_initialized():
        return False, "the Ray runtime already running in this process"
    if address:
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
        except Exception as exc:  # ConnectionError, TimeoutError, ray's own errors for bad addresses
            raise FacelensError(f"--ray-address {address}: cannot join the Ray cluster ({type(exc).__name__}: {exc})") from exc
        return True, f"the Ray cluster at {address}"
    cpus = workers or os.cpu_count() or 1
    # Ray imported earlier in this process read the variable above already; its module constant says the same.
    import ray._private.ray_constants as ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
    # address="local": always a new runtime; without it Ray joins any cluster `ray start` left on this machine
    # (/tmp/ray/ray_current_cluster), even a dead one.
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
             object_store_memory=256 * 1024**2, logging_level=logging.ERROR)
    node_ip = ray.util.get_node_ip_address()
    if not node_ip.startswith("127."):
        ray.shutdown()
        raise FacelensError(f"the local Ray runtime took the address {node_ip}, not the loopback one; "
                            "set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before starting, or give --ray-address")
    return True, f"a local Ray runtime ({cpus} CPUs, loopback only)"


def _default_workers(ray, opts: RayOptions) -> int:
    """``--workers``, else one actor per ``cpus_per_worker`` CPUs (or GPU share) the cluster has."""
    if opts.workers:
        return opts.workers
    res = ray.cluster_resources()
    if opts.gpus_per_worker > 0:
        return max(1, int(res.get("GPU", 0) / opts.gpus_per_worker))
    return max(1, int(res.get("CPU", 1) / opts.cpus_per_worker))


def check_gpus(ray, opts: RayOptions, where: str) -> None:
    """Refuse ``--gpus-per-worker`` on a cluster without GPUs: Ray would wait for them forever."""
    if opts.gpus_per_worker < 0:
        raise FacelensError(f"--gpus-per-worker must be >= 0, got {opts.gpus_per_worker}")
    if opts.gpus_per_worker > 0 and ray.cluster_resources().get("GPU", 0) <= 0:
        raise DeviceError(f"--gpus-per-worker {opts.gpus_per_worker}: {where} has no GPU; "
                          "drop --gpus-per-worker to run on CPUs")


def _root_cause(exc: BaseException) -> str:
    """The last line of a Ray error (it wraps the worker's traceback), which names the file and the problem."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


def run_ray(spec: ModelSpec, paths: list[Path], out: Path, opts: RayOptions, resume: bool = False) -> BatchSummary:
    """Predict ``paths`` on Ray into the shard folder ``out``; see the module docstring.

    Ctrl-C commits the records received so far as a last shard and returns with
    ``summary.interrupted`` set, as the local engine does, so ``--resume`` continues.
    """
    if opts.files_per_batch < 1:
        raise FacelensError(f"files per batch must be >= 1, got {opts.files_per_batch}")
    spec = ship_models(spec)
    writer = ShardWriter.open(out, opts.fmt, resume=resume, shard_size=opts.shard_size, flush_seconds=opts.flush_seconds)
    todo = [p for p in paths if str(p) not in writer.done]
    summary = BatchSummary(total=len(paths), skipped=len(paths) - len(todo), out=str(out),
                           errors_file=str(out / ERRORS_FILE))
    t0 = time.perf_counter()
    started, where = connect(opts.address, opts.workers)
    ray = require_ray()
    try:
        check_gpus(ray, opts, where)
        if todo:
            _stream(ray, spec, todo, writer, summary, opts)
    finally:
        if started:
            ray.shutdown()
    if not summary.interrupted:
        writer.finish(len(paths), {"engine": "ray", "duplicates_dropped": writer.duplicates_dropped})
    summary.seconds = time.perf_counter() - t0
    return summary


def _map(ds, spec: ModelSpec, workers: int, per_batch: int, opts: RayOptions):
    """The actor-pool stage(s): ``workers`` actors per stage, each restarted and its batch re-run after a crash."""
    import ray.data

    if opts.layout == "split":
        # Each worker's CPU share is split between its two actors; a GPU share goes to the model actor.
        half = opts.cpus_per_worker / 2
        prepared = ds.map_batches(PrepareWorker, fn_constructor_kwargs={"spec": spec},
                                  compute=ray.data.ActorPoolStrategy(size=workers), batch_size=per_batch,
                                  batch_format="numpy", num_cpus=half, max_restarts=MAX_RETRIES,
                                  max_task_retries=MAX_RETRIES)
        return prepared.map_batches(ModelWorker, fn_constructor_kwargs={"spec": spec},
                                    compute=ray.data.ActorPoolStrategy(size=workers), batch_size=per_batch,
                                    batch_format="numpy", num_cpus=half, num_gpus=opts.gpus_per_worker or None,
                                    max_restarts=MAX_RETRIES, max_task_retries=MAX_RETRIES)
    if opts.layout != "fused":
        raise FacelensError(f"layout must be fused or split, got {opts.layout!r}")
    return ds.map_batches(
        PredictWorker,
        fn_constructor_kwargs={"spec": spec, "prepare_threads": opts.prepare_threads,
                               "kill_once_marker": opts.kill_once_marker},
        compute=ray.data.ActorPoolStrategy(size=workers),
        batch_size=per_batch,
        batch_format="numpy",
        num_cpus=opts.cpus_per_worker,
        num_gpus=opts.gpus_per_worker or None,
        # Bounded, unlike Ray Data's default (-1, forever): a photo that crashes its worker every time
        # (a decoder segfault) then fails the run with a message instead of looping.
        max_restarts=MAX_RETRIES,
        max_task_retries=MAX_RETRIES,
    )


def _through_ray_client(ray) -> bool:
    """True when this process is connected through Ray Client (``ray://``) rather than being a cluster driver."""
    try:
        return bool(ray.util.client.ray.is_connected())
    except AttributeError:  # pragma: no cover - Ray layouts without the client module
        return False


def _record_batches(spec: ModelSpec, items: list[dict[str, str]], workers: int, opts: RayOptions):
    """Build the dataset and yield each finished batch's records as a list of JSON texts (in finishing order)."""
    import ray.data

    _quiet_ray_logs()
    # A short run is cut so every worker gets a share; a long one in batches of files_per_batch.
    per_batch = max(1, min(opts.files_per_batch, -(-len(items) // workers)))
    ds = ray.data.from_items(items, override_num_blocks=-(-len(items) // per_batch))
    with warnings.catch_warnings():
        # Ray 2.60 warns that extra remote args (max_restarts, max_task_retries) move to named parameters in 2.64;
        # they are still honoured, and without them Ray Data retries a crashing batch forever.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated", category=Warning)
        results = _map(ds, spec, workers, per_batch, opts)
    for batch in results.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
        yield [str(t) for t in batch["record"]]


class ClusterDriver:
    """Runs the dataset inside the cluster for a Ray Client process, one batch of records per ``next`` call.

    Why an actor polled batch by batch: Ray Client supports neither running Ray Data's executor in the
    client nor streaming generators; an actor keeps the iterator between calls.
    """

    def __init__(self, spec: ModelSpec, items: list[dict[str, str]], workers: int, opts: RayOptions) -> None:
        self._batches = _record_batches(spec, items, workers, opts)

    def next(self) -> list[str] | None:
        """The next finished batch's records as JSON texts; None when every batch was returned."""
        return next(self._batches, None)


def _through_cluster_driver(ray, spec: ModelSpec, items: list[dict[str, str]], workers: int, opts: RayOptions):
    driver = ray.remote(num_cpus=0, max_restarts=0)(ClusterDriver).remote(spec, items, workers, opts)
    try:
        while (batch := ray.get(driver.next.remote())) is not None:
            yield batch
    finally:
        ray.kill(driver)


def _stream(ray, spec: ModelSpec, todo: list[Path], writer: ShardWriter, summary: BatchSummary, opts: RayOptions) -> None:
    """Run the dataset and write every record as it arrives (the driver is the only writer)."""
    from tqdm import tqdm

    _quiet_ray_logs()
    workers = _default_workers(ray, opts)
    spec.onnx_threads = max(1, round(opts.cpus_per_worker))
    if opts.gpus_per_worker > 0:
        # Ray gives each actor its GPU through CUDA_VISIBLE_DEVICES, so there it is always cuda:0 (whatever --device said).
        spec.device = "cuda:0"
    items = [{"path": str(p), "file": str(p.absolute())} for p in todo]
    if _through_ray_client(ray):
        # Ray Data 2.60 cannot execute a dataset from a Ray Client (ray://) process (its executor needs the
        # core worker the client lacks), so the dataset runs in an actor on the cluster, which hands the
        # records back here batch by batch; the shards are still written on this machine.
        batches = _through_cluster_driver(ray, spec, items, workers, opts)
    else:
        batches = _record_batches(spec, items, workers, opts)
    with tqdm(total=len(todo), unit="photo", desc=f"predict (ray, {workers} workers)", disable=not opts.progress) as bar:
        try:
            for batch in batches:
                for text in batch:
                    rec = json.loads(str(text))
                    if not writer.add(rec):
                        continue  # a retried batch sent this input again: it already has its record
                    summary.processed += 1
                    summary.faces += len(rec.get("faces") or [])
                    if rec.get("error"):
                        summary.failed += 1
                    else:
                        summary.ok += 1
                        summary.no_face += not rec.get("faces")
                    bar.update(1)
        except KeyboardInterrupt:
            summary.interrupted = True
        except FacelensError:
            raise
        except Exception as exc:  # a worker that cannot start (model file missing on a node, no CUDA provider...)
            writer.commit()  # keep what was done: --resume continues from it
            raise FacelensError(f"the Ray run failed: {_root_cause(exc)}; finished shards in {writer.out} are kept, "
                                "fix the cause and run again with --resume") from exc
        writer.commit()
