"""The training loop: weight averaging (EMA) validated, kept and resumed; frozen early blocks stay put."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from facelens.agebins import NUM_AGE_BINS
from facelens.models.checkpoint import load_checkpoint
from facelens.train.loop import FitConfig, fit, make_ema


def tiny_age_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, NUM_AGE_BINS))


def tiny_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8), rng.uniform(1, 90, n).astype(np.float32)


def run(tmp: Path, epochs: int, ema_decay: float, resume: bool = False, model: nn.Module | None = None) -> nn.Module:
    model = model or tiny_age_net()
    tx, ty = tiny_data(48, 1)
    vx, vy = tiny_data(16, 2)
    cfg = FitConfig(head="age-bins", epochs=epochs, batch_size=16, ema_decay=ema_decay, patience=99)
    fit(model, tx, ty, vx, vy, cfg, tmp, torch.device("cpu"), resume=resume, log=lambda m: None)
    return model


def test_make_ema_is_off_at_zero_and_rejects_decays_outside_0_1() -> None:
    assert make_ema(tiny_age_net(), 0.0) is None
    with pytest.raises(ValueError, match="ema-decay"):
        make_ema(tiny_age_net(), 1.0)
    with pytest.raises(ValueError, match="ema-decay"):
        make_ema(tiny_age_net(), -0.5)


def test_ema_tracks_parameters_and_batchnorm_statistics() -> None:
    net = tiny_age_net()
    ema = make_ema(net, 0.5)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
        net[1].running_mean.add_(2.0)
    ema.update_parameters(net)  # first update copies
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
        net[1].running_mean.add_(2.0)
    ema.update_parameters(net)  # then halfway: 0.5 * old + 0.5 * new
    for p_ema, p in zip(ema.module.parameters(), net.parameters(), strict=True):
        torch.testing.assert_close(p_ema, p - 0.5)
    torch.testing.assert_close(ema.module[1].running_mean, net[1].running_mean - 1.0)


def test_fit_with_ema_keeps_the_average_not_the_last_weights(tmp_path: Path) -> None:
    model = run(tmp_path, epochs=2, ema_decay=0.9)
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    raw = last["model"]
    kept = model.state_dict()
    for k, v in best["model"].items():
        torch.testing.assert_close(kept[k], v)  # the model handed back is the validated average
    assert any(not torch.equal(raw[k], kept[k]) for k in raw if raw[k].is_floating_point())


def test_resume_must_keep_the_ema_choice_of_the_run(tmp_path: Path) -> None:
    run(tmp_path / "with", epochs=1, ema_decay=0.9)
    run(tmp_path / "with", epochs=2, ema_decay=0.9, resume=True)
    assert load_checkpoint(tmp_path / "with" / "checkpoints" / "last.pt")["state"]["epoch"] == 2
    with pytest.raises(ValueError, match="written with --ema-decay"):
        run(tmp_path / "with", epochs=3, ema_decay=0.0, resume=True)
    run(tmp_path / "without", epochs=1, ema_decay=0.0)
    with pytest.raises(ValueError, match="written without --ema-decay"):
        run(tmp_path / "without", epochs=2, ema_decay=0.9, resume=True)



def test_resume_with_more_epochs_replans_the_schedule_silently(tmp_path: Path) -> None:
    run(tmp_path, epochs=1, ema_decay=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "scheduler before optimizer" warning would fail here
        run(tmp_path, epochs=2, ema_decay=0.0, resume=True)
    sched = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["scheduler"]
    assert sched["total_steps"] == 6 and sched["last_epoch"] == 6  # 3 replayed steps + 3 trained ones


# ------------------------------------------------------------------------------ reproduce commands
RUN_CFG = {"task": "age", "data": ["../shared/data/utkface"], "out": "runs/age", "archs": ["mobilenetv2"],
           "epochs": 12, "batch_size": 64, "lr": 0.001, "seed": 0, "split_resolved": "content", "patience": 12,
           "input_size": None, "ema_decay": 0.998}


def test_reproduce_command_names_the_models_input_size_even_when_the_run_left_it_unset() -> None:
    from facelens.train.commands import reproduce_commands

    # An old run trained at the then-default 112 px must not be "reproduced" at today's default.
    train, evaluate = reproduce_commands(RUN_CFG, "mobilenetv2", shipped_meta={"input_size": 112})
    assert "--input-size 112" in train and "--ema-decay 0.998" in train
    assert evaluate.startswith("facelens evaluate age --model runs/age/mobilenetv2/model.pt")
    explicit = reproduce_commands(RUN_CFG | {"input_size": 144}, "mobilenetv2")[0]
    assert "--input-size 144" in explicit
    shipped = reproduce_commands(RUN_CFG, "mobilenetv2", "age.onnx", {"input_size": 128, "tta": "none"})
    assert "--input-size 128" in shipped[0] and "--no-tta" in shipped[1] and "models/age.onnx" in shipped[2]


def test_reproduce_command_names_frozen_blocks_even_for_runs_older_than_the_option() -> None:
    from facelens.train.commands import reproduce_commands

    assert "--frozen-blocks 4" in reproduce_commands(RUN_CFG | {"frozen_blocks": 4}, "mobilenetv2")[0]
    assert "--frozen-blocks 0" in reproduce_commands(RUN_CFG, "mobilenetv2")[0]


# ------------------------------------------------------------------------------ frozen early blocks
def staged_net() -> nn.Module:
    """A stand-in with the layout of torchvision's MobileNetV2: normaliser, then body.features / classifier."""
    torch.manual_seed(0)
    body = nn.Module()
    body.features = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()),
                                  nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.ReLU()),
                                  nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU()))
    body.classifier = nn.Linear(8, NUM_AGE_BINS)
    body.forward = lambda x: body.classifier(body.features(x).mean((2, 3)))
    return nn.Sequential(nn.Identity(), body)


def test_frozen_blocks_keep_their_weights_while_the_rest_trains(tmp_path: Path) -> None:
    from facelens.models.factory import freeze_early_blocks

    net = staged_net()
    assert freeze_early_blocks(net, 2) == sum(p.numel() for p in net[1].features[:2].parameters())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    run(tmp_path, epochs=1, ema_decay=0.0, model=net)
    after = net.state_dict()
    for name in ("1.features.0.0.weight", "1.features.1.1.bias"):
        torch.testing.assert_close(after[name], before[name])
    assert not torch.equal(after["1.features.2.0.weight"], before["1.features.2.0.weight"])
    assert not torch.equal(after["1.features.0.1.running_mean"], before["1.features.0.1.running_mean"])  # BN adapts


def test_frozen_blocks_reject_bad_counts_and_backbones_without_stages() -> None:
    from facelens.models.factory import check_frozen_blocks, create_model, freeze_early_blocks

    assert freeze_early_blocks(staged_net(), 0) == 0
    with pytest.raises(ValueError, match=">= 0"):
        freeze_early_blocks(staged_net(), -1)
    with pytest.raises(ValueError, match="whole backbone"):
        freeze_early_blocks(staged_net(), 3)
    with pytest.raises(ValueError, match="does not have"):  # the seed baseline starts from scratch
        create_model("seed-cnn", "age", frozen_blocks=2)
    with pytest.raises(ValueError, match=r"whole mobilenetv2 backbone \(19 blocks\)"):
        check_frozen_blocks("mobilenetv2", "age", 19, pretrained=True)
    with pytest.raises(ValueError, match="staged 'features'"):
        freeze_early_blocks(nn.Sequential(nn.Identity(), nn.Linear(2, 1)), 1)


def test_training_refuses_frozen_blocks_without_pretrained_weights(tmp_path: Path) -> None:
    from facelens.train.config import TrainRequest
    from facelens.train.runner import run_training

    req = TrainRequest(task="age", data=[str(tmp_path)], out=str(tmp_path / "run"), pretrained=False, frozen_blocks=4)
    with pytest.raises(ValueError, match="--no-pretrained turned off"):
        run_training(req, log=lambda m: None)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_a_run_with_frozen_blocks_resumes_and_keeps_them_frozen(tmp_path: Path) -> None:
    from facelens.models.factory import freeze_early_blocks

    first = staged_net()
    freeze_early_blocks(first, 1)
    frozen_before = first[1].features[0][0].weight.detach().clone()
    run(tmp_path, epochs=1, ema_decay=0.9, model=first)
    again = staged_net()  # a fresh process: same architecture, same option, weights from the checkpoint
    freeze_early_blocks(again, 1)
    run(tmp_path, epochs=2, ema_decay=0.9, resume=True, model=again)
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["state"]["epoch"] == 2
    torch.testing.assert_close(again[1].features[0][0].weight, frozen_before)


# ------------------------------------------------------------------------------ precision and weight decay
def test_bf16_training_step_runs_and_stays_close_to_fp32(tmp_path: Path) -> None:
    tx, ty = tiny_data(48, 1)
    vx, vy = tiny_data(16, 2)
    summaries, weights = {}, {}
    for precision in ("fp32", "bf16"):
        model = tiny_age_net()
        cfg = FitConfig(head="age-bins", epochs=1, batch_size=16, patience=99, precision=precision)
        summaries[precision] = fit(model, tx, ty, vx, vy, cfg, tmp_path / precision, torch.device("cpu"), log=lambda m: None)
        weights[precision] = model[-1].weight.detach()
        assert all(p.dtype == torch.float32 for p in model.parameters())  # weights and optimizer stay float32
    assert summaries["bf16"]["precision"] == "bf16" and summaries["fp32"]["precision"] == "fp32"
    moved = (weights["fp32"] - tiny_age_net()[-1].weight).abs().max()
    assert moved > 0
    # bfloat16 keeps ~3 significant digits: the two runs land close together, not bit-identical.
    assert (weights["bf16"] - weights["fp32"]).abs().max() < 0.1 * moved
    assert abs(summaries["bf16"]["best_val"] - summaries["fp32"]["best_val"]) < 0.5


def test_bad_precision_and_negative_weight_decay_are_refused_before_the_run_folder(tmp_path: Path) -> None:
    from facelens.train.config import TrainRequest
    from facelens.train.loop import check_precision
    from facelens.train.runner import run_training

    with pytest.raises(ValueError, match="--precision must be one of fp32, bf16"):
        check_precision("fp16", torch.device("cpu"))
    for options, message in (({"precision": "half"}, "--precision"), ({"weight_decay": -0.1}, "--weight-decay")):
        req = TrainRequest(task="age", data=[str(tmp_path)], out=str(tmp_path / "run"), **options)
        with pytest.raises(ValueError, match=message):
            run_training(req, log=lambda m: None)
        assert not (tmp_path / "run").exists()


def test_auto_precision_follows_the_hardware_and_emulated_bf16_is_warned_about(monkeypatch) -> None:
    from facelens.train import loop

    cpu = torch.device("cpu")
    monkeypatch.setattr(loop, "native_bf16", lambda device: False)
    assert loop.resolve_precision("auto", cpu) == ("fp32", None)
    precision, warning = loop.resolve_precision("bf16", cpu)
    assert precision == "bf16" and "emulated" in warning and "--precision fp32 or auto" in warning
    assert loop.resolve_precision("fp32", cpu) == ("fp32", None)
    monkeypatch.setattr(loop, "native_bf16", lambda device: True)
    assert loop.resolve_precision("auto", cpu) == ("bf16", None)
    assert loop.resolve_precision("bf16", cpu) == ("bf16", None)
    with pytest.raises(ValueError, match="--precision must be one of fp32, bf16, auto"):
        loop.resolve_precision("fp16", cpu)


def test_fit_resolves_auto_precision_to_what_the_device_runs(tmp_path: Path, monkeypatch) -> None:
    from facelens.train import loop

    monkeypatch.setattr(loop, "native_bf16", lambda device: False)
    tx, ty = tiny_data(16, 1)
    cfg = FitConfig(head="age-bins", epochs=1, batch_size=16, patience=99, precision="auto")
    summary = fit(tiny_age_net(), tx, ty, tx, ty, cfg, tmp_path, torch.device("cpu"), log=lambda m: None)
    assert summary["precision"] == "fp32"


def test_reproduce_command_names_weight_decay_and_precision() -> None:
    from facelens.train.commands import reproduce_commands

    cmd = reproduce_commands(RUN_CFG | {"weight_decay": 0.05, "precision": "bf16"}, "mobilenetv2")[0]
    assert "--weight-decay 0.05 --precision bf16" in cmd
    assert "--weight-decay 0.0001 --precision fp32" in reproduce_commands(RUN_CFG, "mobilenetv2")[0]
    # A run asked for ``auto``: the command names what it ran, so it repeats the same numerics elsewhere.
    resolved = RUN_CFG | {"precision": "auto", "precision_resolved": "bf16"}
    assert "--precision bf16" in reproduce_commands(resolved, "mobilenetv2")[0]


def test_the_expectation_term_adds_the_weighted_error_of_the_mean_age_and_pulls_it_to_the_label() -> None:
    from facelens.train.loop import expected_age, loss_fn

    torch.manual_seed(0)
    out = torch.randn(8, 101, requires_grad=True)
    y = torch.tensor([3.0, 10, 25, 40, 55, 70, 85, 95])
    plain = loss_fn("age-bins", out, y, 1.5)
    both = loss_fn("age-bins", out, y, 1.5, age_l1=0.5)
    assert float(both - plain) == pytest.approx(0.5 * float((expected_age(out) - y).abs().mean()), rel=1e-5)
    # a gradient step on the expectation term alone moves every mean age towards its label
    term = (expected_age(out) - y).abs().mean()
    term.backward()
    with torch.no_grad():
        moved = expected_age(out - 1.0 * out.grad)
        before = expected_age(out)
    assert torch.all((moved - y).abs() < (before - y).abs())


def test_soft_label_widens_with_age_when_asked():
    from facelens.train.loop import soft_age_targets

    ages = torch.tensor([10.0, 40.0, 60.0])
    bins = torch.arange(101, dtype=torch.float32)

    def spread(t: torch.Tensor) -> list[float]:
        mean = t @ bins
        return [round(float(v), 2) for v in ((t * (bins - mean[:, None]) ** 2).sum(1)).sqrt()]

    assert spread(soft_age_targets(ages, 1.5)) == pytest.approx([1.5, 1.5, 1.5], abs=0.01)
    assert spread(soft_age_targets(ages, 1.5, per_year=0.075)) == pytest.approx([1.5, 3.0, 4.5], abs=0.01)
