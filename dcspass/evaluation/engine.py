"""``dcspass.evaluate``: validate the request, run the protocols and analyses, assemble the ``Report``."""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Iterable

import torch
import torchattacks
from torch import nn

from ..errors import EvaluationError
from ..progress import stage
from ..sampling import dcs_layers
from ..text import plural
from ..tracing import model_name
from .analyses import gradient_cosine, sweeps
from .budget import Budget, get_budget
from .context import EvalContext
from .draws import DrawRunner, n_tap_sets
from .protocols import run_adaptive, run_paper
from .reference import pyautoattack_version
from .report import Report
from .sanity import check_eps_to_zero, check_finite, check_gradient_free, check_monotone, check_taps_change

__all__ = ["evaluate"]

PROTOCOLS = ("paper", "adaptive", "both")


def evaluate(
    model: nn.Module,
    loader: Iterable,
    protocol: str = "both",
    budget: str | Budget = "default",
    *,
    transfer_source: nn.Module | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    eps: float = 8 / 255,
    repeats: int | None = None,
    examples: int | None = None,
    all_correct_k: int | None = None,
    analyses: bool = True,
    subject: str = "",
) -> Report:
    """Evaluate a (DCS) classifier under the paper protocol, the adaptive protocol, or both.

    Args:
        model: classifier taking ``[B, C, H, W]`` images in [0, 1] (normalisation inside the model)
            and returning logits ``[B, classes]``; put in eval mode for the evaluation.
        loader: iterable of ``(x, y)`` batches (a ``DataLoader``); the first ``budget.examples``
            images are used.
        protocol: ``"paper"``, ``"adaptive"`` or ``"both"``.
        budget: ``"smoke"``, ``"default"`` (CPU scale) or ``"full"`` (the reference settings), or a
            ``Budget``.
        transfer_source: the same network trained without DCS, for the transfer attack (skipped if None).
        device: where to run (default: the model's device).
        seed: base seed; paper-protocol repeat r uses ``seed + r``.
        eps: L_inf radius on the [0, 1] scale (8/255, not 8).
        repeats: paper-protocol repeats (default: the budget's).
        examples: test images to evaluate (default: the budget's ``examples``).
        all_correct_k: K of the all-K-correct accuracy (default: the budget's).
        subject: what is evaluated, for the report's heading and plot titles (e.g. "DCS + GSAT,
            runs/x/gsat.pt, Fashion-MNIST"); default: the model's class and DCS layers.
        analyses: also run the gradient-similarity analysis and the strength sweeps (and the checks on them).

    Returns:
        ``Report`` (``to_dict``, ``to_markdown``, ``save(out_dir)``).

    Raises:
        EvaluationError: eps outside (0, 1], an unknown protocol or budget, an empty loader, inputs
            outside [0, 1], labels the model cannot output, or examples / repeats / all_correct_k < 1.
    """
    if not isinstance(eps, (int, float)) or not 0 < eps <= 1:
        hint = (
            f" (on the 0-255 scale? pass eps={eps}/255 = {eps / 255:.5f})"
            if isinstance(eps, (int, float)) and eps > 1
            else ""
        )
        raise EvaluationError(f"eps must lie in (0, 1], the [0, 1] pixel scale, got eps={eps!r}{hint}")
    if protocol not in PROTOCOLS:
        raise EvaluationError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    b = get_budget(budget)
    for name, value in (("repeats", repeats), ("examples", examples), ("all_correct_k", all_correct_k)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise EvaluationError(f"{name} must be an integer >= 1, got {value!r}")
    overrides = {"examples": examples, "all_correct_k": all_correct_k}
    b = dataclasses.replace(b, **{k: v for k, v in overrides.items() if v is not None})
    repeats = repeats or b.repeats
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    model = model.to(device).eval()
    if transfer_source is not None:
        transfer_source = transfer_source.to(device).eval()
    x, y = _collect(loader, b.examples, device)
    n_classes = _check_labels(model, x, y)

    warnings_out: list[str] = []
    layers = list(dcs_layers(model))
    if not layers:
        message = (
            f"{model_name(model)} has no DCS layer: it is deterministic, so the adaptive-only attacks "
            "(EOT, exact expectation, known taps) reduce to plain attacks; transform it with "
            "dcspass.transform to evaluate a DCS model"
        )
        warnings.warn(message, stacklevel=2)
        warnings_out.append(message)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runner = DrawRunner(model)
    for w in caught:
        warnings_out.append(str(w.message))
        warnings.warn(str(w.message), stacklevel=2)

    ctx = EvalContext(model, runner, float(eps), b, n_classes, seed, transfer_source)
    config = {
        "eps": float(eps),
        "seed": seed,
        "protocol": protocol,
        "repeats": repeats,
        "examples": int(x.shape[0]),
        "n_classes": n_classes,
        "budget": b.to_dict(),
        "budget_line": b.describe(),
        "device": str(device),
        "model": _describe_model(model, layers),
        "dcs_layers": [
            {
                "name": n,
                "k": layer.kernel_size,
                "n": layer.n,
                "stride": list(layer.stride),
                "tap_sets": n_tap_sets(layer),
            }
            for n, layer in layers
        ],
        "subject": subject or _describe_model(model, layers),
        "scoring": ctx.scorer.method,
        "runner": "prefix shared across draws (torch.fx split)"
        if runner.split
        else f"full forwards ({runner.fallback_reason or 'deterministic model'})",
        "torch": torch.__version__,
        "torchattacks": torchattacks.__version__,
    }
    if (reference := pyautoattack_version()) is not None:
        config["pyautoattack"] = reference
    report = Report(config=config, warnings=warnings_out)
    start = time.perf_counter()
    if protocol in ("paper", "both"):
        runs = f"{plural(repeats, 'repeat')} on {plural(x.shape[0], 'image')}"
        stage(f"evaluate: paper protocol, {runs} ({b.name} budget)")
        report.paper = run_paper(ctx, x, y, repeats)
        report.seconds["paper protocol"] = time.perf_counter() - start
    if protocol in ("adaptive", "both"):
        start = time.perf_counter()
        stage(f"evaluate: adaptive protocol on {x.shape[0]} images ({b.name} budget)")
        report.adaptive = run_adaptive(ctx, x, y)
        report.seconds["adaptive protocol"] = time.perf_counter() - start
    curves = None
    if analyses:
        stage("evaluate: gradient similarity and strength sweeps")
        start = time.perf_counter()
        report.analyses["cosine"] = gradient_cosine(ctx, x[: b.cosine_examples], y[: b.cosine_examples])
        report.seconds["gradient cosine"] = time.perf_counter() - start
        start = time.perf_counter()
        curves = sweeps(ctx, x[: b.sweep_examples], y[: b.sweep_examples])
        report.analyses["sweeps"] = curves
        report.seconds["sweeps"] = time.perf_counter() - start
    report.sanity = [
        check_eps_to_zero(curves),
        check_monotone(curves, "steps", "PGD steps"),
        check_monotone(curves, "eot", "EOT samples"),
        check_gradient_free(report.adaptive),
        check_taps_change(ctx, x),
        check_finite(ctx),
    ]
    return report


def _collect(loader: Iterable, limit: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``limit`` images and labels of the loader, as ``[N, C, H, W]`` floats and ``[N]`` longs."""
    xs, ys, count = [], [], 0
    for batch in loader:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise EvaluationError(
                f"the loader must yield (images, labels) batches, got {type(batch).__name__}"
            )
        xb, yb = batch[0], batch[1]
        xs.append(xb[: limit - count])
        ys.append(yb[: limit - count])
        count += xs[-1].shape[0]
        if count >= limit:
            break
    if count == 0:
        raise EvaluationError("the loader yielded no images; pass a non-empty DataLoader of the test split")
    x = torch.cat(xs).to(device=device, dtype=torch.float32)
    y = torch.cat(ys).to(device=device, dtype=torch.long)
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise EvaluationError(
            f"images must lie in [0, 1] (attacks use eps on that scale), got values in [{lo:.3g}, {hi:.3g}]; "
            "move normalisation into the model"
        )
    return x, y


def _check_labels(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    with torch.no_grad():
        logits = model(x[:2])
    if logits.dim() != 2:
        raise EvaluationError(f"the model must return logits [B, classes], got shape {tuple(logits.shape)}")
    n_classes = int(logits.shape[1])
    if int(y.max()) >= n_classes or int(y.min()) < 0:
        raise EvaluationError(
            f"labels span {int(y.min())}..{int(y.max())} but the model outputs {n_classes} classes: "
            "a checkpoint of another class count or dataset?"
        )
    return n_classes


def _describe_model(model: nn.Module, layers: list) -> str:
    params = sum(p.numel() for p in model.parameters())
    if not layers:
        return f"{model_name(model)}, {params / 1e6:.2f}M parameters, no DCS layer"
    parts = ", ".join(f"{n} (k={m.kernel_size}, n={m.n}, stride {m.stride[0]})" for n, m in layers)
    return f"{model_name(model)}, {params / 1e6:.2f}M parameters, DCS layers: {parts}"
