"""Boolean options read as plain flags in --help: `--no-age`, never `--no-age / --no-no-age`; `--resume/--no-resume`
only where a --config file can turn a flag on."""

from __future__ import annotations

import typer

from facelens.cli import app


def _commands(cmd, prefix: str = ""):
    """Every command under ``cmd`` (typer vendors its own click, so duck typing, not isinstance)."""
    yield prefix.strip(), cmd
    if hasattr(cmd, "commands"):
        for name, sub in cmd.commands.items():
            yield from _commands(sub, f"{prefix} {name}")


def test_boolean_flags_are_clean() -> None:
    seen = 0
    for name, cmd in _commands(typer.main.get_command(app)):
        # a command that reads its options from a --config file (``train age|eyes``) can be handed a
        # file that turned a flag on, so every flag there can also be said "off" (``--no-resume``)
        has_config = any(p.name == "config" for p in getattr(cmd, "params", ()))
        for p in cmd.params:
            if not getattr(p, "is_flag", False):
                continue
            seen += 1
            opts = p.opts + p.secondary_opts
            assert not any(o.startswith("--no-no-") for o in opts), (name, opts)
            # an off-by-default flag needs no way to say "off"; an on-by-default one gets a --no- twin
            assert bool(p.secondary_opts) == (bool(p.default) or has_config), (name, opts, p.default)
    assert seen >= 8


def test_predict_help_shows_the_plain_flags() -> None:
    from typer.testing import CliRunner

    out = CliRunner().invoke(app, ["predict", "--help"], env={"COLUMNS": "200"}).output
    for flag in ("--no-age", "--no-eyes", "--resume", "--json"):
        assert flag in out
    assert "--no-no-" not in out and "--no-resume" not in out
