"""The DCS op against F.conv2d: values, gradients, registration (opcheck), errors."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st

import dcspass
from dcspass import ConfigError, TapError, dcs_conv2d
from dcspass.kernels import cpu

from ._reference import masked_conv2d

TOL = {torch.float64: 1e-10, torch.float32: 2e-4}


@st.composite
def conv_cases(draw, full: bool):
    """A random valid convolution: shapes, geometry, dtype, memory format and taps."""
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    c_in = groups * draw(st.integers(1, 3))
    c_out = groups * draw(st.integers(1, 3))
    if draw(st.booleans()):  # depthwise
        groups, c_in, c_out = c_in, c_in, c_in
    k = draw(st.integers(1, 5))
    stride = draw(st.sampled_from([1, 2, 3, (1, 2)]))
    dilation = draw(st.sampled_from([1, 1, 2, (2, 1)]))
    padding = draw(
        st.one_of(
            st.integers(0, 3),
            st.tuples(st.integers(0, 2), st.integers(0, 2)),
            st.tuples(*[st.integers(0, 3)] * 4),
        )
    )
    pad4 = padding if isinstance(padding, tuple) and len(padding) == 4 else None
    dil = dilation if isinstance(dilation, tuple) else (dilation, dilation)
    extent = [d * (k - 1) + 1 for d in dil]
    h = draw(st.integers(max(1, extent[0] - 2 * 3), 9))
    w = draw(st.integers(max(1, extent[1] - 2 * 3), 9))
    ph = (pad4[2] + pad4[3]) if pad4 else 2 * (padding if isinstance(padding, int) else padding[0])
    pw = (pad4[0] + pad4[1]) if pad4 else 2 * (padding if isinstance(padding, int) else padding[1])
    if h + ph < extent[0]:
        h = extent[0] - ph
    if w + pw < extent[1]:
        w = extent[1] - pw
    n = k * k if full else draw(st.integers(1, k * k))
    taps = torch.tensor(draw(st.permutations(range(k * k)))[:n])
    return dict(
        batch=draw(st.integers(1, 3)),
        c_in=c_in,
        c_out=c_out,
        groups=groups,
        k=k,
        stride=stride,
        dilation=dilation,
        padding=padding,
        hw=(h, w),
        taps=taps,
        dtype=draw(st.sampled_from([torch.float32, torch.float64])),
        channels_last=draw(st.booleans()),
        bias=draw(st.booleans()),
    )


def _tensors(case, seed=0):
    g = torch.Generator().manual_seed(seed)
    dtype = case["dtype"]
    x = torch.randn(case["batch"], case["c_in"], *case["hw"], generator=g, dtype=dtype)
    if case["channels_last"]:
        x = x.to(memory_format=torch.channels_last)
    w = torch.randn(
        case["c_out"], case["c_in"] // case["groups"], case["k"], case["k"], generator=g, dtype=dtype
    )
    b = torch.randn(case["c_out"], generator=g, dtype=dtype) if case["bias"] else None
    return x.requires_grad_(), w.requires_grad_(), None if b is None else b.requires_grad_()


def _grads(out, inputs, grad_out):
    inputs = [t for t in inputs if t is not None]
    return torch.autograd.grad(out, inputs, grad_out)


def _check_against(case, expected_fn):
    x, w, b = _tensors(case)
    geometry = (case["stride"], case["padding"], case["dilation"], case["groups"])
    out = dcs_conv2d(x, w, b, case["taps"], *geometry)
    ref = expected_fn(x, w, b, case["taps"], *geometry)
    assert out.shape == ref.shape
    tol = TOL[case["dtype"]]
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
    grad_out = torch.randn_like(ref)
    for got, want in zip(_grads(out, (x, w, b), grad_out), _grads(ref, (x, w, b), grad_out), strict=True):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    if not x.is_contiguous():  # channels_last input that is not also NCHW-contiguous (C=1, 1x1)
        assert out.is_contiguous(memory_format=torch.channels_last)


def _dense(x, w, b, taps, stride, padding, dilation, groups):
    if isinstance(padding, tuple) and len(padding) == 4:
        x, padding = F.pad(x, padding), 0
    return F.conv2d(x, w, b, stride, padding, dilation, groups)


@given(conv_cases(full=True))
def test_all_taps_equal_conv2d(case):
    """With n = k*k the op is exactly an ordinary convolution: values and every gradient."""
    _check_against(case, _dense)


@given(conv_cases(full=False))
def test_subset_of_taps_equals_masked_conv2d(case):
    _check_against(case, masked_conv2d)


@given(conv_cases(full=False), st.integers(3, 8))
def test_nchw_one_gemm_path_equals_masked_conv2d(case, widen):
    """NCHW input with many channels over few positions runs the one-GEMM passes (``cpu._one_gemm``)
    and converts back to NCHW: every geometry, values and gradients."""
    case = {**case, "c_in": case["c_in"] * widen, "c_out": case["c_out"] * widen, "channels_last": False}
    x, w, _ = _tensors(case)
    geometry = (case["stride"], case["padding"], case["dilation"], case["groups"])
    hw_out = masked_conv2d(x.detach(), w.detach(), None, case["taps"], *geometry).shape[-2:]
    assume(not cpu._is_depthwise(w.shape, case["groups"]))
    assume(
        cpu._one_gemm(x.shape, w.shape, len(case["taps"]), hw_out, case["groups"], torch.contiguous_format)
    )
    _check_against(case, masked_conv2d)


@contextmanager
def _chunking(chunk_bytes: int):
    """Force the CPU path to work a few images at a time, whatever the size of its buffers."""
    saved = cpu.CHUNK_FROM_BYTES, cpu.CHUNK_BYTES
    cpu.CHUNK_FROM_BYTES, cpu.CHUNK_BYTES = 0, chunk_bytes
    try:
        yield
    finally:
        cpu.CHUNK_FROM_BYTES, cpu.CHUNK_BYTES = saved


@given(conv_cases(full=False), st.integers(1, 3000))
def test_chunked_batches_equal_masked_conv2d(case, chunk_bytes):
    """Each pass over chunks of the batch (a remainder included) gives the same values and gradients."""
    with _chunking(chunk_bytes):
        _check_against({**case, "batch": case["batch"] + 2}, masked_conv2d)


def test_batches_are_chunked_only_when_their_cols_reach_the_limit():
    """fp32, n=2, batch 64 of 64 x 32 x 32: cols are 2*64*4 bytes per output position and image."""
    x_shape, per_position = (64, 64, 32, 32), 2 * 64 * 4
    assert 64 * 16 * 16 * per_position < cpu.CHUNK_FROM_BYTES  # stride 2: 8 MiB, one pass
    assert cpu.images_per_chunk(x_shape, 2, (16, 16), 4) == 64
    per_image = 32 * 32 * per_position  # stride 1: 32 MiB, in chunks
    assert 64 * per_image >= cpu.CHUNK_FROM_BYTES
    assert cpu.images_per_chunk(x_shape, 2, (32, 32), 4) == cpu.CHUNK_BYTES // per_image
    assert cpu.images_per_chunk((3, 64, 512, 512), 2, (512, 512), 4) == 1  # one image over CHUNK_BYTES


@pytest.mark.parametrize("channels_last", [False, True])
def test_chunked_forward_keeps_no_cols_and_passes_opcheck(channels_last):
    x = torch.randn(5, 4, 9, 8)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w = torch.randn(6, 2, 5, 5, requires_grad=True)
    b = torch.randn(6, requires_grad=True)
    args = (x.requires_grad_(), w, b, torch.tensor([2, 13]), [2, 2], [2, 2, 1, 2], [1, 1], 2)
    with _chunking(200):
        assert cpu.images_per_chunk(x.shape, 2, (5, 4), 4) == 1
        _out, cols = torch.ops.dcspass.dcs_conv2d(*args)
        assert cols.numel() == 0
        torch.library.opcheck(torch.ops.dcspass.dcs_conv2d.default, args)
    _out, cols = torch.ops.dcspass.dcs_conv2d(*args)
    assert cols.numel() > 0  # the same call in one pass keeps them


def test_weight_gradient_is_zero_off_the_taps():
    x = torch.randn(2, 4, 8, 8)
    w = torch.randn(6, 4, 5, 5, requires_grad=True)
    taps = torch.tensor([3, 11, 24])
    dcs_conv2d(x, w, None, taps, padding=2).square().sum().backward()
    touched = (w.grad.abs().sum((0, 1)).flatten() > 0).nonzero().flatten()
    assert touched.tolist() == taps.tolist()


def test_low_precision_matches_float32_reference():
    """fp16/bf16 on the CPU path agree with a float32 computation to their precision."""
    x = torch.randn(2, 8, 10, 10)
    w = torch.randn(16, 8, 5, 5) * 0.1
    taps = torch.tensor([0, 7, 12, 20])
    ref = masked_conv2d(x, w, None, taps, 2, 2)
    for dtype, tol in ((torch.bfloat16, 5e-2), (torch.float16, 5e-3)):
        got = dcs_conv2d(x.to(dtype), w.to(dtype), None, taps, 2, 2).float()
        torch.testing.assert_close(got, ref, rtol=tol, atol=tol)


def test_unbatched_input():
    x = torch.randn(3, 7, 7)
    w = torch.randn(4, 3, 3, 3)
    taps = torch.tensor([1, 4])
    torch.testing.assert_close(
        dcs_conv2d(x, w, None, taps, padding=1), masked_conv2d(x[None], w, None, taps, padding=1)[0]
    )


def test_gradcheck_float64():
    x = torch.randn(2, 4, 6, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    taps = torch.tensor([0, 5, 6, 15])
    assert torch.autograd.gradcheck(
        lambda x, w, b: dcs_conv2d(x, w, b, taps, (2, 1), (1, 2, 0, 1), (1, 2), 2), (x, w, b)
    )


def _grads_wanted_by(request: str, x, w, b, loss):
    """Run the backward ``request`` names; the gradients it returns or accumulates, by name."""
    if request == "backward()":
        loss.backward()
        return {"x": x.grad, "w": w.grad, "b": b.grad}
    if request == "backward(inputs=[b])":
        loss.backward(inputs=[b])
        return {"b": b.grad}
    names = request.removeprefix("grad wrt ").split(",")
    return dict(
        zip(names, torch.autograd.grad(loss, [{"x": x, "w": w, "b": b}[n] for n in names]), strict=True)
    )


@pytest.mark.parametrize("x_is_leaf", [True, False])
@pytest.mark.parametrize(
    ("request_", "passes"),
    [
        ("grad wrt x", {"input"}),  # every attack step: no weight gradient
        ("grad wrt w", {"weight"}),
        ("grad wrt x,w", {"input", "weight"}),
        ("grad wrt w,b", {"weight"}),
        ("backward()", {"input", "weight"}),
        ("backward(inputs=[b])", set()),
    ],
)
def test_backward_runs_only_the_passes_the_engine_uses(monkeypatch, x_is_leaf, request_, passes):
    """A gradient nobody asked for is not computed (as a native conv skips it), and the ones asked
    for match a backward that computes everything."""
    ran = []
    for name, fn in (("input", cpu.dcs_grad_input), ("weight", cpu.dcs_grad_weight)):
        monkeypatch.setattr(
            cpu, f"dcs_grad_{name}", lambda *a, _f=fn, _n=name, **k: ran.append(_n) or _f(*a, **k)
        )
    leaf = torch.randn(2, 4, 9, 9, requires_grad=True)
    x = leaf if x_is_leaf else leaf * 1.5
    if not x_is_leaf:
        x.retain_grad()  # so backward() leaves its gradient in x.grad
    w = torch.randn(6, 4, 5, 5, requires_grad=True)
    b = torch.randn(6, requires_grad=True)
    taps, geometry = torch.tensor([2, 13, 21]), dict(stride=2, padding=2)
    loss = (dcs_conv2d(x, w, b, taps, **geometry) ** 2).sum()
    got = _grads_wanted_by(request_, x, w, b, loss)
    assert set(ran) == passes and len(ran) == len(passes)
    xr, wr, br = (t.detach().requires_grad_() for t in (x, w, b))
    expected = dict(
        zip(
            "xwb",
            torch.autograd.grad((masked_conv2d(xr, wr, br, taps, **geometry) ** 2).sum(), (xr, wr, br)),
            strict=True,
        )
    )
    for name, grad in got.items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize(("stride", "taps"), [([2, 2], [2, 13]), ([1, 1], [0, 6, 12, 24])])
def test_opcheck(channels_last, groups, stride, taps):
    """Both forward variants: cols kept for backward (stride 2, n=2) and gathered again (stride 1, n=4).
    The backward ops too, on their own: their outputs must have the strides their fake kernels
    promise, which compiled code asserts."""
    x = torch.randn(2, 4, 9, 8)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w = torch.randn(8, 4 // groups, 5, 5, requires_grad=True)
    b = torch.randn(8, requires_grad=True)
    geometry = (stride, [2, 2, 1, 2], [1, 1], groups)
    args = (x.requires_grad_(), w, b, torch.tensor(taps), *geometry)
    torch.library.opcheck(torch.ops.dcspass.dcs_conv2d.default, args)
    out, cols = torch.ops.dcspass.dcs_conv2d(*args)
    grad_out = torch.randn_like(out)
    grad_input_args = (grad_out, list(x.shape), channels_last, w.detach(), torch.tensor(taps), *geometry)
    torch.library.opcheck(torch.ops.dcspass.dcs_conv2d_grad_input.default, grad_input_args)
    grad_weight_args = (grad_out, x.detach(), list(w.shape), torch.tensor(taps), *geometry, cols.detach())
    torch.library.opcheck(torch.ops.dcspass.dcs_conv2d_grad_weight.default, grad_weight_args)
    # A channels_last weight gets its gradient in that layout (autograd then need not copy it).
    torch.library.opcheck(torch.ops.dcspass.dcs_conv2d_grad_weight.default, (*grad_weight_args, True))
    gw = torch.ops.dcspass.dcs_conv2d_grad_weight(*grad_weight_args, True)
    assert gw.stride() == w.detach().to(memory_format=torch.channels_last).stride()


@pytest.mark.parametrize("weight_format", [torch.contiguous_format, torch.channels_last])
def test_weight_grad_takes_the_weight_layout_and_value(weight_format):
    """``weight.grad`` has the weight's strides and the masked conv's value, whatever the layout."""
    x = torch.randn(3, 6, 8, 8, requires_grad=True)
    w = torch.randn(10, 6, 5, 5).to(memory_format=weight_format).requires_grad_()
    taps = torch.tensor([1, 12, 23])
    dcs_conv2d(x, w, None, taps, 2, 2).square().sum().backward()
    wr = w.detach().contiguous().requires_grad_()
    masked_conv2d(x.detach(), wr, None, taps, 2, 2).square().sum().backward()
    assert w.grad.stride() == w.stride()
    torch.testing.assert_close(w.grad, wr.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("chunk_bytes", [None, 2000])
def test_nchw_deep_layer_runs_one_gemm_and_matches_masked_conv2d(bias, groups, chunk_bytes):
    """Many channels over few positions (as ResNet's last stage): NCHW input takes the one-GEMM path,
    whose output and input gradient are converted back to NCHW, and still equals the masked conv."""
    x = torch.randn(3, 32, 4, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(48, 32 // groups, 5, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(48, dtype=torch.float64, requires_grad=True) if bias else None
    taps = torch.tensor([0, 7, 18])
    assert cpu._one_gemm(x.shape, w.shape, 3, (2, 2), groups, torch.contiguous_format)
    with _chunking(chunk_bytes) if chunk_bytes else nullcontext():
        out = dcs_conv2d(x, w, b, taps, 2, 2, 1, groups)
        grad_out = torch.randn_like(out)
        grads = torch.autograd.grad(out, [t for t in (x, w, b) if t is not None], grad_out)
    ref = masked_conv2d(x, w, b, taps, 2, 2, 1, groups)
    ref_grads = torch.autograd.grad(ref, [t for t in (x, w, b) if t is not None], grad_out)
    assert out.is_contiguous() and grads[0].is_contiguous()
    torch.testing.assert_close(out, ref)
    for got, expected in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(
    ("stride", "n", "groups", "kept"),
    [(2, 2, 1, True), (2, 8, 2, True), (1, 2, 1, True), (1, 3, 1, False), (2, 2, 4, False)],
)
def test_forward_keeps_cols_only_while_at_most_twice_the_input(stride, n, groups, kept):
    """8x8 input, k=5, padding 2: cols are n*H_out*W_out/(H*W) inputs; depthwise (groups=4) gathers none."""
    x = torch.randn(2, 4, 8, 8)
    w = torch.randn(4, 4 // groups, 5, 5)
    out, cols = torch.ops.dcspass.dcs_conv2d(
        x, w, None, torch.arange(n), [stride] * 2, [2] * 4, [1, 1], groups
    )
    assert cols.numel() == (out.shape[0] * out.shape[2] * out.shape[3] * n * 4 if kept else 0)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("groups", [1, 2])
def test_grad_weight_from_kept_cols_equals_a_fresh_gather(channels_last, groups):
    x = torch.randn(3, 4, 9, 7, dtype=torch.float64)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w = torch.randn(6, 4 // groups, 5, 5, dtype=torch.float64, requires_grad=True)
    taps = torch.tensor([0, 12, 19])
    geometry = ((2, 1), (2, 1, 0, 2), (1, 2), groups)
    out, cols = cpu.dcs_forward_keeping_cols(x, w, None, taps, *geometry)
    assert cols.numel() > 0
    grad_out = torch.randn_like(out)
    kept = cpu.dcs_grad_weight(grad_out, x, tuple(w.shape), taps, *geometry, cols=cols)
    fresh = cpu.dcs_grad_weight(grad_out, x, tuple(w.shape), taps, *geometry)
    (want,) = torch.autograd.grad(
        masked_conv2d(x, w, None, taps, (2, 1), (2, 1, 0, 2), (1, 2), groups), w, grad_out
    )
    torch.testing.assert_close(kept, want)
    torch.testing.assert_close(fresh, want)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_empty_batch(channels_last, groups):
    x = torch.randn(0, 4, 8, 8)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    w = torch.randn(4, 4 // groups, 5, 5, requires_grad=True)
    out = dcs_conv2d(x, w, None, torch.tensor([1, 7]), 2, 2, 1, groups)
    assert out.shape == (0, 4, 4, 4)
    gx, gw = torch.autograd.grad(out.sum(), (x, w))
    assert gx.shape == x.shape and not gw.any()


# --- errors: our types, messages that name the problem -------------------------------------------


@pytest.mark.parametrize(
    ("taps", "message"),
    [
        (torch.tensor([1, 1]), "distinct"),
        (torch.tensor([0, 25]), r"0\.\.24"),
        (torch.tensor([-1, 3]), r"0\.\.24"),
        (torch.tensor([1.0, 2.0]), "integer tensor"),
        (torch.tensor([[1, 2]]), "1-D"),
        (torch.tensor([], dtype=torch.long), "non-empty"),
        ([1, 2], "LongTensor"),
    ],
)
def test_bad_taps(taps, message):
    with pytest.raises(TapError, match=message):
        dcs_conv2d(torch.randn(1, 2, 8, 8), torch.randn(2, 2, 5, 5), None, taps)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(x=torch.randn(1, 3, 8, 8)), "3 channels"),
        (dict(w=torch.randn(2, 2, 5, 3)), "square"),
        (dict(b=torch.randn(3)), "bias must have shape"),
        (dict(padding=-1), "non-negative"),
        (dict(padding=(1, 2, 3)), "4-tuple"),
        (dict(stride=0), "stride and dilation"),
        (dict(groups=3), "groups=3"),
        (dict(x=torch.randn(1, 2, 2, 2)), "smaller than the dilated kernel"),
        (dict(x=torch.randn(2, 8, 8)), None),  # unbatched is fine
        (dict(x=torch.randn(8, 8)), r"\[B, C, H, W\]"),
        (dict(x=torch.randn(1, 2, 8, 8, dtype=torch.float64)), "share a dtype"),
    ],
)
def test_bad_arguments(kwargs, message):
    args = dict(x=torch.randn(1, 2, 8, 8), w=torch.randn(2, 2, 5, 5), b=None, padding=0, stride=1, groups=1)
    args.update(kwargs)
    call = lambda: dcs_conv2d(
        args["x"],
        args["w"],
        args["b"],
        torch.tensor([0, 1]),
        args["stride"],
        args["padding"],
        1,
        args["groups"],
    )
    if message is None:
        call()
        return
    with pytest.raises(ConfigError, match=message):
        call()


def test_errors_are_value_errors_and_dcs_errors():
    assert issubclass(TapError, ValueError) and issubclass(TapError, dcspass.DCSError)
    assert issubclass(ConfigError, ValueError)
