"""Every registered quantizer: forward values, and autograd's gradient against an independently
written formula of its surrogate (not autograd of the same code)."""
import pytest
import torch

from bnnkit.nn.quantizers import QUANTIZERS

EPS = 1e-5


def standardize_grad(x, g, centred, eps=EPS):
    """dL/dx of y = (x - mu)/s (centred) or y = x/s, s = sqrt(var_unbiased + eps), per row of x [N, n]."""
    n = x.shape[1]
    mu = x.mean(1, keepdim=True)
    s = torch.sqrt(((x - mu) ** 2).sum(1, keepdim=True) / (n - 1) + eps)
    xs = x - mu if centred else x
    first = (g - g.mean(1, keepdim=True)) if centred else g
    return first / s - (x - mu) * (g * xs).sum(1, keepdim=True) / ((n - 1) * s ** 3)


def approx(y):
    return (2 - 2 * y.abs()).clamp_min(0)


def ref_approx_sign(x, g):
    return torch.sign(x), g * approx(x)


def ref_ste(x, g):
    return torch.sign(x), g * (x.abs() <= 1).float()


def ref_siman_input(x, g):
    flat = x.flatten(1)
    mu = flat.mean(1, keepdim=True)
    s = torch.sqrt(((flat - mu) ** 2).sum(1, keepdim=True) / (flat.shape[1] - 1) + EPS)
    y = (flat - mu) / s
    return torch.sign(y).view_as(x), standardize_grad(flat, (g.flatten(1) * approx(y)), True).view_as(x)


def ref_biper_input(x, g):
    flat = x.flatten(1)
    mu = flat.mean(1, keepdim=True)
    s = torch.sqrt(((flat - mu) ** 2).sum(1, keepdim=True) / (flat.shape[1] - 1) + EPS)
    y = flat / s
    return torch.sign(y).view_as(x), standardize_grad(flat, g.flatten(1) * approx(y), False).view_as(x)


def ref_siman_weight(w, g):
    # w is the weight as the forward left it (centred in place); the gradient goes straight
    # through |S| (times sign S) and then through the per-row standardisation.
    flat = w.flatten(1)
    mu = flat.mean(1, keepdim=True)
    s = torch.sqrt(((flat - mu) ** 2).sum(1, keepdim=True) / (flat.shape[1] - 1) + EPS)
    mag = ((flat - mu) / s).abs()
    k = flat.shape[1]
    ranks = mag.argsort(1).argsort(1)
    values = torch.where(ranks >= k - k // 2, 1.0, -1.0)  # the larger floor(k/2) magnitudes (distinct values)
    grad_s = torch.sign((flat - mu) / s) * g.flatten(1)
    return values.view_as(w), standardize_grad(flat, grad_s, True).view_as(w)


def ref_biper_weight(stage, freq=20.0):
    def ref(w, g):
        wave = torch.sin(freq * w)
        return (torch.sign(wave) if stage == 2 else wave), freq * torch.cos(freq * w) * g
    return ref


def ref_xnor(w, g):
    n = w[0].numel()
    a = w.abs().flatten(1).mean(1).view(-1, 1, 1, 1)
    sign = torch.sign(w)
    return a * sign, a * (w.abs() <= 1).float() * g + sign / n * (sign * g).flatten(1).sum(1).view(-1, 1, 1, 1)


def ref_identity(w, g):
    return w, g


def ref_hard_binary(w, g):
    # ReActNet's HardBinaryConv: a_o sign(w) forward; clipped STE without a_o, strict |w| < 1, backward
    a = w.abs().flatten(1).mean(1).view(-1, 1, 1, 1)
    return a * torch.sign(w), g * (w.abs() < 1).float()


def _rows(x, eps=0.0):
    """x [N, ...] as rows [N, n], and (x - mu) / sqrt(var_unbiased + eps) per row."""
    flat = x.flatten(1)
    c = flat - flat.mean(1, keepdim=True)
    return flat, c / torch.sqrt((c ** 2).sum(1, keepdim=True) / (flat.shape[1] - 1) + eps)


def ref_recu_weight(tau):
    def ref(w, g):  # W1 = 2 sqrt 2 * standardised row; clamp at Q = -mean|W1| ln(2 - 2 tau); identity STE
        flat, z = _rows(w, EPS)
        w1 = 2 * 2 ** 0.5 * z
        q = -w1.abs().mean() * torch.log(torch.tensor(2 - 2 * tau))
        inside = (w1.abs() <= q).float()
        grad = 2 * 2 ** 0.5 * standardize_grad(flat, g.flatten(1) * inside, True)
        return torch.sign(w1.clamp(-q, q)).view_as(w), grad.view_as(w)
    return ref


def ede(x, k, t):
    return k * t * (1 - torch.tanh(t * x) ** 2)


def ref_irnet_weight(k, t):
    def ref(w, g):  # Libra-PB: standardised rows (no eps), times 2^round(log2 mean|W_s|); EDE backward
        flat, ws = _rows(w)
        scale = 2.0 ** torch.round(torch.log2(ws.abs().mean(1, keepdim=True)))
        grad = standardize_grad(flat, g.flatten(1) * scale * ede(ws, k, t), True, eps=0.0)
        return (torch.sign(ws) * scale).view_as(w), grad.view_as(w)
    return ref


def ref_irnet_input(k, t):
    return lambda x, g: (torch.sign(x), g * ede(x, k, t))


def triangle(x, k, t):
    return (k * (2 ** 0.5 * t - t * t * x.abs())).clamp_min(0)  # k (2 sqrt(t^2/2) - |t^2 x|), t > 0


class _Rbnn:
    """RBNN's weight quantizer with random angles (at pi/2 the latent weights get no gradient), and
    its reference, which reads the rotations the quantizer drew."""

    def __init__(self, k, t):
        self.k, self.t = k, t

    def make(self):
        torch.manual_seed(3)
        self.q = QUANTIZERS.get("rbnn_weight")(torch.randn(6, 4, 3, 3), k=self.k, t=self.t)
        with torch.no_grad():
            self.q.rotate.copy_(torch.rand(6, 1, 1, 1) * 3.0)
        return self.q

    def ref(self, w, g):
        q = self.q
        flat, w2 = _rows(w)
        rotated = (q.R1.t() @ w2.view(6, q.a, q.b) @ q.R2).reshape(6, -1)
        blend = torch.sin(q.rotate.detach()).abs().view(6, 1)
        w3 = w2 + blend * (rotated - w2)
        grad = standardize_grad(flat, g.flatten(1) * triangle(w3, self.k, self.t) * (1 - blend), True, eps=0.0)
        return torch.sign(w3).view_as(w), grad.view_as(w)


def ref_rbnn_input(t):
    def ref(x, g):  # per-sample standardisation (no eps); triangle with k = 1, t' = max(t, 1)
        flat, y = _rows(x)
        grad = standardize_grad(flat, g.flatten(1) * triangle(y, 1.0, max(t, 1.0)), True, eps=0.0)
        return torch.sign(y).view_as(x), grad.view_as(x)
    return ref


def ref_rbnn_standardize(x, g):
    flat, y = _rows(x)
    return y.view_as(x), standardize_grad(flat, g.flatten(1), True, eps=0.0).view_as(x)


_RBNN = [_Rbnn(3.0, 0.3), _Rbnn(1.0, 2.0)]

# name -> list of (constructor, reference(x, g) -> (forward value, gradient))
CASES = {
    "approx_sign": [(lambda: QUANTIZERS.get("approx_sign")(), ref_approx_sign)],
    "ste_sign": [(lambda: QUANTIZERS.get("ste_sign")(), ref_ste)],
    "ste_sign_weight": [(lambda: QUANTIZERS.get("ste_sign_weight")(), ref_ste)],
    "siman_input": [(lambda: QUANTIZERS.get("siman_input")(), ref_siman_input)],
    "biper_input": [(lambda: QUANTIZERS.get("biper_input")(), ref_biper_input)],
    "siman_weight": [(lambda: QUANTIZERS.get("siman_weight")(torch.randn(6, 4, 3, 3)), ref_siman_weight)],
    "biper_weight": [(lambda: QUANTIZERS.get("biper_weight")(6, freq=20.0, stage=1), ref_biper_weight(1)),
                     (lambda: QUANTIZERS.get("biper_weight")(6, freq=20.0, stage=2), ref_biper_weight(2))],
    "xnor_weight": [(lambda: QUANTIZERS.get("xnor_weight")(), ref_xnor)],
    "recu_weight": [(lambda: QUANTIZERS.get("recu_weight")(tau=0.9), ref_recu_weight(0.9)),
                    (lambda: QUANTIZERS.get("recu_weight")(tau=0.6), ref_recu_weight(0.6))],
    "recu_input": [(lambda: QUANTIZERS.get("recu_input")(), ref_biper_input)],
    "irnet_weight": [(lambda: QUANTIZERS.get("irnet_weight")(k=2.0, t=0.5), ref_irnet_weight(2.0, 0.5)),
                     (lambda: QUANTIZERS.get("irnet_weight")(k=1.0, t=3.0), ref_irnet_weight(1.0, 3.0))],
    "irnet_input": [(lambda: QUANTIZERS.get("irnet_input")(k=2.0, t=0.5), ref_irnet_input(2.0, 0.5)),
                    (lambda: QUANTIZERS.get("irnet_input")(k=1.0, t=3.0), ref_irnet_input(1.0, 3.0))],
    "rbnn_weight": [(r.make, r.ref) for r in _RBNN],
    "rbnn_input": [(lambda: QUANTIZERS.get("rbnn_input")(t=0.3), ref_rbnn_input(0.3)),
                   (lambda: QUANTIZERS.get("rbnn_input")(t=2.0), ref_rbnn_input(2.0))],
    "rbnn_standardize": [(lambda: QUANTIZERS.get("rbnn_standardize")(), ref_rbnn_standardize)],
    "reactnet_real_weight": [(lambda: QUANTIZERS.get("reactnet_real_weight")(), ref_identity)],
    "reactnet_hard_binary_weight": [(lambda: QUANTIZERS.get("reactnet_hard_binary_weight")(), ref_hard_binary),
                                    (lambda: QUANTIZERS.get("reactnet_hard_binary_weight")(flat=True), ref_hard_binary)],
}


def test_every_registered_quantizer_has_a_reference():
    assert set(QUANTIZERS.names()) == set(CASES)


@pytest.mark.parametrize("name,index", [(n, i) for n, cs in CASES.items() for i in range(len(cs))])
def test_gradient_matches_independent_formula(name, index):
    make, reference = CASES[name][index]
    torch.manual_seed(index)
    quantizer = make().train()
    x = (torch.randn(6, 4, 3, 3) * 0.8).double().float().requires_grad_(True)
    g = torch.randn(6, 4, 3, 3)
    if quantizer.kind == "weight":
        x = torch.nn.Parameter(x.detach().clone())
    y = quantizer(x)
    y.backward(g)
    want_y, want_grad = reference(x.detach(), g)
    assert torch.allclose(y.detach(), want_y, atol=1e-6), f"{name}: forward"
    assert torch.isfinite(x.grad).all()
    assert torch.allclose(x.grad, want_grad, rtol=1e-4, atol=1e-5), f"{name}: gradient"


def test_siman_weight_rewrites_latent_weights_in_eval_too():
    """Quirk Q1: centring and clipping happen in every forward pass, eval included."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(8, 4, 3, 3) + 0.3)
    q = QUANTIZERS.get("siman_weight")(w.detach(), percent=10.0).eval()
    code_before = q.code.clone()
    centred = (w - w.mean(dim=(1, 2, 3), keepdim=True)).detach()
    low, high = torch.quantile(centred.abs().flatten(), torch.tensor([0.10, 0.90]))
    q(w)
    want = torch.sign(centred) * centred.abs().clamp(low, high)
    assert torch.allclose(w.detach(), want, atol=1e-6)
    assert not torch.allclose(centred, want)  # the clipping did something
    assert torch.equal(q.code, code_before)  # eval keeps the stale code (Q2)


def test_percentile_matches_numpy_linear():
    import numpy as np

    from bnnkit.nn.functional import percentile

    torch.manual_seed(0)
    samples = [torch.rand(n) for n in (1, 2, 7, 1000)]
    samples += [torch.randint(0, 5, (1001,)).float(), torch.tensor([1.0, 1.0, 1.0, 2.0])]  # repeated values
    for v in samples:
        for q in (0.0, 0.0375, 7.5, 14.962499618530273, 50.0, 92.5, 100.0):
            assert float(percentile(v, q)) == pytest.approx(float(np.percentile(v.numpy(), q)), rel=1e-6, abs=1e-7)


def test_biper_penalty_is_the_authors_formula_with_its_gradient():
    """BiPer's regulariser term: the value bit for bit as tau * mean(0.5 - 0.5 cos(2 f W)), and
    the hand-written backward against autograd of that formula (and float64 gradcheck)."""
    torch.manual_seed(7)
    q = QUANTIZERS.get("biper_weight")(8, freq=20.0, stage=2, tau=0.37)
    w = torch.nn.Parameter(torch.randn(8, 4, 3, 3) * 0.1)
    value = q.penalty(w)
    value.backward(torch.tensor(1.5))
    plain = w.detach().clone().requires_grad_(True)
    want = 0.37 * torch.mean(0.5 - 0.5 * torch.cos(2 * 20.0 * plain))
    want.backward(torch.tensor(1.5))
    assert torch.equal(value.detach(), want.detach())
    assert torch.allclose(w.grad, plain.grad, rtol=1e-5, atol=1e-9)
    w64 = (torch.randn(3, 2, 3, 3, dtype=torch.float64) * 0.1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: q.penalty(t), (w64,))


def test_reactnet_sign_gradient_at_the_checked_points():
    """METHODS.md §4.1: x = -1.5, -1, -0.5, 0, 0.5, 1, 1.5 give gradient 0, 0, 1, 2, 1, 0, 0, on the
    input quantizer ReActNet's binary convs are built with."""
    import bnnkit
    from bnnkit.nn.layers import BinaryConv2d
    conv = next(m for m in bnnkit.create_model("birealnet18", "reactnet", dataset="imagenet").modules()
                if isinstance(m, BinaryConv2d))
    x = torch.tensor([-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5], requires_grad=True)
    y = conv.input_quantizer(x)
    y.sum().backward()
    assert y.tolist() == [-1, -1, -1, 0, 1, 1, 1]
    assert x.grad.tolist() == [0, 0, 1, 2, 1, 0, 0]


def test_hard_binary_weight_has_no_gradient_at_one_and_none_through_the_scale():
    w = torch.nn.Parameter(torch.tensor([1.0, -1.0, 0.5, -2.0, 0.0, 0.25]).view(1, 6, 1, 1))
    q = QUANTIZERS.get("reactnet_hard_binary_weight")()
    y = q(w)
    a = w.detach().abs().mean()
    assert torch.equal(y.detach(), a * torch.sign(w.detach()))
    (y * torch.arange(1.0, 7.0).view(1, 6, 1, 1)).sum().backward()
    assert w.grad.flatten().tolist() == [0.0, 0.0, 3.0, 0.0, 5.0, 6.0]
