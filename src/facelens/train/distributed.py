"""Data-parallel training with ``torch.distributed``: the torchrun environment, the process group,
each rank's shard of an epoch, and the few collectives training needs.

Why a module of its own: single-process training must stay exactly as it was, so every helper
here is a no-op (or the identity) when no process group is running, and the loop and the runner
call them unconditionally instead of branching on ``distributed`` everywhere.

Conventions (the usual PyTorch ones, see docs/distributed-training.md):

- one process per device, started by ``torchrun`` (which sets RANK, WORLD_SIZE, LOCAL_RANK,
  LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT); gloo on CPUs, NCCL on GPUs, each process on
  ``cuda:LOCAL_RANK``;
- ``--batch-size`` is per process: the global batch is ``world_size * batch_size``, and ``--lr``
  is used as given (no automatic scaling);
- every rank draws the *same* seeded epoch order (``train.sampling.epoch_order``, weighted when
  ``--balance source``) and takes every ``world_size``-th entry of it, so the shards are disjoint,
  keep the balanced weighting, and give every rank the same number of steps;
- rank 0 alone writes the run folder, logs and draws progress bars.

The maths (``steps_per_epoch``, ``shard_order``, ``interleave_rows``, ``threads_per_process``,
``rank_device_name``, ``env_from``, ``torchrun_command``) are pure functions, tested without a process group.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from facelens.devices import check_device_name
from facelens.errors import DeviceError, DistributedError
from facelens.train.sampling import epoch_order

#: Collective timeout (minutes) unless FACELENS_DIST_TIMEOUT says otherwise. Generous because the
#: other ranks wait in a barrier while rank 0 builds a cold crop cache (face detection on every image).
DEFAULT_TIMEOUT_MINUTES = 120
#: Set to a folder: every rank appends the sample indices of each step and a hash of its weights
#: at each epoch end to ``shards-rank<R>.jsonl`` there (for tests and debugging; off by default).
DEBUG_SHARDS_ENV = "FACELENS_DEBUG_SHARDS"
_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in a torchrun job."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_from(environ: Mapping[str, str]) -> DistEnv | None:
    """The torchrun placement from environment variables, or None outside torchrun.

    Why strict: a half-set environment (RANK without WORLD_SIZE, say a leftover ``export``) would
    otherwise either hang in the rendezvous or silently train alone; both are refused by name.
    """
    present = [k for k in _TORCHRUN_VARS if environ.get(k, "") != ""]
    if not present:
        return None
    missing = [k for k in _TORCHRUN_VARS if k not in present]
    if missing:
        raise ValueError(f"torchrun environment incomplete: {', '.join(present)} set but {', '.join(missing)} "
                         "missing; start facelens with torchrun (or unset those variables)")
    try:
        values = {k: int(environ[k]) for k in (*_TORCHRUN_VARS, "LOCAL_WORLD_SIZE") if environ.get(k, "") != ""}
    except ValueError as exc:
        raise ValueError(f"torchrun environment: {exc} (RANK, WORLD_SIZE, LOCAL_RANK must be integers)") from exc
    env = DistEnv(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"],
                  values.get("LOCAL_WORLD_SIZE", values["WORLD_SIZE"]))
    if env.world_size < 1 or not 0 <= env.rank < env.world_size:
        raise ValueError(f"torchrun environment: RANK={env.rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE={env.world_size})")
    if not 0 <= env.local_rank < env.local_world_size:
        raise ValueError(f"torchrun environment: LOCAL_RANK={env.local_rank} is not in 0..LOCAL_WORLD_SIZE-1 "
                         f"(LOCAL_WORLD_SIZE={env.local_world_size})")
    missing_master = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not environ.get(k)]
    if missing_master:
        raise ValueError(f"torchrun environment: {' and '.join(missing_master)} not set; the processes cannot "
                         "meet without them (torchrun sets them)")
    return env


def steps_per_epoch(n: int, batch_size: int, world_size: int = 1, max_steps: int | None = None) -> int:
    """Optimizer steps of one epoch on every rank: each rank's share of the ``n`` images
    (``ceil(n / world_size)``) in batches of ``batch_size``, capped at ``max_steps``.

    With one process this is ``ceil(n / batch_size)``, the single-process rule.
    """
    if batch_size < 1 or world_size < 1:
        raise ValueError(f"batch size and world size must be at least 1, got {batch_size} and {world_size}")
    steps = math.ceil(math.ceil(n / world_size) / batch_size)
    return min(steps, max_steps) if max_steps else steps


def shard_order(order: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Rank ``rank``'s entries of an epoch order: every ``world_size``-th, starting at ``rank``.

    The order is first padded by wrapping around to a multiple of ``world_size`` (as
    ``torch.utils.data.DistributedSampler`` does), so every rank gets ``ceil(len / world_size)``
    entries and the same number of steps; positions are disjoint across ranks and together
    cover the whole (padded) order. With one process the order is returned unchanged.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    order = np.asarray(order)
    if world_size == 1:
        return order
    pad = -len(order) % world_size
    if pad and len(order):
        order = np.concatenate([order, np.resize(order, pad)])
    return order[rank::world_size]


def rank_epoch_order(n: int, steps: int, batch_size: int, seed: int, epoch: int, weights: np.ndarray | None,
                     rank: int = 0, world_size: int = 1) -> np.ndarray:
    """This rank's image indices for one epoch: the shared seeded ``epoch_order`` (with enough
    weighted draws for ``steps`` batches on *every* rank), then ``shard_order``."""
    return shard_order(epoch_order(n, steps * world_size, batch_size, seed, epoch, weights), rank, world_size)


def interleave_rows(parts: Sequence[np.ndarray], n: int) -> np.ndarray:
    """Undo a strided split: ``parts[r]`` holds rows ``r, r + W, r + 2W, ...`` of an ``n``-row array."""
    world = len(parts)
    if sum(len(p) for p in parts) != n or any(len(p) != len(range(r, n, world)) for r, p in enumerate(parts)):
        raise ValueError(f"parts of lengths {[len(p) for p in parts]} are not a strided split of {n} rows")
    shaped = [p for p in parts if len(p)]
    out = np.zeros((n, *shaped[0].shape[1:]) if shaped else (0, 1), dtype=shaped[0].dtype if shaped else np.float32)
    for r, p in enumerate(parts):
        if len(p):
            out[r::world] = p
    return out


def threads_per_process(threads: int | None, cpu_count: int | None, nproc: int) -> int:
    """CPU threads each of ``nproc`` processes on one machine gets: the total (``--threads``, else
    every core) split evenly, at least one. Why: more threads than cores makes every step slower."""
    total = threads or max(1, cpu_count or 1)
    return max(1, total // max(1, nproc))


def rank_device_name(device: str, local_rank: int, local_world_size: int, cuda_count: int) -> str:
    """The device of one process: ``cpu``, or ``cuda:LOCAL_RANK`` for ``--device cuda`` (and for
    ``auto`` when a GPU is usable), so the processes of a machine never share a GPU.

    ``cuda:N`` is accepted only with one process per machine: with more it would put them all on one GPU.
    """
    check_device_name(device)  # the one naming rule (facelens.devices): "gpu" or "cuda:x" are refused the same way
    name = str(device).strip().lower()  # as given: a bare "cuda" here means cuda:LOCAL_RANK, not cuda:0
    if name == "cpu":
        return "cpu"
    if name == "auto" and cuda_count == 0:
        return "cpu"
    if cuda_count == 0:
        raise DeviceError(f"--device {device}: no CUDA GPU is usable by PyTorch on this machine; use --device cpu")
    if name.startswith("cuda:"):
        if local_world_size > 1:
            raise DeviceError(f"--device {device} would put all {local_world_size} processes of this machine on one "
                              "GPU; under torchrun each process uses cuda:LOCAL_RANK: pass --device cuda "
                              "(choose the GPUs with CUDA_VISIBLE_DEVICES)")
        index = int(name.split(":", 1)[1])
    else:
        index = local_rank
    if index >= cuda_count:
        raise DeviceError(f"--device {device}: process with LOCAL_RANK {local_rank} needs cuda:{index}, but only "
                          f"{cuda_count} GPU(s) are visible; start at most {cuda_count} processes per machine")
    return f"cuda:{index}"


def torchrun_command(python: str, nproc: int, cli_args: Sequence[str]) -> list[str]:
    """The one-machine launch ``facelens train ... --nproc-per-node N`` re-runs itself as."""
    if nproc < 1:
        raise ValueError(f"--nproc-per-node must be at least 1, got {nproc}")
    return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "facelens.cli", *cli_args]


# ------------------------------------------------------------------------------ process group
_state: dict[str, object] = {"owned": False, "device": None}


def init_process_group(env: DistEnv, device_name: str) -> torch.device:
    """Join the job's process group (gloo for CPUs, NCCL for GPUs) and return this rank's device."""
    cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = torch.device(rank_device_name(device_name, env.local_rank, env.local_world_size, cuda_count))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        minutes = float(os.environ.get("FACELENS_DIST_TIMEOUT", DEFAULT_TIMEOUT_MINUTES))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=minutes))
        _state["owned"] = True
    _state["device"] = device
    return device


def shutdown() -> None:
    """Leave the process group if this module created it."""
    if _state["owned"] and dist.is_initialized():
        dist.destroy_process_group()
    _state.update(owned=False, device=None)


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True in rank 0 and in a plain single process: the one that writes files and logs."""
    return rank() == 0


def _comm_device() -> torch.device:
    """Where collective tensors must live: the rank's GPU for NCCL, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def barrier() -> None:
    if active():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def broadcast_object(obj: object, src: int = 0) -> object:
    """``obj`` of rank ``src`` on every rank (pickled: for trusted in-job data such as the prepared split)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_float(value: float, src: int = 0) -> float:
    """Rank ``src``'s number on every rank (keeps decisions such as "best epoch" identical)."""
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_comm_device())
    dist.broadcast(t, src=src)
    return float(t.item())


def mean_over_ranks(value: float) -> float:
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return float(t.item()) / world_size()


def check_same_on_all_ranks(flag: bool, what: str) -> None:
    """Raise on every rank when ranks disagree about ``flag`` (e.g. whether a checkpoint exists)."""
    if not active():
        return
    t = torch.tensor([int(flag), -int(flag)], dtype=torch.int64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    if t[0].item() != -t[1].item():
        raise DistributedError(f"rank {rank()}: the processes disagree about {what} (here: {flag}); under torchrun every "
                           "process must see the same run folder (on several machines: a shared file system)")


def broadcast_tensors(tensors: Sequence[torch.Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` in place with rank ``src``'s values."""
    if not active():
        return
    for t in tensors:
        buf = t.detach().contiguous()  # channels-last weights are not contiguous; collectives want dense rows
        dist.broadcast(buf, src=src)
        if buf.data_ptr() != t.data_ptr():
            t.detach().copy_(buf)


def sync_buffers(module: nn.Module, src: int = 0) -> None:
    """Rank ``src``'s buffers (BatchNorm statistics, EMA counters) on every rank.

    Why: DDP keeps parameters identical through averaged gradients, but each rank updates
    its BatchNorm running statistics with its own batch; at an epoch end they are made rank 0's
    so validation, checkpoints and the moving average are the same on every rank.
    """
    broadcast_tensors(list(module.buffers()), src)


def broadcast_state(module: nn.Module, src: int = 0) -> None:
    """Every tensor of ``module``'s state (parameters and buffers) from rank ``src``."""
    broadcast_tensors(list(module.state_dict().values()), src)


def gather_rows(local: np.ndarray, n: int) -> np.ndarray:
    """Every rank's strided share (``rows[rank::world]``) of an ``n``-row result, reassembled in order on all ranks."""
    if not active():
        return local
    parts: list[np.ndarray | None] = [None] * world_size()
    dist.all_gather_object(parts, np.asarray(local))
    return interleave_rows([p for p in parts if p is not None], n)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel when a process group is running, else ``model`` itself."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


# ------------------------------------------------------------------------------ debug record
def state_hash(module: nn.Module, parameters_only: bool = False) -> str:
    """SHA-256 of every tensor of a module's state (or of its parameters only), by name: equal hashes
    mean identical weights."""
    h = hashlib.sha256()
    tensors = dict(module.named_parameters()) if parameters_only else module.state_dict()
    for name, t in sorted(tensors.items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class ShardLog:
    """Appends what this rank trained on to ``$FACELENS_DEBUG_SHARDS/shards-rank<R>.jsonl`` (off when unset).

    Why: the only direct evidence that ranks saw disjoint shards and stayed in lockstep is
    what each process did; tests read these lines back.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        folder = (os.environ if environ is None else environ).get(DEBUG_SHARDS_ENV)
        self.path = Path(folder) / f"shards-rank{rank()}.jsonl" if folder else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **record: object) -> None:
        if self.path is not None:
            with self.path.open("a") as fh:
                fh.write(json.dumps({"rank": rank(), "world_size": world_size(), **record}) + "\n")

    def step(self, epoch: int, step: int, indices: np.ndarray) -> None:
        if self.path is not None:
            self.write(epoch=epoch, step=step, indices=[int(i) for i in indices])

    def weights(self, event: str, epoch: int, parameters_only: bool = False, **modules: nn.Module | None) -> None:
        if self.path is not None:
            self.write(event=event, epoch=epoch,
                       **{k: state_hash(m, parameters_only) for k, m in modules.items() if m is not None})
