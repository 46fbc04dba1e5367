"""Command line: a thin Typer front that parses, calls the library, and prints.

Human-readable text by default, ``--json`` for JSON Lines (schema in ``facelens.schema``).
Errors a user can fix are printed as one line naming the file and the problem (exit code 2
for usage errors, 1 when nothing could be processed); never a traceback.
"""

from __future__ import annotations

import inspect
import json
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from facelens.errors import FacelensError
from facelens.train.config import TrainRequest, cross_source_recipe, request_from_config

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Age from face photos and sex from the eye region, as calibrated estimates.")
train_app = typer.Typer(no_args_is_help=True)
evaluate_app = typer.Typer(no_args_is_help=True, help="Evaluate models on a dataset split.")
app.add_typer(train_app, name="train")
app.add_typer(evaluate_app, name="evaluate")

Backend = Annotated[str, typer.Option(help="auto (ONNX Runtime for .onnx), onnx or torch")]
Device = Annotated[str, typer.Option(
    help="auto (a GPU when usable, else the CPU), cpu, cuda or cuda:N; cuda is refused when it cannot be used. "
         "ONNX models on a GPU need the onnxruntime-gpu build: pip install 'facelens\\[gpu]'")]
DetectMaxSide = Annotated[int | None, typer.Option(
    help="detect on photos scaled to this longest side, 64-8192 (default 512); raise it for small faces in big photos")]


def _fail(msg: str, code: int = 2) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _pct(p: float) -> str:
    return f"{100 * p:.1f}%"


def format_result_text(r) -> str:
    """Human-readable lines for one ImageResult."""
    if r.error:
        return f"{r.path}: ERROR {r.error}"
    if not r.faces:
        return f"{r.path}: {r.message or 'no face found'}"
    lines = [f"{r.path}: {len(r.faces)} face{'s' if len(r.faces) != 1 else ''}"]
    for i, f in enumerate(r.faces, 1):
        x, y, w, h = (round(v) for v in f.box)
        parts = [f"  face {i} at x={x} y={y} w={w} h={h} (detection score {f.score:.2f})"]
        if f.age:
            parts.append(f"age {f.age.value:.0f} ({int(f.age.interval * 100)}% interval {f.age.low:.0f}-{f.age.high:.0f})")
        if f.sex:
            parts.append(f"P(female) {_pct(f.sex.p_female)}, P(male) {_pct(f.sex.p_male)} from both eyes"
                         + (f" ({f.sex.caution})" if f.sex.caution else "") + _disagree_text(f.sex))
        lines.append(": ".join(parts[:1]) + (": " + "; ".join(parts[1:]) if parts[1:] else ""))
    return "\n".join(lines)


def _disagree_text(sex) -> str:
    """`` (the eyes disagree: ...)`` when the two eyes point at opposite answers, else empty."""
    if not sex.eyes_disagree:
        return ""
    per_eye = ", ".join(f"{e.side} eye {_pct(e.p_female)}" for e in sex.eyes)
    return f" (the two eyes disagree: P(female) {per_eye}; the combined estimate is unreliable)"


def resume_command(args: list[str]) -> str:
    """The command line that continues an interrupted ``predict --out`` run: the same arguments plus ``--resume``.

    Quoted for a POSIX shell, so paths with spaces or globs paste back as they were given.
    """
    return shlex.join(["facelens", *args, *([] if "--resume" in args else ["--resume"])])


def _analyzer(age_model: Path | None, eye_model: Path | None, backend: str, device: str, no_age: bool = False,
              no_eyes: bool = False, detect_max_side: int | None = None):
    from facelens.api import Analyzer

    return Analyzer(age_model=False if no_age else age_model, eye_model=False if no_eyes else eye_model,
                    backend=backend, device=device, detect_max_side=detect_max_side)


@app.command()
def predict(
    inputs: Annotated[list[str], typer.Argument(help="photos, folders or glob patterns")],
    json_out: Annotated[bool, typer.Option("--json", help="JSON Lines, one object per input")] = False,
    out: Annotated[Path | None, typer.Option(
        help="write results to a .jsonl or .csv file (streamed); with --engine ray, a folder of shards")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue an interrupted --out file: skip inputs already in it")] = False,
    age_model: Annotated[Path | None, typer.Option(help="age model (.onnx or .pt)")] = None,
    eye_model: Annotated[Path | None, typer.Option(help="eye model (.onnx or .pt)")] = None,
    no_age: Annotated[bool, typer.Option("--no-age", help="skip age estimation")] = False,
    no_eyes: Annotated[bool, typer.Option("--no-eyes", help="skip the eye-based sex estimate")] = False,
    batch_size: Annotated[int, typer.Option(help="faces per model call, gathered across photos")] = 32,
    backend: Backend = "auto",
    device: Device = "cpu",
    detect_max_side: DetectMaxSide = None,
    engine: Annotated[str, typer.Option(
        help="local (this process) or ray (a Ray cluster, or a local Ray runtime; --out is then a folder of shards; "
             "needs the ray extra of facelens, see docs/scale-out.md)")] = "local",
    ray_address: Annotated[str | None, typer.Option(
        help="--engine ray: the cluster to join, e.g. ray://head:10001 (default $RAY_ADDRESS, else a local runtime)")] = None,
    workers: Annotated[int | None, typer.Option(
        help="--engine ray: model actors (default: one per CPU, or per GPU share with --gpus-per-worker)")] = None,
    gpus_per_worker: Annotated[float, typer.Option(
        help="--engine ray: GPUs per model actor (0.25 puts 4 on a GPU); the models then run on each actor's GPU "
             "(onnxruntime-gpu), whatever --device says; refused when the cluster has no GPU")] = 0.0,
    out_format: Annotated[str, typer.Option("--format", help="--engine ray: shard format, jsonl or parquet")] = "jsonl",
    shard_size: Annotated[int, typer.Option(help="--engine ray: records per shard file")] = 1000,
    ray_layout: Annotated[str, typer.Option(
        help="--engine ray: fused (one actor pool does everything; fastest on CPUs) or split (detection and crops "
             "in one pool, the models in another: GPU clusters)")] = "fused",
) -> None:
    """Detect every face in photos and estimate its age (80% interval) and sex from its eyes."""
    from facelens.infer.batch import expand_inputs, run_batch

    if engine not in ("local", "ray"):
        _fail(f"--engine must be local or ray, got {engine!r}")
    if engine == "ray":
        _predict_ray(inputs, out, resume, age_model, eye_model, no_age, no_eyes, batch_size, backend, device,
                     detect_max_side, ray_address, workers, gpus_per_worker, out_format, shard_size, ray_layout)
        return
    ray_only = {"--ray-address": ray_address is not None, "--workers": workers is not None,
                "--gpus-per-worker": gpus_per_worker != 0.0, "--format": out_format != "jsonl",
                "--shard-size": shard_size != 1000, "--ray-layout": ray_layout != "fused"}
    if any(ray_only.values()):
        _fail(f"{', '.join(k for k, v in ray_only.items() if v)}: only with --engine ray")
    try:
        analyzer = _analyzer(age_model, eye_model, backend, device, no_age, no_eyes, detect_max_side)
        paths = expand_inputs(inputs)
    except (FacelensError, ValueError) as exc:
        _fail(str(exc))
    if out is not None:
        try:
            summary = run_batch(analyzer, paths, out, resume=resume, batch_size=batch_size)
        except FacelensError as exc:
            _fail(str(exc))
        _finish_batch(summary)
    n_ok = 0
    for r in analyzer.analyze_many(paths, names=[str(p) for p in paths], batch_size=batch_size):
        n_ok += r.error is None
        typer.echo(json.dumps(r.to_dict()) if json_out else format_result_text(r))
    if paths and n_ok == 0:
        raise typer.Exit(1)


def _predict_ray(inputs: list[str], out: Path | None, resume: bool, age_model: Path | None, eye_model: Path | None,
                 no_age: bool, no_eyes: bool, batch_size: int, backend: str, device: str, detect_max_side: int | None,
                 ray_address: str | None, workers: int | None, gpus_per_worker: float, out_format: str,
                 shard_size: int, ray_layout: str) -> None:
    """``predict --engine ray``: the same inputs and records as the local engine, written as shards (docs/scale-out.md)."""
    from facelens.devices import check_device_name
    from facelens.face.detect import check_detect_max_side
    from facelens.infer.batch import expand_inputs
    from facelens.ray_engine import ModelSpec, RayOptions, require_ray, resolve_models, run_ray

    if out is None:
        _fail("--engine ray needs --out FOLDER (it writes shards there)")
    if workers is not None and workers < 1:
        _fail(f"--workers must be >= 1, got {workers}")
    if ray_layout not in ("fused", "split"):
        _fail(f"--ray-layout must be fused or split, got {ray_layout!r}")
    try:
        require_ray()
        dev = check_device_name(device)
        if dev.startswith("cuda") and gpus_per_worker <= 0:
            _fail(f"--device {device} with --engine ray needs --gpus-per-worker (Ray gives GPUs only to actors that ask)")
        check_detect_max_side(detect_max_side)
        age, eyes = resolve_models(age_model, eye_model, no_age, no_eyes)
        paths = expand_inputs(inputs)
        spec = ModelSpec(age_model=age, eye_model=eyes, backend=backend, device=device, detect_max_side=detect_max_side,
                         batch_size=batch_size)
        opts = RayOptions(address=ray_address, workers=workers, gpus_per_worker=gpus_per_worker, fmt=out_format,
                          shard_size=shard_size, layout=ray_layout)
        summary = run_ray(spec, paths, out, opts, resume=resume)
    except (FacelensError, ValueError) as exc:
        _fail(str(exc))
    _finish_batch(summary)


@app.command("predict-eyes")
def predict_eyes(
    crops: Annotated[list[str], typer.Argument(help="single-eye crops (files, folders or globs)")],
    json_out: Annotated[bool, typer.Option("--json", help="JSON Lines, one object per input")] = False,
    eye_model: Annotated[Path | None, typer.Option(
        help="single-eye model (.onnx or .pt); default: the shipped one for single-eye crops")] = None,
    backend: Backend = "auto",
    device: Device = "cpu",
) -> None:
    """P(female) / P(male) for ready-cut eye crops (calibrated probabilities)."""
    from facelens.api import default_model_path
    from facelens.infer.batch import expand_inputs

    try:
        analyzer = _analyzer(None, eye_model or default_model_path("eyes", ready_cut=True), backend, device, no_age=True)
        paths = expand_inputs(crops)
        results = analyzer.predict_eye_crops(paths, names=[str(p) for p in paths])
    except (FacelensError, ValueError) as exc:
        _fail(str(exc))
    for r in results:
        if json_out:
            typer.echo(json.dumps(r.to_dict()))
        elif r.error:
            typer.echo(f"{r.path}: ERROR {r.error}")
        else:
            typer.echo(f"{r.path}: P(female) {_pct(r.p_female)}, P(male) {_pct(1 - r.p_female)}"
                       + (f" (warning: {r.warning})" if r.warning else ""))
    if results and all(r.error for r in results):
        raise typer.Exit(1)


def _finish_batch(summary) -> None:
    """Print a batch run's summary and exit: 130 with the --resume command when interrupted, 1 when nothing worked."""
    typer.echo(summary.text(), err=True)
    if summary.interrupted:
        typer.echo(f"to continue where it stopped, run:\n  {resume_command(sys.argv[1:])}", err=True)
        raise typer.Exit(130)
    raise typer.Exit(0 if summary.processed == 0 or summary.ok > 0 or summary.skipped else 1)


def train_request(task: str, options: dict[str, Any], given: set[str], config: Path | None = None) -> TrainRequest:
    """The request of ``facelens train TASK``: the options' values (``--arch`` -> ``archs``), or with
    ``config`` that run folder's config.json, where only the options in ``given`` (those typed on the
    command line, not defaulted) override the file."""
    fields = {("archs" if k == "arch" else k): v for k, v in options.items()}
    fields["out"] = None if fields.get("out") is None else str(fields["out"])
    if "arch" in given:
        given = given - {"arch"} | {"archs"}
    if config is not None:
        return request_from_config(config, {k: v for k, v in fields.items() if k in given}, task=task)
    missing = [f"--{k}" for k in ("data", "out") if not fields.get(k)]
    if missing:
        raise ValueError(f"{' and '.join(missing)} needed (or --config RUN_DIR/config.json to repeat a run)")
    fields["archs"] = fields.get("archs") or TrainRequest.defaults(task).archs
    return TrainRequest(task=task, **fields)


def _given(ctx: typer.Context) -> set[str]:
    """Names of the options typed on the command line (not left at their defaults)."""
    return {name for name in ctx.params if (src := ctx.get_parameter_source(name)) is not None and src.name != "DEFAULT"}


def _train(ctx: typer.Context, task: str, nproc_per_node: int | None = None, config: Path | None = None,
           **options) -> None:
    from facelens.train.runner import run_training

    config = config or (ctx.parent.params.get("config") if ctx.parent is not None else None)
    try:
        req = train_request(task, options, _given(ctx), config)
    except (FacelensError, ValueError) as exc:
        _fail(str(exc))
    if nproc_per_node is not None and nproc_per_node != 1:
        try:
            req.check()  # refused once here, not once per process
        except (FacelensError, ValueError) as exc:
            _fail(str(exc))
        _launch_torchrun(ctx, task, nproc_per_node, req.threads, config)
    try:
        run_training(req, log=lambda m: typer.echo(m, err=True))
    except (FacelensError, ValueError) as exc:
        _fail(str(exc))
    except RuntimeError as exc:
        if not _peer_lost(exc):
            raise
        import os

        _fail(f"rank {os.environ.get('RANK')}: lost contact with another process of the job (it failed or was "
              "stopped); that process's own error names the cause", 1)


def _peer_lost(exc: RuntimeError) -> bool:
    """True for the error a torchrun worker gets when another rank died mid-collective (a follow-on failure,
    whose 40-line traceback would bury the first process's one-line error)."""
    import os

    import torch.distributed as dist

    if os.environ.get("RANK", "") in ("", "0"):
        return False
    return isinstance(exc, dist.DistError) or "closed by peer" in str(exc) or "Connection reset by peer" in str(exc)


def given_options(ctx, skip: set[str]) -> list[str]:
    """The options of the current command that were given (not defaulted), as command-line words.

    Why rebuilt from the parsed values rather than copied from ``sys.argv``: the launch must work
    however the command was invoked (console script, ``python -m``, a test runner).
    """
    words: list[str] = []
    for param in ctx.command.params:
        if param.name in skip or not param.opts:
            continue
        source = ctx.get_parameter_source(param.name)
        if source is None or source.name == "DEFAULT":
            continue
        value = ctx.params[param.name]
        if getattr(param, "is_flag", False):
            if value:
                words.append(param.opts[0])
            elif param.secondary_opts:
                words.append(param.secondary_opts[0])
        elif getattr(param, "multiple", False):
            for v in value or ():
                words += [param.opts[0], str(v)]
        elif value is not None:
            words += [param.opts[0], str(value)]
    return words


def _launch_torchrun(ctx: typer.Context, task: str, nproc: int, threads: int | None, config: Path | None = None) -> None:
    """``--nproc-per-node N``: run this same training as N data-parallel processes on this machine
    (``python -m torch.distributed.run --standalone``), each with an even share of the CPU threads."""
    import os
    import subprocess

    from facelens.train.distributed import env_from, threads_per_process, torchrun_command

    if nproc < 1:
        _fail(f"--nproc-per-node must be at least 1, got {nproc}")
    try:
        inside = env_from(os.environ)
    except ValueError:
        inside = True
    if inside:
        _fail("--nproc-per-node starts torchrun, but this process already runs under torchrun (RANK is set): "
              "drop --nproc-per-node")
    per_process = threads_per_process(threads, os.cpu_count(), nproc)
    args = ["train", task, *given_options(ctx, {"nproc_per_node", "threads", "config"}), "--threads", str(per_process)]
    if config is not None:  # given here or before the task (``facelens train --config C age``)
        args += ["--config", str(config)]
    cmd = torchrun_command(sys.executable, nproc, args)
    typer.echo(f"launching {nproc} training processes, {per_process} CPU thread(s) each: {shlex.join(cmd)}", err=True)
    proc = subprocess.Popen(cmd, env=os.environ | {"OMP_NUM_THREADS": str(per_process)})
    try:
        code = proc.wait()
    except KeyboardInterrupt:  # torchrun got the same Ctrl-C and stops its workers: wait for it
        proc.wait()
        code = 130
    raise typer.Exit(code)


_DATA = Annotated[list[str], typer.Option("--data", help="dataset folder or CSV manifest (repeatable)")]
_OUT = Annotated[Path, typer.Option("--out", help="run folder (config, checkpoints, models, metrics)")]
_EMA = Annotated[float, typer.Option(help="keep, validate and ship a moving average of the weights with this decay "
                                          "per step (e.g. 0.998); 0 = off")]
_FROZEN = Annotated[int, typer.Option(help="keep the first N backbone blocks at their ImageNet weights: steps run "
                                            "about 1.7x faster on a CPU (N=4), at a cost in accuracy (see README); "
                                            "0 = train every layer")]
_WD = Annotated[float, typer.Option(help="AdamW weight decay (decoupled)")]
_PRECISION = Annotated[str, typer.Option(help="training step precision: fp32; bf16 autocast (up to 1.3x faster on CPUs "
                                               "with AVX512-BF16/AMX and on recent GPUs, about 10x slower where emulated); "
                                               "auto: bf16 where native, else fp32")]
_AUGMENT = Annotated[str, typer.Option(help="augmentation: basic (geometry, colour) or photo (adds scan, sepia, fading, "
                                             "blur, noise, JPEG, low resolution and frame edges, so a photo's source "
                                             "cannot be read from its style) or photo+chip (photo, and half the "
                                             "crops made to look cut from a tight UTKFace chip: for face crops "
                                             "wider than one)")]
_BALANCE = Annotated[str, typer.Option(help="none, or source: sample so every data source has an equal share of each "
                                             "label bin (5-year age bins / classes), validating on the mean per-source score; "
                                             "source+age: also lift rare bins (share ~ sqrt(count)): teenagers, over 60s")]
_RESUME = Annotated[bool, typer.Option("--resume/--no-resume",
                                       help="continue from RUN_DIR/<arch>/checkpoints/last.pt; --no-resume starts "
                                            "afresh, also when the --config file says resume")]
_PRETRAINED = Annotated[bool, typer.Option("--pretrained/--no-pretrained",
                                           help="start from ImageNet weights; --no-pretrained starts from random ones")]
_ARCH = Annotated[list[str] | None, typer.Option("--arch", help="architecture(s), trained on the same split")]
_NPROC = Annotated[int | None, typer.Option(
    help="train data-parallel in N processes on this machine (re-launches itself under torchrun; --batch-size "
         "is per process, --threads is split between them); for several machines use torchrun, see "
         "docs/distributed-training.md")]
_THREADS = Annotated[int | None, typer.Option(help="CPU threads for training (default: all cores)")]


_CONFIG = Annotated[Path | None, typer.Option(
    "--config", help="repeat a run: read its options from RUN_DIR/config.json (every run writes one); options "
                     "given on the command line override the file's")]
_TRAIN_DATA = Annotated[list[str] | None, typer.Option(
    "--data", help="dataset folder or CSV manifest (repeatable); required unless --config gives it")]
_TRAIN_OUT = Annotated[Path | None, typer.Option(
    "--out", help="run folder (config, checkpoints, models, metrics); required unless --config gives it")]

SHORT = cross_source_recipe()  # ``cross-source``


@train_app.callback(invoke_without_command=True)
def train_main(ctx: typer.Context, config: _CONFIG = None) -> None:
    """Train a model (age or eyes) on your data; facelens train --config RUN_DIR/config.json repeats a run."""
    if ctx.invoked_subcommand is not None:
        return  # the task command reads --config from here (``facelens train --config C age --epochs 3``)
    if config is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(2)
    from facelens.train.runner import run_training

    try:
        req = request_from_config(config)
        run_training(req, log=lambda m: typer.echo(m, err=True))
    except (FacelensError, ValueError) as exc:
        _fail(str(exc))


#: The options of ``train age`` and ``train eyes``, each written once, in --help order: (name, type), where a
#: dict of types gives an option only to the tasks it names, or a help text per task. Every default is the
#: task's ``TrainRequest.defaults(task)`` value, except those of ``_NO_DEFAULT`` (None: required unless
#: --config gives them, the request's default list, or options of the launch rather than of the run).
_TRAIN_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("data", _TRAIN_DATA), ("out", _TRAIN_OUT), ("arch", _ARCH), ("nproc_per_node", _NPROC), ("config", _CONFIG),
    ("epochs", int), ("batch_size", int), ("lr", float), ("seed", int),
    ("split_seed", Annotated[int | None, typer.Option(
        help="seed of the train/val/test split (default: --seed); fix it and vary --seed to measure how much "
             "results move with training randomness alone")]),
    ("split", {"age": Annotated[str, typer.Option(help="auto, content (hash of bytes/group) or random")],
               "eyes": Annotated[str, typer.Option(
                   help="auto (= blocks of consecutive file numbers), blocks, random, content")]}),
    ("female_class", {"eyes": Annotated[str | None, typer.Option(help="class folder/label meaning female")]}),
    ("male_class", {"eyes": Annotated[str | None, typer.Option(help="class folder/label meaning male")]}),
    ("conflict_policy", Annotated[str, typer.Option(help="duplicates with different labels: drop, keep-first, keep-all")]),
    ("resume", _RESUME), ("device", Device), ("pretrained", _PRETRAINED), ("input_size", int | None),
    ("init_from", Annotated[str | None, typer.Option(
        help="a trained model.pt to fine-tune instead of starting from ImageNet weights (same task, --arch, input "
             "size and crop, and split as this run is, so none of its training photos, or copies of them, can score "
             "this run: the shipped models use --split content --split-seed 0, the defaults)")]),
    ("patience", int), ("ema_decay", _EMA), ("frozen_blocks", _FROZEN), ("weight_decay", _WD), ("precision", _PRECISION),
    ("max_images", Annotated[int | None, typer.Option(help="cap images per split (quick trials)")]),
    ("max_steps_per_epoch", int | None), ("workers", int | None), ("threads", _THREADS),
    ("face_crop", {"age": Annotated[str, typer.Option(
        help="tight (forehead to chin, as a UTKFace chip holds; default), medium (hairline and some hair, "
             "eyes a third of the side apart) or loose (the first models' crop, with hair and background)")]}),
    ("augment", _AUGMENT), ("balance", _BALANCE),
    ("age_l1", {"age": Annotated[float, typer.Option(
        help="weight of |expected age - label| added to the soft-label loss (DLDL-v2; 0: soft labels only, "
             "the shipped recipe)")]}),
    ("label_sigma", {"age": Annotated[float, typer.Option(
        help="width (std-dev, years) of the Gaussian soft label the age bins learn (1.5: the shipped recipe)")]}),
    ("label_sigma_per_year", {"age": Annotated[float, typer.Option(
        help="let the soft label widen with age: width = max(--label-sigma, this x age) (0: fixed, the shipped recipe)")]}),
    ("eye_crop", {"eyes": Annotated[str, typer.Option(
        help="how eyes are cut from the faces of face datasets: tight (eye and brow, like the Kaggle crops), "
             "wide (one eye distance across: brow, lid fold and the skin around them), SIDE,DY (SIDE eye "
             "distances wide, the eye moved up by DY of the side; default: the shipped single-eye recipe's, shown "
             "below) or both (one crop holding both eyes, the shipped photo model's; whole-face data only, "
             "input 96 px unless --input-size)")]}),
)
_NO_DEFAULT = ("data", "out", "arch", "nproc_per_node", "config")


def train_options(task: str) -> list[inspect.Parameter]:
    """The parameters of ``facelens train TASK`` (after ``ctx``): ``_TRAIN_OPTIONS`` for that task, with its defaults."""
    defaults = TrainRequest.defaults(task)
    params = []
    for name, kind in _TRAIN_OPTIONS:
        if isinstance(kind, dict):
            if task not in kind:
                continue
            kind = kind[task]
        default = None if name in _NO_DEFAULT else getattr(defaults, name)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=kind, default=default))
    return params


def _train_command(task: str, doc: str):
    """Register ``facelens train TASK``: typer reads its options from the signature assembled here."""

    def command(ctx: typer.Context, **options: Any) -> None:
        _train(ctx, task=task, **options)  # every option maps 1:1 onto a TrainRequest field

    ctx_param = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
    command.__signature__ = inspect.Signature([ctx_param, *train_options(task)])
    command.__annotations__ = {p.name: p.annotation for p in command.__signature__.parameters.values()}
    command.__name__ = command.__qualname__ = f"train_{task}"
    command.__doc__ = doc
    return train_app.command(task)(command)


train_age = _train_command("age", "Train an age model: folder-per-age, UTKFace names or CSV (path,age[,group]).")
train_eyes = _train_command("eyes", "Train an eye-crop sex classifier: two class folders or a CSV (path,label[,group]).")


@app.command("cross-source")
def cross_source(
    data: _DATA,
    out: Annotated[Path, typer.Option("--out", help="protocol folder: one training run per left-out source, the table")],
    task: Annotated[str, typer.Option(help="age or eyes: which recipe to test")] = "age",
    epochs: int = SHORT.epochs,
    input_size: Annotated[int | None, typer.Option(help="crop size (default: the task's short recipe, "
                                                        "age 96, eyes 64, 96 with --eye-crop both)")] = None,
    max_steps_per_epoch: int | None = SHORT.max_steps_per_epoch, batch_size: int = SHORT.batch_size,
    seed: int = SHORT.seed, ema_decay: _EMA = SHORT.ema_decay, precision: _PRECISION = SHORT.precision,
    frozen_blocks: _FROZEN = SHORT.frozen_blocks,
    face_crop: Annotated[str, typer.Option(help="age: tight, medium or loose (see train age --help)")] = SHORT.face_crop,
    eye_crop: Annotated[str | None, typer.Option(help="eyes: tight, wide, SIDE,DY or both (see train eyes --help; "
                                                      "default: the shipped single-eye recipe's)")] = None,
    augment: _AUGMENT = SHORT.augment, balance: _BALANCE = SHORT.balance,
    threads: _THREADS = SHORT.threads,
    arch: Annotated[str, typer.Option(help="the architecture the recipe trains")] = SHORT.archs[0],
    lr: float = SHORT.lr,
) -> None:
    """Leave-one-source-out for a recipe: train it on every source and without each one, then score both on
    each source's test split (age: MAE ratio, bias by age band; eyes: error-rate ratio on whole faces,
    accuracy by age band). Defaults to a short recipe (~5 min a run on 2 cores); re-running resumes."""
    import os
    from dataclasses import replace

    from facelens.train.config import TASKS, cross_source_recipe, eye_crop_input_size
    from facelens.train.cross_source import leave_one_source_out

    if os.environ.get("RANK", "") != "":  # its runs and table would be written by every process at once
        _fail("cross-source does not run under torchrun; start it as a single process (each of its runs is short)")
    if task not in TASKS:
        _fail(f"--task must be one of {', '.join(TASKS)}, got {task!r}")
    recipe = cross_source_recipe(task)
    req = replace(recipe, data=data, out=str(out), epochs=epochs,
                  input_size=input_size or eye_crop_input_size(recipe.input_size, eye_crop),
                  patience=epochs, max_steps_per_epoch=max_steps_per_epoch, batch_size=batch_size, seed=seed,
                  ema_decay=ema_decay, precision=precision, frozen_blocks=frozen_blocks, face_crop=face_crop,
                  eye_crop=eye_crop or recipe.eye_crop, augment=augment, balance=balance, threads=threads,
                  archs=[arch], lr=lr)
    try:
        req.check()
        leave_one_source_out(req, out, log=lambda m: typer.echo(m, err=True), echo=typer.echo)
    except (FacelensError, ValueError) as exc:
        _fail(str(exc))


def _evaluate(task: str, models: list[Path] | None, data: list[str], split: str, report: Path | None, out: Path | None,
              backend: str, device: str, context_check: int = 0, age_model: Path | None = None) -> None:
    from facelens.evaluate.pipeline import default_model_for, evaluate_models

    if not models:
        default = default_model_for(task, data)
        if not default.is_file():
            _fail(f"no --model given and no shipped {task} model at {default}; pass --model FILE")
        typer.echo(f"no --model given: evaluating the shipped {task} model {default}", err=True)
        models = [default]
    try:
        evaluate_models(task, models, data, split=split, report_dir=report, out=out, backend=backend, device=device,
                        log=lambda m: typer.echo(m, err=True), echo=typer.echo, context_check=context_check,
                        age_model=age_model)
    except (FacelensError, ValueError) as exc:
        _fail(str(exc))


_MODEL = Annotated[list[Path] | None, typer.Option(
    "--model", help="model file (.onnx or .pt); repeat to compare; default: the shipped model for the task")]
_SPLIT = Annotated[str, typer.Option(help="test, val, train (the model's own seeded split) or all; train and all "
                                           "on the model's own training data are in-sample and warned about")]
_REPORT = Annotated[Path | None, typer.Option(help="write an HTML report with figures into this folder")]
_JSON_OUT = Annotated[Path | None, typer.Option("--out", help="metrics JSON file")]


@evaluate_app.command("age")
def evaluate_age(data: _DATA, model: _MODEL = None, split: _SPLIT = "test", report: _REPORT = None, out: _JSON_OUT = None,
                 backend: Backend = "auto", device: Device = "cpu",
                 context_check: Annotated[int, typer.Option(
                     help="also answer N photos per source again as tight UTKFace-style chips and report how far "
                          "the answers move (0 = off)")] = 0) -> None:
    """MAE, RMSE, R², CS@5, signed error, per source x age band, decade, gender, race, interval coverage."""
    _evaluate("age", model, data, split, report, out, backend, device, context_check)


@evaluate_app.command("eyes")
def evaluate_eyes(data: _DATA, model: _MODEL = None, split: _SPLIT = "test", report: _REPORT = None, out: _JSON_OUT = None,
                  backend: Backend = "auto", device: Device = "cpu",
                  age_model: Annotated[Path | None, typer.Option(
                      help="age model whose estimate picks a face's calibration band, as `predict --age-model` "
                           "(default: the shipped one)")] = None) -> None:
    """Accuracy, balanced accuracy, ROC-AUC, ECE, confusion matrix, grayscale vs colour; whole faces per age band."""
    if age_model is not None and not age_model.is_file():
        _fail(f"{age_model}: --age-model file not found")
    _evaluate("eyes", model, data, split, report, out, backend, device, age_model=age_model)


@app.command()
def export(
    model: Annotated[Path, typer.Option(help="trained PyTorch model (RUN_DIR/<arch>/model.pt)")],
    out: Annotated[Path, typer.Option(help="ONNX file to write; a .pt file: the checkpoint itself with its calibration "
                                           "re-fitted on val and test metrics re-measured (needs --data)")],
    tta: Annotated[bool, typer.Option("--tta/--no-tta", help="bake the flip-average test-time augmentation in (2x compute); "
                                       "--no-tta for a faster model")] = True,
    int8: Annotated[bool, typer.Option("--int8", help="quantise to int8 (needs --data: calibrated on the training split)")] = False,
    int8_calibration: Annotated[str, typer.Option(
        help="how --int8 reads activation ranges from training crops: minmax, or percentile (99.999th)")] = "minmax",
    int8_answer_map: Annotated[bool, typer.Option(
        "--int8-answer-map/--no-int8-answer-map",
        help="--int8 age models: map the int8 answers back onto the float network's (fitted on the calibration crops)")] = True,
    data: Annotated[list[str] | None, typer.Option(
        "--data", help="the model's training data (repeatable): re-fit calibration on val, re-measure on test")] = None,
) -> None:
    """Export to ONNX and check parity with PyTorch; optionally a faster variant (--no-tta, --int8).

    With ``--out X.pt`` the checkpoint is re-calibrated instead (the ``.pt`` twin that ``--backend torch`` serves
    then decodes the way its ONNX sibling does); it keeps its own test-time augmentation setting.
    """
    from facelens.train.export import export_onnx, recalibrate_checkpoint

    log = lambda m: typer.echo(m, err=True)  # noqa: E731
    if out.suffix == ".pt":
        if not data or int8:
            _fail(f"{out}: re-calibrating a .pt checkpoint needs --data (the model's training data) and no --int8")
        try:
            res = recalibrate_checkpoint(model, out, data, log=log)
        except (FacelensError, ValueError) as exc:
            _fail(str(exc))
        typer.echo(f"wrote {res['out']}: calibration re-fitted on val, metrics re-measured on test")
        return
    try:
        res = export_onnx(model, out, tta=tta, int8=int8, data=data, int8_calibration=int8_calibration,
                          int8_answer_map=int8_answer_map, log=log)
    except (FacelensError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(f"wrote {res['out']}; parity with PyTorch on {res['samples']} random crops: "
               f"max abs difference {res['max_abs_diff']:.2e}")


@app.command("model-card")
def model_card(
    run: Annotated[Path, typer.Option(help="training run folder (RUN_DIR)")],
    arch: Annotated[str | None, typer.Option(help="which architecture of the run (default: the first)")] = None,
    out: Annotated[Path | None, typer.Option(help="card file (default RUN_DIR/<arch>/MODEL_CARD.md)")] = None,
    shipped_as: Annotated[str | None, typer.Option(help="file name the model is shipped under, for the card")] = None,
    model: Annotated[Path | None, typer.Option(
        help="the shipped file (e.g. an --int8 export): the card reports its own metrics, the run's model beside them")] = None,
    evaluations: Annotated[Path | None, typer.Option(help="JSON list of further evaluations "
                                                     "({title, note, metrics, command}) to include")] = None,
) -> None:
    """Write a model card (YAML header + sections) from the run's own saved metadata and metrics."""
    from facelens.evaluate.model_card import write_model_card
    from facelens.evaluate.scoring import headline
    from facelens.train.commands import reproduce_commands

    cfg_path = run / "config.json"
    if not cfg_path.is_file():
        _fail(f"{run}: not a training run folder (no config.json)")
    cfg = json.loads(cfg_path.read_text())
    arch = arch or cfg["archs"][0]
    meta_path = run / arch / "meta.json"
    if not meta_path.is_file():
        _fail(f"{meta_path}: missing; has the run for {arch!r} finished?")
    run_meta = meta = json.loads(meta_path.read_text())
    extra: list[dict] = []
    if model is not None:
        from facelens.infer.predictor import load_predictor

        try:
            meta = load_predictor(model).meta
        except FacelensError as exc:
            _fail(str(exc))
        if meta.get("metrics") != run_meta.get("metrics"):
            m = run_meta["metrics"]
            twin = model.with_suffix(".pt")
            where = (f"served by `--backend torch` from {twin.name} beside the shipped file" if twin.is_file()
                     else f"the run's {arch}/model.pt, not shipped")
            extra.append({"title": f"The run's PyTorch model ({run_meta.get('tta', 'no')} TTA, fp32)",
                          "note": f"The trained network before export, on the same test split ({where}).",
                          "metrics": {"summary": headline(cfg["task"], m)}})
    meta["commands"] = reproduce_commands(cfg, arch, shipped_as or (model.name if model else None), meta)
    meta["evaluations"] = extra + (json.loads(evaluations.read_text()) if evaluations else [])
    path = write_model_card(out or run / arch / "MODEL_CARD.md", meta)
    typer.echo(f"wrote {path}")


@app.command()
def serve(
    host: str = "127.0.0.1", port: int = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
    max_upload_mb: Annotated[float, typer.Option(help="largest accepted upload")] = 10.0,
    detect_max_side: DetectMaxSide = None,
    request_timeout: Annotated[float, typer.Option(
        help="seconds a request may wait for a slot and be analysed; then 503 (busy) or 504 (timeout)")] = 20.0,
    backend: Backend = "auto",
    device: Device = "cpu",
) -> None:
    """Serve the REST API (/v1/analyze, /docs) and the web page (/) with FastAPI + uvicorn.

    Limits (header/body deadlines, connection cap, decode memory budget) are listed in
    ``facelens.serve.protocol.ServiceLimits`` and can be set with FACELENS_<NAME> variables.
    """
    try:
        from facelens.serve.app import run_server
    except ImportError as exc:  # pragma: no cover - the service module is part of the package
        _fail(f"the web service is not available: {exc}")
    from facelens.face.detect import check_detect_max_side

    try:  # refused here, before uvicorn starts and the models load
        check_detect_max_side(detect_max_side)
    except ValueError as exc:
        _fail(f"--detect-max-side: {exc}")
    if not request_timeout > 0:
        _fail(f"--request-timeout must be > 0 seconds, got {request_timeout}")
    try:
        _check_serving_device(backend, device)
    except (FacelensError, ValueError) as exc:
        _fail(str(exc))
    run_server(host=host, port=port, workers=workers, max_upload_mb=max_upload_mb, detect_max_side=detect_max_side,
               request_timeout=request_timeout, backend=backend, device=device)


def _check_serving_device(backend: str, device: str) -> None:
    """Refuse a backend or device the served models could not run on, before uvicorn starts.

    Why here: the models load in the server's lifespan, where a failure only turns /healthz
    "degraded"; ``--device cuda`` on a machine without a usable GPU must stop the command instead.
    The shipped models are ONNX files, so ``--backend auto`` serves them with ONNX Runtime.
    """
    from facelens.devices import resolve_device

    if backend not in ("auto", "onnx", "torch"):
        raise ValueError(f"--backend must be auto, onnx or torch, got {backend!r}")
    resolve_device(device, "torch" if backend == "torch" else "onnx")


@app.command()
def demo(json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Run the default models on a bundled public-domain photo (NASA astronaut Eileen Collins)."""
    from skimage import data as skdata

    from facelens.api import Analyzer

    r = Analyzer().analyze(skdata.astronaut(), name="skimage.data.astronaut() (public domain, NASA)")
    typer.echo(json.dumps(r.to_dict()) if json_out else format_result_text(r))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
