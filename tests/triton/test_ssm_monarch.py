"""The tensor-core FFT convolution of the Triton backend (geoops.kernels.ssm, session 34): ``_monarch_conv_kernel``.

fftconv on float16 / bfloat16 u with 2L - 1 <= 4096 runs four small DFT matrix products per pair of rows
(GEOOPS_SSM_TRITON_MONARCH=0: the cuFFT path).  Under the interpreter the products are exact float32, so the
kernel itself is held to float32 accuracy (float32 u through the launcher), every FFT size and its split; the
public path to the half-precision rule (error within the output rounding's bound, as the cuFFT path's test).
"""
import pytest
import torch

pytest.importorskip("triton")

import geoops.ssm as gs  # noqa: E402
from geoops._ops import ssm as ops  # noqa: E402
from geoops.kernels import ssm as S  # noqa: E402
from geoops.reference import ssm as ref  # noqa: E402


def _rel(a, b):
    return ((a.double() - b).abs().max() / b.abs().max()).item()


def _inputs(B, H, L, C=1, S_=1, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(B, H, L, generator=g).to(dtype)
    k = torch.randn(C, S_, H, L, generator=g) / L ** 0.5
    D = torch.randn(C, H, generator=g)
    return u, k, D


def _ref(u, k, D):
    """fp64 reference of the op's contract: u (B, H, L), k (C, S, H, L), D (C, H) -> (B, C, H, L)."""
    bid = k.shape[1] == 2
    kk = k.double() if bid else k[:, 0].double()
    return ref.fftconv(u.double(), kk, D.double(), bid)


def test_monarch_size_table(monkeypatch):
    monkeypatch.delenv("GEOOPS_SSM_TRITON_MONARCH", raising=False)
    bf = torch.bfloat16
    assert [S.monarch_size(L, bf) for L in (1, 128, 129, 1024, 1025, 4096, 16000, 16384, 16385)] == [
        256, 256, 512, 2048, 4096, 8192, 32768, 32768, 0]
    assert S.monarch_size(1000, torch.float16) == 2048
    assert S.monarch_size(1000, torch.float32) == 0 and S.monarch_size(1000, torch.float64) == 0
    monkeypatch.setenv("GEOOPS_SSM_TRITON_MONARCH", "0")
    assert S.monarch_size(1000, bf) == 0


@pytest.mark.parametrize("N", sorted(S._MONARCH_SPLIT))
def test_kernel_every_size_float32(device, N):
    """The launcher on float32 u (exact float32 products in the interpreter): causal, bidirectional, C = 2,
    B odd (the last pair's second row absent), the largest L of the size and a short odd one.  Above 8192 the
    size's own part (its split N1 x M, the rows R1 = N1 / 2 of the largest L) in one case, B = 1 bidirectional:
    the two-pass kernels are the same code at 8192, where every case runs (as in test_two_pass_channel_groups);
    the three cases at 16384 and 32768 were ~23 s of the interpreter stage's CPU."""
    cases = ((3, N // 2, 1, 1), (2, N // 2 - 3, 2, 2), (1, max(1, N // 4 - 1), 1, 2))
    for B, L, C, S_ in (cases if N <= 8192 else ((1, N // 2, 1, 2),)):
        u, k, D = _inputs(B, 2, L, C, S_, seed=N + L)
        kf = S._monarch_spectrum(k.to(device), L, N, *S._MONARCH_SPLIT[N])
        y = S._monarch_conv(u.to(device), kf, D.to(device), N)
        assert y.shape == (B, C, 2, L) and y.dtype == torch.float32
        assert _rel(y, _ref(u, k, D)) < 2e-6, (B, L, C, S_)
        y0 = S._monarch_conv(u.to(device), kf, None, N)  # no skip term
        assert _rel(y0, _ref(u, k, torch.zeros_like(D))) < 2e-6


@pytest.mark.parametrize("S_", [1, 2])
def test_kernel_conjugate_is_the_adjoint(device, S_):
    """CONJ: the correlation with k (+ D g) = the vjp of the convolution with respect to u."""
    B, H, L, N = 3, 2, 50, 256
    u, k, D = _inputs(B, H, L, 1, S_, seed=7)
    g = torch.randn(B, H, L, generator=torch.Generator().manual_seed(8))
    uu = u.double().requires_grad_()
    (du_ref,) = torch.autograd.grad(_ref(uu, k, D), uu, g.double()[:, None])
    kf = S._monarch_spectrum(k.to(device), L, N, *S._MONARCH_SPLIT[N])
    du = S._monarch_conv(g.to(device), kf, D.to(device), N, conj=True)
    assert _rel(du[:, 0], du_ref) < 2e-6


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("L,C,S_", [(1, 1, 1), (37, 2, 2), (300, 1, 1), (1000, 1, 2), (2500, 1, 1)])
def test_fftconv_half_runs_monarch(device, monkeypatch, dtype, L, C, S_):
    """The public fftconv on half u takes the tensor-core path (forward, the backward's du for C = 1 and its dk up to
    N = 4096) and keeps the half-precision rule of the cuFFT path's test; the gradients against the fp64 reference."""
    monkeypatch.delenv("GEOOPS_SSM_TRITON_MONARCH", raising=False)
    calls = []
    real, real_corr = S._monarch_conv, S._monarch_corr
    monkeypatch.setattr(S, "_monarch_conv", lambda *a, **kw: calls.append(kw.get("conj", False)) or real(*a, **kw))
    monkeypatch.setattr(S, "_monarch_corr", lambda *a: calls.append("dk") or real_corr(*a))
    u, k, D = _inputs(3, 2, L, C, S_, seed=L, dtype=dtype)
    k = k.to(dtype) if L % 2 else k  # half k (odd L): dk on tensor cores too; float32 k: dk by cuFFT
    kk = (k if C > 1 else k[:, :]).reshape(((C,) if C > 1 else ()) + ((2,) if S_ == 2 else ()) + (2, L))
    uu = u.to(device).requires_grad_()
    kk = kk.to(device).requires_grad_()
    DD = (D if C > 1 else D[0]).to(device).requires_grad_()
    y = gs.fftconv(uu, kk, DD, bidirectional=S_ == 2)
    r64 = _ref(u, k, D)
    r64 = r64 if C > 1 else r64[:, 0]
    assert y.dtype == dtype
    tol = {torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]
    assert (y.double() - r64).abs().max() <= tol * r64.abs().max() + 2 * (r64.to(dtype).double() - r64).abs().max()
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    y.backward(gy.to(device))
    assert calls == [False] + ([True] if C == 1 else []) + (["dk"] if L % 2 and S.monarch_size(L, dtype) <= 4096
                                                             else [])
    q = [u.detach().double().requires_grad_(), kk.detach().double().requires_grad_(), DD.detach().double().requires_grad_()]
    ref.fftconv(*q, S_ == 2).backward(gy.double())
    for a, b in zip((uu, kk, DD), q):
        assert _rel(a.grad, b.grad) < 2 * tol


def test_fftconv_half_knob_off_and_fake(device, monkeypatch):
    """The op's uf output follows the path (empty on the tensor-core path, the spectrum on cuFFT's), its fake
    agrees (opcheck), and GEOOPS_SSM_TRITON_MONARCH=0 (read per call) restores the cuFFT path."""
    u, k, D = _inputs(2, 3, 40, 1, 1, seed=3, dtype=torch.bfloat16)
    args = (u.to(device), k.to(device), D.to(device), True)
    monkeypatch.delenv("GEOOPS_SSM_TRITON_MONARCH", raising=False)
    y1, uf1 = ops.fftconv_fwd(*args)
    assert uf1.numel() == 0
    torch.library.opcheck(torch.ops.geoops.fftconv_fwd.default, args,
                          test_utils=("test_schema", "test_faketensor"))
    monkeypatch.setenv("GEOOPS_SSM_TRITON_MONARCH", "0")
    y0, uf0 = ops.fftconv_fwd(*args)
    assert uf0.shape == (2, 3, ref.fft_size(40) // 2 + 1)
    torch.library.opcheck(torch.ops.geoops.fftconv_fwd.default, args,
                          test_utils=("test_schema", "test_faketensor"))
    r = _ref(u, k, D)
    for y in (y0, y1):
        assert (y.double() - r).abs().max() <= 3e-2 * r.abs().max() + 2 * (r.to(torch.bfloat16).double() - r).abs().max()


def test_two_pass_channel_groups(device, monkeypatch):
    """N >= 8192 goes through the scratch in groups of channels: a scratch budget of one channel (G = 1, four
    launch pairs for C H = 4) gives the same output as one group, and both match the reference.  B = 3: two row
    pairs, P = 2 scratch rows a channel (session 53: with B = 1 a scratch row c + p instead of c P + p passes).
    L = 1000: the fewest rows of u (R1 = 16; L = 2500 until session 54: R1 = 64, the same grouping, ~40 % more CPU);
    the size's other R1 run in test_kernel_every_size_float32[8192]."""
    N, L = 8192, 1000
    u, k, D = _inputs(3, 2, L, 2, 2, seed=11)
    kf = S._monarch_spectrum(k.to(device), L, N, *S._MONARCH_SPLIT[N])
    y1 = S._monarch_conv(u.to(device), kf, D.to(device), N)
    monkeypatch.setattr(S, "_MONARCH_SCRATCH", 1)
    yg = S._monarch_conv(u.to(device), kf, D.to(device), N)
    assert torch.equal(y1, yg)
    assert _rel(yg, _ref(u, k, D)) < 2e-6


@pytest.mark.parametrize("N", [256, 1024, 2048, 4096])
def test_two_pass_form_at_one_pass_sizes(device, monkeypatch, N):
    """GEOOPS_SSM_TRITON_MONARCH=2 (read per call) runs the two-pass form where the one-pass kernel would: the same
    convolution to float32 rounding (both against the reference), forward and conjugate."""
    u, k, D = _inputs(3, 2, N // 2 - 5, 2, 2, seed=N)
    L = u.shape[-1]
    kf = S._monarch_spectrum(k.to(device), L, N, *S._MONARCH_SPLIT[N])
    monkeypatch.delenv("GEOOPS_SSM_TRITON_MONARCH", raising=False)
    launched = []
    for name in ("_monarch_conv_kernel", "_monarch_rows_kernel"):
        kern = getattr(S, name)
        monkeypatch.setattr(S, name, type("K", (), {"__getitem__": lambda self, grid, kern=kern, name=name: (
            launched.append(name), kern[grid])[1]})())
    y1 = S._monarch_conv(u.to(device), kf, D.to(device), N)
    monkeypatch.setenv("GEOOPS_SSM_TRITON_MONARCH", "2")
    y2 = S._monarch_conv(u.to(device), kf, D.to(device), N)
    assert launched == ["_monarch_conv_kernel", "_monarch_rows_kernel"]
    r = _ref(u, k, D)
    assert _rel(y1, r) < 2e-6 and _rel(y2, r) < 2e-6
    assert _rel(y2, y1.double()) < 2e-6


def _ssm_params(H, N, C_out, seed):
    g = torch.Generator().manual_seed(seed)
    log_dt = torch.rand(H, generator=g, dtype=torch.float64) * 3 - 5
    A = torch.complex(-0.5 - 0.1 * torch.rand(H, N, generator=g, dtype=torch.float64),
                      3.14159 * torch.arange(N, dtype=torch.float64).expand(H, N))
    B = torch.randn(H, N, generator=g, dtype=torch.complex128)
    C = torch.randn(*((C_out,) if C_out else ()), H, N, generator=g, dtype=torch.complex128)
    return log_dt, A, B, C


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("L,C_lead,bid", [(13, None, False), (100, 2, False), (700, 2, True)])
def test_ssm_conv_half_runs_monarch(device, monkeypatch, dtype, L, C_lead, bid):
    """ssm_conv (the fused pair) on half u convolves its circular K through the tensor-core path (moved from the
    2-3-5 FFT size to the power of two); values and gradients against the fp64 reference, and the fake of
    ssm_conv_fwd agrees about uf (opcheck).  C_lead: C_out, or the two directions when bidirectional."""
    monkeypatch.delenv("GEOOPS_SSM_TRITON_MONARCH", raising=False)
    calls = []
    real = S._monarch_conv
    monkeypatch.setattr(S, "_monarch_conv", lambda *a, **kw: calls.append(a[3]) or real(*a, **kw))
    p = [t.to(device) for t in _ssm_params(2, 3, C_lead, seed=L)]
    g = torch.Generator().manual_seed(L)
    u = torch.randn(3, 2, L, generator=g).to(device, dtype)
    D = torch.randn(*((C_lead,) if C_lead and not bid else ()), 2, generator=g).to(device)
    ins = [t.detach().clone().requires_grad_() for t in [u] + p + [D]]
    monkeypatch.setattr(S, "_monarch_corr", lambda *a, real=S._monarch_corr: calls.append("dk") or real(*a))
    y = gs.ssm_conv(*ins, discretization="zoh", bidirectional=bid)
    assert calls == [S.monarch_size(L, dtype)] and y.dtype == dtype
    q = [t.detach().double().requires_grad_() if not t.is_complex() else t.detach().clone().requires_grad_()
         for t in [u] + p + [D]]
    r = ref.ssm_conv(*q, "zoh", bid)
    tol = {torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]
    assert (y.double() - r).abs().max() <= tol * r.abs().max() + 2 * (r.detach().to(dtype).double() - r).abs().max()
    gy = torch.randn(y.shape, generator=g).to(device, dtype)
    y.backward(gy)
    assert calls[1:] == []  # a float32 dK: the cuFFT path
    r.backward(gy.double())
    for a, b in zip(ins, q):
        assert _rel(torch.view_as_real(a.grad) if a.grad.is_complex() else a.grad,
                    torch.view_as_real(b.grad) if b.grad.is_complex() else b.grad) < 2 * tol
    if C_lead is None:
        v, x = ops.ssm_discretize_fwd(*[t.detach() for t in p], "zoh")
        args = (u, v.reshape(1, 1, 2, 3), x, D.reshape(1, 2), True, True)
        assert ops.ssm_conv_fwd(*args)[2].numel() == 0
        torch.library.opcheck(torch.ops.geoops.ssm_conv_fwd.default, args,
                              test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("N", [256, 512, 1024, 2048, 4096])
def test_corr_kernel_is_dk(device, N):
    """_monarch_corr_kernel (float32 through the launcher): dk of the convolution, causal and bidirectional,
    C = 2, B odd, against the vjp of the fp64 reference with respect to k."""
    for B, L, C, S_ in ((3, N // 2, 1, 1), (2, N // 2 - 3, 2, 2), (1, max(2, N // 4 - 1), 1, 2)):
        u, k, D = _inputs(B, 2, L, C, S_, seed=N + L)
        g = torch.randn(B, C, 2, L, generator=torch.Generator().manual_seed(L))
        kk = k.double().requires_grad_()
        y = ref.fftconv(u.double(), kk if S_ == 2 else kk[:, 0], D.double(), S_ == 2)
        (dk_ref,) = torch.autograd.grad(y, kk, g.double())
        if S_ == 2:
            dk_ref[:, 1, :, L - 1] = 0  # the anti-causal kernel's last tap is unused (op contract: zero gradient)
        dk = S._monarch_corr(g.to(device), u.to(device), S_, N, torch.float32)
        assert dk.shape == k.shape
        assert _rel(dk, dk_ref) < 2e-6, (B, L, C, S_)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("L,kdt", [(1000, None), (1000, torch.float32), (3000, None)])
def test_tf32_error_within_twice_the_cufft_path(device, monkeypatch, tf32_dots, dtype, L, kdt):
    """The house rule for half precision with the tensor cores' TF32 operands emulated: y, du and dk (against
    fp64, in units of the largest entry) within 2x the error of the float32 cuFFT path (GEOOPS_SSM_TRITON_MONARCH=0,
    the eager float32-FFT recipe's numbers), plus a floor of a quarter ulp at the top binade (a half output that
    TF32 moved across a rounding boundary is one ulp off where the other is half an ulp off); y also in rms.
    (Against the exact result rounded to bfloat16 both paths are ~2x off here: the interpreter's bfloat16 stores
    truncate.)  Half k: dk on tensor cores; float32 k: by cuFFT, as the op routes it."""
    g = torch.Generator().manual_seed(L)
    B, H = 2, 2
    u = torch.randn(B, H, L, generator=g).to(dtype)
    k = (torch.randn(1, 1, H, L, generator=g) * torch.exp(-torch.arange(L) / (L / 4))).to(kdt or dtype)
    D = torch.randn(1, H, generator=g)
    gy = torch.randn(B, 1, H, L, generator=g).to(dtype)
    args = [t.to(device) for t in (u, k, D, gy)]
    out = {}
    for knob in ("", "0"):
        monkeypatch.setenv("GEOOPS_SSM_TRITON_MONARCH", knob)
        y, _ = S.fftconv_fwd(*args[:3], False)
        du, dk, _ = S.fftconv_bwd(args[3], args[0], u.new_empty(0), args[1], None, 3)
        out[knob] = (y, du, dk)
    uu, kk = u.double().requires_grad_(), k.double().requires_grad_()
    du_r, dk_r = torch.autograd.grad(_ref(uu, kk, torch.zeros_like(D)), (uu, kk), gy.double())
    exact = (_ref(u, k, D), du_r, dk_r)
    for i, (ours, cufft, ex) in enumerate(zip(out[""], out["0"], exact)):
        m = ex.abs().max()
        e, e0 = ours.double() - ex, cufft.double() - ex
        floor = torch.finfo(ours.dtype).eps / 4 if ours.dtype in (torch.float16, torch.bfloat16) else 1e-6
        assert e.abs().max() / m <= 2 * e0.abs().max() / m + floor, i
        if i == 0:
            assert e.pow(2).mean().sqrt() <= 2 * e0.pow(2).mean().sqrt()
