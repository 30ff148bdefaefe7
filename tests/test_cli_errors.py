"""Every failure a user can cause on a command line: one line from our own errors, exit code 2, before
any work, nothing written or overwritten. Each test runs the real command in a subprocess."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dcspass.data import FASHION_MNIST_DIR
from dcspass.training import build_network
from dcspass.training.checkpoint import save_checkpoint
from recipes import paper_rn18, spec

from ._tiny import tiny_config

needs_fmnist = pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="needs dataset-fashion-mnist")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
REPO = Path(__file__).resolve().parents[1]


def _run(cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def _one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Assert exit code 2 and one line on stderr (no traceback) holding every fragment; return it."""
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with the sha256 of its bytes (to show nothing was written or changed)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


RECIPE = [
    *("-m", "recipes.paper_rn18", "--dataset", "fashion_mnist"),
    *("--epochs", "1", "--samples-per-epoch", "32", "--width", "4"),
]


@needs_fmnist
@pytest.mark.parametrize(
    ("flag", "fragment"), [("--n", "n=3 is outside the Eq. 12 interval"), ("--k", "k=2")]
)
def test_recipe_rejects_a_dcs_config_before_the_baseline_trains(tmp_path, flag, fragment):
    value = "3" if flag == "--n" else "2"
    proc = _run(tmp_path, *RECIPE, flag, value, "--out", str(tmp_path / "run"))
    _one_line_error(proc, fragment, "layer2.0.conv1")
    assert not (tmp_path / "run").exists()  # the PGD-AT baseline never started


@no_cuda
def test_recipe_and_evaluate_name_the_missing_device(tmp_path):
    proc = _run(tmp_path, *RECIPE, "--device", "cuda", "--out", str(tmp_path / "run"))
    _one_line_error(proc, "--device cuda", "no CUDA device")
    checkpoint = _checkpoint(tmp_path / "m.pt")
    before = _snapshot(tmp_path)
    proc = _run(tmp_path, "-m", "dcspass", "evaluate", "--checkpoint", str(checkpoint), "--device", "cuda",
                "--out", str(tmp_path / "eval"))  # fmt: skip
    err = _one_line_error(proc, "--device cuda", "no CUDA device")
    assert "corrupt" not in err
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("where", ["proc", "file", "under_file"])
def test_recipe_out_that_cannot_be_written(tmp_path, where):
    (tmp_path / "taken").write_text("a file the user keeps\n")
    out = {
        "proc": "/proc/dcspass-run",
        "file": str(tmp_path / "taken"),
        "under_file": str(tmp_path / "taken/x"),
    }
    before = _snapshot(tmp_path)
    proc = _run(tmp_path, *RECIPE, "--out", out[where])
    _one_line_error(proc, f"--out {out[where]}")
    assert _snapshot(tmp_path) == before


def _recipe_checkpoints(out: Path, argv: list[str]) -> None:
    """Untrained checkpoints of every network the recipe trains with ``argv``, as a run would leave them."""
    args = spec.build_parser(paper_rn18.SPEC).parse_args(argv)
    base, dcs = spec.make_configs(args, paper_rn18.SPEC, "fashion_mnist")
    for _key, cfg, label in spec.plan_trainings(args, base, dcs):
        payload = {
            "config": cfg.to_dict(),
            "model": build_network(cfg).state_dict(),
            "epoch": 1,
            "history": [],
        }
        save_checkpoint(out / f"{label}.pt", payload)


@needs_fmnist
@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        ([], ["already holds a finished run", "--resume", "--overwrite", "another --out"]),
        (["--seeds", "2"], ["2-seed summary would overwrite", "results.json", "--resume", "--overwrite"]),
    ],
    ids=["one-seed", "multi-seed"],
)
def test_finished_run_in_out_is_never_overwritten_silently(tmp_path, extra, fragments):
    out = tmp_path / "run"
    _recipe_checkpoints(out, RECIPE[2:])
    (out / "results.json").write_text("{}\n")
    before = _snapshot(tmp_path)
    proc = _run(tmp_path, *RECIPE, *extra, "--out", str(out))
    _one_line_error(proc, *fragments)
    assert _snapshot(tmp_path) == before


@needs_fmnist
def test_resume_checks_each_network_against_its_own_config(tmp_path):
    out = tmp_path / "run"
    _recipe_checkpoints(out, [*RECIPE[2:], "--n", "2"])
    before = _snapshot(tmp_path)
    proc = _run(tmp_path, *RECIPE, "--n", "1", "--resume", "--out", str(out))
    # The DCS-free baseline (pgd_at.pt) has no n to disagree with; the DCS network does.
    err = _one_line_error(proc, "gsat.pt", "n: checkpoint 2 vs requested 1")
    assert "pgd_at.pt" not in err
    assert _snapshot(tmp_path) == before


@needs_fmnist
def test_resume_from_a_checkpoint_holding_text(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "pgd_at.pt").write_text("hello\nworld\n")
    before = _snapshot(tmp_path)
    proc = _run(tmp_path, *RECIPE, "--resume", "--out", str(out))
    _one_line_error(proc, "pgd_at.pt cannot be parsed")
    assert _snapshot(tmp_path) == before


def _checkpoint(path: Path) -> Path:
    cfg = tiny_config(method="pgd_at")
    save_checkpoint(path, {"config": cfg.to_dict(), "model": build_network(cfg).state_dict(), "epoch": 1})
    return path


def test_evaluate_checkpoint_holding_text_is_unparsable_not_a_key_error(tmp_path):
    (tmp_path / "m.pt").write_text("hello\nworld\n")
    proc = _run(tmp_path, "-m", "dcspass", "evaluate", "--checkpoint", str(tmp_path / "m.pt"),
                "--device", "cpu", "--out", str(tmp_path / "eval"))  # fmt: skip
    err = _one_line_error(proc, "m.pt cannot be parsed", "corrupt")
    assert "KeyError: 101" not in err.split("(")[0]
    assert not (tmp_path / "eval").exists()


def test_evaluate_checks_out_before_evaluating(tmp_path):
    checkpoint = _checkpoint(tmp_path / "m.pt")
    (tmp_path / "taken").write_text("keep me\n")
    before = _snapshot(tmp_path)
    proc = _run(tmp_path, "-m", "dcspass", "evaluate", "--checkpoint", str(checkpoint), "--device", "cpu",
                "--budget", "smoke", "--out", str(tmp_path / "taken"))  # fmt: skip
    _one_line_error(proc, f"--out {tmp_path / 'taken'} is an existing file")
    assert _snapshot(tmp_path) == before


def test_evaluate_never_overwrites_a_report_silently(tmp_path):
    (tmp_path / "m.pt").write_text("hello\n")  # unparsable: evaluation stops there once --out passes
    out = tmp_path / "eval"
    out.mkdir()
    (out / "report.json").write_text("{}\n")
    before = _snapshot(tmp_path)
    argv = ["-m", "dcspass", "evaluate", "--checkpoint", str(tmp_path / "m.pt"), "--device", "cpu"]
    proc = _run(tmp_path, *argv, "--out", str(out))
    _one_line_error(proc, f"--out {out} already holds a report (report.json)", "--overwrite", "another --out")
    assert _snapshot(tmp_path) == before
    # --overwrite passes that check: the next one, the checkpoint, is what fails now.
    proc = _run(tmp_path, *argv, "--out", str(out), "--overwrite")
    _one_line_error(proc, "m.pt cannot be parsed")
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("model", "fragment"),
    [
        ("torchvision:nope", "torchvision has no model 'nope'"),
        ("timm:nope", "timm has no model 'nope'"),
        ("torch.nn:Conv2d", "with no arguments failed"),
        ("no_such_module_x:f", "from 'no_such_module_x'"),
    ],
)
def test_plan_bad_model(tmp_path, model, fragment):
    if model.startswith("timm:"):
        pytest.importorskip("timm")
    proc = _run(tmp_path, "-m", "dcspass", "plan", model)
    _one_line_error(proc, fragment)


def test_plan_draw_to_an_unwritable_path(tmp_path):
    proc = _run(tmp_path, "-m", "dcspass", "plan", "torchvision:resnet18", "--draw", "/proc/x/graph.png")
    _one_line_error(proc, "--draw", "/proc")
    assert proc.stdout == ""  # checked before planning


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["torchvision:resnet18", "--policy", "bogus"], "error: unknown policy 'bogus'; expected"),
        (["torchvision:vgg11"], "error: policy 'downsample' (Downsample()) matches no conv;"),
    ],
)
def test_plan_policy_errors_are_one_line(tmp_path, argv, fragment):
    proc = _run(tmp_path, "-m", "dcspass", "plan", *argv)
    err = _one_line_error(
        proc, fragment, f"list the model's convs with: python -m dcspass plan {argv[0]} --convs"
    )
    assert "Convs in execution order" not in err and proc.stdout == ""


def test_evaluate_out_that_cannot_be_created_says_why(tmp_path):
    argv = ["-m", "dcspass", "evaluate", "--checkpoint", str(tmp_path / "m.pt"), "--device", "cpu"]
    proc = _run(tmp_path, *argv, "--out", "/proc/dcspass-eval")
    _one_line_error(
        proc, "--out /proc/dcspass-eval: the folder cannot be created (/proc accepts no new entries)"
    )


def test_evaluate_transfer_checkpoint_error_names_its_flag(tmp_path):
    checkpoint = _checkpoint(tmp_path / "m.pt")
    before = _snapshot(tmp_path)
    argv = ["-m", "dcspass", "evaluate", "--checkpoint", str(checkpoint), "--device", "cpu"]
    proc = _run(
        tmp_path, *argv, "--transfer-checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "e")
    )
    err = _one_line_error(
        proc, f"checkpoint {tmp_path / 'none.pt'} does not exist", "check --transfer-checkpoint"
    )
    assert "--out" not in err
    assert _snapshot(tmp_path) == before
