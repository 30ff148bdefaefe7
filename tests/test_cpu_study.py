"""The CPU study: a tiny run that is interrupted between evaluation points and resumed."""

from __future__ import annotations

import hashlib
import json

import pytest

from dcspass.errors import ConfigError
from recipes import cpu_study

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

TINY = [
    *("--width", "2", "--epochs", "2", "--samples-per-epoch", "64", "--batch-size", "32"),
    *("--points", "0.5,1", "--examples", "8", "--examples-point", "4", "--eval-examples", "8"),
    *("--budget", "smoke", "--arms", "pgd_at,gsat_downsample", "--quiet"),
]


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_study_resumes_after_an_interrupt_and_reports_every_point(cifar10_root, tmp_path, monkeypatch):
    out = tmp_path / "study"
    argv = [*TINY, "--data-dir", str(cifar10_root), "--out", str(out)]
    evaluate_point = cpu_study._evaluate_point
    calls = []

    def interrupted_at_the_last_point(args, arms, checkpoints, test_set, point, count, command):
        calls.append(point)
        if point == 2:
            raise KeyboardInterrupt
        return evaluate_point(args, arms, checkpoints, test_set, point, count, command)

    monkeypatch.setattr(cpu_study, "_evaluate_point", interrupted_at_the_last_point)
    assert cpu_study.main(argv) == 130
    kept = {p.name: _sha(p) for p in out.glob("*_epoch1.pt")}
    assert set(kept) == {"pgd_at_epoch1.pt", "gsat_downsample_epoch1.pt"}
    first_report = out / "eval_epoch1" / "gsat_downsample" / "report.json"
    stamp = first_report.stat().st_mtime_ns

    with pytest.raises(ConfigError, match="already holds a study; pass --resume"):
        cpu_study.run(argv)
    with pytest.raises(ConfigError, match=r"other settings.*width"):
        cpu_study.run([*argv, "--resume", "--width", "3"])

    monkeypatch.setattr(cpu_study, "_evaluate_point", evaluate_point)
    results = cpu_study.run([*argv, "--resume"])
    assert {p.name: _sha(p) for p in out.glob("*_epoch1.pt")} == kept  # earlier points untouched
    assert first_report.stat().st_mtime_ns == stamp  # and not evaluated again
    assert results["points"] == [1, 2]
    rows = {(r["epoch"], r["row"]): r for r in results["rows"]}
    names = ("adaptive: clean", "paper: PGD-3", "adaptive: worst case")  # the smoke budget's PGD-3
    assert set(rows) == {(e, row) for e in (1, 2) for row in names}
    assert (
        rows[(1, "adaptive: worst case")]["examples"] == 4 and rows[(2, "adaptive: clean")]["examples"] == 8
    )
    for r in rows.values():
        d = r["difference"]
        assert d["low"] <= d["mean"] <= d["high"]
        assert d["mean"] == pytest.approx(r["dcs"]["mean"] - r["pgd_at"]["mean"])
    saved = json.loads((out / "results.json").read_text())
    record = saved["checkpoints"]["gsat_downsample"]["epoch2"]
    assert record["sha256"] == _sha(out / "gsat_downsample_epoch2.pt")
    assert record["sha256"] in (out / "results.md").read_text()
    assert (out / "trend.png").read_bytes()[:4] == b"\x89PNG"


def test_study_refuses_bad_points_and_arms_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="must lie in"):
        cpu_study.run(["--points", "0,1", "--out", str(tmp_path / "a")])
    with pytest.raises(ConfigError, match="pgd_at included"):
        cpu_study.run(["--arms", "gsat_paper", "--out", str(tmp_path / "b")])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
