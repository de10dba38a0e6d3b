"""The training config checks itself, the `iqlut train` options map onto it, and the parts
of iqlut_gpu.train that need no torch import none (no torch needed for these tests)."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from iqlut_gpu.train.config import MAX_WIDTH, Config, add_arguments


def _parse(*argv) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(["--scale", "2", *argv])


# every check of Config, with the one line it raises (the CLI prints it as
# "iqlut train: error: ..."; tests/test_cli.py runs some through the command)
BAD = [
    (dict(scale=5), "--scale must be 2, 3 or 4"),
    (dict(kind="srlut"), "--kind must be iqlut or ecnn"),
    (dict(time_budget=0), "--time-budget must be positive"),
    (dict(time_budget=-5.0), "--time-budget must be positive"),
    (dict(max_iters=-1), "--max-iters must be 0"),
    (dict(batch=0), "--batch and --patch must be positive"),
    (dict(patch=0), "--batch and --patch must be positive"),
    (dict(bf16="yes"), "--bf16 must be auto, on or off"),
    (dict(ensemble=3), "--ensemble must be one of (1, 2, 4, 8)"),
    (dict(hidden=-1), "--hidden must be between 0 and 16"),
    (dict(hidden=17), "--hidden must be between 0 and 16"),
    (dict(last_k=2), "--last-k must be 1, 3 or 5"),
    (dict(hidden_k="3,x"), "--hidden-k takes odd windows separated by commas, got '3,x'"),
    (dict(hidden_k=""), "--hidden-k takes odd windows separated by commas"),
    (dict(hidden_k="3,2"), "--hidden-k takes 1 to 16 windows, each 1, 3 or 5, got '3,2'"),
    (dict(hidden_k=[7]), "each 1, 3 or 5"),
    (dict(hidden_k=[3] * 17), "--hidden-k takes 1 to 16 windows"),
    (dict(hidden=2, hidden_k="3"), "--hidden 2 and --hidden-k with 1 windows disagree"),
    (dict(width=0), f"--width must be between 1 and {MAX_WIDTH}"),
    (dict(width=MAX_WIDTH + 1), f"--width must be between 1 and {MAX_WIDTH}"),
    (dict(int8_only=True), "--int8-only fine-tunes a trained model: give it with --init MODEL"),
    (dict(kind="ecnn", init="m.safetensors"), "--init starts an IQ-LUT student; it is not for "
                                              "--kind ecnn"),
]


@pytest.mark.parametrize("fields,message", BAD)
def test_config_refuses_each_bad_value_with_one_line(fields, message):
    with pytest.raises(ValueError) as e:
        Config(**fields)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_config_takes_good_values_and_parses_the_windows():
    assert Config(hidden_k="3,3,1").hidden_k == [3, 3, 1]
    assert Config(hidden=3, hidden_k=[3, 3, 1], width=MAX_WIDTH, last_k=1).hidden == 3
    assert Config(int8_only=True, init="m.safetensors").int8_only
    assert Config(kind="ecnn", lam=0.0, ensemble=8, bf16="auto", hidden=0).kind == "ecnn"
    assert Config(scale=3).resolved_out().name == "iqlut_x3.safetensors"
    assert Config(kind="ecnn").resolved_out().name == "ecnn_x4.safetensors"


def test_options_map_onto_the_config():
    args = _parse("--out", "m.safetensors", "--time-budget", "60", "--max-iters", "9",
                  "--seed", "3", "--batch", "8", "--patch", "24", "--lr", "1e-4",
                  "--threads", "2", "--val-every", "30", "--kind", "iqlut", "--lam", "0.25",
                  "--hidden", "3", "--hidden-k", "3,3,1", "--last-k", "1", "--width", "12",
                  "--ensemble", "4", "--bf16", "on", "--resume", "--no-progress")
    cfg = Config.from_args(args)
    assert cfg == Config(scale=2, out="m.safetensors", time_budget=60.0, max_iters=9, seed=3,
                         batch=8, patch=24, lr=1e-4, threads=2, val_every=30.0, lam=0.25,
                         hidden=3, hidden_k=[3, 3, 1], last_k=1, width=12, ensemble=4,
                         bf16="on")
    # the defaults of the options are the config's
    assert Config.from_args(_parse()) == Config(scale=2)
    with pytest.raises(ValueError, match="disagree"):
        Config.from_args(_parse("--hidden", "2", "--hidden-k", "3"))


def test_help_puts_the_research_options_in_the_experimental_group():
    p = argparse.ArgumentParser(prog="iqlut train")
    add_arguments(p)
    groups = {g.title: {o for a in g._group_actions for o in a.option_strings}
              for g in p._action_groups}
    assert groups["experimental"] == {"--kind", "--lam", "--hidden", "--hidden-k", "--last-k",
                                      "--width", "--ensemble", "--int8-only", "--bf16"}
    everyday = {"--scale", "--out", "--time-budget", "--max-iters", "--seed", "--resume",
                "--init", "--batch", "--patch", "--lr", "--threads", "--val-every",
                "--no-progress"}
    assert everyday <= groups["options"]
    text = p.format_help()  # after the usage line: the everyday options, then the group
    assert (text.index("\n  --no-progress") < text.index("\nexperimental:")
            < text.index("\n  --kind"))


def test_validate_and_the_config_import_no_torch(tmp_path):
    """``python -m iqlut_gpu.train.validate`` needs no torch: the validation split and the
    integer runtime it scores with import none (a tiny table on two synthetic images)."""
    code = (
        "import sys\n"
        "import numpy as np\n"
        "from iqlut_gpu.model import default_model\n"
        "from iqlut_gpu.train import config, validate\n"
        "from iqlut_gpu.cli import train_cmd\n"
        "rng = np.random.default_rng(0)\n"
        "imgs = {'a': rng.integers(0, 256, (24, 20, 3), dtype=np.uint8),\n"
        "        'b': rng.integers(0, 256, (18, 26), dtype=np.uint8)}\n"
        "val = validate.Validation(2, 24, images=imgs)\n"
        "s = val.score(validate.runtime_upscaler(default_model(2).with_ensemble(1)))\n"
        "assert set(s['per_image']) == {'a', 'b'} and s['psnr'] > 0, s\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
