"""The Triton DCS kernels against the PyTorch path and ``F.conv2d`` with the masked weight.

Without a GPU the kernels run on CPU tensors in Triton's interpreter (``TRITON_INTERPRET=1``, set by
``tests/conftest.py`` before Triton is imported): the launchers are called directly, and the op is
routed to them inside ``triton_backend.interpreting_on_cpu()``. On a machine with CUDA, conftest leaves
the interpreter off, so a plain ``pytest`` runs the real compiler and the tests marked ``gpu``
(``pytest -m gpu`` runs only those); the interpreter-only tests then skip.

Tolerances: fp32 accumulates in fp32 like the references, so only summation order differs (``FP32``).
fp16 / bf16 inputs accumulate in fp32 too and are compared with the fp32 PyTorch path on the same
(already rounded) inputs: the error is the final rounding to the output dtype, half an ulp, i.e.
2^-11 (fp16) or 2^-8 (bf16) of the value; ``LOW_PRECISION`` allows about twice that, relative to the
largest reference magnitude.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dcspass import dcs_conv2d
from dcspass.kernels import cpu, op, triton_backend, triton_forward, triton_grad_input, triton_grad_weight
from dcspass.kernels.triton_common import INTERPRETING, fits_int32

from ._reference import masked_conv2d

FP32 = dict(rtol=1e-5, atol=1e-5)
LOW_PRECISION = {torch.float16: 1e-3, torch.bfloat16: 8e-3}

interpreter = pytest.mark.skipif(
    not INTERPRETING, reason="runs the kernels in Triton's interpreter: needs TRITON_INTERPRET=1 (conftest)"
)
needs_gpu = pytest.mark.skipif(
    not torch.cuda.is_available() or INTERPRETING,
    reason="needs a CUDA GPU and the real Triton compiler (TRITON_INTERPRET unset or 0)",
)


@st.composite
def conv_cases(draw):
    """A small valid convolution: dense, grouped or depthwise; odd or even k; any n in 1..k*k."""
    kind = draw(st.sampled_from(["dense", "grouped", "depthwise"]))
    if kind == "depthwise":
        groups = draw(st.integers(1, 4))
        c_in = c_out = groups
    else:
        groups = 1 if kind == "dense" else draw(st.integers(2, 3))
        c_in, c_out = groups * draw(st.integers(1, 5)), groups * draw(st.integers(1, 5))
    k = draw(st.integers(1, 5))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = tuple(draw(st.integers(0, 2)) for _ in range(4))  # (left, right, top, bottom)
    low_h = max(1, dilation[0] * (k - 1) + 1 - padding[2] - padding[3])
    low_w = max(1, dilation[1] * (k - 1) + 1 - padding[0] - padding[1])
    taps = draw(st.permutations(range(k * k)))[: draw(st.integers(1, k * k))]
    return dict(
        batch=draw(st.integers(1, 2)),
        c_in=c_in,
        c_out=c_out,
        groups=groups,
        k=k,
        stride=stride,
        padding=padding,
        dilation=dilation,
        hw=(draw(st.integers(low_h, low_h + 5)), draw(st.integers(low_w, low_w + 5))),
        taps=torch.tensor(taps),
        channels_last=draw(st.booleans()),
        bias=draw(st.booleans()),
    )


def _tensors(case, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(case["batch"], case["c_in"], *case["hw"], generator=g)
    w = torch.randn(case["c_out"], case["c_in"] // case["groups"], case["k"], case["k"], generator=g)
    b = torch.randn(case["c_out"], generator=g) if case["bias"] else None
    x, w = x.to(device, dtype), w.to(device, dtype)
    b = b.to(device, dtype) if b is not None else None
    if case["channels_last"]:
        x = x.to(memory_format=torch.channels_last)
    return x, w, b, case["taps"].to(device)


def _geometry(case):
    return case["stride"], case["padding"], case["dilation"], case["groups"]


def _triton_all(case, x, w, b, taps, grad_out):
    """Forward, grad-input and grad-weight from the three launchers."""
    geo = _geometry(case)
    out = triton_forward.dcs_forward(x, w, b, taps, *geo)
    fmt = cpu._memory_format(x)
    gx = triton_grad_input.dcs_grad_input(grad_out, tuple(x.shape), fmt, w, taps, *geo)
    gw = triton_grad_weight.dcs_grad_weight(grad_out, x, tuple(w.shape), taps, *geo)
    return out, gx, gw


def _cpu_all(case, x, w, b, taps, grad_out):
    geo = _geometry(case)
    out = cpu.dcs_forward(x, w, b, taps, *geo)
    gx = cpu.dcs_grad_input(grad_out, tuple(x.shape), cpu._memory_format(x), w, taps, *geo)
    gw = cpu.dcs_grad_weight(grad_out, x, tuple(w.shape), taps, *geo)
    return out, gx, gw


def _masked_dense_all(case, x, w, b, taps, grad_out):
    """The oracle: ``F.conv2d`` with the masked weight, gradients by autograd."""
    x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
    out = masked_conv2d(x, w, b, taps, case["stride"], case["padding"], case["dilation"], case["groups"])
    gx, gw = torch.autograd.grad(out, (x, w), grad_out)
    return out.detach(), gx, gw


@pytest.mark.slow
@interpreter
@settings(max_examples=30)
@given(case=conv_cases())
def test_fp32_matches_pytorch_path_and_masked_conv2d(case):
    x, w, b, taps = _tensors(case)
    out_ref = cpu.dcs_forward(x, w, b, taps, *_geometry(case))
    grad_out = torch.randn(out_ref.shape, generator=torch.Generator().manual_seed(1))
    got = _triton_all(case, x, w, b, taps, grad_out)
    reference = _cpu_all(case, x, w, b, taps, grad_out)
    oracle = _masked_dense_all(case, x, w, b, taps, grad_out)
    for name, mine, ref, dense in zip(
        ("output", "grad_input", "grad_weight"), got, reference, oracle, strict=True
    ):
        torch.testing.assert_close(mine, ref, **FP32, msg=lambda m, name=name: f"{name} vs kernels.cpu: {m}")
        torch.testing.assert_close(mine, dense, **FP32, msg=lambda m, name=name: f"{name} vs F.conv2d: {m}")
    out, gx, _ = got
    fmt = cpu._memory_format(x)
    assert out.is_contiguous(memory_format=fmt) and gx.is_contiguous(memory_format=fmt)


LOW_PRECISION_CASES = {
    "grouped_strided_channels_last": dict(
        batch=2,
        c_in=8,
        c_out=12,
        groups=2,
        k=5,
        stride=(2, 2),
        padding=(2, 2, 2, 2),
        dilation=(1, 1),
        hw=(9, 8),
        taps=torch.tensor([3, 17]),
        channels_last=True,
        bias=True,
    ),
    "dense_even_k_nchw": dict(
        batch=2,
        c_in=6,
        c_out=5,
        groups=1,
        k=4,
        stride=(1, 2),
        padding=(1, 2, 2, 1),
        dilation=(1, 2),
        hw=(7, 9),
        taps=torch.tensor([0, 5, 10, 15, 6]),
        channels_last=False,
        bias=False,
    ),
    "depthwise": dict(
        batch=2,
        c_in=6,
        c_out=6,
        groups=6,
        k=3,
        stride=(2, 1),
        padding=(1, 1, 1, 1),
        dilation=(1, 1),
        hw=(8, 7),
        taps=torch.tensor([4, 0, 8]),
        channels_last=True,
        bias=True,
    ),
}


@interpreter
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", list(LOW_PRECISION_CASES))
def test_low_precision_accumulates_in_fp32(name, dtype):
    case = LOW_PRECISION_CASES[name]
    x, w, b, taps = _tensors(case, dtype)
    out_shape = cpu.dcs_forward(x.float(), w.float(), None, taps, *_geometry(case)).shape
    grad_out = torch.randn(out_shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    got = _triton_all(case, x, w, b, taps, grad_out)
    up = (t.float() if t is not None else None for t in (x, w, b))
    reference = _cpu_all(case, *up, taps, grad_out.float())
    for name_, mine, ref in zip(("output", "grad_input", "grad_weight"), got, reference, strict=True):
        assert mine.dtype == dtype, name_
        error = (mine.float() - ref).abs().max().item()
        assert error <= LOW_PRECISION[dtype] * ref.abs().max().item(), f"{name_}: max error {error}"


MANY_BLOCK_CASES = {
    # 80 input and 72 output channels: several channel blocks and output-channel tiles in every kernel
    # (the hypothesis shapes fit in one block), and two grad-weight tiles each way.
    "dense": dict(
        batch=2,
        c_in=80,
        c_out=72,
        groups=1,
        k=5,
        stride=(2, 2),
        padding=(2, 2, 2, 2),
        dilation=(1, 1),
        hw=(7, 6),
        taps=torch.tensor([24, 0, 12]),
        channels_last=True,
        bias=True,
    ),
    "depthwise": dict(
        batch=2,
        c_in=40,
        c_out=40,
        groups=40,
        k=3,
        stride=(1, 1),
        padding=(1, 1, 1, 1),
        dilation=(1, 1),
        hw=(5, 6),
        taps=torch.tensor([1, 7]),
        channels_last=False,
        bias=True,
    ),
}


@interpreter
@pytest.mark.parametrize("name", list(MANY_BLOCK_CASES))
def test_many_channel_blocks(name):
    case = MANY_BLOCK_CASES[name]
    x, w, b, taps = _tensors(case)
    out_shape = cpu.dcs_forward(x, w, b, taps, *_geometry(case)).shape
    grad_out = torch.randn(out_shape, generator=torch.Generator().manual_seed(1))
    got = _triton_all(case, x, w, b, taps, grad_out)
    for mine, ref in zip(got, _cpu_all(case, x, w, b, taps, grad_out), strict=True):
        torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-4)


# The backend: routing, fallbacks, the triton_ops, the compile hook.


@pytest.fixture
def launch_counts(monkeypatch):
    """Count calls of the three launchers (still running them)."""
    counts = {"forward": 0, "grad_input": 0, "grad_weight": 0}
    for module, fn, key in (
        (triton_forward, "dcs_forward", "forward"),
        (triton_grad_input, "dcs_grad_input", "grad_input"),
        (triton_grad_weight, "dcs_grad_weight", "grad_weight"),
    ):
        original = getattr(module, fn)

        def counted(*args, _original=original, _key=key, **kwargs):
            counts[_key] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, fn, counted)
    return counts


CASE = LOW_PRECISION_CASES["grouped_strided_channels_last"]


def _op_with_grads(case, x, w, b, taps):
    x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
    b = b.detach().requires_grad_() if b is not None else None
    out = dcs_conv2d(x, w, b, taps, case["stride"], case["padding"], case["dilation"], case["groups"])
    out.square().sum().backward()
    return out.detach(), x.grad, w.grad, None if b is None else b.grad


@interpreter
def test_op_runs_the_kernels_when_the_backend_takes_the_call(launch_counts):
    x, w, b, taps = _tensors(CASE)
    expected = _op_with_grads(CASE, x, w, b, taps)
    assert sum(launch_counts.values()) == 0  # CPU tensors stay on the PyTorch path by default
    with triton_backend.interpreting_on_cpu():
        got = _op_with_grads(CASE, x, w, b, taps)
    assert launch_counts == {"forward": 1, "grad_input": 1, "grad_weight": 1}
    for mine, ref in zip(got, expected, strict=True):
        torch.testing.assert_close(mine, ref, **FP32)


def test_backend_claims_cuda_only_outside_the_interpreter_context():
    w = torch.empty(4, 4, 3, 3)
    assert not triton_backend.accepts(torch.empty(1, 4, 5, 5), w, 1)
    meta_cuda = torch.empty(1, 4, 5, 5, device="meta")  # a stand-in: is_cuda is False on meta
    assert not triton_backend.accepts(meta_cuda, w, 1)


@interpreter
def test_unsupported_dtype_falls_back_to_pytorch_with_the_right_answer(launch_counts):
    x, w, b, taps = _tensors(CASE, torch.float64)
    with triton_backend.interpreting_on_cpu():
        assert not triton_backend.accepts(x, w, CASE["groups"])
        got = _op_with_grads(CASE, x, w, b, taps)[:3]
    assert sum(launch_counts.values()) == 0
    dense = masked_conv2d(x, w, b, taps, CASE["stride"], CASE["padding"], CASE["dilation"], CASE["groups"])
    oracle = _masked_dense_all(CASE, x, w, b, taps, 2 * dense)  # the gradient of square().sum()
    for mine, ref in zip(got, oracle, strict=True):
        torch.testing.assert_close(mine, ref, rtol=1e-10, atol=1e-10)


def test_offsets_beyond_int32_are_not_supported():
    big = torch.empty(2**16, 2**15 + 1, 1, 1, device="meta")
    w = torch.empty(4, 4, 3, 3, device="meta")
    assert not fits_int32(big)
    assert not triton_forward.supports(big, w)
    assert not triton_grad_weight.supports(big, big)
    assert not triton_grad_input.supports(
        torch.empty(1, 4, 5, 5, device="meta"), (2**16, 2**15 + 1, 1, 1), w, (1, 1), 1
    )
    assert triton_forward.supports(torch.empty(8, 64, 32, 32, device="meta"), w)


@interpreter
def test_calls_a_launcher_cannot_take_fall_back_to_pytorch(monkeypatch, launch_counts):
    for module in (triton_forward, triton_grad_input, triton_grad_weight):
        monkeypatch.setattr(module, "fits_int32", lambda *tensors: False)  # as if the tensors were huge
    x, w, b, taps = _tensors(CASE)
    expected = _op_with_grads(CASE, x, w, b, taps)
    with triton_backend.interpreting_on_cpu():
        got = _op_with_grads(CASE, x, w, b, taps)
    assert sum(launch_counts.values()) == 0
    for mine, ref in zip(got, expected, strict=True):
        torch.testing.assert_close(mine, ref, rtol=0, atol=0)


def test_interpreting_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setattr(triton_backend, "INTERPRETING", False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"), triton_backend.interpreting_on_cpu():
        pass


@interpreter
def test_triton_ops_match_the_public_ops():
    x, w, b, taps = _tensors(CASE)
    geo = [list(CASE["stride"]), list(CASE["padding"]), list(CASE["dilation"]), CASE["groups"]]
    out = torch.ops.dcspass.dcs_conv2d_triton(x, w, b, taps, *geo)
    torch.testing.assert_close(out, op.conv2d(x, w, b, taps, *geo), **FP32)
    gx = torch.ops.dcspass.dcs_conv2d_grad_input_triton(out, list(x.shape), True, w, taps, *geo)
    torch.testing.assert_close(gx, op.dcs_conv2d_grad_input(out, list(x.shape), True, w, taps, *geo), **FP32)
    gw = torch.ops.dcspass.dcs_conv2d_grad_weight_triton(out, x, list(w.shape), taps, *geo)
    torch.testing.assert_close(gw, op.dcs_conv2d_grad_weight(out, x, list(w.shape), taps, *geo), **FP32)
    # A channels_last weight's gradient comes in that layout, from the kernel as from the PyTorch path.
    gw_cl = torch.ops.dcspass.dcs_conv2d_grad_weight_triton(out, x, list(w.shape), taps, *geo, True)
    assert gw_cl.stride() == gw.contiguous(memory_format=torch.channels_last).stride()
    torch.testing.assert_close(gw_cl, gw, rtol=0, atol=0)
    with triton_backend.interpreting_on_cpu():
        eager = op.dcs_conv2d_grad_weight(out, x, list(w.shape), taps, *geo, None, True)
    assert eager.stride() == gw_cl.stride()
    torch.testing.assert_close(eager, gw, **FP32)


def test_compile_on_cpu_keeps_the_pytorch_path():
    """The compile hook must leave calls it does not take (CPU here) to the public op."""
    x, w, _, taps = _tensors(CASE)
    x.requires_grad_()
    stride, padding, groups = CASE["stride"], CASE["padding"], CASE["groups"]

    def loss(x, w, taps):
        return dcs_conv2d(x, w, None, taps, stride, padding, groups=groups).square().sum()

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    expected_grad = torch.autograd.grad(loss(x, w, taps), x)[0]
    got = compiled(x, w, taps)
    torch.testing.assert_close(got, loss(x, w, taps), **FP32)
    torch.testing.assert_close(torch.autograd.grad(got, x)[0], expected_grad, **FP32)


# The real Triton compiler without a GPU: a subprocess with TRITON_INTERPRET=0 runs
# ``_real_compiler_report`` below, which (1) traces the three public ops on fake CUDA tensors the way
# torch.compile's AOTAutograd does and (2) compiles every kernel variant for an H100 (sm_90) down to a
# cubin (ptxas runs; nothing is launched).

H100 = ("cuda", 90, 32)  # backend, compute capability, warp size


def _traced_kernel_names() -> list[dict]:
    from torch._functorch.aot_autograd import aot_function
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
    from torch._subclasses.fake_tensor import FakeTensorMode

    graphs = []

    def keep(gm, example_inputs):
        names = []
        for node in gm.graph.nodes:
            if "triton_kernel_wrapper" in str(node.target):
                kernel = kernel_side_table.get_kernel(node.kwargs["kernel_idx"])
                while hasattr(kernel, "fn"):  # Autotuner -> JITFunction -> the Python function
                    kernel = kernel.fn
                names.append(kernel.__name__)
        graphs.append({"code": gm.code, "kernels": names})
        return gm

    geo = ([2, 2], [2, 2, 2, 2], [1, 1], 2)
    with FakeTensorMode(allow_non_fake_inputs=True):
        x = torch.empty(2, 8, 9, 9, device="cuda").to(memory_format=torch.channels_last)
        w = torch.empty(12, 4, 5, 5, device="cuda")
        taps = torch.tensor([3, 17], device="cuda")
        g = torch.empty(2, 12, 5, 5, device="cuda").to(memory_format=torch.channels_last)
        aot_function(lambda x, w, t: op.dcs_conv2d(x, w, None, t, *geo), keep)(x, w, taps)
        aot_function(lambda g, w, t: op.dcs_conv2d_grad_input(g, list(x.shape), True, w, t, *geo), keep)(
            g, w, taps
        )
        aot_function(lambda g, x, t: op.dcs_conv2d_grad_weight(g, x, list(w.shape), t, *geo), keep)(
            g, x, taps
        )
    return graphs


POINTER_TYPES = {
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
    torch.float32: "fp32",
    torch.int64: "i64",
    torch.int32: "i32",
}


def _captured_launches(launch) -> list[tuple]:
    """Run launchers on meta tensors with ``wrap_triton`` replaced by a recorder of its launches,
    ``(kernel, args, kwargs)``: the exact arguments a real launch would pass."""
    launches = []

    class Recorder:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append((self.kernel, args, kwargs))

    modules = (triton_forward, triton_grad_input, triton_grad_weight)
    originals = [module.wrap_triton for module in modules]
    for module in modules:
        module.wrap_triton = Recorder
    try:
        launch()
    finally:
        for module, original in zip(modules, originals, strict=True):
            module.wrap_triton = original
    return launches


def _compiled_like_a_launch(kernel, args, kwargs) -> dict:
    """Compile the first autotuning config for an H100 with the specialisation a real launch gets
    (ints equal to 1 become constants, multiples of 16 and tensors get 16-divisibility); report the
    tensor-core instruction family, registers, spilled bytes and whether loads are asynchronous copies."""
    import re

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    config, jit = kernel.configs[0], kernel.fn
    values = {**dict(zip(jit.arg_names, args, strict=False)), **kwargs, **config.kwargs}
    signature, constants, attrs = {}, {}, {}
    for index, name in enumerate(jit.arg_names):
        value = values[name]
        if index in jit.constexprs or (isinstance(value, int) and value == 1):
            signature[name], constants[(index,)] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[name], attrs[(index,)] = "*" + POINTER_TYPES[value.dtype], [["tt.divisibility", 16]]
        else:
            signature[name] = "i32"
            if value % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
    compiled = triton.compile(
        ASTSource(fn=jit, signature=signature, constexprs=constants, attrs=attrs),
        target=GPUTarget(*H100),
        options={"num_warps": config.num_warps, "num_stages": config.num_stages},
    )
    ptx = compiled.asm["ptx"]
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "kernel.ptx").write_text(ptx)
        command = [str(ptxas), "-arch=sm_90a", "-v", "kernel.ptx", "-o", "kernel.cubin"]
        report = subprocess.run(command, cwd=tmp, capture_output=True, text=True, check=True).stderr
    mma = re.search(r"\b(wgmma|mma)\.", ptx)
    return {
        "mma": mma.group(1) if mma else "none",
        "registers": int(re.search(r"Used (\d+) registers", report).group(1)),
        "spilled_bytes": int(re.search(r"(\d+) bytes spill stores", report).group(1)),
        "async_copies": "cp.async" in ptx,
    }


def _real_compiler_report() -> None:
    # The RN18 layer2.0.conv1 DCS layer at batch 128, bf16 channels_last (as benchmarks/op_gpu.py runs
    # it), and a depthwise layer in fp16; meta tensors, so nothing is allocated.
    meta = dict(device="meta", dtype=torch.bfloat16)
    x = torch.empty(128, 64, 32, 32, **meta).to(memory_format=torch.channels_last)
    w = torch.empty(128, 64, 5, 5, **meta)
    g = torch.empty(128, 128, 16, 16, **meta).to(memory_format=torch.channels_last)
    taps = torch.empty(2, device="meta", dtype=torch.long)
    geo = ((2, 2), (2, 2, 2, 2), (1, 1), 1)
    half = dict(device="meta", dtype=torch.float16)
    xd = torch.empty(128, 96, 16, 16, **half).to(memory_format=torch.channels_last)
    wd = torch.empty(96, 1, 3, 3, **half)
    launches = _captured_launches(
        lambda: (
            triton_forward.dcs_forward(x, w, None, taps, *geo),
            triton_grad_input.dcs_grad_input(g, tuple(x.shape), torch.channels_last, w, taps, *geo),
            triton_grad_weight.dcs_grad_weight(g, x, tuple(w.shape), taps, *geo),
            triton_forward.dcs_forward(xd, wd, None, taps, (1, 1), (1, 1, 1, 1), (1, 1), 96),
        )
    )
    names = ["forward bf16", "grad_input bf16", "grad_weight bf16", "forward fp16 depthwise"]
    compiled = {name: _compiled_like_a_launch(*launch) for name, launch in zip(names, launches, strict=True)}
    print(json.dumps({"graphs": _traced_kernel_names(), "compiled": compiled}))


@pytest.fixture(scope="module")
def real_compiler_report() -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    root = Path(__file__).resolve().parents[1]
    code = "from tests.test_triton_kernels import _real_compiler_report; _real_compiler_report()"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_traced_graph_on_cuda_holds_the_triton_kernels(real_compiler_report):
    """What Inductor receives for CUDA calls: the kernels themselves, not an opaque custom op."""
    graphs = real_compiler_report["graphs"]
    expected = ["dcs_forward_kernel", "dcs_grad_input_kernel", "dcs_grad_weight_kernel"]
    assert [graph["kernels"] for graph in graphs] == [[name] for name in expected]
    for graph in graphs:
        assert "dcspass." not in graph["code"], graph["code"]  # no opaque custom op left


@pytest.mark.slow
def test_kernels_compile_for_h100_with_tensor_cores_and_no_spills(real_compiler_report):
    """The code a real launch gets at the RN18 layer2 shape: tensor cores, pipelined loads, no spills."""
    compiled = real_compiler_report["compiled"]
    for name in ("forward bf16", "grad_input bf16", "grad_weight bf16"):
        report = compiled[name]
        assert report["mma"] == "wgmma", f"{name}: expected Hopper tensor-core MMAs: {report}"
        assert report["async_copies"], f"{name}: loads are not pipelined through shared memory: {report}"
        assert report["spilled_bytes"] == 0, f"{name}: registers spill: {report}"
    depthwise = compiled["forward fp16 depthwise"]
    assert depthwise["mma"] == "none" and depthwise["spilled_bytes"] == 0, depthwise  # elementwise by design


# On a real GPU, with the real compiler.


GPU_CASES = [
    dict(
        batch=4,
        c_in=64,
        c_out=128,
        groups=1,
        k=5,
        stride=(2, 2),
        padding=(2, 2, 2, 2),
        dilation=(1, 1),
        hw=(32, 32),
        taps=torch.tensor([3, 17]),
        channels_last=True,
        bias=False,
    ),
    dict(
        batch=3,
        c_in=24,
        c_out=36,
        groups=3,
        k=4,
        stride=(1, 2),
        padding=(1, 2, 2, 1),
        dilation=(2, 1),
        hw=(13, 11),
        taps=torch.tensor([0, 5, 9, 15, 2]),
        channels_last=False,
        bias=True,
    ),
    dict(
        batch=2,
        c_in=40,
        c_out=40,
        groups=40,
        k=3,
        stride=(2, 2),
        padding=(1, 1, 1, 1),
        dilation=(1, 1),
        hw=(15, 16),
        taps=torch.tensor([4, 8]),
        channels_last=True,
        bias=True,
    ),
]


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", GPU_CASES, ids=["rn18_layer2", "grouped_even_k", "depthwise"])
def test_gpu_kernels_match_pytorch_path(case, dtype, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # fp32 tight: IEEE dots
    x, w, b, taps = _tensors(case, dtype, "cuda")
    out_shape = cpu.dcs_forward(x, w, b, taps, *_geometry(case)).shape
    grad_out = torch.randn(out_shape, device="cuda").to(dtype)
    got = _triton_all(case, x, w, b, taps, grad_out)
    up = (t.double() if t is not None else None for t in (x, w, b))
    reference = _cpu_all(case, *up, taps, grad_out.double())
    for mine, ref in zip(got, reference, strict=True):
        bound = (1e-5 if dtype == torch.float32 else LOW_PRECISION[dtype]) * ref.abs().max().item()
        assert (mine.double() - ref).abs().max().item() <= bound


@pytest.mark.gpu
@needs_gpu
def test_gpu_compiled_graph_runs_the_kernels():
    """Inductor's generated code (forward and backward) launches the three kernels itself."""
    from torch._inductor.utils import run_and_get_code

    case = GPU_CASES[0]
    x, w, _, taps = _tensors(case, torch.bfloat16, "cuda")
    x.requires_grad_()
    w.requires_grad_()

    def loss(x, w, taps):
        return dcs_conv2d(x, w, None, taps, case["stride"], case["padding"]).float().square().sum()

    compiled = torch.compile(loss)

    def forward_backward():
        value = compiled(x, w, taps)
        return value, torch.autograd.grad(value, (x, w))

    (value, grads), codes = run_and_get_code(forward_backward)
    code = "\n".join(codes)
    for kernel in ("dcs_forward_kernel", "dcs_grad_input_kernel", "dcs_grad_weight_kernel"):
        assert kernel in code, kernel
    expected = loss(x, w, taps)
    torch.testing.assert_close(value, expected, rtol=1e-2, atol=0)
    for mine, ref in zip(grads, torch.autograd.grad(expected, (x, w)), strict=True):
        assert (mine.float() - ref.float()).abs().max() <= 1e-2 * ref.float().abs().max()


@pytest.mark.gpu
@needs_gpu
def test_gpu_gradcheck_of_the_triton_path(launch_counts, monkeypatch):
    """Finite differences against the kernels' gradients, fp32 with IEEE dots (the kernels have no fp64:
    fp64 falls back to the PyTorch path), so the tolerances are fp32's; and the same gradients against
    the PyTorch path on CUDA in fp64."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    case = dict(GPU_CASES[1], batch=1, c_in=6, c_out=6, hw=(7, 6))  # grouped, even k, dilated: small
    x, w, b, taps = _tensors(case, torch.float32, "cuda")
    geo = _geometry(case)

    def fn(x, w, b):
        return dcs_conv2d(x, w, b, taps, *geo)

    inputs = tuple(t.detach().requires_grad_() for t in (x, w, b))
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-2, atol=5e-2, rtol=1e-2, fast_mode=True)
    assert all(count > 0 for count in launch_counts.values()), launch_counts  # the Triton path ran
    out = fn(*inputs)
    grad_out = torch.randn_like(out)
    got = torch.autograd.grad(out, inputs, grad_out)
    doubles = tuple(t.detach().double().requires_grad_() for t in (x, w, b))
    reference = torch.autograd.grad(fn(*doubles), doubles, grad_out.double())  # fp64: the PyTorch path
    for mine, ref in zip(got, reference, strict=True):
        assert (mine.double() - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()


def _small_dcs_resnet() -> torch.nn.Module:
    import dcspass
    from dcspass.models import build_model

    torch.manual_seed(0)
    model = dcspass.transform(build_model("resnet18", num_classes=10, width=16), policy="index:6", n=2, k=5)
    return model.cuda().eval()


@pytest.mark.gpu
@needs_gpu
def test_gpu_taps_change_under_cuda_graph_replay():
    """``mode="reduce-overhead"`` records a CUDA graph; every replay must still draw fresh taps (the draw
    is in the graph, not a constant captured at recording), and the graph has no break."""
    from torch._dynamo.utils import counters

    import dcspass

    torch._dynamo.reset()
    counters.clear()
    model = _small_dcs_resnet()
    x = torch.randn(4, 3, 32, 32, device="cuda")
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(model, mode="reduce-overhead", fullgraph=True)
    with torch.no_grad():
        outs = [compiled(x).clone() for _ in range(8)]  # replays overwrite their output buffers: clone
        replayed = outs[3:]  # warm-up and recording calls first
        assert any(not torch.allclose(replayed[0], o) for o in replayed[1:]), "a replay reused its taps"
        with dcspass.frozen_taps(model):
            eager = model(x)
            for _ in range(3):
                torch.testing.assert_close(compiled(x), eager, rtol=1e-3, atol=1e-3)
    assert counters["inductor"]["cudagraph_skips"] == 0, "Inductor ran without CUDA graphs"
    torch._dynamo.reset()


@pytest.mark.gpu
@needs_gpu
def test_gpu_recorded_taps_change_under_cuda_graph_replay_and_explain_the_output():
    """The instrumented model under CUDA graphs: the taps it reports differ between replays, and each
    call's output is the eager model's under the taps that call reported."""
    import dcspass

    torch._dynamo.reset()
    model = _small_dcs_resnet()
    probe = dcspass.instrument(model)
    compiled = torch.compile(probe, mode="reduce-overhead", fullgraph=True)
    x = torch.randn(4, 3, 32, 32, device="cuda")
    seen = set()
    with torch.no_grad():
        for call in range(8):
            out = compiled(x).clone()
            taps = {name: t.clone() for name, t in probe.captured_taps.items()}
            if call < 3:  # warm-up and recording
                continue
            seen.add(tuple(tuple(t.tolist()) for t in taps.values()))
            with dcspass.using_taps(model, taps):
                torch.testing.assert_close(out, model(x), rtol=1e-3, atol=1e-3)
    assert len(seen) > 1, "every replay recorded the same taps"
    torch._dynamo.reset()
