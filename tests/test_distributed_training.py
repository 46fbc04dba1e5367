"""Data-parallel training under torchrun: the sharding maths, the launch shortcut, and a real
two-process gloo run on loopback that trains, resumes, and keeps both processes in lockstep.

The end-to-end test reads what each process did from the ``FACELENS_DEBUG_SHARDS`` record
(``train.distributed.ShardLog``): the sample indices of every step and hashes of the weights.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import facelens
from facelens.errors import DeviceError
from facelens.train.distributed import (
    DEBUG_SHARDS_ENV,
    DistEnv,
    env_from,
    interleave_rows,
    rank_device_name,
    rank_epoch_order,
    shard_order,
    steps_per_epoch,
    threads_per_process,
    torchrun_command,
)
from facelens.train.sampling import epoch_order


# ------------------------------------------------------------------------------ pure maths
def test_steps_per_epoch_is_the_single_process_rule_for_one_process_and_splits_the_images_for_more() -> None:
    for n in (1, 57, 64, 65):
        assert steps_per_epoch(n, 8) == math.ceil(n / 8)
    assert steps_per_epoch(57, 8, world_size=2) == 4  # 29 images per rank
    assert steps_per_epoch(64, 8, world_size=2) == 4
    assert steps_per_epoch(65, 8, world_size=4) == 3  # 17 per rank
    assert steps_per_epoch(1000, 8, world_size=2, max_steps=5) == 5
    with pytest.raises(ValueError, match="at least 1"):
        steps_per_epoch(10, 0)


def test_shards_are_disjoint_equal_sized_and_cover_the_padded_order() -> None:
    order = np.random.default_rng(0).permutation(11)
    for world in (2, 3, 4):
        shards = [shard_order(order, r, world) for r in range(world)]
        assert {len(s) for s in shards} == {math.ceil(11 / world)}  # same number of steps on every rank
        padded = np.concatenate([order, order[: -11 % world]])
        for r, s in enumerate(shards):  # rank r holds positions r, r + world, ... of the padded order
            np.testing.assert_array_equal(s, padded[r::world])
        assert sorted(np.concatenate(shards).tolist()) == sorted(padded.tolist())
    np.testing.assert_array_equal(shard_order(order, 0, 1), order)
    with pytest.raises(ValueError, match="rank 2 is not in 0..1"):
        shard_order(order, 2, 2)


def test_one_process_trains_on_exactly_the_single_process_order() -> None:
    w = np.random.default_rng(1).uniform(0.2, 3, 40)
    for weights in (None, w):
        np.testing.assert_array_equal(rank_epoch_order(40, 5, 8, 3, 2, weights), epoch_order(40, 5, 8, 3, 2, weights))


def test_unweighted_epoch_is_a_permutation_split_between_ranks() -> None:
    n, batch, world = 48, 8, 2
    steps = steps_per_epoch(n, batch, world)
    shards = [rank_epoch_order(n, steps, batch, 0, 1, None, r, world) for r in range(world)]
    assert set(shards[0]).isdisjoint(shards[1])
    assert sorted(np.concatenate(shards).tolist()) == list(range(n))
    again = rank_epoch_order(n, steps, batch, 0, 1, None, 1, world)  # another process computes the same shard
    np.testing.assert_array_equal(again, shards[1])
    assert not np.array_equal(rank_epoch_order(n, steps, batch, 0, 2, None, 0, world), shards[0])  # a new epoch


def test_weighted_shards_keep_the_balanced_sampling() -> None:
    n, batch, world, steps = 10, 50, 2, 40
    weights = np.ones(n)
    weights[0] = 9.0  # image 0 is drawn half the time
    shards = [rank_epoch_order(n, steps, batch, 0, 0, weights, r, world) for r in range(world)]
    assert all(len(s) == steps * batch for s in shards)  # enough draws for every rank's steps
    merged = interleave_rows(shards, world * steps * batch)
    np.testing.assert_array_equal(merged, epoch_order(n, steps * world, batch, 0, 0, weights))  # one shared draw
    for s in shards:
        assert 0.45 < np.mean(s == 0) < 0.55 and set(s.tolist()) == set(range(n))


def test_interleave_rows_undoes_a_strided_split() -> None:
    rows = np.arange(14).reshape(7, 2)
    for world in (1, 2, 3, 8):
        np.testing.assert_array_equal(interleave_rows([rows[r::world] for r in range(world)], 7), rows)
    with pytest.raises(ValueError, match="not a strided split of 7 rows"):
        interleave_rows([rows[:3], rows[3:]], 7)


def test_threads_are_split_between_the_processes_of_a_machine() -> None:
    assert threads_per_process(None, 2, 2) == 1
    assert threads_per_process(8, 2, 2) == 4
    assert threads_per_process(None, 16, 3) == 5
    assert threads_per_process(1, 2, 4) == 1  # never zero


def test_each_process_of_a_machine_gets_its_own_gpu() -> None:
    assert rank_device_name("cpu", 1, 2, cuda_count=4) == "cpu"
    assert rank_device_name("auto", 1, 2, cuda_count=0) == "cpu"
    assert rank_device_name("auto", 1, 2, cuda_count=2) == "cuda:1"
    assert rank_device_name("cuda", 3, 4, cuda_count=4) == "cuda:3"
    assert rank_device_name("cuda:2", 0, 1, cuda_count=4) == "cuda:2"  # one process per machine may pick its GPU
    with pytest.raises(DeviceError, match="all 2 processes of this machine on one GPU"):
        rank_device_name("cuda:0", 1, 2, cuda_count=2)
    with pytest.raises(DeviceError, match="LOCAL_RANK 2 needs cuda:2, but only 2 GPU"):
        rank_device_name("cuda", 2, 3, cuda_count=2)
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        rank_device_name("cuda", 0, 2, cuda_count=0)
    for bad in ("gpu", "cuda:x"):
        with pytest.raises(DeviceError, match="--device must be auto, cpu, cuda or cuda:N"):
            rank_device_name(bad, 0, 1, cuda_count=1)


def test_the_torchrun_environment_is_read_strictly() -> None:
    full = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": "29500"}
    assert env_from({}) is None
    assert env_from({"PATH": "/bin"}) is None
    assert env_from(full) == DistEnv(rank=1, world_size=4, local_rank=1, local_world_size=2)
    with pytest.raises(ValueError, match="RANK set but WORLD_SIZE, LOCAL_RANK missing"):
        env_from({"RANK": "0"})
    with pytest.raises(ValueError, match="RANK=4 is not in 0..WORLD_SIZE-1"):
        env_from(full | {"RANK": "4"})
    with pytest.raises(ValueError, match="MASTER_PORT not set"):
        env_from({k: v for k, v in full.items() if k != "MASTER_PORT"})
    with pytest.raises(ValueError, match="must be integers"):
        env_from(full | {"LOCAL_RANK": "one"})


# ------------------------------------------------------------------------------ the --nproc-per-node shortcut
def test_nproc_per_node_relaunches_the_same_command_under_torchrun(tmp_path: Path, monkeypatch) -> None:
    from facelens.cli import app

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    launched: dict = {}

    class FakePopen:
        def __init__(self, cmd, env):
            launched.update(cmd=cmd, env=env)

        def wait(self) -> int:
            return 3

    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    args = ["train", "eyes", "--data", "a", "--data", "b c", "--out", str(tmp_path / "run"), "--epochs", "2",
            "--no-pretrained", "--nproc-per-node", "2", "--resume", "--lr", "0.002"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 3, res.output  # torchrun's exit code is the command's
    cmd = launched["cmd"]
    head = torchrun_command(sys.executable, 2, [])
    assert cmd[: len(head)] == head
    rest = cmd[len(head) :]
    assert rest[:2] == ["train", "eyes"] and "--nproc-per-node" not in rest
    assert rest[rest.index("--threads") + 1] == "1" and launched["env"]["OMP_NUM_THREADS"] == "1"
    for option in (["--data", "a"], ["--data", "b c"], ["--epochs", "2"], ["--lr", "0.002"]):
        i = rest.index(option[1])
        assert rest[i - 1] == option[0]
    assert "--no-pretrained" in rest and "--resume" in rest
    assert "--batch-size" not in rest  # defaults stay defaults: only what was given is passed on


def test_nproc_per_node_is_refused_inside_torchrun_and_below_one(tmp_path: Path, monkeypatch) -> None:
    from facelens.cli import app

    base = ["train", "eyes", "--data", str(tmp_path), "--out", str(tmp_path / "run")]
    res = CliRunner().invoke(app, [*base, "--nproc-per-node", "0"])
    assert res.exit_code == 2 and "--nproc-per-node must be at least 1" in res.output
    for var, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1"),
                       ("MASTER_PORT", "1")):
        monkeypatch.setenv(var, value)
    res = CliRunner().invoke(app, [*base, "--nproc-per-node", "2"])
    assert res.exit_code == 2 and "already runs under torchrun" in res.output
    res = CliRunner().invoke(app, ["cross-source", "--data", str(tmp_path), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "cross-source does not run under torchrun" in res.output
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------ two real processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _eye_set(root: Path, per_class: int = 40) -> Path:
    """Two class folders of tiny synthetic eye crops (a colour cue makes the classes learnable)."""
    from PIL import Image

    for c, name in enumerate(("female", "male")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            a = np.random.default_rng(1000 * c + i).integers(0, 256, (24, 24, 3), dtype=np.uint8)
            a[..., c] = 200
            Image.fromarray(a).save(root / name / f"{i}.jpg", quality=90)
    return root


def _records(folder: Path) -> dict[int, list[dict]]:
    return {r: [json.loads(line) for line in (folder / f"shards-rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)}


@pytest.mark.slow
def test_two_gloo_processes_train_disjoint_shards_in_lockstep_and_resume(tmp_path: Path) -> None:
    data, run = _eye_set(tmp_path / "eyes"), tmp_path / "run"
    src = str(Path(facelens.__file__).resolve().parents[1])
    env = os.environ | {"PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
                        "FACELENS_CACHE": str(tmp_path / "cache"), "MASTER_ADDR": "127.0.0.1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        env.pop(var, None)
    train = ["train", "eyes", "--data", str(data), "--out", str(run), "--split", "random", "--batch-size", "8",
             "--input-size", "48", "--no-pretrained", "--device", "cpu", "--ema-decay", "0.9", "--seed", "3"]

    def launch(cmd: list[str], shards: Path) -> str:
        proc = subprocess.run(cmd, env=env | {DEBUG_SHARDS_ENV: str(shards)}, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stderr

    # 1: the shortcut, stopped after epoch 1; 2: torchrun itself, static rendezvous on loopback, resumed to epoch 2.
    first = launch([sys.executable, "-m", "facelens.cli", *train, "--epochs", "1", "--nproc-per-node", "2"],
                   tmp_path / "shards1")
    assert "x 2 processes (global batch 16)" in first and first.count("epoch 1: train loss") == 1  # rank 0 logs alone
    second = launch([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
                     "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "facelens.cli", *train,
                     "--epochs", "2", "--resume", "--threads", "1"], tmp_path / "shards2")
    assert "resumed from" in second and "epoch 2, step 0" in second

    meta = json.loads((run / "mobilenetv2" / "meta.json").read_text())
    assert meta["training"]["world_size"] == 2 and meta["training"]["global_batch_size"] == 16
    assert meta["training"]["epochs_run"] == 2 and len(meta["training"]["history"]) == 2
    config = json.loads((run / "config.json").read_text())
    assert config["distributed"]["world_size"] == 2 and config["distributed"]["backend"] == "gloo"
    n_train = meta["counts"]["train"]
    steps = steps_per_epoch(n_train, 8, 2)

    for shards, epochs in ((tmp_path / "shards1", [0]), (tmp_path / "shards2", [1])):  # the resume re-ran nothing
        recs = _records(shards)
        for epoch in epochs:
            seen = {}
            for r in (0, 1):
                steps_seen = [x for x in recs[r] if x.get("epoch") == epoch and "step" in x]
                assert [x["step"] for x in steps_seen] == list(range(steps))  # same number of steps on both ranks
                seen[r] = np.concatenate([x["indices"] for x in steps_seen])
                expected = rank_epoch_order(n_train, steps, 8, 3, epoch, None, r, 2)[: steps * 8]
                np.testing.assert_array_equal(seen[r], expected)  # the shared seeded order, strided by rank
            pad = -n_train % 2
            assert len(set(seen[0]) & set(seen[1])) == pad  # disjoint but for the wrap-around padding
            assert set(seen[0]) | set(seen[1]) == set(range(n_train))  # together: the whole training split
        assert {x.get("epoch") for x in recs[0] if "step" in x} == set(epochs)
        for event in ("trained", "epoch_end", "final"):  # DDP kept the parameters equal; then the whole state
            hashes = [[(x["epoch"], x.get("model"), x.get("ema")) for x in recs[r] if x.get("event") == event] for r in (0, 1)]
            assert hashes[0] and hashes[0] == hashes[1], event
    trained = [x["model"] for x in _records(tmp_path / "shards2")[0] if x.get("event") == "trained"]
    before = [x["model"] for x in _records(tmp_path / "shards1")[0] if x.get("event") == "trained"]
    assert trained != before  # epoch 2 moved the weights


def test_reproduce_command_of_a_data_parallel_run_names_its_process_count() -> None:
    from facelens.train.commands import reproduce_commands

    cfg = {"task": "eyes", "data": ["d"], "out": "runs/x", "archs": ["mobilenetv2"], "epochs": 1, "batch_size": 8,
           "lr": 0.001, "seed": 0, "split_resolved": "blocks"}
    assert "--nproc-per-node" not in reproduce_commands(cfg, "mobilenetv2")[0]
    assert reproduce_commands(cfg | {"distributed": {"world_size": 4}}, "mobilenetv2")[0].endswith("--nproc-per-node 4")


_COLLECTIVES = """
import json, os
import numpy as np, torch
from facelens.errors import DistributedError
from facelens.train import distributed as ddp

ddp.init_process_group(ddp.env_from(os.environ), "cpu")
r, w = ddp.rank(), ddp.world_size()
rows = np.arange(14, dtype=np.float32).reshape(7, 2)
out = {"gathered": ddp.gather_rows(rows[r::w], 7).tolist(), "broadcast": ddp.broadcast_float(10.0 + r),
       "mean": ddp.mean_over_ranks(float(r)), "main": ddp.is_main()}
bn = torch.nn.BatchNorm2d(2)
bn.running_mean.fill_(r + 1.0)
ddp.sync_buffers(bn)
conv = torch.nn.Conv2d(2, 2, 3).to(memory_format=torch.channels_last)  # not contiguous: the copy-back path
torch.nn.init.constant_(conv.weight, float(r + 5))
ddp.broadcast_state(conv)
out.update(bn=bn.running_mean.tolist(), conv=conv.weight.flatten().tolist())
try:
    ddp.check_same_on_all_ranks(r == 0, "a test flag")
    out["disagree"] = None
except DistributedError as exc:
    out["disagree"] = str(exc)
ddp.check_same_on_all_ranks(True, "a shared flag")
ddp.shutdown()
print(json.dumps(out))
"""


def test_collectives_of_a_real_two_rank_gloo_group(tmp_path: Path) -> None:
    src = str(Path(facelens.__file__).resolve().parents[1])
    port = str(_free_port())
    procs = []
    for r in (0, 1):
        env = os.environ | {"RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": str(r), "LOCAL_WORLD_SIZE": "2",
                            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
                            "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
        procs.append(subprocess.Popen([sys.executable, "-c", _COLLECTIVES], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr[-2000:]
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    rows = np.arange(14, dtype=np.float32).reshape(7, 2).tolist()
    for r, out in enumerate(outs):
        assert out["main"] == (r == 0)
        assert out["gathered"] == rows  # each rank's strided share, reassembled in order on every rank
        assert out["broadcast"] == 10.0 and out["mean"] == 0.5
        assert out["bn"] == [1.0, 1.0]  # rank 0's BatchNorm statistics everywhere
        assert set(out["conv"]) == {5.0}
        assert "disagree about a test flag" in out["disagree"]  # raised on every rank, naming what differs


def test_only_a_follow_on_failure_of_another_rank_is_shortened(monkeypatch) -> None:
    from facelens.cli import _peer_lost

    gloo = RuntimeError("[gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:386")
    monkeypatch.setenv("RANK", "1")
    assert _peer_lost(gloo)
    assert not _peer_lost(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))  # a real bug keeps its traceback
    monkeypatch.setenv("RANK", "0")
    assert not _peer_lost(gloo)  # rank 0 reports everything in full
