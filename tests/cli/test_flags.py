"""Every command's flags come from one generator (fastmoco.cli.add_fields) and the registries: each choice is
offered where it is defined, and a usage error is one line, like every other error."""
import subprocess
import sys

import pytest

from fastmoco import ops
from fastmoco.cli.train import build_parser, config_from_args
from fastmoco.models import METHODS, STEMS
from fastmoco.runs.config import CHOICES, PRESETS, TrainConfig

# each command with its positional arguments filled, so that the unknown flag is what it reports
COMMANDS = {"train": [], "lincls": ["run"], "detect": ["random"], "convert": ["import", "a.pth", "out"],
            "export": ["run"], "scenes": ["out"], "shards": ["src", "out"]}


def test_every_field_has_a_flag():
    helptext = build_parser().format_help()
    for name in TrainConfig.__dataclass_fields__:
        assert "--" + name.replace("_", "-") in helptext


@pytest.mark.parametrize("flag", ["--preset", "--method", "--stem", "--head", "--ops", "--optimizer", "--loader"])
def test_a_flag_outside_its_registry_is_one_line(flag, capsys):
    with pytest.raises(SystemExit) as stop:
        config_from_args([flag, "nope"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1, err
    assert err[0].startswith(f"fastmoco-train: error: argument {flag}: invalid choice: 'nope'"), err


def test_the_cli_offers_exactly_the_registries():
    offered = {a.dest: tuple(a.choices) for a in build_parser()._actions if a.choices}
    assert offered == {name: tuple(allowed) for name, allowed in CHOICES.items()}
    assert set(CHOICES["method"]) == set(METHODS) and set(CHOICES["preset"]) == set(PRESETS)
    assert CHOICES["stem"] == STEMS and CHOICES["ops"] == ops.IMPLEMENTATIONS



def test_help_lists_every_registered_preset_and_method_with_its_note():
    text = " ".join(build_parser().format_help().split())
    for m in METHODS.values():
        assert f"{m.name} ({m.about})" in text
        for preset, note in m.preset_notes.items():
            assert f"{preset} ({' '.join(note.split())})" in text
    assert set(PRESETS) == {p for m in METHODS.values() for p in m.presets}


@pytest.mark.parametrize("command", COMMANDS)
def test_a_usage_error_is_one_line_for_every_command(command, tmp_path):
    done = subprocess.run([sys.executable, "-m", f"fastmoco.cli.{command}", *COMMANDS[command], "--no-such-flag"],
                          capture_output=True, text=True, cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"fastmoco-{command}: error: ") and "--no-such-flag" in lines[0], lines
