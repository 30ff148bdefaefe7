"""The command line: ``python -m dcspass plan|evaluate``, in process and as a real subprocess."""

from __future__ import annotations

import importlib.util
import inspect
import json
import subprocess
import sys

import pytest
import torch

import dcspass
from dcspass.cli import build_parser, main, model_from_spec
from dcspass.errors import ConfigError


def _run(*args: str) -> subprocess.CompletedProcess:
    """``python -W error -m dcspass ARGS`` (any warning, runpy's included, fails the command)."""
    return subprocess.run(
        [sys.executable, "-W", "error", "-m", "dcspass", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


# -- plan -------------------------------------------------------------------------------------------


def test_plan_in_process(capsys):
    assert main(["plan", "torchvision:resnet18", "--policy", "index:6,11", "--n", "2"]) == 0
    out = capsys.readouterr().out
    assert "2 of 20 convs selected" in out and "layer3.0.conv1" in out
    assert main(["plan", "torchvision:resnet18", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["rows"]) == 20
    assert main(["plan", "torchvision:resnet18", "--policy", "name:nothing"]) == 2
    err = capsys.readouterr().err  # the policy error goes on to list the convs that exist
    assert err.startswith("error: policy 'name:nothing'") and "matches no conv" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["plan", "resnet18"], "expected torchvision:<name>, timm:<name> or package.module:factory"),
        (["plan", "torchvision:no_such_net"], "torchvision has no model 'no_such_net'"),
        (["plan", "timm:no_such_net"], "timm has no model 'no_such_net'"),
        (["plan", "no_such_package.models:build"], "cannot load 'build' from 'no_such_package.models'"),
        (["plan", "math:pi"], "math.pi is not callable"),
        (["plan", "collections:OrderedDict"], "returned OrderedDict, not an nn.Module"),
    ],
)
def test_plan_bad_model_is_one_error_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert err.count("\n") == 1


def test_model_from_spec_builds_without_weights():
    model = model_from_spec("torchvision:resnet18")
    assert type(model).__name__ == "ResNet"
    with pytest.raises(ConfigError, match="expected torchvision"):
        model_from_spec(":resnet18")


def test_plan_as_a_module():
    done = _run("plan", "torchvision:resnet18", "--n", "2")
    assert done.returncode == 0, done.stderr
    assert "4 of 20 convs selected" in done.stdout
    assert done.stderr == ""


def test_plan_json_as_a_module():
    done = _run("plan", "torchvision:resnet18", "--policy", "index:6", "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["rows"]
    assert [r["name"] for r in rows if r["selected"]] == ["layer2.0.conv1"]


@pytest.mark.parametrize("command", ["plan", "evaluate"])
def test_help_lists_examples(command):
    done = _run(command, "--help")
    assert done.returncode == 0, done.stderr
    assert f"usage: python -m dcspass {command}" in done.stdout
    examples = done.stdout.split("examples:\n", 1)[1]
    assert f"python -m dcspass {command} " in examples


@pytest.mark.parametrize("command", [[], ["plan"], ["evaluate"], ["data"]])
def test_help_is_plain_text(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: ") and "``" not in text  # no reST markup from docstrings


def test_plan_policy_error_is_one_line_that_names_the_conv_listing(capsys):
    assert main(["plan", "torchvision:resnet18", "--policy", "index:99"]) == 2
    err = capsys.readouterr().err
    prog = build_parser().prog  # "dcspass", or "python -m dcspass" when run as a module
    assert err == (
        "error: policy index:99: the model has 20 convs, so index [99] does not exist (indices are 1-based, "
        f"in execution order); list the model's convs with: {prog} plan torchvision:resnet18 --convs\n"
    )
    assert main(["plan", "torchvision:resnet18", "--convs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Convs in execution order:" and len(lines) == 2 + 20
    assert lines[7].split() == ["6", "layer2.0.conv1", "3x3", "2"]


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 2
    assert "required: {plan,evaluate,data}" in capsys.readouterr().err


# -- no module shadows a public function ------------------------------------------------------------


def _public_functions() -> list[str]:
    return [name for name in dcspass.__all__ if inspect.isfunction(getattr(dcspass, name))]


@pytest.mark.parametrize("name", _public_functions())
def test_no_submodule_is_named_after_a_public_function(name):
    """``import dcspass.plan`` once rebound ``dcspass.plan`` from the function to a CLI module."""
    assert importlib.util.find_spec(f"dcspass.{name}") is None


def test_plan_and_evaluate_stay_functions_after_importing_the_cli():
    import dcspass.cli

    assert inspect.isfunction(dcspass.plan) and inspect.isfunction(dcspass.evaluate)
    assert dcspass.plan(model_from_spec("torchvision:resnet18"), "index:6").selected == ["layer2.0.conv1"]


# -- evaluate ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_evaluate_a_checkpoint(tmp_path, capsys):
    from dcspass.training.checkpoint import save_checkpoint
    from dcspass.training.config import TrainConfig, build_network

    config = TrainConfig(arch="resnet18", num_classes=10, in_channels=1, width=4, dataset="fashion_mnist")
    torch.manual_seed(0)
    save_checkpoint(
        tmp_path / "ck.pt", {"config": config.to_dict(), "model": build_network(config).state_dict()}
    )
    common = ["evaluate", "--checkpoint", str(tmp_path / "ck.pt"), "--budget", "smoke", "--no-analyses"]
    out = ["--out", str(tmp_path / "out"), "--protocol", "paper", "--repeats", "1", "--examples", "5"]
    assert main([*common, *out]) == 0
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["config"]["repeats"] == 1 and data["adaptive"] is None
    assert data["config"]["examples"] == 5 and data["paper"]["accuracies"]["clean"]["examples"] == 5
    assert str(tmp_path / "ck.pt") in data["config"]["subject"]
    assert data["config"]["dcs_layers"][0]["name"] == "layer2.0.conv1"
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "bad"), "--eps", "8"]) == 2
    assert "0-255" in capsys.readouterr().err
    assert main([*common, "--out", str(tmp_path / "bad"), "--dataset", "cifar10"]) == 2  # 3 channels vs 1
    assert "pass the matching --dataset" in capsys.readouterr().err


def test_evaluate_bad_budget_fails_before_loading_anything(tmp_path, capsys):
    missing = tmp_path / "never_read.pt"
    argv = ["evaluate", "--checkpoint", str(missing), "--budget", "huge", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: budget must be one of") and "never_read" not in err
    argv = ["evaluate", "--checkpoint", str(missing), "--examples", "0", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --examples must be an integer >= 1, got 0") and "never_read" not in err
