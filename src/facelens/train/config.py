"""One training configuration: the options of a run, their defaults, and reading them back from a run folder.

Why one place: ``TrainRequest`` and the options of ``facelens train age|eyes`` used to carry their
own defaults, and they disagreed (8 epochs and no moving average here, 12 epochs and a 0.998
average on the command line), so a run started from Python was not the run the README's command
starts. The CLI now takes every default from ``TrainRequest.defaults(task)``.

Every run writes its request to ``RUN_DIR/config.json``; ``request_from_config`` reads it back
(``facelens train --config RUN_DIR/config.json``), so a run can be repeated with options overridden.

Kept free of torch and OpenCV imports at module level: the CLI reads the defaults at start-up.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from facelens.data.splits import DEFAULT_FRACTIONS
from facelens.tasks import TASKS as TASK_SPECS

TASKS = tuple(TASK_SPECS)  # the task names (``facelens.tasks`` holds what differs between them)

#: Defaults that differ by task: the recipes the shipped models were trained with (README).
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "age": {"epochs": 12, "ema_decay": 0.998, "augment": "photo", "balance": "source", "eye_crop": "tight"},
    "eyes": {"epochs": 5, "ema_decay": 0.998, "augment": "photo", "balance": "source", "eye_crop": "1.6,-0.05"},
}

BALANCE_CHOICES = ("none", "source", "source+age")
#: ``--balance source+age``: label bins also flattened, each bin's share ~ count ** (1 - this) (``balanced_weights``).
AGE_FLATTEN = 0.5

#: Options added after runs were first recorded, with the value every earlier run used: a config.json
#: without them repeats that run, not today's default.
RECORDED_BEFORE: dict[str, Any] = {"eye_crop": "tight"}

#: Keys a run's config.json records beside the request (what was resolved, which versions ran):
#: read past when a run is repeated, never options.
RECORDED_KEYS = ("split_resolved", "facelens", "torch", "device_resolved", "precision_resolved", "distributed")


@dataclass
class TrainRequest:
    """The options of one ``facelens train`` run; ``None`` for a task-dependent option means the
    task's default (``TASK_DEFAULTS``), filled in on construction."""

    task: str  # "age" | "eyes"
    data: list[str]
    out: str
    archs: list[str] = field(default_factory=lambda: ["mobilenetv2"])
    epochs: int | None = None  # per task (TASK_DEFAULTS)
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4  # AdamW's decoupled decay
    precision: str = "fp32"  # training step: fp32, bf16 autocast, or auto (train.loop.resolve_precision)
    seed: int = 0  # training randomness (initial head, epoch order, augmentation) and, unless split_seed, the split
    split_seed: int | None = None  # the train/val/test split's seed; None: seed
    split: str = "auto"  # auto | content | blocks | random
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
    conflict_policy: str = "drop"
    device: str = "auto"
    resume: bool = False
    pretrained: bool = True
    female_class: str | None = None
    male_class: str | None = None
    input_size: int | None = None
    max_images: int | None = None  # cap per split, for smoke tests
    max_steps_per_epoch: int | None = None
    patience: int = 3
    ema_decay: float | None = None  # >0: keep a moving average of the weights (train.loop.make_ema); per task
    frozen_blocks: int = 0  # first backbone blocks kept at their pretrained weights (models.factory.freeze_early_blocks)
    workers: int | None = None
    threads: int | None = None  # CPU threads for torch (default: all cores)
    face_crop: str = "tight"  # age: face template (face.align.FACE_TEMPLATES)
    eye_crop: str | None = None  # eyes: how eyes are cut from faces (face.align.parse_eye_geometry); per task
    augment: str | None = None  # train.augment.AUGMENT_PRESETS; "photo" adds source-style degradations; per task
    balance: str | None = None  # "source": sample so every source has an equal share of each label bin; per task
    age_l1: float = 0.0  # age: weight of |expected age - label| added to the soft-label loss (train.loop.loss_fn)
    label_sigma: float = 1.5  # age: std-dev (years) of the Gaussian soft label (train.loop.soft_age_targets)
    label_sigma_per_year: float = 0.0  # age: >0: the label widens with age, max(label_sigma, this x age)
    init_from: str | None = None  # a trained model.pt whose weights the network starts from (train.init_from)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        for name, value in TASK_DEFAULTS[self.task].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        self.fractions = tuple(self.fractions)

    @property
    def data_seed(self) -> int:
        """The seed that picks the split (and the ``--max-images`` subset): fixed apart from ``seed`` when
        ``split_seed`` is given, so runs that differ only in training randomness score on the same images."""
        return self.seed if self.split_seed is None else self.split_seed

    @classmethod
    def defaults(cls, task: str) -> TrainRequest:
        """The request with every option at its default for ``task`` (the CLI's option defaults)."""
        return cls(task=task, data=[], out="")

    def check(self) -> None:
        """Refuse options that cannot work, before any data is read or the run folder is written.

        Why up front: ``--batch-size 0`` ended in a ZeroDivisionError and ``--epochs 0`` failed only
        after the crops of every image had been built.
        """
        from facelens import devices
        from facelens.face.align import FACE_TEMPLATES, parse_eye_geometry
        from facelens.train.augment import AUGMENT_PRESETS

        for name in ("epochs", "batch_size", "patience", "max_images", "max_steps_per_epoch", "threads", "input_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"--workers must be 0 or more, got {self.workers}")
        if not self.lr > 0:
            raise ValueError(f"--lr must be > 0, got {self.lr}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        if self.face_crop not in FACE_TEMPLATES:
            raise ValueError(f"--face-crop must be one of {', '.join(FACE_TEMPLATES)}, got {self.face_crop!r}")
        parse_eye_geometry(self.eye_crop)
        if self.augment not in AUGMENT_PRESETS:
            raise ValueError(f"--augment must be one of {', '.join(AUGMENT_PRESETS)}, got {self.augment!r}")
        if self.balance not in BALANCE_CHOICES:
            raise ValueError(f"--balance must be one of {', '.join(BALANCE_CHOICES)}, got {self.balance!r}")
        if self.weight_decay < 0:
            raise ValueError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if self.age_l1 < 0:
            raise ValueError(f"--age-l1 must be >= 0, got {self.age_l1}")
        if not self.label_sigma > 0:
            raise ValueError(f"--label-sigma must be > 0, got {self.label_sigma}")
        if self.label_sigma_per_year < 0:
            raise ValueError(f"--label-sigma-per-year must be >= 0, got {self.label_sigma_per_year}")
        if self.init_from is not None:
            if len(self.archs) != 1:
                raise ValueError("--init-from: one --arch at a time (the network the trained model starts)")
            if not Path(self.init_from).is_file():
                raise ValueError(f"--init-from {self.init_from}: no such model file")
        devices.check_device_name(self.device)


def eye_crop_input_size(size: int, eye_crop: str | None) -> int:
    """The input size for a single-eye ``size`` when eyes are cut as ``eye_crop``: a crop of both eyes gets 1.5x
    the side (96 px for 64; whole multiples of 32), which keeps about the single-eye crop's pixels per eye
    (``face.align.BothEyesGeometry``)."""
    return int(round(size * 1.5 / 32) * 32) if eye_crop == "both" else size


def cross_source_recipe(task: str = "age") -> TrainRequest:
    """The short recipe ``facelens cross-source --task TASK`` defaults to (~5 min a run on 2 cores):
    every run of the protocol trains it, so a short recipe is fine as long as the in-source twin
    uses it too (``train.cross_source``). Otherwise the task's own defaults (the shipped recipe)."""
    size = {"age": 96, "eyes": 64}.get(task)
    return TrainRequest(task=task, data=[], out="", epochs=3, input_size=size, max_steps_per_epoch=150,
                        ema_decay=0.99, precision="auto", patience=3)


def _value_error(where: str, name: str, value: Any, kind: str) -> ValueError:
    return ValueError(f"{where}: {name!r} must be {kind}, got {value!r}")


def _coerce(where: str, name: str, value: Any, hint: Any) -> Any:
    """``value`` checked against the field's type ``hint`` (JSON gives lists for tuples, ints for floats)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(where, name, value, inner)
    origin = typing.get_origin(hint)
    if origin is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _value_error(where, name, value, "a list of strings")
        return list(value)
    if origin is tuple:
        if (not isinstance(value, list | tuple) or len(value) != len(args)
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)):
            raise _value_error(where, name, value, f"a list of {len(args)} numbers")
        return tuple(float(v) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise _value_error(where, name, value, "true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _value_error(where, name, value, "a whole number")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _value_error(where, name, value, "a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise _value_error(where, name, value, "a string")
        return value
    raise TypeError(f"{name}: no rule for the field type {hint!r}")  # pragma: no cover - a new field type


def request_from_dict(values: Mapping[str, Any], where: str, overrides: Mapping[str, Any] | None = None,
                      task: str | None = None) -> TrainRequest:
    """A checked ``TrainRequest`` from a config mapping (``where`` names its file in errors), with
    ``overrides`` (options given on the command line) taking precedence over the mapping.

    Unknown keys and values of the wrong type are refused naming ``where``, so a typo in a
    hand-edited config.json cannot silently fall back to a default.
    """
    hints = typing.get_type_hints(TrainRequest)
    names = {f.name for f in fields(TrainRequest)}
    unknown = sorted(set(values) - names - set(RECORDED_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {', '.join(unknown)}; "
                         f"a training config has {', '.join(sorted(names))}")
    if task is not None and values.get("task", task) != task:
        raise ValueError(f"{where}: is a config for the {values['task']!r} task, not {task!r}")
    kwargs = {n: _coerce(where, n, v, hints[n]) for n, v in values.items() if n in names}
    if task is not None:
        kwargs["task"] = task
    for name, value in RECORDED_BEFORE.items():  # runs from before an option existed used its old value
        if name not in kwargs and "facelens" in values:
            kwargs[name] = value
    missing = [n for n in ("task", "data", "out") if n not in kwargs and n not in (overrides or {})]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(missing)}")
    try:
        from_file = TrainRequest(**({"data": [], "out": ""} | kwargs))
        from_file.check()
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc
    merged = kwargs | dict(overrides or {})
    return TrainRequest(**merged)


def request_from_config(path: str | Path, overrides: Mapping[str, Any] | None = None,
                        task: str | None = None) -> TrainRequest:
    """``request_from_dict`` of a run's ``config.json`` (see there); errors name ``path``."""
    path = Path(path)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ValueError(f"{path}: config file not found") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable JSON config ({exc})") from exc
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a training config is a JSON object, not {type(values).__name__}")
    return request_from_dict(values, str(path), overrides, task)
