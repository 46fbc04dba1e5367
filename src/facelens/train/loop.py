"""Fit one model on in-memory crops: progress bars, checkpoints, resume, early stopping.

Crops arrive as uint8 arrays (already aligned by the prediction pipeline), so an epoch is
pure tensor work. Checkpoints are written atomically at every epoch end and every
``checkpoint_every`` steps; the batch order of an epoch is a pure function of (seed, epoch),
so a resumed run continues with exactly the batches it had not yet seen.

Under torchrun (``train.distributed``) the same loop runs data-parallel: the model is wrapped in
DistributedDataParallel, each rank takes its strided share of the shared epoch order, validation
is sharded and gathered, and rank 0 alone writes checkpoints and draws progress bars.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from facelens.agebins import AGE_MIN, NUM_AGE_BINS
from facelens.models.checkpoint import load_checkpoint
from facelens.models.wrappers import to_input
from facelens.train import distributed as ddp
from facelens.train.augment import AugmentConfig, augment_batch
from facelens.train.checkpoint import save_checkpoint


@dataclass
class FitConfig:
    head: str  # "age-bins" | "regression" | "binary"
    epochs: int = 8
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 3
    seed: int = 0
    label_sigma: float = 1.5  # age-bins: std-dev (years) of the Gaussian soft label
    age_l1: float = 0.0  # age-bins: weight of |expected age - label| added to the loss (DLDL-v2; see loss_fn)
    label_sigma_per_year: float = 0.0  # age-bins: the soft label widens with age, sigma = max(label_sigma, this x age)
    checkpoint_every: int = 200
    ema_decay: float = 0.0  # >0: validate, keep and ship an exponential moving average of the weights
    precision: str = "fp32"  # "bf16": forward and backward under bfloat16 autocast (see autocast_context)
    max_steps_per_epoch: int | None = None  # for smoke tests
    augment: AugmentConfig = field(default_factory=AugmentConfig)


def soft_age_targets(ages: torch.Tensor, sigma: float, per_year: float = 0.0) -> torch.Tensor:
    """Gaussian soft labels over the age bins, ``sigma`` years wide, or ``max(sigma, per_year x age)`` when the width
    grows with age (apparent age, and its label noise, spread more the older the face)."""
    bins = torch.arange(NUM_AGE_BINS, device=ages.device, dtype=torch.float32) + AGE_MIN
    a = ages.clamp(AGE_MIN, AGE_MIN + NUM_AGE_BINS - 1).view(-1, 1)
    width = (per_year * a).clamp(min=sigma) if per_year > 0 else sigma
    w = torch.exp(-0.5 * ((bins.view(1, -1) - a) / width) ** 2)
    return w / w.sum(1, keepdim=True)


def expected_age(out: torch.Tensor) -> torch.Tensor:
    """The mean of the age-bins distribution, in years (what ``decode_age`` answers)."""
    bins = torch.arange(NUM_AGE_BINS, device=out.device, dtype=out.dtype) + AGE_MIN
    return out.softmax(1) @ bins


def loss_fn(head: str, out: torch.Tensor, y: torch.Tensor, sigma: float, age_l1: float = 0.0,
            sigma_per_year: float = 0.0) -> torch.Tensor:
    """The training loss. Age bins: cross-entropy to a Gaussian soft label, plus ``age_l1`` x the absolute error of
    the distribution's mean (DLDL-v2, Gao et al. 2018): the soft label alone trains the shape of the distribution,
    the second term the very number ``predict`` answers, whose pull to the middle of the training ages is the
    bias the cross-entropy leaves."""
    if head == "age-bins":
        ce = F.cross_entropy(out, soft_age_targets(y, sigma, sigma_per_year))
        return ce + age_l1 * (expected_age(out) - y).abs().mean() if age_l1 else ce
    if head == "regression":
        return F.mse_loss(out.view(-1), y)
    return F.binary_cross_entropy_with_logits(out.view(-1), y)


PRECISIONS = ("fp32", "bf16", "auto")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 convolutions and matmuls in hardware.

    Why it matters: on a CPU without AVX512-BF16 or AMX, oneDNN emulates bfloat16 and a training step
    is about 10x *slower* than float32 (measured: 11.6 s against 1.09 s on a 2-core AVX2 EPYC,
    ``benchmarks/train_step.py``), where with them it is 5-35% faster.
    """
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":  # torch.cpu's probes are private; an older or newer torch without them: assume not
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)
    return False


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a training precision that is unknown or that the device cannot run, before any data is read."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bfloat16 support; use fp32")


def resolve_precision(precision: str, device: torch.device) -> tuple[str, str | None]:
    """(the precision to train in, a warning or None): ``auto`` is bf16 where ``device`` runs it natively,
    else fp32; an explicit bf16 that would be emulated is kept (the user asked) but warned about."""
    check_precision(precision, device)
    if precision == "auto":
        return ("bf16" if native_bf16(device) else "fp32"), None
    if precision == "bf16" and not native_bf16(device):
        return "bf16", (f"--precision bf16 on {device}: no native bfloat16 here (a CPU needs AVX512-BF16 or AMX), so it "
                        "is emulated and a training step runs about 10x slower than fp32; use --precision fp32 or auto")
    return precision, None


def autocast_context(precision: str, device: torch.device):
    """Mixed precision for the training step: matmuls and convolutions in bfloat16, weights,
    optimizer state, BatchNorm statistics and the loss in float32.

    Why bfloat16 and no loss scaling: it has float32's exponent range, so gradients do not
    underflow. Measured on this machine's 2 cores (AVX512-BF16/AMX, MobileNetV2, 128 px, batch 64):
    a step takes 0.77-0.86 s against 0.80-1.16 s for fp32 (``benchmarks/train_step.py``; noisy VM). Opt-in (or
    ``auto``, ``resolve_precision``), because on a CPU without native bfloat16 it is emulated and about 10x
    slower, and because the one bf16 run of the shipped age recipe validated 0.065 years worse (README).
    Validation and export stay in float32.
    """
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def optimizer_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                   cfg: FitConfig, device: torch.device) -> torch.Tensor:
    """One forward (under ``cfg.precision``), loss, backward and update; returns the loss.

    Shared by ``fit`` and ``benchmarks/train_step.py`` so the benchmark times the step training runs.
    """
    with autocast_context(cfg.precision, device):
        out = model(x)
    loss = loss_fn(cfg.head, out.float(), y, cfg.label_sigma, cfg.age_l1, cfg.label_sigma_per_year)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def make_ema(model: nn.Module, decay: float) -> AveragedModel | None:
    """An exponential moving average of ``model``'s weights *and* BatchNorm statistics, or None.

    Why: with ~300 steps an epoch, validation MAE of the raw weights jumps by up to a year
    from one epoch to the next (the last mini-batches decide where the weights land); the
    average over the last ~1/(1-decay) steps is a smoother, usually better, model.
    """
    if not 0 <= decay < 1:
        raise ValueError(f"--ema-decay must be in [0, 1), got {decay}")
    if decay == 0:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


@torch.no_grad()
def predict_outputs(model: nn.Module, crops: np.ndarray, device: torch.device, batch_size: int = 256,
                    desc: str | None = None) -> np.ndarray:
    """Raw model outputs for uint8 crops, in evaluation mode."""
    model.eval()
    outs = []
    starts = range(0, len(crops), batch_size)
    for s in tqdm(starts, desc=desc, unit="batch", leave=False, disable=desc is None):
        outs.append(model(to_input(crops[s : s + batch_size], device)).float().cpu().numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 1), np.float32)


def validation_score(head: str, outputs: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None) -> float:
    """Lower is better: MAE in years for age, log loss for the binary head; with ``groups``, the
    mean of the per-group scores."""
    if groups is not None and len(set(groups.tolist())) > 1:
        return float(np.mean([validation_score(head, outputs[groups == g], y[groups == g]) for g in sorted(set(groups.tolist()))]))
    if head == "age-bins":
        from facelens.infer.postprocess import age_from_bins

        return float(np.abs(age_from_bins(outputs)[0] - y).mean())
    if head == "regression":
        return float(np.abs(outputs.reshape(-1) - y).mean())
    p = np.clip(1 / (1 + np.exp(-outputs.reshape(-1))), 1e-7, 1 - 1e-7)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


#: Added to the augmentation seed per rank, so ranks do not apply the same random flips and crops.
AUGMENT_RANK_STRIDE = 7_919_000_017


def validate(model: nn.Module, val_x: np.ndarray, val_y: np.ndarray, head: str, device: torch.device,
             val_groups: np.ndarray | None = None) -> float:
    """``validation_score`` of ``model``; under torchrun each rank predicts every ``world``-th image and
    the outputs are gathered, so every rank scores the same full set and rank 0's score is broadcast
    (the best-epoch and early-stopping decisions cannot differ between ranks)."""
    rank, world = ddp.rank(), ddp.world_size()
    outputs = ddp.gather_rows(predict_outputs(model, val_x[rank::world], device), len(val_x))
    return ddp.broadcast_float(validation_score(head, outputs, val_y, val_groups))


@dataclass
class FitRun:
    """What the epochs of one ``fit`` share: the model, its optimizer, schedule and moving average,
    and the progress ``state`` that checkpoints carry (epoch, step, best score, history)."""

    model: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    ema: AveragedModel | None
    cfg: FitConfig
    ckpt_dir: Path
    steps: int  # optimizer steps per epoch, per rank
    rank: int
    world: int
    main: bool
    state: dict = field(default_factory=lambda: {"epoch": 0, "step": 0, "best": math.inf, "best_epoch": -1,
                                                 "bad_epochs": 0, "history": [], "seconds": 0.0})

    @property
    def scored(self) -> nn.Module:
        """The weights validated, kept and shipped: the moving average when there is one."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def last(self) -> Path:
        return self.ckpt_dir / "last.pt"


def start_run(model: nn.Module, n_train: int, cfg: FitConfig, run_dir: Path, device: torch.device) -> FitRun:
    """Model on ``device``, AdamW, the one-cycle schedule over every step of every epoch, the moving average."""
    rank, world, main = ddp.rank(), ddp.world_size(), ddp.is_main()
    model.to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = ddp.steps_per_epoch(n_train, cfg.batch_size, world, cfg.max_steps_per_epoch)  # per rank
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps, pct_start=0.15)
    return FitRun(model, opt, sched, make_ema(model, cfg.ema_decay), cfg, run_dir / "checkpoints", steps, rank, world, main)


def resume_run(run: FitRun, log: Callable[[str], None]) -> None:
    """Continue ``run`` from its ``last.pt``: weights, optimizer, moving average, progress, and the
    schedule (re-planned when ``--epochs`` changed)."""
    cfg, steps, last = run.cfg, run.steps, run.last
    ck = load_checkpoint(last)  # every rank reads the same file (weights_only=True)
    if ("ema" in ck) != (run.ema is not None):  # refuse before touching the model
        was = "with" if "ema" in ck else "without"
        raise ValueError(f"{last} was written {was} --ema-decay; resume with the options of the original run")
    run.model.load_state_dict(ck["model"])
    run.opt.load_state_dict(ck["optimizer"])
    run.state = state = ck["state"]
    if run.ema is not None:
        run.ema.load_state_dict(ck["ema"])
    saved_total = ck["scheduler"].get("total_steps")
    if saved_total == cfg.epochs * steps:
        run.sched.load_state_dict(ck["scheduler"])
    else:  # --epochs changed on resume: keep the progress, re-plan the rest of the LR schedule
        done = state["epoch"] * steps + state["step"]
        with warnings.catch_warnings():  # a replay: the optimizer did step, in the run being resumed
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            for _ in range(min(done, cfg.epochs * steps - 1)):
                run.sched.step()
        log(f"note: schedule re-planned for {cfg.epochs} epochs (checkpoint was planned for {saved_total} steps)")
    log(f"resumed from {last}: epoch {state['epoch'] + 1}, step {state['step']}/{steps}")
    if ck.get("world_size", 1) != run.world and state["step"]:
        log(f"note: {last} was written by {ck.get('world_size', 1)} process(es), resumed with {run.world}: "
            "the rest of this epoch is sharded anew")
    if state.get("stopped") and state["bad_epochs"] < cfg.patience:
        state["stopped"] = False  # a larger --patience on resume lifts an earlier early stop
        log(f"early stop lifted: {state['bad_epochs']} epochs without improvement < --patience {cfg.patience}")


def save_run(run: FitRun, best: bool = False) -> None:
    """Write ``last.pt`` (everything a resume needs) and, with ``best``, ``best.pt`` (the scored weights)."""
    if not run.main:  # rank 0 holds the same weights and writes for everyone
        return
    ck = {"model": run.model.state_dict(), "optimizer": run.opt.state_dict(), "scheduler": run.sched.state_dict(),
          "state": run.state, "config": asdict(run.cfg)}
    if run.world > 1:
        ck["world_size"] = run.world
    if run.ema is not None:
        ck["ema"] = run.ema.state_dict()
    save_checkpoint(run.last, ck)
    if best:
        save_checkpoint(run.ckpt_dir / "best.pt", {"model": run.scored.state_dict(), "state": run.state})


def train_one_epoch(run: FitRun, train_model: nn.Module, train_x: np.ndarray, ty: torch.Tensor, device: torch.device,
                    gen: torch.Generator, train_weights: np.ndarray | None, shard_log: ddp.ShardLog) -> tuple[float, float]:
    """The remaining steps of the current epoch (a resumed epoch starts at its saved step), with a
    checkpoint every ``cfg.checkpoint_every`` steps; returns the smoothed loss and the time from which
    the epoch's seconds are not yet counted in ``state``."""
    cfg, state, steps, rank = run.cfg, run.state, run.steps, run.rank
    epoch = state["epoch"]
    t0 = time.time()
    order = ddp.rank_epoch_order(len(train_x), steps, cfg.batch_size, cfg.seed, epoch, train_weights, rank, run.world)
    train_model.train()
    bar = tqdm(range(state["step"], steps), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step",
               initial=state["step"], total=steps, disable=not run.main)
    running = 0.0
    first_step = state["step"]
    for step in bar:
        idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        shard_log.step(epoch, step, idx)
        gen.manual_seed(cfg.seed * 1_000_003 + epoch * 10_007 + step + rank * AUGMENT_RANK_STRIDE)
        x = augment_batch(to_input(train_x[idx], device), cfg.augment, None if device.type != "cpu" else gen)
        y = ty[idx].to(device)
        loss = optimizer_step(train_model, run.opt, x, y, cfg, device)
        run.sched.step()
        if run.ema is not None:
            run.ema.update_parameters(run.model)
        running = 0.9 * running + 0.1 * loss.item() if step > first_step else loss.item()
        bar.set_postfix(loss=f"{running:.3f}", lr=f"{run.sched.get_last_lr()[0]:.1e}")
        state["step"] = step + 1
        if cfg.checkpoint_every and state["step"] % cfg.checkpoint_every == 0 and state["step"] < steps:
            state["seconds"] += time.time() - t0
            t0 = time.time()
            save_run(run)
    bar.close()
    return running, t0


def sync_epoch_end(run: FitRun, shard_log: ddp.ShardLog) -> None:
    """Make every rank hold rank 0's BatchNorm statistics (parameters are equal already) before validating."""
    epoch = run.state["epoch"]
    shard_log.weights("trained", epoch, parameters_only=True, model=run.model)  # before any sync: DDP's doing alone
    ddp.sync_buffers(run.model)
    if run.ema is not None:
        ddp.sync_buffers(run.ema)
    shard_log.weights("epoch_end", epoch, model=run.model, ema=run.ema)


def record_epoch(run: FitRun, score: float, running: float, log: Callable[[str], None]) -> None:
    """Book the epoch's validation score: best epoch, early stopping, history; then checkpoint."""
    cfg, state = run.cfg, run.state
    epoch = state["epoch"]
    improved = score < state["best"] - 1e-4
    state["history"].append({"epoch": epoch + 1, "val": score, "loss": running, "seconds": state["seconds"]})
    if improved:
        state.update(best=score, best_epoch=epoch + 1, bad_epochs=0)
    else:
        state["bad_epochs"] += 1
    state.update(epoch=epoch + 1, step=0)
    log(f"epoch {epoch + 1}: train loss {running:.4f}, val {'MAE' if 'age' in cfg.head or cfg.head == 'regression' else 'log loss'} "
        f"{score:.4f}{' (best)' if improved else ''}, {state['seconds'] / 60:.1f} min so far")
    save_run(run, best=improved)
    if state["bad_epochs"] >= cfg.patience:
        log(f"early stopping: no improvement for {cfg.patience} epochs")
        state["stopped"] = True
        save_run(run)


def fit(
    model: nn.Module,
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    cfg: FitConfig,
    run_dir: Path,
    device: torch.device,
    resume: bool = False,
    log: Callable[[str], None] = print,
    train_weights: np.ndarray | None = None,
    val_groups: np.ndarray | None = None,
) -> dict:
    """Train ``model`` in place; returns a summary. The best validated weights (the moving average
    when ``cfg.ema_decay`` > 0) are loaded back into ``model`` at the end.

    ``train_weights``: sample images with these weights (``train.sampling.balanced_weights``)
    instead of once each per epoch. ``val_groups`` (a source per validation image): validate on the
    mean of the per-source scores, so the largest source does not decide alone which epoch is kept.

    One function per concern below (as torchvision's reference ``train.py``): ``start_run``,
    ``resume_run``, ``train_one_epoch``, ``validate``, ``record_epoch`` and ``save_run``.
    """
    cfg = replace(cfg, precision=resolve_precision(cfg.precision, device)[0])  # ``auto`` -> what the device runs
    run = start_run(model, len(train_x), cfg, run_dir, device)
    last = run.last
    ddp.check_same_on_all_ranks(resume and last.exists(), f"whether {last} exists")
    if resume and last.exists():
        resume_run(run, log)
    elif last.exists():
        log(f"note: {last} exists but --resume was not given; starting afresh")
    ty = torch.as_tensor(train_y, dtype=torch.float32)
    gen = torch.Generator().manual_seed(cfg.seed)
    train_model = ddp.wrap(model, device)  # DDP (averages gradients across ranks) under torchrun, else model
    if run.world > 1:  # dropout masks (global RNG) and GPU augmentation differ between ranks, as their batches do
        torch.manual_seed(cfg.seed * 1_000_003 + run.rank)
    shard_log = ddp.ShardLog()
    while run.state["epoch"] < cfg.epochs and not run.state.get("stopped"):
        running, t0 = train_one_epoch(run, train_model, train_x, ty, device, gen, train_weights, shard_log)
        sync_epoch_end(run, shard_log)
        running = ddp.mean_over_ranks(running)
        score = validate(run.scored, val_x, val_y, cfg.head, device, val_groups)
        run.state["seconds"] += time.time() - t0
        record_epoch(run, score, running, log)
    if run.main:
        model.load_state_dict(load_checkpoint(run.ckpt_dir / "best.pt")["model"])
    ddp.broadcast_state(model)  # the other ranks need not see rank 0's run folder
    state = run.state
    shard_log.weights("final", state["epoch"] - 1, model=model)
    return {"best_val": state["best"], "best_epoch": state["best_epoch"], "epochs_run": state["epoch"],
            "train_seconds": round(state["seconds"], 1), "history": state["history"], "precision": cfg.precision,
            "weight_decay": cfg.weight_decay}
