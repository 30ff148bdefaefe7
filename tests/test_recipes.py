"""Recipes: a smoke run end to end, the paper placement's bound message, each recipe's networks, bad flags."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import dcspass
from dcspass.data import FASHION_MNIST_DIR
from dcspass.errors import DataError
from dcspass.fetch import make_cifar10_subset
from dcspass.training import build_network
from recipes import common, paper_rn18, paper_rn50, paper_vit, paper_wrn34, report, spec

pytestmark = pytest.mark.usefixtures("one_thread")
needs_fmnist = pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="needs dataset-fashion-mnist")

SMOKE = [
    "--dataset",
    "fashion_mnist",
    "--epochs",
    "1",
    "--samples-per-epoch",
    "64",
    "--eval-examples",
    "16",
    "--batch-size",
    "32",
    "--width",
    "4",
    "--budget",
    "smoke",
    "--quick-eval",
    "--seed",
    "1",
]


def test_main_job_runs_end_to_end_on_cifar10_at_a_tiny_size(cifar10_root, tmp_path, capsys):
    argv = [*SMOKE[2:], "--data-dir", str(cifar10_root), "--out", str(tmp_path)]
    assert common.main(paper_rn18.SPEC, argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["recipe"] == "paper_rn18" and results["scale"] == "cpu" and results["dataset"] == "cifar10"
    assert results["runs"]["dcs"]["config"]["policy"] == "index:6"
    assert results["runs"]["dcs"]["config"]["method"] == "gsat"
    assert results["runs"]["at"]["config"]["policy"] is None
    for key in ("at", "dcs"):
        quick = results["evaluation"]["quick"][key]
        assert 0 <= quick["pgd20_acc"] <= quick["clean_acc"] + 0.25 and quick["examples"] == 64
        assert results["runs"][key]["epochs_done"] == 1
    assert "| DCS + GSAT |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    written = {p.name for p in tmp_path.iterdir()}
    assert {"pgd_at.pt", "gsat.pt", "dcs_frozen_pgd_at.pt", "dcs_clean.pt"} <= written
    # Fig. 4a: the same DCS network trained three ways, each differing from GSAT in one thing.
    assert results["runs"]["dcs_frozen"]["config"]["method"] == "frozen_pgd_at"
    assert results["runs"]["dcs_clean"]["config"]["method"] == "clean"
    assert results["runs"]["dcs_clean"]["config"]["policy"] == "index:6"
    fig4a = results["evaluation"]["fig4a"]
    assert list(fig4a) == list(report.FIG4A_LABELS.values())
    for entry in fig4a.values():
        assert -1 <= entry["cosine"]["overall"]["mean"] <= 1 and entry["examples"] == 8
    assert (tmp_path / "fig4a.png").read_bytes()[:4] == b"\x89PNG"
    assert "| DCS + clean training |" in (tmp_path / "results.md").read_text()
    record = results["provenance"]
    assert set(record["checkpoints"]) == {"at", "dcs", "dcs_frozen", "dcs_clean"}
    gsat = record["checkpoints"]["dcs"]
    assert gsat["path"] == str((tmp_path / "gsat.pt").resolve())
    assert gsat["sha256"] == hashlib.sha256((tmp_path / "gsat.pt").read_bytes()).hexdigest()
    assert record["dataset"]["name"] == "cifar10" and record["seed"] == 1
    assert record["dataset"]["data_dir"] == str((cifar10_root / "cifar-10-batches-bin").resolve())
    assert record["command"].startswith("python -m recipes.paper_rn18 --epochs 1")
    assert "not the paper's Table 1" in (tmp_path / "results.md").read_text()
    assert record["versions"]["torch"] == torch.__version__ and record["device"] == "cpu"
    out = capsys.readouterr().out
    assert "admits n=2" in out and "[gsat] epoch 1/1" in out and "[dcs_clean] epoch 1/1" in out


def _args(recipe, *argv):
    return spec.build_parser(recipe).parse_args(list(argv))


def test_paper_placement_is_rejected_by_eq12_and_runs_unchecked():
    args = _args(paper_rn18.SPEC, "--placement", "paper")
    message = spec.placement_message(paper_rn18.SPEC, "paper", 2, 5)
    assert "layer1.0.conv1" in message and "REJECTS" in message and "check_bounds=False" in message
    _, dcs_cfg = spec.make_configs(args, paper_rn18.SPEC, "fashion_mnist")
    assert dcs_cfg.check_bounds is False and dcs_cfg.policy == "index:2"
    net = build_network(dcs_cfg)
    assert [n for n, _ in dcspass.dcs_layers(net)] == ["layer1.0.conv1"]
    with pytest.raises(dcspass.BoundError, match=r"layer1\.0\.conv1"):
        build_network({**dcs_cfg.to_dict(), "check_bounds": True})


@pytest.mark.parametrize(("dataset", "channels", "side"), [("cifar10", 3, 32), ("fashion_mnist", 1, 28)])
@pytest.mark.parametrize(
    ("recipe", "layer"),
    [
        (paper_rn18.SPEC, "layer2.0.conv1"),
        (paper_wrn34.SPEC, "block2.layer.0.conv1"),
        (paper_rn50.SPEC, "layer2.0.conv2"),
        (paper_vit.SPEC, "stem.1.conv"),
    ],
)
def test_every_recipe_builds_its_cpu_scale_networks(recipe, layer, dataset, channels, side):
    args = _args(recipe)
    assert spec.resolve_dataset(args, recipe) == "cifar10"  # every recipe's CPU scale is CIFAR-10
    base, dcs = spec.make_configs(args, recipe, dataset)
    assert base.method == "pgd_at" and dcs.method == "gsat" and base.in_channels == channels
    net = build_network(dcs).eval()
    assert [n for n, _ in dcspass.dcs_layers(net)] == [layer]
    assert net(torch.rand(2, channels, side, side)).shape == (2, 10)


def test_paper_scale_configs_follow_the_paper():
    args = _args(paper_rn18.SPEC, "--scale", "paper")
    base, _ = spec.make_configs(args, paper_rn18.SPEC, "cifar10")
    assert (base.epochs, base.batch_size, base.lr, base.weight_decay, base.milestones) == (
        200,
        128,
        0.1,
        5e-4,
        [60, 120],
    )
    assert (base.attack_steps, base.eps, base.alpha) == (7, 8 / 255, 2 / 255)
    rn50_args = _args(paper_rn50.SPEC, "--scale", "paper")
    assert spec.resolve_dataset(rn50_args, paper_rn50.SPEC) == "imagenet"
    rn50, _ = spec.make_configs(rn50_args, paper_rn50.SPEC, "imagenet")
    assert (rn50.attack_steps, rn50.eps, rn50.alpha, rn50.schedule, rn50.num_classes) == (
        10,
        4 / 255,
        4 / 255,
        "cosine",
        1000,
    )


def test_bad_flags_and_data_dirs_give_clear_errors(tmp_path, capsys):
    with pytest.raises(dcspass.ConfigError, match="--epochs must be >= 1"):
        common.run(paper_rn18.SPEC, ["--epochs", "0"])
    assert common.main(paper_rn18.SPEC, ["--data-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "cifar-10-batches-bin" in err and "Traceback" not in err
    assert "python -m dcspass data fetch cifar10" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exit_info:
        common.run(paper_rn18.SPEC, ["--placement", "everywhere"])
    assert exit_info.value.code == 2


@needs_fmnist
@pytest.mark.slow
def test_full_evaluation_runs_at_the_recipes_eps(tmp_path):
    """paper_rn50 trains and tables at 4/255: its dcspass.evaluate reports must use 4/255 too."""
    argv = [a for a in SMOKE if a != "--quick-eval"]
    assert common.main(paper_rn50.SPEC, [*argv, "--no-fig4a", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["runs"]["dcs"]["config"]["eps"] == pytest.approx(4 / 255)
    for key in ("at", "dcs"):
        report = json.loads((tmp_path / f"eval_{key}" / "report.json").read_text())
        assert report["config"]["eps"] == pytest.approx(4 / 255)
        assert results["evaluation"]["evaluate"][key]["config"]["eps"] == pytest.approx(4 / 255)
    markdown = (tmp_path / "results.md").read_text()
    assert "eps = 4.00/255" in markdown
    # The headline pairs both networks on the same images, with the difference and its verdict.
    rows = results["evaluation"]["headline"]["rows"]
    assert list(rows) == ["adaptive: clean", "paper: PGD-3", "adaptive: worst case"]
    for row in rows.values():
        d = row["difference"]
        assert d["low"] <= d["mean"] <= d["high"] and d["examples"] == 8
        assert d["mean"] == pytest.approx(row["dcs"]["mean"] - row["at"]["mean"])
    assert "| adaptive: worst case |" in markdown and "at 8 images |" in markdown


@needs_fmnist
def test_seeds_run_each_seed_and_report_mean_and_std(tmp_path):
    argv = [*SMOKE, "--no-fig4a", "--seeds", "2", "--out", str(tmp_path)]
    summary = common.run(paper_rn18.SPEC, argv)
    assert summary["seeds"] == [1, 2]
    for seed in (1, 2):
        per_seed = json.loads((tmp_path / f"seed_{seed}" / "results.json").read_text())
        assert per_seed["runs"]["dcs"]["config"]["seed"] == seed
    clean = summary["figures"]["DCS + GSAT: clean (quick table)"]
    values = [100 * r["evaluation"]["quick"]["dcs"]["clean_acc"] for r in summary["runs"]]
    assert clean["values"] == pytest.approx(values)
    assert clean["mean"] == pytest.approx(sum(values) / 2)
    assert clean["std"] == pytest.approx(abs(values[0] - values[1]) / 2**0.5)
    assert "| DCS + GSAT: clean (quick table) |" in (tmp_path / "results.md").read_text()
    with pytest.raises(dcspass.ConfigError, match="--seeds must be >= 1"):
        common.run(paper_rn18.SPEC, ["--seeds", "0"])


@needs_fmnist
def test_overwrite_replaces_the_old_run_and_quiet_prints_only_the_final_summary(tmp_path, capsys):
    (tmp_path / "results.json").write_text('{"old": true}\n')
    (tmp_path / "dcs_clean.pt").write_text("a checkpoint of the old run\n")
    argv = [*SMOKE, "--no-fig4a", "--quiet", "--overwrite", "--out", str(tmp_path)]
    assert common.main(paper_rn18.SPEC, argv) == 0
    assert "old" not in json.loads((tmp_path / "results.json").read_text())
    assert not (tmp_path / "dcs_clean.pt").exists()  # --no-fig4a: no mix of the old run and the new
    captured = capsys.readouterr()
    assert captured.err == ""
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("[paper_rn18] PGD-AT: clean ")
    draws = dcspass.evaluation.get_budget("smoke").all_correct_k
    assert f"64 test images, expected accuracy over {draws} draws of taps" in lines[0]


@pytest.fixture(scope="module")
def subset(cifar10_root, tmp_path_factory):
    """A class-balanced CIFAR-10 subset as the GPU preset reads it (200 + 400 images here)."""
    return make_cifar10_subset(cifar10_root, 200, 400, tmp_path_factory.mktemp("data") / "cifar-10-subset")


def test_gpu_preset_resolves_to_the_full_width_bf16_run_and_flags_win(subset, capsys):
    assert paper_rn18.GPU["data_dir"] == Path("data/cifar-10-subset") and paper_rn18.GPU["scale"] == "paper"
    plan = common.run(
        paper_rn18.SPEC, ["--preset", "gpu", "--dry-run", "--device", "cpu", "--data-dir", str(subset)]
    )
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(plan, default=str))  # printed as-is
    assert plan["dataset"] == "cifar10" and plan["scale"] == "paper" and plan["train_examples"] == 200
    assert set(plan["trainings"]) == {"pgd_at", "gsat"}  # no Fig. 4a networks
    for label, cfg in plan["trainings"].items():
        assert cfg["width"] is None and build_network(cfg).conv1.out_channels == 64, label  # full width
        assert (cfg["precision"], cfg["channels_last"], cfg["attack_steps"]) == ("bf16", True, 7), label
        assert cfg["samples_per_epoch"] is None and cfg["epochs"] == paper_rn18.GPU["epochs"], label
    assert plan["trainings"]["gsat"]["policy"] == "index:6"
    assert paper_rn18.GPU["examples"] == 1000  # capped here by the tiny subset's 400 test images
    assert plan["evaluation"] == {"budget": "default", "examples": 400, "protocols": "paper and adaptive"}
    overridden = common.run(
        paper_rn18.SPEC,
        [
            "--preset",
            "gpu",
            "--dry-run",
            "--epochs",
            "1",
            "--width",
            "8",
            "--precision",
            "fp32",
            "--examples",
            "300",
            "--fig4a",
            "--data-dir",
            str(subset),
        ],
    )
    cfg = overridden["trainings"]["gsat"]
    assert (cfg["epochs"], cfg["width"], cfg["precision"]) == (1, 8, "fp32")
    assert overridden["evaluation"]["examples"] == 300 and "dcs_clean" in overridden["trainings"]


def test_gpu_preset_reads_the_data_dir_it_is_given(tmp_path, subset):
    with pytest.raises(DataError, match=f"{tmp_path} holds none of the expected folders"):  # never downloads
        common.run(paper_rn18.SPEC, ["--preset", "gpu", "--dry-run", "--data-dir", str(tmp_path)])
    plan = common.run(paper_rn18.SPEC, ["--preset", "gpu", "--dry-run", "--data-dir", str(subset.parent)])
    assert plan["data_dir"] == str(subset) and plan["test_examples"] == 400


@pytest.mark.slow
def test_gpu_preset_runs_at_a_tiny_size_and_reports_its_settings(tmp_path, subset):
    argv = [
        "--preset",
        "gpu",
        "--epochs",
        "1",
        "--width",
        "4",
        "--samples-per-epoch",
        "32",
        "--examples",
        "8",
        "--eval-examples",
        "8",
        "--budget",
        "smoke",
        "--quick-eval",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--data-dir",
        str(subset),
        "--out",
        str(tmp_path),
    ]
    assert common.main(paper_rn18.SPEC, argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["runs"]["dcs"]["config"]["precision"] == "bf16"
    assert results["evaluation"]["quick"]["dcs"]["examples"] == 8 and results["dataset"] == "cifar10"
    assert results["scale"] == "paper" and results["runs"]["dcs"]["config"]["width"] == 4
