"""What makes "age" and "eyes" different, as data: one ``TaskSpec`` per task (issue #19).

Why: the difference between the tasks used to be a string switch (``"face" if task == "age" else
"eye"``) repeated in some forty places, each with its own idea of what the "other" task is. The
spec keeps every per-task choice that is plain data in one frozen object, at the bottom layer so
that data, training, evaluation, inference and the API all read the same one (cf. insightface's
one-object-per-task ``FaceAnalysis`` and timm's typed ``PretrainedCfg``). Behaviour that needs a
higher layer (decoding, metrics, report writers) is looked up in small registries in that layer,
keyed by ``TaskSpec.name``; ``tests/test_tasks.py`` checks that every registry knows every task.

Adding a third task (say ``glasses`` from face crops) takes, besides a ``TaskSpec`` in ``TASKS``:

1. ``facelens/tasks.py``: the spec below (crop kind, label columns, split default, hygiene range,
   balance bins, model file name, primary metric, card texts, allowed heads).
2. ``facelens/models/factory.py``: the task in ``ArchSpec.heads`` / ``input_size`` of each
   architecture offered for it, and a head in ``num_outputs`` if it is a new one.
3. ``facelens/data/prepare.py``: how labels become targets, if they are neither numbers nor the
   female/male classes (``_class_targets``); ``data/readers.py`` only needs the spec's columns.
4. ``facelens/infer/postprocess.py``: a decoder in ``DECODERS`` (raw outputs -> estimates,
   reading the calibration in ``models.meta.ModelMeta``).
5. ``facelens/evaluate/scoring.py``: ``calibrate`` for a new head, and the task in ``METRICS``
   (test metrics) and ``HEADLINES`` (one-line summary).
6. ``facelens/evaluate/groups.py``: the task in ``GROUPERS`` (bias breakdowns per record).
7. ``facelens/evaluate/pipeline.py``: a ``TaskEvaluation`` in ``EVALUATIONS`` (per-image loss and
   worst-case gallery, the loss's name for paired comparisons, the HTML report writer, which must
   exist in ``evaluate/report.py``, and any per-model text table).
8. ``facelens/evaluate/model_card.py``: a ``CardTexts`` in ``CARD_TEXTS`` (out-of-scope uses,
   limitations, sections written from the metrics, per-group table columns).
9. ``facelens/train/config.py``: the task's training recipe in ``TASK_DEFAULTS`` (epochs, EMA,
   augmentation, balance); its task names come from ``TASKS``. ``train/runner.py`` needs nothing
   unless the model metadata gains a new crop kind (its ``crop`` / ``eye_crop`` fields).
   ``facelens/cli.py`` has one sub-command per task: add ``facelens train <task>`` and
   ``facelens evaluate <task>`` there.
10. ``facelens/infer/face_tasks.py``: one ``FaceTask`` class registered in ``FACE_TASKS`` for the
    task's name (its crops of a detected face, its decoding into one estimate per face, what it shows
    of its crops), and a place in ``schema.Face`` for the estimate, named by the class's ``face_field``
    (the result contract is versioned, see ``facelens.schema``). The ``Analyzer`` loops over its tasks
    and needs only a constructor argument for the new model (``facelens/api.py``).

``tests/test_tasks.py`` fails until 1, 2, 4-8 and the registry of 9 are done: it checks each spec for completeness,
against the model factory's heads, the readers and the shipped model, and that every registry above
has every task (10's ``FACE_TASKS`` too); ``tests/test_face_tasks.py`` runs each face task alone in an Analyzer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

#: Ages a face dataset label may take; anything outside is reported and dropped (data hygiene).
AGE_RANGE = (0.0, 120.0)

CropKind = Literal["face", "eye"]


@dataclass(frozen=True)
class TaskSpec:
    """Everything about one task that is plain data (see the module doc for what is not)."""

    name: str
    #: What the model sees: an aligned face crop or one eye's crop (``facelens.data.crops``).
    crop_kind: CropKind
    #: The column of a CSV manifest holding the label (``data.readers.read_csv_manifest``).
    label_column: str
    #: True: labels are numbers (folder names and manifest values parsed as such); False: class names.
    numeric_labels: bool
    #: The label of whole-face photos (UTKFace name field or manifest column) this task reads. For an
    #: eye-crop task such photos are cut into their two eyes (``data.prepare.expand_faces_to_eyes``).
    face_label_column: str
    #: ``--split auto`` resolves to this (``data.prepare.resolve_strategy``).
    default_split: str
    #: Labels outside this range are dropped by the hygiene checks; None: no numeric range.
    label_range: tuple[float, float] | None
    #: ``--balance source`` weighs sources equally within bins of this width (0: within each class).
    balance_bin_width: float
    #: How the training log names one of those bins.
    balance_unit: str
    #: The shipped default model in ``models/`` (``api.default_model_path``).
    model_file: str
    #: The metric a model is judged by first, and whether lower values are better.
    primary_metric: str
    lower_is_better: bool
    #: Output heads a model of this task may have (``models.factory.ArchSpec.heads``).
    heads: tuple[str, ...]
    #: The class the model's probability is about (binary heads); None for other tasks.
    positive_class: str | None
    #: Model card: task title, extra tags, Hugging Face pipeline tag, model-index type, metric list
    #: (metric key, model-index type, readable name) and the one line saying what the model returns.
    title: str
    card_tags: tuple[str, ...]
    pipeline_tag: str | None
    model_index_type: str
    card_metrics: tuple[tuple[str, str, str], ...]
    returns: str
    #: Model card "Intended use": what is estimated, and an example of an aggregate analysis.
    estimates: str
    aggregate_example: str
    #: The shipped model for ready-cut crops (``predict-eyes``), where the photo default cannot read them
    #: (``default_model_path(task, ready_cut=True)``); None: ``model_file`` serves both.
    crop_model_file: str | None = None

    @property
    def crops_from_faces(self) -> bool:
        """Whole-face photos give this task's crops by cutting (eyes), not as they are (faces)."""
        return self.crop_kind == "eye"


AGE = TaskSpec(
    name="age",
    crop_kind="face",
    label_column="age",
    numeric_labels=True,
    face_label_column="age",
    default_split="content",
    label_range=AGE_RANGE,
    balance_bin_width=5.0,
    balance_unit="5-year age bin",
    model_file="age-mobilenetv2.onnx",
    primary_metric="mae",
    lower_is_better=True,
    heads=("age-bins", "regression"),
    positive_class=None,
    title="age estimation from a face photo",
    card_tags=("age-estimation", "image-regression"),
    pipeline_tag=None,
    model_index_type="age-estimation",
    card_metrics=(("mae", "mae", "MAE (years)"), ("rmse", "rmse", "RMSE (years)"), ("r2", "r_squared", "R²"),
                  ("cs5", "cs5", "CS@5 (share within 5 years)"),
                  ("mean_signed_error", "mean_signed_error", "mean signed error (years, + = too old)"),
                  ("coverage", "interval_coverage", "80% interval coverage"),
                  ("mean_interval_width", "mean_interval_width", "mean interval width (years)")),
    returns="It returns an age estimate in years with an 80% interval.",
    estimates="age",
    aggregate_example="the age distribution of a photo archive",
)

EYES = TaskSpec(
    name="eyes",
    crop_kind="eye",
    label_column="label",
    numeric_labels=False,
    face_label_column="gender",
    default_split="blocks",
    label_range=None,
    balance_bin_width=0.0,
    balance_unit="class",
    model_file="eyes-both-mobilenetv2.onnx",
    primary_metric="accuracy",
    lower_is_better=False,
    heads=("binary",),
    positive_class="female",
    title="binary sex classification from the eye region",
    card_tags=("periocular", "image-classification", "binary-classification"),
    pipeline_tag="image-classification",
    model_index_type="image-classification",
    card_metrics=(("accuracy", "accuracy", "accuracy"), ("balanced_accuracy", "balanced_accuracy", "balanced accuracy"),
                  ("roc_auc", "roc_auc", "ROC-AUC"), ("log_loss", "log_loss", "log loss"),
                  ("brier", "brier", "Brier score"), ("ece", "ece", "ECE (15 bins)")),
    returns="It returns a calibrated probability for the label \"female\" (versus \"male\") of the eye region.",
    estimates="a sex label from the eye region",
    aggregate_example="how a periocular classifier's errors depend on image quality, colour and crop size",
    crop_model_file="eyes-mobilenetv2.onnx",
)

#: Every task facelens knows, by name (the order is the order of ``facelens train`` sub-commands).
TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (AGE, EYES)}


def task_spec(name: str) -> TaskSpec:
    """The spec of task ``name``; ValueError naming the valid tasks for any other name."""
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown task {name!r}: choose from {', '.join(TASKS)}") from None


def models_dir() -> Path:
    """Where the shipped default models live: $FACELENS_MODELS, else the package's ``shipped_models``.

    ``shipped_models`` is the repository's ``models/`` (a link in a source checkout, copied into the
    wheel), so a pip-installed facelens finds its defaults without a clone. Here, on the ground floor,
    so evaluation can find the age model that ``predict`` pairs with an eye model.
    """
    env = os.environ.get("FACELENS_MODELS")
    return Path(env) if env else Path(__file__).resolve().parent / "shipped_models"


def default_model_path(task: str, ready_cut: bool = False) -> Path:
    """The shipped default model of ``task`` (its ``TaskSpec.model_file`` in ``models_dir()``); ``ready_cut``: the one
    for ready-cut crops such as the Kaggle single-eye set (``TaskSpec.crop_model_file``, ``predict-eyes``)."""
    spec = task_spec(task)
    return models_dir() / (spec.crop_model_file if ready_cut and spec.crop_model_file else spec.model_file)


__all__ = ["AGE", "AGE_RANGE", "EYES", "TASKS", "TaskSpec", "default_model_path", "models_dir", "task_spec"]
