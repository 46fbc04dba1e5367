"""Imports run downhill (issue #19): a lower layer never imports a higher one.

Why a test and not a convention: the predictor once pulled in the training loop and evaluation
pulled in the training runner, so loading a model for prediction imported torch's optimizers,
and a change to training could break serving. Every module under ``src/facelens`` is parsed with
``ast`` (imports at any depth, function-local ones included, since a lazy import still couples
the layers), and each ``facelens.*`` import is checked against the layer order below.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: Layers from the bottom up; a module may import its own layer and those below it.
#: The top-level helper modules (errors, fileio, images, devices, ...) form the ground floor.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("facelens.agebins", "facelens.errors", "facelens.fileio", "facelens.devices", "facelens.images",
     "facelens.reduced", "facelens.schema", "facelens.tasks"),
    ("facelens.data", "facelens.face", "facelens.models"),
    ("facelens.infer",),
    ("facelens.evaluate",),
    ("facelens.train",),
    ("facelens.api", "facelens.cli", "facelens.serve", "facelens.ray_engine", "facelens"),
)


def layer_of(module: str) -> int:
    """Index in ``LAYERS`` of the longest prefix naming ``module`` (``facelens`` alone is the package: top)."""
    best, best_len = None, -1
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best_len:
                best, best_len = i, len(name)
    if best is None:
        raise KeyError(f"{module}: in no layer of tests/test_layering.py; add it to LAYERS")
    return best


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """``(line, module)`` of every facelens import in ``tree``, at any depth; relative imports resolved."""
    out = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "facelens":  # ``from facelens import api`` imports a submodule; ``__version__`` is the package's
                out += [(node.lineno, f"facelens.{a.name}" if _is_submodule(a.name) else "facelens") for a in node.names]
            else:
                out.append((node.lineno, target))
    return sorted({(line, m) for line, m in out if m == "facelens" or m.startswith("facelens.")})


def _is_submodule(name: str) -> bool:
    return (SRC / "facelens" / f"{name}.py").is_file() or (SRC / "facelens" / name / "__init__.py").is_file()


def violations(module: str, source: str, is_package: bool = False) -> list[str]:
    """One line per import in ``source`` (module ``module``) that reaches a higher layer."""
    mine = layer_of(module)
    found = []
    for line, target in imported_modules(ast.parse(source), module, is_package):
        if target == "facelens":  # ``import facelens`` is the package, whose __init__ only imports api
            continue
        if layer_of(target) > mine:
            found.append(f"{module} (line {line}) imports {target}: "
                         f"{' / '.join(LAYERS[mine])} must not import {' / '.join(LAYERS[layer_of(target)])}")
    return found


def test_no_module_imports_a_higher_layer() -> None:
    problems = []
    files = sorted((SRC / "facelens").rglob("*.py"))
    assert files, f"no modules found under {SRC}"
    for path in files:
        problems += violations(module_name(path), path.read_text(encoding="utf-8"), path.name == "__init__.py")
    assert not problems, "imports that run back up the layers:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize(("module", "source", "bad"), [
    ("facelens.infer.predictor", "def f():\n    from facelens.train.loop import FlipAverage\n", True),
    ("facelens.infer.predictor", "import facelens.evaluate.metrics as m\n", True),
    ("facelens.data.hygiene", "from facelens.evaluate import metrics\n", True),
    ("facelens.evaluate.pipeline", "from ..train import runner\n", True),
    ("facelens.models", "from facelens import api\n", True),
    ("facelens.train.runner", "from facelens.evaluate.scoring import headline\nfrom facelens.data import prepare\n", False),
    ("facelens.infer.postprocess", "from .predictor import META_KEY\nfrom facelens.models.wrappers import FlipAverage\n", False),
    ("facelens.cli", "from facelens.train.runner import run_training\n", False),
])
def test_the_checker_finds_imports_at_any_depth_and_relative_ones(module: str, source: str, bad: bool) -> None:
    found = violations(module, source, is_package=module == "facelens.models")
    assert bool(found) == bad, found
    if bad:
        assert module in found[0] and "imports facelens." in found[0]


def test_every_module_has_a_layer() -> None:
    for path in (SRC / "facelens").rglob("*.py"):
        layer_of(module_name(path))  # KeyError names a module that was added without a layer


def test_prediction_and_evaluation_load_no_training_code() -> None:
    """The static check, seen at run time: importing the predictor, the API and ``facelens evaluate``
    leaves every ``facelens.train`` module unloaded."""
    code = ("import sys, facelens.api, facelens.infer.predictor, facelens.evaluate.pipeline; "
            "print(sorted(m for m in sys.modules if m.startswith('facelens.train')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(SRC)})
    assert out.stdout.strip() == "[]", out.stdout
