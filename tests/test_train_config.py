"""One training configuration (issue #19): the CLI's defaults are ``TrainRequest``'s, and a run's
config.json repeats the run (``facelens train --config``), with command-line options overriding it."""

from __future__ import annotations

import json
from dataclasses import asdict, fields, replace
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from facelens.cli import app, train_request
from facelens.fileio import write_json_atomic
from facelens.train.config import (
    RECORDED_KEYS,
    TASK_DEFAULTS,
    TrainRequest,
    cross_source_recipe,
    request_from_config,
)

FIELDS = {f.name for f in fields(TrainRequest)}
#: CLI options of ``train age|eyes`` that are not fields of the request.
LAUNCH_ONLY = {"nproc_per_node", "config"}


def _train_command(task: str):
    return typer.main.get_command(app).commands["train"].commands[task]


@pytest.mark.parametrize("task", ["age", "eyes"])
def test_every_cli_default_is_the_requests_default(task: str) -> None:
    defaults = TrainRequest.defaults(task)
    params = {p.name: p.default for p in _train_command(task).params}
    for name, value in params.items():
        if name in LAUNCH_ONLY or name in ("data", "out"):
            continue
        field = "archs" if name == "arch" else name
        assert field in FIELDS, f"train {task} --{name.replace('_', '-')} is not a TrainRequest field"
        if name == "arch":
            assert value is None  # None: the request's default list
            continue
        assert value == getattr(defaults, field), f"train {task} --{name}: CLI {value!r} != config {getattr(defaults, field)!r}"
    built = train_request(task, {k: v for k, v in params.items() if k not in LAUNCH_ONLY} | {"data": ["d"], "out": "o"},
                          given=set())
    assert built == replace(defaults, data=["d"], out="o")


def test_cross_source_defaults_are_its_recipes() -> None:
    """Every option defaults to the short recipe; None means "the task's recipe" (crop size, eye crop)."""
    recipe = cross_source_recipe()
    params = {p.name: p.default for p in typer.main.get_command(app).commands["cross-source"].params}
    for name, value in params.items():
        if name not in ("data", "out") and value is not None:
            want = recipe.archs[0] if name == "arch" else getattr(recipe, name)
            assert value == want, f"cross-source --{name}: CLI {value!r} != recipe {want!r}"
    assert [params["input_size"], params["eye_crop"]] == [None, None]
    eyes = cross_source_recipe("eyes")
    assert (eyes.input_size, eyes.eye_crop, eyes.epochs) == (64, TASK_DEFAULTS["eyes"]["eye_crop"], recipe.epochs)


def test_task_defaults_fill_only_what_was_not_given() -> None:
    assert TrainRequest.defaults("age").epochs == TASK_DEFAULTS["age"]["epochs"]
    assert TrainRequest.defaults("eyes").ema_decay == TASK_DEFAULTS["eyes"]["ema_decay"]
    assert TrainRequest(task="age", data=[], out="", epochs=2, ema_decay=0.0).epochs == 2
    with pytest.raises(ValueError, match="task must be one of"):
        TrainRequest(task="gender", data=[], out="")


def _run_config(tmp_path: Path, req: TrainRequest) -> Path:
    """A config.json as ``train.runner`` writes it: the request plus what the run resolved."""
    path = tmp_path / "run" / "config.json"
    write_json_atomic(path, asdict(req) | {"split_resolved": "content", "facelens": "0", "torch": "2",
                                           "device_resolved": "cpu", "precision_resolved": req.precision,
                                           "distributed": None})
    return path


def test_a_runs_config_json_reads_back_as_the_same_request(tmp_path: Path) -> None:
    req = TrainRequest(task="eyes", data=["a", "b"], out=str(tmp_path / "run"), archs=["seed-cnn", "mobilenetv2"],
                       epochs=3, lr=0.002, fractions=(0.5, 0.2, 0.3), female_class="f", male_class="m",
                       max_images=40, eye_crop="wide", precision="bf16")
    path = _run_config(tmp_path, req)
    assert set(json.loads(path.read_text())) == FIELDS | set(RECORDED_KEYS)
    assert request_from_config(path) == req
    assert request_from_config(path, {"epochs": 5}) == replace(req, epochs=5)


@pytest.fixture
def captured(monkeypatch) -> list[TrainRequest]:
    """``run_training`` replaced by a recorder: nothing trains."""
    seen: list[TrainRequest] = []
    monkeypatch.setattr("facelens.train.runner.run_training", lambda req, log=print: seen.append(req) or {})
    return seen


def test_cli_config_repeats_the_run_and_given_options_override_it(tmp_path: Path, captured) -> None:
    req = TrainRequest(task="age", data=[str(tmp_path / "d")], out=str(tmp_path / "run"), epochs=4, batch_size=16,
                       augment="basic", face_crop="loose")
    path = _run_config(tmp_path, req)
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--config", str(path)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["train", "age", "--config", str(path), "--epochs", "2", "--out", str(tmp_path / "new"),
                              "--arch", "seed-cnn"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["train", "--config", str(path), "age", "--no-pretrained"])
    assert res.exit_code == 0, res.output
    assert captured == [req, replace(req, epochs=2, out=str(tmp_path / "new"), archs=["seed-cnn"]),
                        replace(req, pretrained=False)]


@pytest.mark.parametrize(("edit", "message"), [
    ({"epoch": 3}, "unknown option(s) epoch"),
    ({"epochs": "three"}, "'epochs' must be a whole number"),
    ({"fractions": [0.5, 0.5]}, "'fractions' must be a list of 3 numbers"),
    ({"pretrained": "yes"}, "'pretrained' must be true or false"),
    ({"epochs": 0}, "--epochs must be at least 1"),
    ({"augment": "heavy"}, "--augment must be one of"),
])
def test_bad_config_files_are_refused_naming_the_file(tmp_path: Path, captured, edit: dict, message: str) -> None:
    path = _run_config(tmp_path, TrainRequest(task="age", data=["d"], out=str(tmp_path / "run")))
    path.write_text(json.dumps(json.loads(path.read_text()) | edit))
    with pytest.raises(ValueError, match=r"config\.json: .*" + message.replace("(", r"\(").replace(")", r"\)")):
        request_from_config(path)
    res = CliRunner().invoke(app, ["train", "age", "--config", str(path)])
    assert res.exit_code == 2 and str(path) in " ".join(res.output.split()) and not captured


def test_config_of_another_task_missing_file_and_missing_data_are_refused(tmp_path: Path, captured) -> None:
    path = _run_config(tmp_path, TrainRequest(task="age", data=["d"], out=str(tmp_path / "run")))
    runner = CliRunner()
    res = runner.invoke(app, ["train", "eyes", "--config", str(path)])
    assert res.exit_code == 2 and "not 'eyes'" in res.output
    res = runner.invoke(app, ["train", "--config", str(tmp_path / "nope.json")])
    assert res.exit_code == 2 and "config file not found" in res.output
    res = runner.invoke(app, ["train", "age", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "--data needed" in res.output
    assert not captured


def test_no_resume_overrides_a_config_that_resumed(tmp_path: Path, captured) -> None:
    """A config.json of a resumed run says resume=true; ``--no-resume`` repeats that run from scratch."""
    req = TrainRequest(task="age", data=[str(tmp_path / "d")], out=str(tmp_path / "run"), resume=True)
    path = str(_run_config(tmp_path, req))
    runner = CliRunner()
    for args in (["train", "--config", path], ["train", "--config", path, "age", "--no-resume"],
                 ["train", "age", "--config", path, "--no-resume"], ["train", "age", "--config", path, "--resume"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 0, (args, res.output)
    assert captured == [req, replace(req, resume=False), replace(req, resume=False), req]
    fresh = str(_run_config(tmp_path / "fresh", replace(req, resume=False)))
    assert runner.invoke(app, ["train", "age", "--config", fresh, "--resume"]).exit_code == 0
    assert captured[-1] == req


#: The options of ``train age|eyes`` in --help order, as they were before the two signatures were folded
#: into one list (issue #19), plus --split-seed and --init-from (added since): the fold must not lose, add or reorder any.
AGE_OPTIONS = ["data", "out", "arch", "nproc_per_node", "config", "epochs", "batch_size", "lr", "seed", "split_seed", "split",
               "conflict_policy", "resume", "device", "pretrained", "input_size", "init_from", "patience", "ema_decay",
               "frozen_blocks", "weight_decay", "precision", "max_images", "max_steps_per_epoch", "workers", "threads",
               "face_crop", "augment", "balance", "age_l1", "label_sigma", "label_sigma_per_year"]
EYES_OPTIONS = ["data", "out", "arch", "nproc_per_node", "config", "epochs", "batch_size", "lr", "seed", "split_seed", "split",
                "female_class", "male_class", "conflict_policy", "resume", "device", "pretrained", "input_size", "init_from",
                "patience", "ema_decay", "frozen_blocks", "weight_decay", "precision", "max_images",
                "max_steps_per_epoch", "workers", "threads", "augment", "balance", "eye_crop"]
OWN_OPTIONS = {"age": {"face_crop", "age_l1", "label_sigma", "label_sigma_per_year"}, "eyes": {"female_class", "male_class", "eye_crop"}}


def test_train_age_and_eyes_share_every_option_but_their_own() -> None:
    age, eyes = _train_command("age"), _train_command("eyes")
    assert [p.name for p in age.params] == AGE_OPTIONS
    assert [p.name for p in eyes.params] == EYES_OPTIONS
    assert set(AGE_OPTIONS) - OWN_OPTIONS["age"] == set(EYES_OPTIONS) - OWN_OPTIONS["eyes"]
    by_name = {p.name: p for p in eyes.params}
    for p in age.params:
        if p.name in OWN_OPTIONS["age"]:
            continue
        q = by_name[p.name]
        assert (p.opts, p.secondary_opts, p.multiple, p.is_flag) == (q.opts, q.secondary_opts, q.multiple, q.is_flag)
        assert p.help == q.help or p.name == "split", p.name  # split: each task's own split modes
    assert all(p.help for p in age.params if p.name in ("split", "conflict_policy", "resume", "face_crop"))
    assert age.help.startswith("Train an age model") and eyes.help.startswith("Train an eye-crop sex classifier")
    for task, names in (("age", AGE_OPTIONS), ("eyes", EYES_OPTIONS)):
        out = " ".join(CliRunner().invoke(app, ["train", task, "--help"], env={"COLUMNS": "200"}).output.split())
        assert all(f"--{n.replace('_', '-')}" in out for n in names) and "--no-resume" in out


def test_label_sigma_is_checked_and_repeated_by_the_card_command() -> None:
    from facelens.train.commands import reproduce_commands

    with pytest.raises(ValueError, match="--label-sigma"):
        TrainRequest(task="age", data=["d"], out="o", label_sigma=0.0).check()
    cfg = asdict(TrainRequest(task="age", data=["d"], out="o", label_sigma=3.0)) | {"split_resolved": "content"}
    assert reproduce_commands(cfg, "mobilenetv2")[0].endswith("--label-sigma 3.0")
    assert "--label-sigma" not in reproduce_commands(cfg | {"label_sigma": 1.5}, "mobilenetv2")[0]


def test_split_seed_fixes_the_split_apart_from_the_training_seed() -> None:
    from facelens.train.commands import reproduce_commands

    assert TrainRequest(task="age", data=["d"], out="o", seed=3).data_seed == 3
    req = TrainRequest(task="age", data=["d"], out="o", seed=3, split_seed=0)
    assert (req.seed, req.data_seed) == (3, 0)
    cfg = asdict(req) | {"split_resolved": "content"}
    assert "--seed 3 --split content --split-seed 0" in reproduce_commands(cfg, "mobilenetv2")[0]
    assert "--split-seed" not in reproduce_commands(cfg | {"split_seed": None}, "mobilenetv2")[0]
