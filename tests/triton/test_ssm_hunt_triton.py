"""Session 35 hunt (helper "tritonhunt"): the Triton backend of geoops.ssm on inputs the other Triton tests do not
pass.  The tensor-core convolution (fftconv / ssm_conv of float16 / bfloat16 u) carries two batch rows of a
channel as one complex row (z = u_b + i u_b'); each row's result must still be its own: a row's NaN / inf or a
much larger scale must not reach the other row of its pair.  Interpreter fixtures from conftest.py."""
import pytest
import torch

pytest.importorskip("triton")

import geoops  # noqa: E402
import geoops.ssm as gs  # noqa: E402
from geoops.kernels import ssm as S  # noqa: E402
from geoops.reference import ssm as ref  # noqa: E402


def _inputs(B, H, L, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(B, H, L, generator=g, dtype=torch.float64)
    k = torch.randn(H, L, generator=g, dtype=torch.float64) * torch.exp(-torch.arange(L) / (L / 4))
    return u, k, g


# L = 300: the one-pass kernel (N = 1024); with GEOOPS_SSM_TRITON_MONARCH=2 the two-pass form (rows + columns)
FORMS = [("", 300), ("2", 300)]


@pytest.mark.parametrize("knob,L", FORMS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_fftconv_half_nonfinite_row_stays_in_its_row(device, monkeypatch, knob, L, bad):
    """A NaN / inf in one batch row gives a non-finite result in that row only (as the cuFFT path and the C++
    backend): its pair partner's y, and its du in the backward (the same kernel on g), are untouched."""
    monkeypatch.setenv("GEOOPS_SSM_TRITON_MONARCH", knob)
    u, k, g = _inputs(4, 2, L, torch.float16, seed=1)
    u[0, 1, 7] = bad  # row (b=0, h=1); its partner in the pair is (b=1, h=1)
    uh, kh = u.half(), k.half()
    D = torch.randn(2, generator=g).half()
    y = gs.fftconv(uh.to(device), kh.to(device), D.to(device)).cpu()
    with geoops.use_backend("cpp"):
        yc = gs.fftconv(uh, kh, D)
    good = torch.ones(4, 2, dtype=torch.bool)
    good[0, 1] = False
    assert y[good].isfinite().all(), "the NaN / inf row reached another row"
    assert not y[0, 1].isfinite().all()
    torch.testing.assert_close(y[good].float(), yc[good].float(), atol=2e-3, rtol=2e-3)
    # the backward's du: the same kernel (conjugate spectrum) on the rows of g
    gy = torch.randn(4, 2, L, generator=g).half()
    gy[2, 0, 3] = bad  # row (b=2, h=0), partner (b=3, h=0)
    uu = uh.clone()
    uu[0, 1, 7] = 0.0
    uu = uu.to(device).requires_grad_()
    gs.fftconv(uu, kh.to(device), D.to(device)).backward(gy.to(device))
    du = uu.grad.cpu()
    good = torch.ones(4, 2, dtype=torch.bool)
    good[2, 0] = False
    assert du[good].isfinite().all(), "the NaN / inf row of g reached another row's du"


@pytest.mark.parametrize("knob,L", FORMS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_fftconv_half_row_error_independent_of_partner_scale(device, monkeypatch, tf32_dots, knob, L, dtype):
    """The house rule per row, with the tensor cores' TF32 operands emulated: each row's error (in units of its
    own largest entry) within 2x the float32 cuFFT path's (GEOOPS_SSM_TRITON_MONARCH=0) plus a quarter ulp of the
    half type.  The paired rows shared one complex transform, so the TF32 rounding of a row 1000x larger than its
    partner landed on the partner: ~17% relative error in float16 (ratio 100: ~2%); a zero row got nonzero
    output."""
    u, k, g = _inputs(4, 1, L, dtype, seed=2)
    u[0] *= 1000.0   # pairs (0, 1) and (2, 3): a large row with a unit one, a zero row with a unit one
    u[3] = 0.0
    uh, kh = u.to(dtype), k.to(dtype)
    exact = ref.fftconv(uh.double(), kh.double(), None, False)
    out = {}
    for kn in (knob, "0"):
        monkeypatch.setenv("GEOOPS_SSM_TRITON_MONARCH", kn)
        out[kn] = gs.fftconv(uh.to(device), kh.to(device)).cpu().double()
    floor = torch.finfo(dtype).eps / 4
    for b in range(4):
        m = exact[b].abs().max().clamp_min(1e-30)
        e, e0 = (out[knob][b] - exact[b]).abs().max() / m, (out["0"][b] - exact[b]).abs().max() / m
        assert e <= 2 * e0 + floor, (b, e.item(), e0.item())
    assert torch.equal(out[knob][3], torch.zeros_like(out[knob][3]))


@pytest.mark.parametrize("knob,L", FORMS)
def test_fftconv_bfloat16_top_binade_row(device, monkeypatch, knob, L):
    """A bfloat16 row with entries in float32's top binade (>= 2^127) keeps a nonzero scale factor (1 / 2^127 is not
    a normal float: the factor is capped at 2^126): its y is the cuFFT path's (finite where that is), not 0."""
    monkeypatch.setenv("GEOOPS_SSM_TRITON_MONARCH", knob)
    u = torch.zeros(2, 1, L)
    u[0, 0, 0] = 2.0 ** 127
    u[1, 0, :5] = 1.0
    k = torch.zeros(1, L)
    k[0, 0], k[0, 1] = 0.5, 0.25
    uh, kh = u.bfloat16(), k.bfloat16()
    y = gs.fftconv(uh.to(device), kh.to(device)).cpu().float()
    monkeypatch.setenv("GEOOPS_SSM_TRITON_MONARCH", "0")
    y0 = gs.fftconv(uh.to(device), kh.to(device)).cpu().float()
    assert y.isfinite().all()
    torch.testing.assert_close(y[0, 0], y0[0, 0], atol=2.0 ** 127 * 1e-6, rtol=1e-2)
    torch.testing.assert_close(y[0, 0, :2], torch.tensor([2.0 ** 126, 2.0 ** 125]), rtol=1e-2, atol=0)
    torch.testing.assert_close(y[1, 0, :6], torch.tensor([0.5, 0.75, 0.75, 0.75, 0.75, 0.25]), rtol=1e-2, atol=1e-3)


# ---------------------------------------------------------------- session 36 (helper "smallfix"): the backward's dk
@pytest.mark.parametrize("bid", [False, True], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_fftconv_half_dk_pair_cross_term(device, monkeypatch, tf32_dots, dtype, bid):
    """dk of half u / k / g on tensor cores (_monarch_corr_kernel) sums Re IFFT(W conj(Z)) over pairs of batch rows
    (z = u_b + i u_b', w = g_b + i g_b'); the cross terms g_b' * u_b and g_b * u_b' cancel only in exact arithmetic.
    Unscaled, their TF32 rounding (relative to |g_b'| |u_b|) landed on dk: here u_0 1000x and g_0 1/1000x their
    partners', so |g_1| |u_0| is ~1000x the terms dk sums.  The house rule (dk's error in units of its largest entry
    within 2x the float32 cuFFT path's, GEOOPS_SSM_TRITON_MONARCH=0, plus a quarter ulp of the half type) holds when
    each pair enters scaled so that its cross terms are no larger than the pair's own terms.  (A NaN row makes dk
    NaN through the batch sum in either path: no partner to protect.)"""
    L = 300  # the one-pass kernel (N = 1024)
    g = torch.Generator().manual_seed(36)
    u = torch.randn(4, 1, L, generator=g, dtype=torch.float64)
    k = torch.randn(1, 2 if bid else 1, 1, L, generator=g, dtype=torch.float64) / L ** 0.5
    gy = torch.randn(4, 1, 1, L, generator=g, dtype=torch.float64)
    u[0] *= 1000.0    # pair (0, 1): a large u row with a small g row, a unit partner
    gy[0] /= 1000.0
    u[3] = 0.0        # pair (2, 3): a zero u row (its term is 0) with a unit g row
    uh, kh, gh = u.to(dtype), k.to(dtype), gy.to(dtype)
    uu, kk = uh.double(), kh.double().requires_grad_()
    (exact,) = torch.autograd.grad(ref.fftconv(uu, kk if bid else kk[:, 0], None, bid), kk, gh.double())
    if bid:
        exact[:, 1, :, L - 1] = 0  # the anti-causal kernel's last tap is unused (op contract: zero gradient)
    out = {}
    for kn in ("", "0"):
        monkeypatch.setenv("GEOOPS_SSM_TRITON_MONARCH", kn)
        kd = kh.to(device).requires_grad_()
        y = gs.fftconv(uh.to(device), kd if bid else kd[:, 0], bidirectional=bid)
        (out[kn],) = torch.autograd.grad(y, kd, gh.to(device).reshape(y.shape))
    assert S.monarch_size(L, dtype) <= 4096  # (the dk kernel ran: half k, g in u's dtype)
    m = exact.abs().max()
    e, e0 = (out[""].cpu().double() - exact).abs().max() / m, (out["0"].cpu().double() - exact).abs().max() / m
    assert e <= 2 * e0 + torch.finfo(dtype).eps / 4, (e.item(), e0.item())


def test_fftconv_half_dk_nonfinite_and_odd_batch(device, monkeypatch):
    """The dk kernel's pair scaling: a NaN in one row of u makes dk NaN (the batch sum; the cuFFT path too), an inf
    in g as well; an odd batch (the last pair's second row absent) and a zero row match the cuFFT path."""
    L = 100
    g = torch.Generator().manual_seed(37)
    u = torch.randn(3, 1, L, generator=g).half()
    k = (torch.randn(1, 1, L, generator=g) / L ** 0.5).half()
    gy = torch.randn(3, 1, 1, L, generator=g).half()
    u[1] = 0.0

    def dk(uu, gg, knob):
        monkeypatch.setenv("GEOOPS_SSM_TRITON_MONARCH", knob)
        kd = k.to(device).requires_grad_()
        y = gs.fftconv(uu.to(device), kd)
        return torch.autograd.grad(y, kd, gg.to(device).reshape(y.shape))[0].cpu().float()

    torch.testing.assert_close(dk(u, gy, ""), dk(u, gy, "0"), atol=2e-3, rtol=2e-3)
    un = u.clone()
    un[2, 0, 5] = float("nan")
    assert dk(un, gy, "").isnan().all() and dk(un, gy, "0").isnan().all()
    gi = gy.clone()
    gi[0, 0, 0, 9] = float("inf")
    assert not dk(u, gi, "").isfinite().any()
