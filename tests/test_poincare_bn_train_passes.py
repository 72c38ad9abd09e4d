"""The batch norm training layer's glue inside its C++ calls -- the three small GEMMs as row passes
(GEOOPS_POINCARE_BN_SMALL_GEMM), the D-vectors read in place, dweight / dc in the dtype, and the running
statistics' update as one C++ call."""
import random

import pytest
import torch

from geoops import poincare as gp
from geoops import stereographic as st
from geoops._backend import compiled
from geoops.nn import PoincareBall, PoincareBatchNorm2d

from _compare import assert_2x_rule, assert_close_to_largest
from _poincare_rows import bn_rows
from _stress import assert_bitwise_repeatable, heap_churn


def _inputs(N, D, dtype, seed):
    """x (one row near the boundary), the bias (not on the ball) and the upstream gradient: bn_rows' first three."""
    return bn_rows(N, D, dtype, seed, bias_on_ball=False)[:3]


def _layer(x, bias, gy, c=0.9, w=0.8):
    """BnLayerFn's forward and backward: y, var, m and the gradients to x, bias, weight, c."""
    x = x.clone().requires_grad_(True)
    bias = bias.clone().requires_grad_(True)
    wt = torch.tensor(w, dtype=x.dtype, requires_grad=True)
    ct = torch.tensor(c, dtype=x.dtype, requires_grad=True)
    y, var, m = gp.BnLayerFn.apply(x, bias, wt, ct, x.shape[0], 1e-6, 4e-3)
    return [y.detach(), var, m, *torch.autograd.grad(y, (x, bias, wt, ct), gy)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("D", [1, 3, 8, 16])
def test_bn_small_gemm_vs_mkl(monkeypatch, dtype, D):
    """The backward's gu = gv M^T + 2 gS u as a double-accumulated row pass vs at::addmm
    (GEOOPS_POINCARE_BN_SMALL_GEMM=0): values and every gradient (fp64 to 1e-10; fp32 within the float GEMM's
    rounding, relative to the largest entry); N = 2, 263, 5000; D = 8, 16 (the vector path), 1, 3 (scalar)."""
    tol = dict(rtol=1e-10, atol=1e-11) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-6)
    for N in (2, 263, 5000):
        x, bias, gy = _inputs(N, D, dtype, 7 * D + N)
        monkeypatch.setenv("GEOOPS_POINCARE_BN_SMALL_GEMM", "0")
        want = _layer(x, bias, gy)
        monkeypatch.delenv("GEOOPS_POINCARE_BN_SMALL_GEMM")
        got = _layer(x, bias, gy)
        assert_close_to_largest(got, want, tag=(N,), **tol)


@pytest.mark.parametrize("D", [3, 8, 16])
def test_bn_small_gemm_accuracy_vs_fp64(monkeypatch, D):
    """gu = gv M^T + 2 gS u as the double-accumulated row pass: the fp32 layer's values and gradients (dx, dbias,
    dweight, dc) vs the same layer in fp64 within 2x (+ floor) the addmm path's own error."""
    N = 1000
    x, bias, gy = _inputs(N, D, torch.float32, D)
    x64, bias64, gy64 = _inputs(N, D, torch.float64, D)
    truth = _layer(x64, bias64, gy64)
    got = _layer(x, bias, gy)
    monkeypatch.setenv("GEOOPS_POINCARE_BN_SMALL_GEMM", "0")
    mkl = _layer(x, bias, gy)
    for i, (o, r, t) in enumerate(zip(got, mkl, truth)):
        assert_2x_rule(o, r, t, 1e-6 * t.abs().max().clamp_min(1), tag=(i,))


@pytest.mark.parametrize("D", [5, 8, 16])
def test_bn_tiles_same_bits_as_gathers(monkeypatch, D):
    """fp32 rows at D = 8 / 16 (AVX-512 builds): the backward's lane passes read tiles of 16 rows (an in-register
    transpose) and write dx per row instead of gathers / scatters (GEOOPS_POINCARE_BN_TILES=0): the same sums and
    coefficients, so the same bits for y and every gradient; N with whole tiles, a tail of rows (< 16, < 8) and
    several row chunks; D = 5 runs the gathers either way."""
    for N in (16, 23, 263, 4099):
        x, bias, gy = _inputs(N, D, torch.float32, 11 * D + N)
        monkeypatch.setenv("GEOOPS_POINCARE_BN_TILES", "0")
        want = _layer(x, bias, gy)
        monkeypatch.delenv("GEOOPS_POINCARE_BN_TILES")
        got = _layer(x, bias, gy)
        for i, (a, b) in enumerate(zip(got, want)):
            assert torch.equal(a, b), (N, i, float((a - b).abs().max()))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("D", [5, 8, 16])
def test_bn_contractions_vs_dxd_route(monkeypatch, dtype, D):
    """The backward's gM = u^T gv read only through tr gM, AE gM, AE gM^T as per-row dots (no D x D gM) and
    gu = gv M^T + 2 gS u from M's rank 2 (alpha I + AE^T V AE in double) vs session 22's D x D route
    (GEOOPS_POINCARE_BN_CONTRACT=0: gM by rows_gram, gu by the rounded M's row pass), forced at every D by
    GEOOPS_POINCARE_BN_CONTRACT=1 (the default: float32 at D > 8 only): y, var, m identical (the forward is
    untouched); dx, dbias, dweight, dc relative to each output's largest entry within fp64 1e-10 (seen <= 3e-13)
    and fp32 2e-5 + 4e-6 (seen <= 2.3e-6: gu's two routes differ by M's rounding to float32 and the sums' order).
    N odd: a tail of < 8 rows (7), of < 16 (23), blocks with tails (263), several row chunks (4099); D = 5
    gathers, 8 / 16 tiles (fp32, AVX-512) or gathers -- fp32: tiles and gathers (GEOOPS_POINCARE_BN_TILES=0)
    the same bits on this route too."""
    tol = dict(rtol=1e-10, atol=1e-11) if dtype == torch.float64 else dict(rtol=2e-5, atol=4e-6)
    for N in (7, 23, 263, 4099):
        x, bias, gy = _inputs(N, D, dtype, 13 * D + N)
        monkeypatch.setenv("GEOOPS_POINCARE_BN_CONTRACT", "0")
        want = _layer(x, bias, gy)
        monkeypatch.setenv("GEOOPS_POINCARE_BN_CONTRACT", "1")
        got = _layer(x, bias, gy)
        for i in range(3):
            assert torch.equal(got[i], want[i]), (N, i)
        assert_close_to_largest(got[3:], want[3:], tag=(N,), **tol)
        if dtype == torch.float32:
            monkeypatch.setenv("GEOOPS_POINCARE_BN_TILES", "0")
            gathers = _layer(x, bias, gy)
            monkeypatch.delenv("GEOOPS_POINCARE_BN_TILES")
            for i, (a, b) in enumerate(zip(got, gathers)):
                assert torch.equal(a, b), (N, i, float((a - b).abs().max()))


@pytest.mark.parametrize("N, D", [(7, 8), (23, 5), (17, 16)])
def test_bn_contractions_gradcheck(monkeypatch, N, D):
    """fp64 gradcheck of the training layer (BnLayerFn: x, bias, weight, c) on the contraction route
    (GEOOPS_POINCARE_BN_CONTRACT=1) at D = 5 (gathers), 8 and 16 (whole vectors of the row passes)."""
    monkeypatch.setenv("GEOOPS_POINCARE_BN_CONTRACT", "1")
    x, bias, _ = _inputs(N, D, torch.float64, N * D)
    ins = (x.requires_grad_(True), bias.requires_grad_(True), torch.tensor(0.8, dtype=torch.float64, requires_grad=True),
           torch.tensor(0.9, dtype=torch.float64, requires_grad=True))
    assert torch.autograd.gradcheck(lambda *t: gp.BnLayerFn.apply(*t, N, 1e-6, 4e-3)[0], ins, eps=1e-6, atol=1e-6,
                                    rtol=1e-5)


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_getaffinity"), reason="glibc malloc (Linux) only")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("D", [5, 8, 16])
def test_bn_train_bitwise_reproducible_heap_and_threads(dtype, D):
    """The training layer's two C++ calls (the gu row pass included) agree bit for bit on identical inputs
    after heap churn, at 4-byte buffer offsets and with 1 or 2 threads (N = 5000: several row chunks)."""
    C = compiled()
    rng, held = random.Random(D), []

    def train(xs, gs):
        fw = C.poincare_bn_train_fwd_cpu(xs, bias, 0.8, 0.9, float(N), 1e-6, 4e-3)
        y, var, m, u, v, M, b, mid, tr = fw
        heap_churn(rng, held)
        bw = C.poincare_bn_train_bwd_cpu(gs, xs, bias, m, mid, u, v, M, b, tr, 0.9, 4e-3)
        return list(fw) + list(bw)

    for N in (12, 5000):
        x, bias, gy = _inputs(N, D, dtype, D + N)
        assert_bitwise_repeatable(train, (x, gy), 8 if N == 12 else 4, rng, held, tag=(N,))


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
@pytest.mark.parametrize("scale, t, c", [(0.3, 0.1, 1.0), (0.8, 0.5, 0.7), (0.0, 0.1, 1.3), (0.6, 0.9, 2.0)])
def test_running_update_cpp_matches_geodesic(dtype, tol, scale, t, c):
    """poincare_bn_running_update (one C++ call) vs the stereographic geodesic in float64 and the variance's
    exponential average; the buffers' version counters move (in-place updates)."""
    x, y = (gp.expmap0(torch.randn(2, 7, generator=torch.Generator().manual_seed(3), dtype=dtype) * scale, c=c)
            if scale else (torch.zeros(7, dtype=dtype), None))
    if y is None:
        y = gp.expmap0(torch.randn(7, generator=torch.Generator().manual_seed(4), dtype=dtype) * 0.5, c=c)
    want = st.geodesic(t, x.double(), y.double(), k=torch.tensor(-c, dtype=torch.float64)).to(dtype)
    rm, rv, var = x.clone(), torch.tensor(0.7, dtype=dtype), torch.tensor(1.3, dtype=dtype)
    v0, w0 = rm._version, rv._version
    compiled().poincare_bn_running_update_cpu(rm, rv, y, var, t, c, 1.25)
    torch.testing.assert_close(rm, want, rtol=tol, atol=tol)
    torch.testing.assert_close(rv, torch.tensor((1 - t) * 0.7 + t * 1.25 * 1.3, dtype=dtype), rtol=tol, atol=tol)
    assert rm._version > v0 and rv._version > w0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batchnorm2d_running_stats_cpp(monkeypatch, dtype):
    """The running statistics over several training steps: the C++ update (contiguous buffers) vs the Python direct
    step (which a strided running_mean takes) to rounding; the C++ call is the one the module takes."""
    outs = {}
    for strided in (True, False):
        rm = torch.zeros(12, dtype=dtype)[::2] if strided else torch.zeros(6, dtype=dtype)
        rv = torch.ones((), dtype=dtype)
        bias, w = torch.zeros(6, dtype=dtype), torch.tensor(1.0, dtype=dtype)
        for s in range(4):
            g = torch.Generator().manual_seed(s)
            x = gp.expmap0(torch.randn(60, 6, generator=g, dtype=dtype) * 0.8, c=1.0)
            gp.batch_norm2d(x.reshape(5, 4, 3, 6).permute(0, 3, 1, 2), bias, w, c=torch.tensor(1.0, dtype=dtype),
                            running_mean=rm, running_var=rv, momentum=0.3)
        outs[strided] = (rm.clone(), rv.clone())
    tol = dict(rtol=1e-6, atol=1e-7) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(outs[False][0], outs[True][0], **tol)
    torch.testing.assert_close(outs[False][1], outs[True][1], **tol)
    assert outs[False][0].abs().sum() > 0.01
    bn = PoincareBatchNorm2d(6, PoincareBall(1.0), momentum=0.3).to(dtype)
    calls = []
    real = compiled().poincare_bn_running_update_cpu

    class Wrap:
        def __getattr__(self, name):
            if name == "poincare_bn_running_update_cpu":
                return lambda *a: (calls.append(1), real(*a))[1]
            return getattr(compiled(), name)

    import geoops._backend as be
    monkeypatch.setattr(be, "compiled", lambda: Wrap())
    bn(x.reshape(5, 4, 3, 6).permute(0, 3, 1, 2))
    assert calls == [1]

