"""The command lines that rebuild a run's model and its shipped export, from the run's saved config.

Why: every published number comes with the exact command that reproduces it (model cards list
these); kept apart from the runner because it only reads a config dict and writes text.
"""

from __future__ import annotations

import os

from facelens.tasks import task_spec


def export_flags(meta: dict) -> list[str]:
    """``facelens export`` options that rebuild an exported variant described by its metadata."""
    flags = []
    if meta.get("tta") == "none":
        flags.append("--no-tta")
    if meta.get("precision") == "int8":
        flags.append("--int8")
        calibration = meta.get("quantization", {}).get("calibration", "minmax")
        if calibration != "minmax":
            flags.append(f"--int8-calibration {calibration}")
        if meta.get("head") == "age-bins" and meta.get("age_answer_map") is None:
            flags.append("--no-int8-answer-map")
    return flags


def reproduce_commands(cfg: dict, arch: str, shipped_as: str | None = None, shipped_meta: dict | None = None) -> list[str]:
    """The commands that rebuild a run's model (and its shipped export) from its saved config (for model cards).

    ``shipped_meta`` is the metadata of the model the card describes (its input size, export flags).
    """
    def rel(p: str) -> str:  # paths as a user in the repository root would type them
        return os.path.relpath(p) if os.path.isabs(p) else p

    data = " ".join(f"--data {rel(d)}" for d in cfg["data"])
    archs = " ".join(f"--arch {a}" for a in cfg["archs"])
    cmd = (f"facelens train {cfg['task']} {data} --out {rel(cfg['out'])} {archs} --epochs {cfg['epochs']} "
           f"--batch-size {cfg['batch_size']} --lr {cfg['lr']} --seed {cfg['seed']} --split {cfg['split_resolved']}")
    if cfg.get("split_seed") is not None:
        cmd += f" --split-seed {cfg['split_seed']}"
    if cfg.get("patience") is not None:
        cmd += f" --patience {cfg['patience']}"
    # The model's own size, not the run's option: a run that left --input-size unset used the
    # default of its day, and the default may have changed since.
    size = (shipped_meta or {}).get("input_size") or cfg.get("input_size")
    if size:
        cmd += f" --input-size {size}"
    cmd += f" --ema-decay {cfg.get('ema_decay', 0.0)}"  # explicit: the default differs by task
    cmd += f" --frozen-blocks {cfg.get('frozen_blocks', 0)}"
    cmd += f" --weight-decay {cfg.get('weight_decay', 1e-4)} --precision {cfg.get('precision_resolved') or cfg.get('precision', 'fp32')}"
    if task_spec(cfg["task"]).crop_kind == "face":
        cmd += f" --face-crop {cfg.get('face_crop', 'loose')}"
    else:
        cmd += f" --eye-crop {cfg.get('eye_crop', 'tight')}"
    cmd += f" --augment {cfg.get('augment', 'basic')} --balance {cfg.get('balance', 'none')}"
    if cfg.get("age_l1"):
        cmd += f" --age-l1 {cfg['age_l1']}"
    if cfg.get("label_sigma", 1.5) != 1.5:
        cmd += f" --label-sigma {cfg['label_sigma']}"
    if cfg.get("label_sigma_per_year"):
        cmd += f" --label-sigma-per-year {cfg['label_sigma_per_year']}"
    if cfg.get("init_from"):  # the model it started from must be rebuilt first (its own card's commands)
        cmd += f" --init-from {rel(cfg['init_from'])}"
    world = (cfg.get("distributed") or {}).get("world_size", 1)
    if world > 1:  # the same global batch and shards on one machine (a multi-machine run included)
        cmd += f" --nproc-per-node {world}"
    cmds = [cmd]
    model = f"{rel(cfg['out'])}/{arch}/model.pt"
    if shipped_as:
        flags = export_flags(shipped_meta or {})
        flags += [f"--data {rel(d)}" for d in (shipped_meta or {}).get("export", {}).get("data", [])]
        cmds.append(" ".join([f"facelens export --model {model} --out models/{shipped_as}", *flags]))
        cmds.append(f"facelens evaluate {cfg['task']} --model models/{shipped_as} {data} --split test")
    else:
        cmds.append(f"facelens evaluate {cfg['task']} --model {model} {data} --split test")
    return cmds
