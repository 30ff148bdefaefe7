"""The built wheel claims the top-level name ``dcspass`` only, and works beside another ``kernels``.

A PyPI distribution named ``kernels`` exists; dcspass ships its op backends as ``dcspass.kernels`` (from
the repository's ``kernels/`` folder, by setuptools' package-dir mapping) so both can be installed.
The test builds the wheel from a copy of the sources, installs it with ``--no-deps`` into a fresh
virtualenv that borrows this environment's torch (and pip and setuptools) through a ``.pth`` line,
puts a stub top-level ``kernels`` package next to it, and transforms and runs a small CNN there.
"""

from __future__ import annotations

import email
import json
import shutil
import subprocess
import venv
import zipfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# What the wheel is built from: the package sources and the files pyproject.toml names.
SOURCES = ("pyproject.toml", "README.md", "dcspass", "kernels")

RUN_IN_VENV = """
import json, sys, torch, dcspass
import kernels
model = torch.nn.Sequential(
    torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3, stride=2, padding=1),
    torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10),
)
dcs = dcspass.transform(model, policy="downsample", n=2)
out = dcs(torch.rand(4, 3, 16, 16))
out.sum().backward()
print(json.dumps({
    "dcspass": dcspass.__file__, "dcspass.kernels": sys.modules["dcspass.kernels"].__file__,
    "kernels": kernels.__file__, "stub": getattr(kernels, "STUB", False),
    "dcs layers": [name for name, _ in dcspass.dcs_layers(dcs)], "out": list(out.shape),
    "finite grad": bool(dict(dcspass.dcs_layers(dcs))["2"].weight.grad.isfinite().all()),
}))
"""


def _run(*cmd, cwd: Path) -> subprocess.CompletedProcess:
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, timeout=300)
    assert out.returncode == 0, f"{cmd} failed:\n{out.stdout}\n{out.stderr}"
    return out


def _python_files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*.py") if "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory):
    """``(wheel path, venv python)``: the wheel built and installed into a fresh venv beside a stub."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:  # a copy: building in the checkout would leave build/ there (stale files)
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, src / name)
    env = tmp / "venv"
    venv.create(env, with_pip=False)
    python = env / "bin" / "python"
    pip = [python, "-m", "pip", "-q"]
    purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site = Path(_run(python, "-c", purelib, cwd=tmp).stdout.strip())
    # The folder holding torch also holds pip and setuptools (the test extra): borrow them all.
    (site / "_borrowed.pth").write_text(str(Path(torch.__file__).resolve().parents[1]) + "\n")
    (site / "kernels").mkdir()
    (site / "kernels" / "__init__.py").write_text('"""Stands for the PyPI `kernels`."""\nSTUB = True\n')
    _run(*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp / "dist", src, cwd=tmp)
    (wheel,) = (tmp / "dist").glob("dcspass-*.whl")
    # --ignore-installed: the borrowed folder may list this environment's own (editable) dcspass.
    _run(*pip, "install", "--no-deps", "--ignore-installed", wheel, cwd=tmp)
    return wheel, python


@pytest.mark.slow
def test_the_wheel_holds_exactly_dcspass_and_dcspass_kernels(wheel_env):
    wheel, _ = wheel_env
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        (dist_info,) = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
        metadata = email.message_from_bytes(zf.read(f"{dist_info}/METADATA"))
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
    assert {n.split("/")[0] for n in names} == {"dcspass", dist_info}
    expected = {f"dcspass/{p}" for p in _python_files(REPO / "dcspass")}
    expected |= {f"dcspass/kernels/{p}" for p in _python_files(REPO / "kernels")}
    assert {n for n in names if n.endswith(".py")} == expected  # every module, nothing else (no recipes)
    assert "dcspass = dcspass.cli:main" in entry_points
    specifiers = [r.split(";")[0] for r in metadata.get_all("Requires-Dist")]  # drop `; extra == ...`
    assert any(r.startswith("torch>=") for r in specifiers)
    assert [r for r in specifiers if "==" in r] == []  # pins live in constraints.txt only


@pytest.mark.slow
def test_the_installed_wheel_works_beside_a_top_level_kernels_package(wheel_env, tmp_path):
    _, python = wheel_env
    env = python.parents[1]
    got = json.loads(_run(python, "-c", RUN_IN_VENV, cwd=tmp_path).stdout.strip().splitlines()[-1])
    assert got["stub"] is True  # `import kernels` is the other package, untouched by dcspass
    for key in ("dcspass", "dcspass.kernels", "kernels"):
        assert Path(got[key]).is_relative_to(env), f"{key} came from {got[key]}, not the venv"
    assert Path(got["dcspass.kernels"]).parent.parent == Path(got["dcspass"]).parent
    assert got["dcs layers"] == ["2"] and got["out"] == [4, 10] and got["finite grad"]
    usage = _run(env / "bin" / "dcspass", "--help", cwd=tmp_path).stdout  # the console script
    assert usage.startswith("usage: dcspass") and "plan" in usage and "evaluate" in usage


def test_readme_and_ci_install_the_same_pins_and_run_the_same_tests():
    """README's setup command and .ci/run install with constraints.txt; CI ends with README's test command.

    CI also installs the docs extra, to build the site.
    """
    pins = [line for line in (REPO / "constraints.txt").read_text().splitlines() if "==" in line]
    assert {"torch", "torchvision"} <= {line.split("==")[0] for line in pins}
    ci = (REPO / ".ci" / "run").read_text()
    readme = (REPO / "README.md").read_text()
    assert "pip install -q -c constraints.txt -e '.[test,docs]'" in ci
    assert "pip install -c constraints.txt -e '.[test]'" in readme
    last_command = [line for line in ci.splitlines() if line.strip() and not line.startswith("#")][-1]
    assert f"```bash\n{last_command}\n```" in readme
