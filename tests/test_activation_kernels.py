"""The implementations of SiMaN's and BiPer's fused activation paths (bnnkit.nn.functional): native C++
(the CPU default), eager PyTorch and the same ops for torch.compile. Each is held to the
independent formulas of tests/test_quantizers.py, and the native one to the eager one on the
layouts, thread counts and inputs it meets in training."""
import pytest
import torch

from bnnkit.nn import functional
from bnnkit.native import kernels as _native
from bnnkit.nn.quantizers import QUANTIZERS
from tests.test_quantizers import ref_biper_input, ref_siman_input

PATHS = {"siman": (functional.standardized_approx_sign, ref_siman_input),
         "biper": (functional.scaled_approx_sign, ref_biper_input)}


@pytest.fixture
def kernels():
    """Switch implementations inside a test; the default comes back afterwards."""
    yield functional.set_kernels
    functional.set_kernels("native")


def _on_threads(n, fn):
    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)


def _run(fn, x, g):
    x = x.detach().clone().requires_grad_(True)
    y = fn(x)
    y.backward(g)
    return y.detach(), x.grad


@pytest.mark.parametrize("kind", ["native", "eager"])
@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("shape", [(6, 4, 3, 3), (3, 5, 9, 11), (2, 64, 8, 8)])
def test_matches_the_independent_formula(kernels, kind, path, shape):
    """n = 36 (4 vectors and a tail), 495 (two blocks and a tail), 4096 (16 whole blocks)."""
    assert kernels(kind) == kind
    fn, reference = PATHS[path]
    torch.manual_seed(sum(shape))
    x, g = torch.randn(shape) * 0.8 + 0.3, torch.randn(shape)
    y, grad = _run(fn, x, g)
    want_y, want_grad = reference(x.double(), g.double())
    assert torch.equal(y, want_y.float())
    assert torch.allclose(grad, want_grad.float(), rtol=1e-4, atol=1e-5)


def test_the_default_on_cpu_is_native():
    assert functional.kernels_in_use() == "native"
    with pytest.raises(ValueError, match="'native', 'eager' or 'compiled'"):
        functional.set_kernels("fast")


@pytest.mark.parametrize("path", sorted(PATHS))
def test_native_agrees_with_eager_in_every_layout(kernels, path):
    fn, _ = PATHS[path]
    torch.manual_seed(1)
    x, g = torch.randn(8, 16, 12, 12) + 0.1, torch.randn(8, 16, 12, 12)
    kernels("eager")
    want_y, want_grad = _run(fn, x, g)
    kernels("native")
    cl = torch.channels_last
    for xf, gf in ((x, g), (x.contiguous(memory_format=cl), g.contiguous(memory_format=cl)),
                   (x, g.contiguous(memory_format=cl)), (x.contiguous(memory_format=cl), g)):
        y, grad = _run(fn, xf, gf)
        assert y.is_contiguous(memory_format=cl) == xf.is_contiguous(memory_format=cl)
        assert torch.equal(y, want_y)
        assert torch.allclose(grad, want_grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("path", sorted(PATHS))
def test_native_results_do_not_depend_on_the_thread_count(path):
    fn, _ = PATHS[path]
    torch.manual_seed(2)
    x, g = torch.randn(5, 16, 10, 10), torch.randn(5, 16, 10, 10)
    one, two = (_on_threads(n, lambda: _run(fn, x, g)) for n in (1, 2))
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


def test_native_sign_is_torch_sign_at_ties_zeros_and_nan():
    x = torch.randn(2, 3, 4, 4)
    x[0, 0, 0, :3] = torch.tensor([0.0, -0.0, float("nan")])
    x[1] -= x[1].mean()
    x[1, 0, 0, 0] = 0.0
    out, mean, _ = functional._native_forward(x, False)
    assert torch.equal(out.nan_to_num(7.0), torch.sign(x).nan_to_num(7.0))
    assert not out[0, 0, 0, 1].signbit()  # torch.sign(-0.0) is +0.0
    out, mean, _ = functional._native_forward(x, True)
    assert torch.equal(out, torch.sign(x - mean))


def test_inputs_the_native_kernels_do_not_take_run_eagerly():
    """float64 and strided views take the eager ops, same math; torch.func.grad works too."""
    torch.manual_seed(3)
    x, g = torch.randn(4, 3, 6, 6, dtype=torch.float64), torch.randn(4, 3, 6, 6, dtype=torch.float64)
    y, grad = _run(functional.standardized_approx_sign, x, g)
    want_y, want_grad = ref_siman_input(x, g)
    assert torch.equal(y, want_y) and torch.allclose(grad, want_grad, rtol=1e-9)
    wide = torch.randn(4, 3, 6, 12)
    y, grad = _run(functional.scaled_approx_sign, wide[..., ::2], g.float())
    want_y, want_grad = ref_biper_input(wide[..., ::2].double(), g)
    assert torch.equal(y, want_y.float()) and torch.allclose(grad, want_grad.float(), rtol=1e-4, atol=1e-5)
    xf = x.float()
    grad = torch.func.grad(lambda t: (functional.standardized_approx_sign(t) * g.float()).sum())(xf)
    assert torch.allclose(grad, ref_siman_input(x, g)[1].float(), rtol=1e-4, atol=1e-5)


def test_native_kernels_refuse_inconsistent_sizes():
    x = torch.randn(2, 8)
    out, m = torch.empty_like(x), torch.empty(2)
    with pytest.raises(ValueError, match="inconsistent"):
        _native.lib().act_forward(1, (x.data_ptr(), 15, 0, out.data_ptr(), m.data_ptr(), m.data_ptr(), 2, 8, 1, 0))
    with pytest.raises(ValueError, match="inconsistent"):  # a backward without its gradient
        _native.lib().act_backward(1, (x.data_ptr(), 16, 0, out.data_ptr(), m.data_ptr(), m.data_ptr(), 2, 8, 1, 0))
    with pytest.raises(ValueError, match="inconsistent"):  # a row too long for the selection's int32 counts
        _native.lib().siman_weight(1, (x.data_ptr(), 1 << 31, x.data_ptr(), out.data_ptr(), m.data_ptr(), m.data_ptr(),
                                       1, 1 << 31, 0, 0, 1))


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("shape", [(3, 12, 5, 7), (4, 16, 8, 8)])
def test_channel_scale_backward_matches_autograd(layout, shape):
    """The binary conv's y * alpha: native backward in both layouts (channel counts and pixel counts
    with and without a remainder of 8), against autograd of the plain product."""
    torch.manual_seed(4)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    y0 = torch.randn(shape).contiguous(memory_format=fmt)
    alpha0, g = torch.rand(shape[1], 1, 1) + 0.5, torch.randn(shape)
    grads = []
    for fn in (lambda y, a: y * a, functional.channel_scale):
        y, alpha = y0.clone().requires_grad_(True), alpha0.clone().requires_grad_(True)
        out = fn(y, alpha)
        assert out.is_contiguous(memory_format=fmt)
        out.backward(g)
        grads.append((out.detach(), y.grad, alpha.grad))
    (want_out, want_dy, want_da), (out, dy, da) = grads
    assert torch.equal(out, want_out) and torch.equal(dy, want_dy)  # the same products, rounded once
    assert da.shape == want_da.shape and torch.allclose(da, want_da, rtol=1e-5, atol=1e-5)
    exact = (g.double() * y0.double()).sum(dim=(0, 2, 3)).view(-1, 1, 1)
    assert torch.allclose(da.double(), exact, rtol=1e-5, atol=1e-5)


def test_channel_scale_is_thread_independent_and_falls_back():
    torch.manual_seed(5)
    y0, alpha0, g = torch.randn(6, 8, 4, 4), torch.rand(8, 1, 1), torch.randn(6, 8, 4, 4)

    def grads(y0, alpha0, g):
        y, alpha = y0.clone().requires_grad_(True), alpha0.clone().requires_grad_(True)
        functional.channel_scale(y, alpha).backward(g)
        return y.grad, alpha.grad

    one, two = (_on_threads(n, lambda: grads(y0, alpha0, g)) for n in (1, 2))
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])
    assert torch.autograd.gradcheck(functional.channel_scale, (y0.double().requires_grad_(), alpha0.double().requires_grad_()))


def test_without_the_native_library_the_pytorch_ops_run(monkeypatch):
    """An install whose extension did not build: try_lib() says so once, and training still runs."""
    import importlib

    def no_extension(name, *args, **kwargs):
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(_native, "_lib", None)
    monkeypatch.setattr(_native, "_missing", False)
    monkeypatch.setattr(importlib, "import_module", no_extension)
    assert _native.try_lib() is None and _native._missing
    torch.manual_seed(6)
    x, g = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    for path in sorted(PATHS):
        fn, reference = PATHS[path]
        y, grad = _run(fn, x, g)
        want_y, want_grad = reference(x.double(), g.double())
        assert torch.equal(y, want_y.float()) and torch.allclose(grad, want_grad.float(), rtol=1e-4, atol=1e-5)
    y, alpha = torch.randn(2, 4, 3, 3, requires_grad=True), torch.rand(4, 1, 1, requires_grad=True)
    functional.channel_scale(y, alpha).backward(torch.ones(2, 4, 3, 3))
    assert torch.allclose(alpha.grad.flatten(), y.detach().sum(dim=(0, 2, 3)))
    q = QUANTIZERS.get("siman_weight")(torch.randn(4, 3, 3, 3)).train()
    w = torch.nn.Parameter(torch.randn(4, 3, 3, 3))
    q(w).backward(torch.ones(4, 3, 3, 3))
    assert (q.code.sum(dim=1) == 13).all() and torch.isfinite(w.grad).all()


def _siman_weight_step(kernels, kind, w0, g, percent, training):
    kernels(kind)
    torch.manual_seed(0)
    q = QUANTIZERS.get("siman_weight")(torch.randn(w0.shape), percent=percent).train(training)
    w = torch.nn.Parameter(w0.clone())
    assert functional.takes_native_siman_weight(w, q.code) == (kind == "native")
    out = q(w)
    out.backward(g)
    return w.detach(), q.code.clone(), out.detach(), w.grad


def _siman_weight_step_no_grad(kernels, kind, w0, percent):
    kernels(kind)
    torch.manual_seed(0)
    q = QUANTIZERS.get("siman_weight")(torch.randn(w0.shape), percent=percent).eval()
    w = torch.nn.Parameter(w0.clone())
    out = q(w)
    return w.detach(), out


@pytest.mark.parametrize("percent", [0.0, 5.0])
@pytest.mark.parametrize("shape", [(6, 4, 3, 3), (32, 64, 3, 3), (5, 3, 1, 1), (4, 2, 1, 1)])
def test_native_siman_weight_matches_eager(kernels, shape, percent):
    """SiMaN's weight path in native kernels (csrc/bnn_act.cpp: radix selection of each row's lower
    median) against the eager PyTorch ops: the same centred weights, code, output and gradient;
    rows of 2, 3, 36 and 576 weights, with and without clipping, training and eval with grad."""
    torch.manual_seed(1)
    w0, g = torch.randn(shape) * 0.05 + 0.01, torch.randn(shape)
    for training in (True, False):
        native, eager = (_siman_weight_step(kernels, kind, w0, g, percent, training) for kind in ("native", "eager"))
        assert torch.allclose(native[0], eager[0], rtol=0, atol=1e-7)  # centred (and clipped) in place
        assert torch.equal(native[1], eager[1]) and torch.equal(native[2], eager[2])
        assert torch.allclose(native[3], eager[3], rtol=1e-4, atol=1e-5)
        if not training:  # evaluation without autograd: the same in-place centring and clipping, the stored code
            with torch.no_grad():
                native, eager = (_siman_weight_step_no_grad(kernels, kind, w0, percent) for kind in ("native", "eager"))
            assert torch.allclose(native[0], eager[0], rtol=0, atol=1e-7) and torch.equal(native[1], eager[1])
        k = w0[0].numel()
        if training and k > 2:  # a centred row of two is a tie, +-d: neither is above the median
            assert (native[1].sum(dim=1) == k // 2).all()


def test_native_siman_weight_keeps_ties_and_threads_out_of_the_result(kernels):
    """Rows of repeated magnitudes (a few levels): the code is every magnitude above the lower
    median, as torch.median's comparison gives it, not a split of the tied ones; and the kernel's
    results do not depend on the thread count."""
    torch.manual_seed(2)
    levels = torch.tensor([0.1, 0.5, 2.0, 3.5])
    w0 = levels[torch.randint(0, 4, (16, 8, 3, 3))]
    g = torch.randn(16, 8, 3, 3)
    native, eager = (_siman_weight_step(kernels, kind, w0, g, 0.0, True) for kind in ("native", "eager"))
    assert torch.equal(native[1], eager[1]) and not (native[1].sum(dim=1) == 36).all()
    one, two = (_on_threads(n, lambda: _siman_weight_step(kernels, "native", w0 * 1.7, g, 0.0, True)) for n in (1, 2))
    assert all(torch.equal(a, b) for a, b in zip(one, two))


def test_native_siman_weight_tells_autograd_what_it_rewrote(kernels):
    """The kernels write the latent weight and the code in place through pointers; their version
    counters move as PyTorch's own in-place ops would move them."""
    kernels("native")
    q = QUANTIZERS.get("siman_weight")(torch.randn(4, 2, 3, 3)).train()
    w = torch.nn.Parameter(torch.randn(4, 2, 3, 3))
    versions = w._version, q.code._version
    q(w)
    assert w._version > versions[0] and q.code._version > versions[1]


def test_native_clipping_bounds_are_numpy_percentiles_and_ranks_are_checked():
    """siman_center_and_clip_bounds: the rows centred in place, then numpy's 'linear' percentiles of
    the centred |w| over the whole tensor; ranks outside the tensor are refused."""
    np = pytest.importorskip("numpy")
    torch.manual_seed(5)
    w = torch.randn(8, 5, 3, 3) * 0.1 + 0.02
    centred = w - w.double().mean(dim=(1, 2, 3), keepdim=True).float()
    for percent in (1.0, 7.5, 14.9625):
        got = functional.siman_center_and_clip_bounds(w.clone(), percent)
        want = np.percentile(centred.abs().numpy(), [percent, 100 - percent])
        assert got.dtype == torch.float32 and np.allclose(got.numpy(), want, rtol=1e-6, atol=1e-8)
    kept = w.clone()
    functional.siman_center_and_clip_bounds(kept, 5.0)
    assert torch.allclose(kept, centred, atol=1e-7)
    ranks, values = torch.tensor([360]), torch.empty(1)
    with pytest.raises(ValueError, match="rank out of range"):
        _native.lib().siman_center_ranks(1, (w.data_ptr(), 360, 8, 45, ranks.data_ptr(), 1, values.data_ptr()))


@pytest.mark.parametrize("levels", [0, 5])
def test_native_rank_selection_is_exact(levels):
    """siman_center_ranks: the values at the asked ranks are exactly those of a sort of the centred
    |w| over the whole tensor, for ranks spread over it, on rows of distinct values and on rows of a
    few repeated levels (many equal keys in one bucket), on 1 and 2 threads."""
    torch.manual_seed(8 + levels)
    w0 = torch.randn(64, 9, 3, 3) * 0.05
    if levels:
        w0 = (w0 * levels * 20).round() / (levels * 20)
    n = w0.numel()
    ranks = torch.tensor([0, 1, n // 7, n // 2, n // 2 + 1, n - 2, n - 1])
    for threads in (1, 2):
        w, values = w0.clone(), torch.empty(len(ranks))
        _native.lib().siman_center_ranks(threads, (w.data_ptr(), n, 64, 81, ranks.data_ptr(), len(ranks),
                                                   values.data_ptr()))
        assert torch.equal(values, w.abs().flatten().sort().values[ranks])


@pytest.mark.parametrize("shape,k,pad", [((4, 16, 32, 32), 2, 8), ((3, 5, 7, 9), 2, 0), ((2, 6, 10, 11), 3, 2),
                                         ((2, 8, 8, 8), 1, 1)])
@pytest.mark.parametrize("threads", [1, 2])
def test_avg_pool_pad_keeps_pytorchs_bits_forward_and_backward(shape, k, pad, threads):
    """The native average pooling with zero channels (PadShortcut's) against F.avg_pool2d + F.pad
    through autograd: values with signed zeros, NaN and infinities, odd sizes (floor mode), a
    non-contiguous incoming gradient with -0.0 in it; both bit for bit."""
    torch.manual_seed(0)
    x = torch.randn(shape)
    flat = x.view(-1)
    idx = torch.randperm(flat.numel())[:40]
    flat[idx] = torch.tensor([-0.0, 0.0, float("nan"), float("inf"), -float("inf")]).repeat(8)
    flat[:4] = -0.0  # a window of negative zeros: 0 + -0.0 is +0.0, as PyTorch's sum starts from 0
    xa = x.clone().requires_grad_(True)
    ya = torch.nn.functional.pad(torch.nn.functional.avg_pool2d(xa, k), (0, 0, 0, 0, pad, pad))
    g = torch.randn(ya.shape[0], ya.shape[3], ya.shape[1], ya.shape[2]).permute(0, 2, 3, 1)  # not contiguous
    g.reshape(-1)[:7] = -0.0
    ya.backward(g)
    xb = x.clone().requires_grad_(True)
    yb = _on_threads(threads, lambda: functional.avg_pool_pad(xb, k, pad))
    assert yb.grad_fn is not None and "AvgPoolPad" in type(yb.grad_fn).__name__  # the native path ran
    _on_threads(threads, lambda: yb.backward(g))
    assert torch.equal(yb.detach().view(torch.int32), ya.detach().view(torch.int32))
    assert torch.equal(xb.grad.view(torch.int32), xa.grad.view(torch.int32))


def test_avg_pool_pad_falls_back_and_the_binding_checks_sizes(kernels):
    x = torch.randn(2, 4, 8, 8)
    want = torch.nn.functional.pad(torch.nn.functional.avg_pool2d(x, 2), (0, 0, 0, 0, 1, 1))
    assert torch.equal(functional.avg_pool_pad(x.contiguous(memory_format=torch.channels_last), 2, 1), want)
    assert torch.equal(functional.avg_pool_pad(x.double(), 2, 1),
                       torch.nn.functional.pad(torch.nn.functional.avg_pool2d(x.double(), 2), (0, 0, 0, 0, 1, 1)))
    kernels("eager")
    assert torch.equal(functional.avg_pool_pad(x, 2, 1), want)
    out = torch.empty(2, 6, 4, 4)
    with pytest.raises(ValueError, match="avg_pool: inconsistent arguments"):  # out too short for 2 pad channels each side
        _native.lib().avg_pool(1, (x.data_ptr(), x.numel(), out.data_ptr(), out.numel(), 2, 4, 8, 8, 2, 2, 0))


# RBNN's input path (rbnn.py RbnnInput): the native StandardizedTriangleSign against the eager
# (x - mean) / std and TriangleSign under autograd. The signs are equal; the gradients, summed in
# another order, stay within RBNN_ULPS float32 epsilons of the tensor's largest |dx| (seen: under 4).
RBNN_ULPS = 16


def _rbnn_step(kernels, kind, t, x, g):
    from bnnkit.methods.rbnn import RbnnInput

    kernels(kind)
    return _run(RbnnInput(t), x, g)


@pytest.mark.parametrize("t", [1e-3, 1.0, 3.7, 10.0])  # t' = max(t, 1): both ends of the schedule
@pytest.mark.parametrize("shape", [(6, 4, 3, 3), (3, 5, 9, 11), (2, 64, 8, 8), (1, 3, 1, 1)])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_native_rbnn_input_matches_eager(kernels, t, shape, layout):
    """n = 36, 495 and 4096 (vectors, blocks and tails), and 3 (a tail alone)."""
    torch.manual_seed(sum(shape))
    x, g = torch.randn(shape) * 0.8 + 0.3, torch.randn(shape)
    x[0, 0, 0, 0] = 0.0  # a zero input and a zero gradient
    g[-1, -1, -1, -1] = 0.0
    if layout == "channels_last":
        x, g = x.contiguous(memory_format=torch.channels_last), g.contiguous(memory_format=torch.channels_last)
    want_y, want_grad = _rbnn_step(kernels, "eager", t, x, g)
    y, grad = _rbnn_step(kernels, "native", t, x, g)
    assert y.stride() == x.stride()
    assert torch.equal(y, want_y)
    bound = RBNN_ULPS * torch.finfo(torch.float32).eps * want_grad.abs().max()
    assert (grad - want_grad).abs().max() <= bound
    assert torch.isfinite(grad).all() and (grad.abs().max() > 0) == (want_grad.abs().max() > 0)


def test_native_rbnn_input_is_thread_independent_and_runs_only_native(kernels):
    torch.manual_seed(3)
    x, g = torch.randn(8, 16, 12, 12), torch.randn(8, 16, 12, 12)
    one = _on_threads(1, lambda: _rbnn_step(kernels, "native", 2.0, x, g))
    two = _on_threads(2, lambda: _rbnn_step(kernels, "native", 2.0, x, g))
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])
    kernels("native")
    assert functional.takes_native_activation(x)
    kernels("eager")
    assert not functional.takes_native_activation(x)
    assert not functional.takes_native_activation(x.double())
    with pytest.raises(ValueError, match="inconsistent"):
        _native.lib().act_triangle_forward(1, (x.data_ptr(), x.numel(), 0, g.data_ptr(), x.data_ptr(),
                                               x.data_ptr(), 8, 2304, 1, 0, 0))
