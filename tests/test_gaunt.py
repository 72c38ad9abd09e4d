"""Tests of geoops.gaunt: every route against independent oracles (e3nn), gradients, properties, bad inputs."""
from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch

import geoops
from geoops import gaunt as ga
from geoops.reference import gaunt as R
from _stress import num_threads

try:  # the independent oracle (e3nn's harmonics, Wigner D, TensorProduct); without it the routes are still
    from e3nn import o3  # checked against a quadrature built here on geoops.reference's harmonics
except ImportError:  # pragma: no cover - e3nn is a test extra
    o3 = None
needs_e3nn = pytest.mark.skipif(o3 is None, reason="e3nn is not installed (pip install e3nn)")

ROUTES = ("grid", "grid_gemm", "direct", "fft")
F64 = torch.float64


# ---------------------------------------------------------------- independent oracle (e3nn harmonics + quadrature)
def _e3nn_sh(L, beta, alpha):
    if o3 is None:
        return R.real_sh(L, beta, alpha)
    xyz = torch.stack([beta.sin() * alpha.sin(), beta.cos(), beta.sin() * alpha.cos()], -1)
    return o3.spherical_harmonics(list(range(L + 1)), xyz, normalize=True, normalization="integral")


_G_CACHE = {}


def oracle_gaunt(L1, L2, L3):
    """G_ijk = integral Y_i Y_j Y_k with e3nn's harmonics and a Gauss-Legendre x uniform grid built here."""
    key = (L1, L2, L3)
    if key not in _G_CACHE:
        T = L1 + L2 + L3
        x, w = np.polynomial.legendre.leggauss(T // 2 + 2)  # one node more than needed: independent of ours
        na = T + 3
        beta = torch.from_numpy(np.arccos(x))
        alpha = torch.arange(na, dtype=F64) * (2 * math.pi / na)
        B, A = torch.meshgrid(beta, alpha, indexing="ij")
        W = torch.from_numpy(w)[:, None].expand_as(B) * (2 * math.pi / na)
        B, A, W = B.reshape(-1), A.reshape(-1), W.reshape(-1)
        Y1, Y2, Y3 = _e3nn_sh(L1, B, A), _e3nn_sh(L2, B, A), _e3nn_sh(L3, B, A)
        _G_CACHE[key] = torch.einsum("p,pi,pj,pk->ijk", W, Y1, Y2, Y3)
    return _G_CACHE[key]


def oracle(x1, x2, L3, w1=None, w2=None, wo=None):
    L1, L2 = R.lmax_of(x1.shape[-1]), R.lmax_of(x2.shape[-1])
    G = oracle_gaunt(L1, L2, L3)
    d = lambda L: R.degree_of_index(L)  # noqa: E731
    if w1 is not None:
        x1 = x1 * w1[..., d(L1)]
    if w2 is not None:
        x2 = x2 * w2[..., d(L2)]
    out = torch.einsum("ijk,...i,...j->...k", G, x1.double(), x2.double())
    return out * wo[..., d(L3)] if wo is not None else out


@contextlib.contextmanager
def f64_default():
    """e3nn bakes its constants (wigner_3j, J matrices) in the default dtype: build them in float64."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _rand(*shape, dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


# ---------------------------------------------------------------- basis and constants
@needs_e3nn
def test_sh_matches_e3nn():
    g = torch.Generator().manual_seed(1)
    beta = torch.rand(64, generator=g, dtype=F64) * math.pi
    alpha = torch.rand(64, generator=g, dtype=F64) * 2 * math.pi
    assert torch.allclose(R.real_sh(8, beta, alpha), _e3nn_sh(8, beta, alpha), atol=1e-13, rtol=0)


@needs_e3nn
def test_gaunt_coefficients_match_oracle_and_wigner_3j():
    G = R.gaunt_coefficients(3, 4, 5)
    assert torch.allclose(G, oracle_gaunt(3, 4, 5), atol=1e-14, rtol=0)
    # on each path: G = g * wigner_3j, g >= 0, zero for odd l1 + l2 + l3
    for l1, l2, l3 in [(1, 1, 2), (2, 3, 3), (3, 4, 5), (2, 2, 2), (1, 2, 2)]:
        blk = G[l1 * l1:(l1 + 1) ** 2, l2 * l2:(l2 + 1) ** 2, l3 * l3:(l3 + 1) ** 2]
        if (l1 + l2 + l3) % 2:
            assert blk.abs().max() == 0
        else:
            C = o3.wigner_3j(l1, l2, l3).to(F64)
            g = blk.norm()
            assert g > 0 and torch.allclose(blk, g * C, atol=1e-14)


def test_sparse_counts():
    # the nonzero counts of the exact Gaunt tensor (BACKGROUND section 2)
    for L, nnz in [(2, 83), (4, 1158)]:
        assert R.gaunt_sparse(L, L, L)[0].numel() == nnz


def test_quadrature_grid_sizes():
    assert [len(R.sphere_grid(3 * L)[0]) for L in (2, 4, 6, 8)] == [28, 91, 190, 325]


@pytest.mark.parametrize("kind", ["grid", "fft"])
def test_separable_tables(kind):
    """The tables of the separable CPU kernel, run by the readable torch form, equal the dense contraction;
    their sizes are the minimal exact ones (Gauss-Legendre: T//2 + 1 polar nodes; torus: K + 1 rows of 2K + 1;
    azimuths: the smallest multiple of 4 above T)."""
    build = R.separable_grid_tables if kind == "grid" else R.separable_fourier_tables
    for Ls, Lo in [((2, 3), 4), ((6, 6), 6), ((2, 2), 6), ((3, 3), 0), ((1, 2, 3), 3), ((0, 0), 0)]:
        xs = [_rand(4, (L + 1) ** 2, seed=60 + L) for L in Ls]
        evals, back, na = tb = build(Ls, Lo)
        T, K = sum(Ls) + Lo, sum(Ls)
        assert na % 4 == 0 and T < na <= T + 4
        assert back.shape[1] == (T // 2 + 1 if kind == "grid" else K + 1)
        assert [e.shape for e in evals] == [(back.shape[1], (L + 1) * (L + 2) // 2) for L in Ls]
        torch.testing.assert_close(R.separable_product(xs, Lo, tb), R.gaunt_product(xs, Lo), atol=1e-12, rtol=0)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_routes_several_row_tiles(route, dtype):
    """Row counts around the kernels' tiles (SIMD lanes: 16 fp32 / 8 fp64 rows with AVX-512, 8 / 4 in other builds;
    direct: one fp32 vector of rows), per-row weights on every operand."""
    L1, L2, L3 = 3, 2, 3
    for n in (1, 3, 5, 7, 9, 15, 17, 33, 70):
        x1, x2 = _rand(n, (L1 + 1) ** 2, seed=n), _rand(n, (L2 + 1) ** 2, seed=n + 1)
        w1, w2, wo = _rand(n, L1 + 1, seed=n + 2), _rand(n, L2 + 1, seed=n + 3), _rand(n, L3 + 1, seed=n + 4)
        out = ga.gaunt_tensor_product(x1.to(dtype), x2.to(dtype), L3, weight1=w1.to(dtype), weight2=w2.to(dtype),
                                      weight_out=wo.to(dtype), route=route)
        ref = oracle(x1, x2, L3, w1, w2, wo)
        tol = 1e-12 if dtype == F64 else 1e-5
        assert (out.double() - ref).abs().max() <= tol * ref.abs().max()


def test_lane_vectors_sized_for_the_build_isa():
    """Session 25: the fused kernels' lane vectors (GEOOPS_GAUNT_VBYTES in csrc/cpu/gaunt.h) are 64 bytes (one zmm)
    only when the file is compiled with AVX-512, else 32 bytes (one ymm with AVX2, whose 16 registers hold the
    8-vector register blocks; the 64-byte vectors were register pairs there and ran the grid / direct / fft
    routes 2-7x slower); the direct route's tile is one fp32 vector of rows.  Before: 64 bytes in every build."""
    from geoops import _backend

    C = _backend.compiled()
    if C is None:
        pytest.skip("needs the compiled extension")
    vbytes, avx512, tile = C.gaunt_cpu_lanes()
    assert vbytes == (64 if avx512 else 32)
    assert tile == vbytes // 4
    if not _backend.cpu_class().endswith("avx512"):
        assert (vbytes, avx512) == (32, 0)  # an AVX2 / baseline machine runs the 32-byte kernels
    # the family-neutral report of the build's ISA (tests read it, not the machine's) agrees with each kernel's own
    assert _backend.build_isa() in ("AVX512", "AVX2", "DEFAULT")
    assert bool(avx512) == (_backend.build_isa() == "AVX512")
    assert C.stereo_short_layout()["isa"] == _backend.build_isa()


# ---------------------------------------------------------------- parity of the routes
CASES = [(2, 3, 4), (4, 4, 4), (1, 3, 2), (3, 0, 3), (0, 0, 0), (2, 2, 6), (5, 2, 3)]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("L1,L2,L3", CASES)
def test_routes_match_oracle_fp64(route, L1, L2, L3):
    n = 13
    x1, x2 = _rand(n, (L1 + 1) ** 2, seed=1), _rand(n, (L2 + 1) ** 2, seed=2)
    out = ga.gaunt_tensor_product(x1, x2, L3, route=route)
    assert out.shape == (n, (L3 + 1) ** 2) and out.dtype == F64
    torch.testing.assert_close(out, oracle(x1, x2, L3), atol=1e-12, rtol=0)
    torch.testing.assert_close(R.gaunt_tensor_product(x1, x2, L3), oracle(x1, x2, L3), atol=1e-12, rtol=0)


@pytest.mark.parametrize("route", ROUTES)
def test_weights_broadcast_fp64(route):
    L1, L2, L3 = 3, 2, 4
    x1 = _rand(3, 1, (L1 + 1) ** 2, seed=3)          # broadcast over the channel dim
    x2 = _rand(1, 5, (L2 + 1) ** 2, seed=4)
    w1 = _rand(5, L1 + 1, seed=5)                     # per channel
    w2 = _rand(L2 + 1, seed=6)                        # shared
    wo = _rand(3, 5, L3 + 1, seed=7)                  # per row
    out = ga.gaunt_tensor_product(x1, x2, L3, weight1=w1, weight2=w2, weight_out=wo, route=route)
    assert out.shape == (3, 5, (L3 + 1) ** 2)
    torch.testing.assert_close(out, oracle(x1, x2, L3, w1, w2, wo), atol=1e-12, rtol=0)


def test_default_lmax_and_high_lmax_out():
    x1, x2 = _rand(4, 9, seed=8), _rand(4, 4, seed=9)
    assert ga.gaunt_tensor_product(x1, x2).shape == (4, 16)  # L1 + L2
    for route in ROUTES:
        out = ga.gaunt_tensor_product(x1, x2, 5, route=route)
        torch.testing.assert_close(out[:, :16], oracle(x1, x2, 3), atol=1e-12, rtol=0)
        assert out[:, 16:].abs().max() < 1e-12  # degrees above L1 + L2 vanish


@pytest.mark.parametrize("route", ROUTES)
def test_degrees_above_the_sum_are_exact_zeros(route):
    """The docstring's "degrees above L1 + L2 come out as zeros": before session 24 the grid / fft quadrature left
    round-off there (~1.6e-7 in float32, ~2e-15 in float64).  Now exact zeros, with weight_out's gradient zero
    on those degrees and the lower degrees unchanged."""
    x1, x2 = _rand(4, 9, seed=8).float(), _rand(4, 9, seed=9).float()
    wo = torch.rand(1, 8, requires_grad=True)
    out = ga.gaunt_tensor_product(x1, x2, 7, weight_out=wo, route=route)
    assert out.shape == (4, 64) and torch.equal(out[:, 25:], torch.zeros(4, 39))
    torch.testing.assert_close(out[:, :25], ga.gaunt_tensor_product(x1, x2, 4, weight_out=wo[:, :5], route=route),
                               rtol=1e-6, atol=1e-6)
    gw, = torch.autograd.grad(out.pow(2).sum(), wo)
    assert torch.equal(gw[:, 5:], torch.zeros(1, 3)) and gw[:, :5].abs().min() > 0
    out3 = ga.gaunt_product([x1[:, :4]] * 3, 5, route=route)  # nu = 3: degrees above 3 vanish
    assert torch.equal(out3[:, 16:], torch.zeros(4, 20))


@needs_e3nn
def test_e3nn_tensor_product_with_gaunt_path_weights():
    L1, L2, L3 = 2, 3, 4
    irr = lambda L: o3.Irreps([(1, (l, (-1) ** l)) for l in range(L + 1)])  # noqa: E731
    G = oracle_gaunt(L1, L2, L3)
    instr = []
    for l1 in range(L1 + 1):
        for l2 in range(L2 + 1):
            for l3 in range(abs(l1 - l2), min(l1 + l2, L3) + 1):
                if (l1 + l2 + l3) % 2 == 0:
                    g = G[l1 * l1:(l1 + 1) ** 2, l2 * l2:(l2 + 1) ** 2, l3 * l3:(l3 + 1) ** 2].norm().item()
                    instr.append((l1, l2, l3, "uuu", False, g * g))
    with f64_default():
        tp = o3.TensorProduct(irr(L1), irr(L2), irr(L3), instr, irrep_normalization="none",
                              path_normalization="none").double()
    x1, x2 = _rand(7, (L1 + 1) ** 2, seed=10), _rand(7, (L2 + 1) ** 2, seed=11)
    ref = tp(x1, x2)
    for route in ROUTES:
        torch.testing.assert_close(ga.gaunt_tensor_product(x1, x2, L3, route=route), ref, atol=1e-12, rtol=0)


@needs_e3nn
@pytest.mark.parametrize("route,L1,L2,L3", [("grid", 8, 5, 8), ("direct", 3, 8, 6), ("fft", 6, 8, 7)])
def test_rotation_and_inversion_equivariance(route, L1, L2, L3):
    x1, x2 = _rand(3, (L1 + 1) ** 2, seed=12), _rand(3, (L2 + 1) ** 2, seed=13)
    irr = lambda L: o3.Irreps([(1, (l, (-1) ** l)) for l in range(L + 1)])  # noqa: E731
    g = torch.Generator().manual_seed(14)
    a, b, c = (torch.rand((), generator=g, dtype=F64) * 2 * math.pi for _ in range(3))
    for parity in (1, -1):
        with f64_default():
            D1, D2, D3 = (irr(L).D_from_angles(a, b, c, torch.tensor(0 if parity == 1 else 1)) for L in (L1, L2, L3))
        if parity == -1:  # e3nn's inversion flips the odd degrees of the rotation
            with f64_default():
                R1 = irr(L1).D_from_angles(a, b, c, torch.tensor(0))
            assert torch.allclose(D1[1:4, 1:4], -R1[1:4, 1:4]) and torch.allclose(D1[4:9, 4:9], R1[4:9, 4:9])
        D = {L1: D1, L2: D2, L3: D3}.__getitem__
        lhs = ga.gaunt_tensor_product(x1 @ D(L1).T, x2 @ D(L2).T, L3, route=route)
        rhs = ga.gaunt_tensor_product(x1, x2, L3, route=route) @ D(L3).T
        torch.testing.assert_close(lhs, rhs, atol=1e-11, rtol=0)


@pytest.mark.parametrize("route", ROUTES)
def test_fp32_relative_error(route):
    L = 6
    x1, x2 = _rand(64, (L + 1) ** 2, seed=15), _rand(64, (L + 1) ** 2, seed=16)
    ref = oracle(x1, x2, L)
    out = ga.gaunt_tensor_product(x1.float(), x2.float(), L, route=route)
    assert out.dtype == torch.float32
    rel = (out.double() - ref).abs().max() / ref.abs().max()
    assert rel <= 1e-5, rel


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_rule(dtype):
    x1, x2 = _rand(32, 16, seed=17), _rand(32, 9, seed=18)
    ref64 = oracle(x1, x2, 4)
    a, b = x1.to(dtype), x2.to(dtype)
    ref_low = R.gaunt_tensor_product(a.double(), b.double(), 4).to(dtype).double()
    for route in ROUTES:
        out = ga.gaunt_tensor_product(a, b, 4, route=route)
        assert out.dtype == dtype
        err = (out.double() - ref64).abs()
        assert bool((err <= 2 * (ref_low - ref64).abs() + 2e-2 * ref64.abs().max()).all())


def test_empty_and_size_one():
    for route in ROUTES:
        out = ga.gaunt_tensor_product(torch.empty(0, 4, dtype=F64), torch.empty(0, 9, dtype=F64), route=route)
        assert out.shape == (0, 16)
        x1, x2 = _rand(1, seed=19), _rand(1, 1, seed=20)  # L = 0: constants
        out = ga.gaunt_tensor_product(x1, x2, route=route)
        torch.testing.assert_close(out, x1 * x2 / math.sqrt(4 * math.pi), atol=1e-14, rtol=0)


def test_non_contiguous_inputs():
    x1 = _rand(16, 6, seed=21)[:, ::2][:, :1].expand(16, 1)  # weird strides
    x2 = _rand(9, 16, seed=22).t()  # (16, 9) transposed
    for route in ROUTES:
        torch.testing.assert_close(ga.gaunt_tensor_product(x1, x2, 2, route=route), oracle(x1, x2, 2),
                                   atol=1e-12, rtol=0)


# ---------------------------------------------------------------- many-body
@pytest.mark.parametrize("route", ROUTES)
def test_many_body_product(route):
    xs = [_rand(5, 9, seed=23), _rand(5, 4, seed=24), _rand(5, 16, seed=25)]
    ref = oracle(oracle(xs[0], xs[1], 3), xs[2], 4)  # full intermediate degree 2 + 1 = 3
    torch.testing.assert_close(ga.gaunt_product(xs, 4, route=route), ref, atol=1e-12, rtol=0)
    x = xs[2]
    ref3 = oracle(oracle(x, x, 6), x, 5)
    torch.testing.assert_close(ga.gaunt_power(x, 3, 5, route=route), ref3, atol=1e-11, rtol=0)
    torch.testing.assert_close(ga.gaunt_product([x], 2, route=route), x[:, :9], atol=1e-13, rtol=0)


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize("route", ROUTES)
def test_gradcheck_and_gradgradcheck(route):
    L1, L2, L3 = 2, 1, 2
    x1 = _rand(3, (L1 + 1) ** 2, seed=26).requires_grad_()
    x2 = _rand(3, (L2 + 1) ** 2, seed=27).requires_grad_()
    w1 = _rand(3, L1 + 1, seed=28).requires_grad_()
    w2 = _rand(L2 + 1, seed=29).requires_grad_()
    wo = _rand(1, L3 + 1, seed=30).requires_grad_()

    def f(a, b, c, d, e):
        return ga.gaunt_tensor_product(a, b, L3, weight1=c, weight2=d, weight_out=e, route=route)

    # (grid_gemm: 3 rows are one row tile; its ~1000 three-row BLAS calls here run on one MKL thread since
    # session 44 -- before, each woke MKL's team: 17-55 s of CPU on CI's busy two cores; tests/test_blas_threads.py)
    assert torch.autograd.gradcheck(f, (x1, x2, w1, w2, wo))
    assert torch.autograd.gradgradcheck(f, (x1, x2, w1, w2, wo))


def test_gradcheck_many_body():
    xs = (_rand(2, 4, seed=31).requires_grad_(), _rand(2, 9, seed=32).requires_grad_(),
          _rand(2, 4, seed=33).requires_grad_())
    w = _rand(2, seed=34).requires_grad_()
    f = lambda a, b, c, w: ga.gaunt_product([a, b, c], 3, weights=[w, None, None], route="grid")  # noqa: E731
    assert torch.autograd.gradcheck(f, (*xs, w))
    assert torch.autograd.gradgradcheck(f, (*xs, w))


def test_forward_mode_ad_raises_and_nested_jacrev_works():
    """Forward mode (jvp, jacfwd, hessian, forward_ad duals) reached the bare custom op, which dropped the
    tangents: jvp returned zeros.  It must raise.  jacrev(jacrev(f)) reached the bare op through the inner
    vmap (a requires_grad hidden by the vmap wrapper) and failed in torch; it must equal the reference."""
    import torch.autograd.forward_ad as fwAD
    from torch.func import jacfwd, jacrev, jvp

    g = torch.Generator().manual_seed(3)
    x1 = torch.randn(3, 9, generator=g, dtype=torch.float64)
    x2 = torch.randn(3, 4, generator=g, dtype=torch.float64)
    with pytest.raises(NotImplementedError, match=r"geoops.gaunt: forward-mode AD"):
        jvp(lambda a: ga.gaunt_tensor_product(a, x2), (x1,), (x1,))
    with pytest.raises(NotImplementedError, match=r"geoops.gaunt: forward-mode AD"):
        jacfwd(lambda a: ga.gaunt_power(a, 2, 2))(x1)
    with fwAD.dual_level(), pytest.raises(NotImplementedError, match=r"geoops.gaunt: forward-mode AD"):
        ga.gaunt_tensor_product(fwAD.make_dual(x1, x1), x2)
    out, tan = jvp(lambda s: ga.gaunt_tensor_product(x1, x2) * s, (torch.ones((), dtype=torch.float64),),
                   (torch.ones((), dtype=torch.float64),))  # no tangent reaches the op: fine
    torch.testing.assert_close(tan, ga.gaunt_tensor_product(x1, x2))
    f = lambda a: (ga.gaunt_tensor_product(a, x2, 2) ** 2).sum()  # noqa: E731
    fr = lambda a: (R.gaunt_tensor_product(a, x2, 2) ** 2).sum()  # noqa: E731
    torch.testing.assert_close(jacrev(jacrev(f))(x1), jacrev(jacrev(fr))(x1), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("route", ROUTES)
def test_lazy_negative_views(route):
    """A contiguous lazily negated tensor (torch._neg_view; public ops such as z.conj().imag give strided ones,
    which the row packing copies) used to reach the C++ kernels as raw memory: the sign was lost."""
    x1 = torch._neg_view(_rand(4, 9, seed=75))
    w = torch._neg_view(_rand(3, seed=76))
    x2 = _rand(4, 4, seed=77)
    assert x1.is_neg() and x1.is_contiguous() and w.is_neg()
    ours = ga.gaunt_tensor_product(x1, x2, 2, route=route)
    torch.testing.assert_close(ours, oracle(x1.resolve_neg(), x2, 2), atol=1e-12, rtol=0)
    ours = ga.gaunt_tensor_product(x2, x2, 2, weight_out=w, route=route)
    torch.testing.assert_close(ours, oracle(x2, x2, 2, wo=w.resolve_neg()), atol=1e-12, rtol=0)


@pytest.mark.parametrize("route", ROUTES)
def test_fp32_gradients_match_reference(route):
    L = 4
    x1, x2 = _rand(16, (L + 1) ** 2, seed=35), _rand(16, (L + 1) ** 2, seed=36)
    w = _rand(L + 1, seed=37)
    g = _rand(16, (L + 1) ** 2, seed=38)
    a, b, c = (t.float().requires_grad_() for t in (x1, x2, w))
    ga.gaunt_tensor_product(a, b, L, weight_out=c, route=route).backward(g.float())
    A, B, C = (t.clone().requires_grad_() for t in (x1, x2, w))
    oracle(A, B, L, wo=C).backward(g)
    for ours, ref in ((a, A), (b, B), (c, C)):
        assert (ours.grad.double() - ref.grad).abs().max() <= 1e-5 * ref.grad.abs().max()


# ---------------------------------------------------------------- fused grid backward (session 21)
@contextlib.contextmanager
def _count_fused_bwd():
    """Count calls of the fused backward kernel (geoops._ops.gaunt.Cpp.gaunt_bwd)."""
    from geoops._ops import gaunt as og
    calls = []
    real = og.Cpp.__dict__["gaunt_bwd"]
    og.Cpp.gaunt_bwd = staticmethod(lambda *a: calls.append(1) or real.__func__(*a))
    try:
        yield calls
    finally:
        og.Cpp.gaunt_bwd = real


@contextlib.contextmanager
def _unfused_bwd():
    """The backward as further forward products (what GauntFn did before the fused kernel)."""
    from geoops._ops import gaunt as og
    real = og.has_fused_bwd
    og.has_fused_bwd = lambda *a: False
    try:
        yield
    finally:
        og.has_fused_bwd = real


def _bwd_case(Ls, Lo, dtype, weights, rows=37, seed=0, route="grid"):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    xs = [r(rows, (L + 1) ** 2).requires_grad_() for L in Ls]
    wrows = {"row": rows, "shared": 1, "wout": rows}.get(weights)
    ws = [None if wrows is None or weights == "wout" else r(wrows, L + 1).requires_grad_() for L in Ls]
    if weights == "mixed":  # a weight that needs no gradient, one that does, none
        ws = [r(rows, Ls[0] + 1), r(Ls[1] + 1).requires_grad_()] + [None] * (len(Ls) - 2)
    wo = None if weights in (None, "mixed") else r(wrows, Lo + 1).requires_grad_()
    up = r(rows, (Lo + 1) ** 2)
    leaves = [t for t in (*xs, *ws, wo) if t is not None and t.requires_grad]

    def grads():
        out = ga.gaunt_product(xs, Lo, weights=ws, weight_out=wo, route=route)
        return torch.autograd.grad(out, leaves, up)
    return grads


def _fused_and_old(grads, route):
    """The gradients through the fused backward kernel (asserting it ran) and through the forward products."""
    with _count_fused_bwd() as calls:
        fused = grads()
    assert calls, f"the {route} route's backward did not run the fused kernel"
    with _unfused_bwd(), _count_fused_bwd() as calls:
        old = grads()
    assert not calls
    return fused, old


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("Ls,Lo,weights", [((2, 3), 4, "row"), ((0, 1), 1, None), ((4, 4), 4, "shared"),
                                           ((3, 2, 1), 5, "row"), ((2,), 2, "shared"), ((6, 5), 3, "mixed"),
                                           ((1, 2), 0, None)])
def test_fused_grid_backward_equals_forward_product_backward(dtype, Ls, Lo, weights):
    """The grid route's first-order backward runs the fused kernel (factors and wout * g on the shared grid once)
    and gives bit for bit the gradients of the backward as further forward products (same steps, same order)."""
    fused, old = _fused_and_old(_bwd_case(Ls, Lo, dtype, weights), "grid")
    for a, b in zip(fused, old):
        assert torch.equal(a, b)


@pytest.mark.parametrize("route", ["grid", "direct"])
def test_fused_grid_backward_gradcheck_and_double_backward(route):
    """fp64 gradcheck through the fused kernel (grid; direct since session 22); under create_graph (force
    training) the backward stays the differentiable forward-product form, so gradgradcheck holds."""
    x1, x2 = _rand(5, 9, seed=90).requires_grad_(), _rand(5, 16, seed=91).requires_grad_()
    w1, wo = _rand(5, 3, seed=92).requires_grad_(), _rand(4, seed=93).requires_grad_()
    f = lambda a, b, c, d: ga.gaunt_tensor_product(a, b, 3, weight1=c, weight_out=d, route=route)  # noqa: E731
    with _count_fused_bwd() as calls:
        assert torch.autograd.gradcheck(f, (x1, x2, w1, wo))
    assert calls
    with _count_fused_bwd() as calls:
        out = f(x1, x2, w1, wo)
        g1, = torch.autograd.grad(out.square().sum(), x1, create_graph=True)
    assert g1.requires_grad and not calls
    # the second derivative's own (first-order) backward of those products may run fused again.  On the first two
    # rows (rows are independent; all 5: 15 s of CPU for grid, 0.6 s on 2, session 52)
    assert torch.autograd.gradgradcheck(f, tuple(t.detach()[:2].requires_grad_() for t in (x1, x2, w1)) + (wo,))


@contextlib.contextmanager
def _count_fwd_products():
    """Count the Gaunt products the autograd.Function runs (geoops._ops.gaunt.fwd_call)."""
    from geoops._ops import gaunt as og
    calls = []
    real = og.fwd_call
    og.fwd_call = lambda *a: calls.append(1) or real(*a)
    try:
        yield calls
    finally:
        og.fwd_call = real


def _forces_loop(prod, pos, x2, ws, c):
    """Interatomic-potential training step: x1 depends on positions, E = sum(c * out + out^2) with out = x1 (x)
    x2, forces = dE/dx1 with create_graph, loss = |forces|^2 backpropagated to x2, the weights and the positions
    (double backward; the out^2 term makes the forces depend on x1, so the positions get a gradient)."""
    x1 = torch.sin(pos)
    out = prod(x1, x2, *ws)
    E = (out * c + out ** 2).sum()
    f, = torch.autograd.grad(E, x1, create_graph=True)
    (f ** 2).sum().backward()
    return [f.detach()] + [t.grad for t in (pos, x2, *ws)]


@pytest.mark.parametrize("route", ["auto", "grid", "direct", "fft", "grid_gemm"])
@pytest.mark.parametrize("Ls,Lo", [((2, 2), 2), ((1, 3), 2), ((3, 2), 4)])
def test_double_backward_forces_equal_oracle(route, Ls, Lo):
    """Session 24: the double backward of a forces loop (autograd.grad(E, x1, create_graph=True), then
    (forces ** 2).sum().backward() to x2, weight1, weight2, weight_out and the positions) equals the same loop
    through the fp64 oracle (an einsum with G from e3nn's harmonics) to 1e-12 of each gradient's scale."""
    L1, L2 = Ls
    rows = 6
    res = []
    for fn in ("ours", "oracle"):
        gen = torch.Generator().manual_seed(17)
        r = lambda *sh: torch.randn(*sh, generator=gen, dtype=F64)  # noqa: E731
        pos, x2 = r(rows, (L1 + 1) ** 2).requires_grad_(), r(rows, (L2 + 1) ** 2).requires_grad_()
        ws = [r(rows, L1 + 1).requires_grad_(), r(1, L2 + 1).requires_grad_(), r(Lo + 1).requires_grad_()]
        c = r(rows, (Lo + 1) ** 2)
        if fn == "ours":
            prod = lambda a, b, w1, w2, wo: ga.gaunt_tensor_product(a, b, Lo, weight1=w1, weight2=w2,  # noqa: E731
                                                                    weight_out=wo, route=route)
        else:
            prod = lambda a, b, w1, w2, wo: oracle(a, b, Lo, w1, w2, wo)  # noqa: E731
        res.append(_forces_loop(prod, pos, x2, ws, c))
    for a, b in zip(*res):
        assert a.shape == b.shape and (a - b).abs().max() <= 1e-12 * b.abs().max()


@pytest.mark.parametrize("route", ["direct", "grid"])
def test_create_graph_backward_skips_unreached_inputs(route):
    """Session 24: under autograd.grad(E, x1, create_graph=True) GauntFn's needs_input_grad still marks x2 and
    weight_out (they require grad), which cost a Gaunt product each (weight_out's the raw product); the backward
    now asks the engine which inputs the graph task reaches: the forces step runs 2 products (forward + grad x1),
    not 4, and every gradient is unchanged; a plain backward() still forms all of them."""
    gen = torch.Generator().manual_seed(3)
    r = lambda *sh: torch.randn(*sh, generator=gen, dtype=F64)  # noqa: E731
    x1, x2 = r(7, 9).requires_grad_(), r(7, 16).requires_grad_()
    wo = r(4).requires_grad_()
    c = r(7, 16)
    with _count_fwd_products() as calls:
        E = (ga.gaunt_tensor_product(x1, x2, 3, weight_out=wo, route=route) * c).sum()
        f, = torch.autograd.grad(E, x1, create_graph=True)
    assert len(calls) == 2
    ref = [t.detach().clone().requires_grad_() for t in (x1, x2, wo)]
    E_ref = (oracle(ref[0], ref[1], 3, wo=ref[2]) * c).sum()
    f_ref, = torch.autograd.grad(E_ref, ref[0], create_graph=True)
    assert (f - f_ref).abs().max() <= 1e-12 * f_ref.abs().max()
    (f ** 2).sum().backward()
    (f_ref ** 2).sum().backward()
    for a, b in ((x2, ref[1]), (wo, ref[2])):
        assert (a.grad - b.grad).abs().max() <= 1e-12 * b.grad.abs().max()
    # non-leaf inputs, only x2's gradient asked for: grad x1 and the raw product are skipped too
    a1, a2 = x1 * 1, x2 * 1
    with _count_fwd_products() as calls:
        E = (ga.gaunt_tensor_product(a1, a2, 3, weight_out=wo, route=route) * c).sum()
        g2, = torch.autograd.grad(E, a2, create_graph=True)
    assert len(calls) == 2
    with _count_fwd_products() as calls, _unfused_bwd():
        E = (ga.gaunt_tensor_product(a1, a2, 3, weight_out=wo, route=route) * c).sum()
        E.backward()
    assert len(calls) == 4  # forward, grad x1, grad x2, raw product for weight_out


@pytest.mark.parametrize("route", ["grid", "direct", "fft"])
@pytest.mark.parametrize("nu", [2, 3])
def test_row_count_bit_identity(route, nu):
    """The family page's "bit-identical across ... row counts": a row's output and gradients (fused backward, per-row
    weight) do not depend on how many rows the call holds (70, 5, 1: full and partial tiles).  Not "grid_gemm":
    its BLAS GEMM on a partial tile gives ulp-level different bits (~1e-7 in fp32; session 24 audit, documented)."""
    X1, X2, W = _rand(70, 16, seed=90).float(), _rand(70, 9, seed=91).float(), _rand(70, 4, seed=92).float()

    def run(sl):
        a, b, w = (t[sl].clone().requires_grad_() for t in (X1, X2, W))
        y = ga.gaunt_product([a, b] + [a] * (nu - 2), weights=[w, None] + [None] * (nu - 2), route=route)
        return [y.detach(), *torch.autograd.grad(y.pow(2).sum(), [a, b, w])]

    full = run(slice(0, 70))
    for lo, hi in ((3, 8), (5, 6)):
        for f, p in zip(full, run(slice(lo, hi))):
            assert torch.equal(f[lo:hi], p)


@pytest.mark.parametrize("route,cases", [("grid", (((3, 4), 4, torch.float32), ((4, 2), 5, torch.float32))),
                                         ("direct", (((3, 2), 3, torch.float32), ((1, 2), 3, F64)))])
def test_fused_grid_backward_thread_count_bit_identity(route, cases):
    """Like the forward, the fused backward's gradients are bit-identical for 1 and 2 threads (tiles of 16 / 8
    rows are independent; shared weights' sums are the same torch reductions as before)."""
    (La, Loa, da), (Lb, Lob, db) = cases
    grads = _bwd_case(La, Loa, da, "shared", rows=333, seed=5, route=route)
    grads_row = _bwd_case(Lb, Lob, db, "row", rows=333, seed=6, route=route)
    with num_threads(1):
        one = grads() + grads_row()
    with num_threads(2):
        two = grads() + grads_row()
    for a, b in zip(one, two):
        assert torch.equal(a, b)


@pytest.mark.parametrize("route,L", [("grid", 5), ("direct", 3)])
def test_fused_grid_backward_fp32_error_rule(route, L):
    """fp32 gradients through the fused kernel: error vs the fp64 oracle <= 2x the fp32 eager reference's + floor."""
    x1, x2, w, g = _rand(64, (L + 1) ** 2, seed=94), _rand(64, (L + 1) ** 2, seed=95), _rand(L + 1, seed=96), \
        _rand(64, (L + 1) ** 2, seed=97)
    exact = [t.clone().requires_grad_() for t in (x1, x2, w)]
    oracle(*exact[:2], L, wo=exact[2]).backward(g)
    ref32 = [t.float().requires_grad_() for t in (x1, x2, w)]
    R.gaunt_tensor_product(*ref32[:2], L, weight_out=ref32[2]).backward(g.float())
    ours = [t.float().requires_grad_() for t in (x1, x2, w)]
    with _count_fused_bwd() as calls:
        ga.gaunt_tensor_product(*ours[:2], L, weight_out=ours[2], route=route).backward(g.float())
    assert calls
    for o, r, e in zip(ours, ref32, exact):
        err = (o.grad.double() - e.grad).abs().max()
        ref_err = (r.grad.double() - e.grad).abs().max()
        assert err <= 2 * ref_err + 1e-6 * e.grad.abs().max(), (err, ref_err)


def test_fused_grid_backward_opcheck():
    xs = [_rand(5, 9, seed=98), _rand(5, 4, seed=99)]
    ws = [_rand(5, 3, seed=100), None]
    g, wo = _rand(5, 16, seed=101), _rand(1, 4, seed=102)
    torch.library.opcheck(torch.ops.geoops.gaunt_bwd.default, (xs, ws, g, wo, [2, 1, 1], 3, "grid"))
    torch.library.opcheck(torch.ops.geoops.gaunt_bwd.default, (xs, ws, g, None, [0, 1, 0], 3, "grid"))
    for need in ([2, 1, 1], [1, 0, 0], [0, 2, 1]):
        torch.library.opcheck(torch.ops.geoops.gaunt_bwd.default, (xs, ws, g, wo, need, 3, "direct"))


# ---------------------------------------------------------------- weight gradients in the fused kernels (session 23)
def _s22_fused_backward(ctx, xs, ws, wout, g, need):
    """Session 22's store step, kept here as the yardstick: the kernel returns the unweighted h_k (and the raw
    product), torch weights grad x_k and forms the per-degree weight-gradient sums."""
    from geoops._ops import gaunt as og
    nu, lmax_out = ctx.nu, ctx.lmax_out
    mode = [0 if not (need[i] or need[nu + i]) else (2 if ws[i] is not None and not need[nu + i] else 1)
            for i in range(nu)]
    want_raw = wout is not None and need[2 * nu]
    outs = iter(og.bwd_call(xs, ws, g, wout, mode + [int(want_raw)], lmax_out, ctx.route))
    gx, gw = [None] * nu, [None] * nu
    for i in range(nu):
        if not mode[i]:
            continue
        h = next(outs)
        if mode[i] == 2 or ws[i] is None:
            gx[i] = h
            continue
        L = R.lmax_of(xs[i].shape[1])
        if need[i]:
            gx[i] = h * ws[i].index_select(1, ga._deg(L, h.device))
        gw[i] = ga._reduce_rows(ga._segsum(h * xs[i], L), ws[i])
    gwo = ga._reduce_rows(ga._segsum(g * next(outs), lmax_out), wout) if want_raw else None
    return (None, None, None, *[gx[i] if need[i] else None for i in range(nu)], *gw, gwo)


@contextlib.contextmanager
def _s22_store_step():
    real = ga.GauntFn.__dict__["_fused_backward"]
    ga.GauntFn._fused_backward = staticmethod(_s22_fused_backward)
    try:
        yield
    finally:
        ga.GauntFn._fused_backward = real


_WEIGHT_CASES = [((2, 3), 4, "row"), ((4, 4), 4, "shared"), ((3, 1), 2, "mixed"), ((1, 2), 3, None),
                 ((2, 2), 3, "wout"), ((0, 1), 1, "row"), ((1, 2), 0, "shared")]


@pytest.mark.parametrize("route", ["grid", "direct"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("Ls,Lo,weights", _WEIGHT_CASES + [((3, 2, 1), 4, "row"), ((2, 1, 2), 3, "shared"),
                                                           ((2,), 2, "wout")])
def test_fused_weight_gradients_in_kernel_equal_torch_passes(route, dtype, Ls, Lo, weights):
    """Session 23: the fused kernels' store step writes grad x_k already times w_k and the per-row per-degree sums
    sum_m h_k x_k (sum_m g raw for weight_out); torch only reduces a broadcast weight over rows.  Same products,
    same roundings (no FMA contraction) and the same ascending order as session 22's torch passes
    (h * w[deg], (h * x).index_add over degrees): bit for bit, both routes (nu != 2 'direct' runs as grid),
    fp32 and fp64, every weight combination.  Session 24: the binary direct route with a learnable weight_out
    forms weight_out's sums inside grad x1's pass, segmented by g's degree (no raw product): grad x1 and
    grad weight_out then follow another summation order, equal to round-off (1e-14 / 2e-6 of each gradient's
    largest magnitude in fp64 / fp32, as the session-22 direct backward); the rest stays bit for bit."""
    grads = _bwd_case(Ls, Lo, dtype, weights, rows=45, seed=7, route=route)
    with _count_fused_bwd() as calls:
        new = grads()
    assert calls
    with _s22_store_step(), _count_fused_bwd() as calls:
        old = grads()
    assert calls
    assert len(new) == len(old)
    segmented = route == "direct" and len(Ls) == 2 and weights in ("row", "shared", "wout")
    tol = 1e-14 if dtype == F64 else 2e-6
    for a, b in zip(new, old):
        assert a.shape == b.shape and a.dtype == b.dtype
        if segmented:
            assert (a - b).abs().max() <= tol * b.abs().max()
        else:
            assert torch.equal(a, b)


# ---------------------------------------------------------------- weight_out's gradient without the raw product (s24)
@pytest.mark.parametrize("Ls,Lo", [((2, 2), 2), ((1, 3), 3), ((3, 1), 2), ((0, 2), 2), ((2, 1), 0), ((1, 1), 4),
                                   ((4, 3), 5)])
@pytest.mark.parametrize("wants", ["x1", "x2", "both"])
@pytest.mark.parametrize("wrows", [1, 21])
def test_direct_wout_gradient_segmented_pass(Ls, Lo, wants, wrows):
    """Session 24: the direct route's fused backward forms sum_m g raw (weight_out's gradient) inside grad x1's
    pass (grad x2's when x1 needs none), the nonzeros of each output grouped by g's degree l: grad x1 = w1 *
    sum_l wout_l seg(l), sum_m g_lm raw_lm = sum_i (w1 x1)_i seg(i, l).  No raw product is formed (need code of
    the output = 4 only).  fp64: every gradient within 1e-13 of the oracle's scale (degrees of g no nonzero
    reaches: Lo > L1 + L2; a degree-0 factor; lmax_out 0); fp32: <= 2x the fp32 eager reference's error + floor."""
    from geoops._ops import gaunt as og
    L1, L2 = Ls
    rows = 21
    for dtype in (F64, torch.float32):
        gen = torch.Generator().manual_seed(31 + L1 + 7 * L2 + 13 * Lo)
        r = lambda *sh: torch.randn(*sh, generator=gen, dtype=F64)  # noqa: E731
        x1, x2, up = r(rows, (L1 + 1) ** 2), r(rows, (L2 + 1) ** 2), r(rows, (Lo + 1) ** 2)
        w1, w2, wo = r(wrows, L1 + 1), r(rows, L2 + 1), r(wrows, Lo + 1)
        need = [2 if wants in ("x1", "both") else 0, 2 if wants in ("x2", "both") else 0, 4]
        got = og.bwd_call([x1.to(dtype), x2.to(dtype)], [w1.to(dtype), w2.to(dtype)], up.to(dtype), wo.to(dtype),
                          need, Lo, "direct")
        leaves = [t.clone().requires_grad_() for t in (x1, x2, wo)]
        (oracle(leaves[0], leaves[1], Lo, w1, w2, leaves[2].expand(rows, -1)) * up).sum().backward()
        exact = [leaves[0].grad, leaves[1].grad]
        # per-row sums of weight_out's gradient (before the sum over rows)
        raw = oracle(x1, x2, Lo, w1, w2)
        exact_wo = torch.zeros(rows, Lo + 1, dtype=F64).index_add_(1, R.degree_of_index(Lo), up * raw)
        ref32 = None
        if dtype == torch.float32:
            raw32 = R.gaunt_tensor_product((x1 * w1[:, R.degree_of_index(L1)]).float(),
                                           (x2 * w2[:, R.degree_of_index(L2)]).float(), Lo)
            ref32 = torch.zeros(rows, Lo + 1).index_add_(1, R.degree_of_index(Lo), up.float() * raw32)
        outs = iter(got)
        for k in (0, 1):
            if need[k]:
                a = next(outs).double()
                assert (a - exact[k]).abs().max() <= (1e-13 if dtype == F64 else 2e-6) * exact[k].abs().max()
        a = next(outs).double()
        assert a.shape == (rows, Lo + 1)
        scale = exact_wo.abs().max()
        if dtype == F64:
            assert (a - exact_wo).abs().max() <= 1e-13 * scale
        else:
            ref_err = (ref32.double() - exact_wo).abs().max()
            assert (a - exact_wo).abs().max() <= 2 * ref_err + 1e-6 * scale


@pytest.mark.parametrize("route", ["grid", "direct"])
@pytest.mark.parametrize("weights", ["row", "shared", "mixed", None, "wout"])
def test_fused_weight_gradients_gradcheck(route, weights):
    """fp64 gradcheck through the fused kernel (weights folded into its store step) for every weight combination;
    binary, and for grid also nu = 3."""
    cases = [((2, 1), 3)] + ([((1, 2, 1), 3)] if route == "grid" else [])
    for Ls, Lo in cases:
        g = torch.Generator().manual_seed(11)
        r = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
        rows = 5
        xs = [r(rows, (L + 1) ** 2).requires_grad_() for L in Ls]
        wr = {"row": rows, "shared": 1, "mixed": rows}.get(weights)
        ws = [None if wr is None else r(wr, L + 1).requires_grad_() for L in Ls]
        if weights == "mixed":  # per-row, a 1-d shared one, one without a gradient
            ws = [ws[0], r(Ls[1] + 1).requires_grad_()] + [r(rows, L + 1) for L in Ls[2:]]
        wo = r(rows, Lo + 1).requires_grad_() if weights in ("row", "wout") else (
            r(Lo + 1).requires_grad_() if weights == "shared" else None)
        every = [*xs, *ws, wo]
        slots = [k for k, t in enumerate(every) if t is not None and t.requires_grad]

        def f(*leaves):
            args = list(every)
            for k, t in zip(slots, leaves):
                args[k] = t
            nu = len(Ls)
            return ga.gaunt_product(args[:nu], Lo, weights=args[nu:2 * nu], weight_out=args[2 * nu], route=route)
        with _count_fused_bwd() as calls:
            assert torch.autograd.gradcheck(f, tuple(every[k] for k in slots)), (Ls, weights)
        assert calls


@pytest.mark.parametrize("route,dtype", [("grid", torch.float32), ("grid", F64), ("direct", torch.float32),
                                         ("direct", F64)])
def test_fused_weight_gradients_thread_bit_identity(route, dtype):
    """The weight gradients' per-row sums are formed per row in a fixed order: the same bits for 1 and 2 threads
    (333 rows: a partial tile), per-row, shared and weight_out-only weights."""
    runs = [_bwd_case((3, 2), 3, dtype, w, rows=333, seed=13, route=route) for w in ("row", "shared", "wout")]
    with num_threads(1):
        one = [t for f in runs for t in f()]
    with num_threads(2):
        two = [t for f in runs for t in f()]
    for a, b in zip(one, two):
        assert torch.equal(a, b)


@pytest.mark.parametrize("route", ["grid", "direct"])
def test_fused_weight_gradients_opcheck(route):
    """opcheck of geoops::gaunt_bwd with the sums codes (+ 4), and the sums' shapes and values against torch."""
    from geoops._ops import gaunt as og
    xs = [_rand(5, 9, seed=130), _rand(5, 4, seed=131)]
    ws = [_rand(5, 3, seed=132), _rand(1, 2, seed=133)]
    g, wo = _rand(5, 16, seed=134), _rand(5, 4, seed=135)
    for need in ([6, 4, 4], [4, 0, 0], [2, 6, 0], [0, 0, 4], [1, 4, 5]):
        torch.library.opcheck(torch.ops.geoops.gaunt_bwd.default, (xs, ws, g, wo, need, 3, route))
    h1, s1, s2, raw, so = og.bwd_call(xs, ws, g, wo, [5, 4, 5], 3, route)
    h2, = og.bwd_call(xs, ws, g, wo, [0, 1, 0], 3, route)
    assert s1.shape == (5, 3) and s2.shape == (5, 2) and so.shape == (5, 4)
    assert torch.equal(s1, ga._segsum(h1 * xs[0], 2)) and torch.equal(s2, ga._segsum(h2 * xs[1], 1))
    assert torch.equal(so, ga._segsum(g * raw, 3))


# ---------------------------------------------------------------- fused direct backward (session 22)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("Ls,Lo,weights", [((2, 3), 4, "row"), ((0, 1), 1, None), ((3, 3), 3, "shared"),
                                           ((3, 1), 2, "mixed"), ((1, 2), 0, None), ((2, 2), 5, "row"),
                                           ((0, 0), 0, "shared")])
def test_fused_direct_backward_equals_forward_product_backward(dtype, Ls, Lo, weights):
    """The direct route's first-order backward runs the fused kernel (x1, x2, wout * g in lanes once, each
    gradient coefficient summed over its nonzeros in four register partial sums).  Its summation order is not
    the forward products', so the gradients equal the old backward's to round-off, not bit for bit: within
    1e-14 (fp64) / 2e-6 (fp32) of each gradient's largest magnitude (measured: <= 3.4e-16 / 5.4e-7)."""
    fused, old = _fused_and_old(_bwd_case(Ls, Lo, dtype, weights, route="direct"), "direct")
    tol = 1e-14 if dtype == F64 else 2e-6
    for a, b in zip(fused, old):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert (a - b).abs().max() <= tol * b.abs().max().clamp_min(1e-30), ((a - b).abs().max(), b.abs().max())


def test_fused_direct_backward_not_for_many_body():
    """'direct' is binary: a nu-ary product asked for it runs (and backpropagates through) the grid route's
    fused kernel; the direct kernel never sees nu != 2."""
    from geoops._ops import gaunt as og
    assert og.has_fused_bwd(torch.device("cpu"), "direct", 2)
    assert not og.has_fused_bwd(torch.device("cpu"), "direct", 3)
    seen = []
    real = og.Cpp.__dict__["gaunt_bwd"]
    og.Cpp.gaunt_bwd = staticmethod(lambda *a: seen.append(a[-1]) or real.__func__(*a))
    try:
        _bwd_case((2, 1, 2), 3, F64, "row", route="direct")()
    finally:
        og.Cpp.gaunt_bwd = real
    assert seen == ["grid"]


@pytest.mark.parametrize("Ls,Lo", [((1, 1), 1), ((2, 2), 2), ((3, 3), 3), ((2, 3), 4), ((3, 1), 2), ((0, 2), 2)])
def test_direct_forward_per_output_sums(Ls, Lo):
    """The direct forward runs the backward's per-output loop (session 22: each out_k summed over its nonzeros
    in four register partial sums): fp32 error vs the fp64 oracle <= 2x the fp32 eager reference's + floor;
    the same bits for 1 and 2 threads (fp32 and fp64, row weights, 333 rows: a partial tile); and, without
    weight_out, the same bits as the fused backward's raw product (one code path)."""
    from geoops._ops import gaunt as og
    n = 333
    x1, x2 = _rand(n, (Ls[0] + 1) ** 2, seed=120), _rand(n, (Ls[1] + 1) ** 2, seed=121)
    w1, w2, wo = _rand(n, Ls[0] + 1, seed=122), _rand(n, Ls[1] + 1, seed=123), _rand(n, Lo + 1, seed=124)
    exact = oracle(x1, x2, Lo, w1, w2, wo)
    f32 = [t.float() for t in (x1, x2, w1, w2, wo)]
    ref32 = R.gaunt_tensor_product(f32[0], f32[1], Lo, weight1=f32[2], weight2=f32[3], weight_out=f32[4])
    run = lambda a, b, c, d, e: ga.gaunt_tensor_product(a, b, Lo, weight1=c, weight2=d, weight_out=e,  # noqa: E731
                                                       route="direct")
    with num_threads(1):
        one = [run(*f32), run(x1, x2, w1, w2, wo)]
    with num_threads(2):
        two = [run(*f32), run(x1, x2, w1, w2, wo)]
    for a, b in zip(one, two):
        assert torch.equal(a, b)
    err = (one[0].double() - exact).abs().max()
    ref_err = (ref32.double() - exact).abs().max()
    assert err <= 2 * ref_err + 1e-6 * exact.abs().max(), (err, ref_err)
    assert (one[1] - exact).abs().max() <= 1e-13 * exact.abs().max()
    for xs, ws in (([f32[0], f32[1]], [f32[2], f32[3]]), ([x1, x2], [None, w2])):
        g = torch.zeros(n, (Lo + 1) ** 2, dtype=xs[0].dtype)
        raw, = og.Cpp.gaunt_bwd(xs, ws, g, None, [0, 0, 1], Lo, "direct")
        fwd = ga.gaunt_tensor_product(xs[0], xs[1], Lo, weight1=ws[0], weight2=ws[1], route="direct")
        assert torch.equal(raw, fwd)


# ---------------------------------------------------------------- errors
def test_debug_checks_name_the_non_finite_argument():
    """GEOOPS_CHECK=1 / geoops.set_checks(True) (README: "non-finite inputs") did nothing in gaunt before session 24.
    On: ValueError naming the argument, before any kernel; off: NaN flows through as before."""
    x, w = _rand(4, 9), _rand(3)
    bad = x.clone()
    bad[1, 4] = float("inf")
    wbad = torch.tensor([1.0, float("nan"), 1.0], dtype=F64)
    calls = {
        "x1": lambda: ga.gaunt_tensor_product(bad, x),
        "x2": lambda: ga.gaunt_tensor_product(x, bad, route="direct"),
        "weight1": lambda: ga.gaunt_tensor_product(x, x, weight1=wbad),
        "weight_out": lambda: ga.gaunt_tensor_product(x, x, 1, weight_out=wbad[:2]),
        r"xs\[2\]": lambda: ga.gaunt_product([x, x, bad]),
        r"weights\[1\]": lambda: ga.gaunt_product([x, x], weights=[w, wbad]),
        "x": lambda: ga.gaunt_power(bad, 2),
    }
    prev = geoops._backend.checks_enabled()
    try:
        geoops.set_checks(False)
        for call in calls.values():
            call()
        geoops.set_checks(True)
        for name, call in calls.items():
            with pytest.raises(ValueError, match=rf"{name} has non-finite values.*GEOOPS_CHECK"):
                call()
        ga.gaunt_tensor_product(x, x, weight1=w)  # finite: no error
    finally:
        geoops.set_checks(prev)


def test_errors_name_the_argument():
    x = _rand(4, 9)
    with pytest.raises(ValueError, match="x1 must have a last dimension"):
        ga.gaunt_tensor_product(_rand(4, 8), x)
    with pytest.raises(ValueError, match="x2 must have a last dimension"):
        ga.gaunt_tensor_product(x, _rand(4, 5))
    with pytest.raises(TypeError, match="x1 must be float16, bfloat16, float32 or float64, got torch.int64"):
        ga.gaunt_tensor_product(torch.ones(4, 9, dtype=torch.int64), x)
    with pytest.raises(TypeError, match="x2 must be a torch.Tensor"):
        ga.gaunt_tensor_product(x, [1.0])
    with pytest.raises(ValueError, match="weight1 must have last dimension L\\+1 = 3"):
        ga.gaunt_tensor_product(x, x, weight1=_rand(4))
    with pytest.raises(ValueError, match="weight_out must have last dimension L\\+1 = 5"):
        ga.gaunt_tensor_product(x, x, weight_out=_rand(3))
    with pytest.raises(ValueError, match=r"weights\[0\] must have last dimension"):  # gaunt_product's argument
        ga.gaunt_product([x, x], weights=[_rand(4), None])                       # is weights (said weight1)
    with pytest.raises(ValueError, match="route must be one of"):
        ga.gaunt_tensor_product(x, x, route="fast")
    with pytest.raises(ValueError, match="lmax_out must be a non-negative int"):
        ga.gaunt_tensor_product(x, x, -1)
    with pytest.raises(TypeError, match="lmax_out must be a non-negative int"):
        ga.gaunt_tensor_product(x, x, 2.5)
    with pytest.raises(ValueError, match="leading dimensions do not broadcast"):
        ga.gaunt_tensor_product(_rand(3, 9), _rand(4, 9))
    with pytest.raises(ValueError, match="x1 must have at least one dimension"):
        ga.gaunt_tensor_product(torch.tensor(1.0, dtype=F64), x)
    with pytest.raises(ValueError, match="nu must be a positive int"):
        ga.gaunt_power(x, 0)
    with pytest.raises(ValueError, match=r"xs\[1\] must have a last dimension"):
        ga.gaunt_product([x, _rand(4, 3)])
    with pytest.raises(ValueError, match="xs must hold at least one tensor"):
        ga.gaunt_product([])
    with pytest.raises(ValueError, match="weights must have one entry per factor"):
        ga.gaunt_product([x, x], weights=[None])


def test_errors_name_the_argument_types_and_devices():
    x = _rand(4, 9)
    with pytest.raises(TypeError, match="weight2 must be a torch.Tensor or None, got list"):
        ga.gaunt_tensor_product(x, x, weight2=[1.0, 2.0, 3.0])
    with pytest.raises(TypeError, match="weight_out must be float16, bfloat16, float32 or float64, got torch.int64"):
        ga.gaunt_tensor_product(x, x, weight_out=torch.ones(5, dtype=torch.int64))
    with pytest.raises(ValueError, match="x2 is on meta but x1 is on cpu; all tensors must be on one device"):
        ga.gaunt_tensor_product(x, x.to("meta"))
    with pytest.raises(ValueError, match=r"weights\[1\] is on meta but .* is on cpu; all tensors must be on one"):
        ga.gaunt_product([x, x], weights=[None, _rand(3).to("meta")])


# ---------------------------------------------------------------- op plumbing
@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("route", ROUTES)
def test_opcheck(route, backend):
    xs = [_rand(5, 9, seed=40), _rand(5, 4, seed=41)]
    ws = [_rand(5, 3, seed=42), None]
    wo = _rand(1, 4, seed=43)
    with geoops.use_backend(backend):
        torch.library.opcheck(torch.ops.geoops.gaunt_fwd.default, (xs, ws, wo, 3, route))
        torch.library.opcheck(torch.ops.geoops.gaunt_fwd.default, ([_rand(4, 16, seed=44)] * 3, [None] * 3, None, 4,
                                                                   "grid" if route == "direct" else route))


def test_custom_op_path_equals_fast_path():
    # under a dispatch-visible mode the public function goes through torch.ops.geoops.gaunt_fwd
    x1, x2 = _rand(6, 9, seed=45), _rand(6, 9, seed=46)
    seen = []

    class Record(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    fast = ga.gaunt_tensor_product(x1, x2, 3, route="grid")
    with Record():
        slow = ga.gaunt_tensor_product(x1, x2, 3, route="grid")
    assert torch.ops.geoops.gaunt_fwd.default in seen
    torch.testing.assert_close(fast, slow, atol=0, rtol=0)


def test_reference_backend():
    x1, x2 = _rand(6, 9, seed=47), _rand(6, 16, seed=48)
    with geoops.use_backend("reference"):
        out = ga.gaunt_tensor_product(x1, x2, 4)
    torch.testing.assert_close(out, oracle(x1, x2, 4), atol=1e-12, rtol=0)


def test_auto_route_from_table():
    assert ga.choose_route([4, 4], 4, 2048, torch.device("cpu")) in ("grid", "grid_gemm", "direct", "fft")
    assert ga.choose_route([4, 4, 4], 4, 2048, torch.device("cpu")) in ("grid", "grid_gemm", "fft")


def test_auto_route_table_per_cpu_class():
    """'auto' reads the table measured on this machine's CPU class (session 21: the Intel Xeon's table picked the
    dense-GEMM route for nu = 3 at lmax 1-2, 1.4-1.8x slower than grid on the AMD EPYC), a table of the same
    vendor for an unmeasured ISA, and the default (Intel) table for an unknown machine."""
    from geoops import _backend, _gaunt_routes
    cpu = torch.device("cpu")
    assert set(_gaunt_routes.TABLES) >= {"x86_64-intel-avx512", "x86_64-amd-avx512"}
    assert _gaunt_routes.DEFAULT_CLASS in _gaunt_routes.TABLES
    for cls, t in _gaunt_routes.TABLES.items():
        assert cls in _gaunt_routes.MEASURED
        assert ga.route_table(2, cpu, cls) == t["binary"] and ga.route_table(3, cpu, cls) == t["many"]
        assert set(t["binary"].values()) <= {"grid", "grid_gemm", "direct", "fft"}
        assert set(t["many"].values()) <= {"grid", "grid_gemm", "fft"}
    amd, intel = _gaunt_routes.TABLES["x86_64-amd-avx512"], _gaunt_routes.TABLES["x86_64-intel-avx512"]
    assert amd["many"][1] == amd["many"][2] == "grid" and intel["many"][1] == "grid_gemm"
    assert ga.route_table(3, cpu, "x86_64-amd") == amd["many"]  # an unmeasured ISA: the vendor's first table
    assert ga.route_table(3, cpu, "x86_64-intel-avx2") == intel["many"]
    assert ga.route_table(3, cpu, "aarch64") == _gaunt_routes.TABLES[_gaunt_routes.DEFAULT_CLASS]["many"]
    assert ga.route_table(2, torch.device("meta")) == {}
    cls = _backend.cpu_class()
    assert cls.split("-")[0] and ga.route_table(2, cpu) == ga.route_table(2, cpu, cls)
    if cls in _gaunt_routes.TABLES:
        L = max(_gaunt_routes.TABLES[cls]["many"])
        assert ga.choose_route([L] * 3, L, 2048, cpu) == _gaunt_routes.TABLES[cls]["many"][L]


def _fake_route_tables(monkeypatch, fwd_bwd=True):
    """This machine's class gets tables whose forward and forward+backward rankings differ at every lmax."""
    from geoops import _backend, _gaunt_routes
    t = {"binary": {L: "direct" for L in range(1, 9)}, "many": {L: "grid_gemm" for L in range(1, 9)}}
    if fwd_bwd:
        t["binary_fwd_bwd"] = {L: "fft" for L in range(1, 9)}
        t["many_fwd_bwd"] = {L: "fft" for L in range(1, 9)}
    monkeypatch.setitem(_gaunt_routes.TABLES, _backend.cpu_class(), t)


def _spy_routes(monkeypatch):
    ran = []
    core = ga._core

    def spy(xs, ws, wout, lmax_out, route):
        ran.append(route)
        return core(xs, ws, wout, lmax_out, route)
    monkeypatch.setattr(ga, "_core", spy)
    return ran


def test_auto_route_for_training_follows_grad_need(monkeypatch):
    """Session 26: 'auto' picks from the forward + backward ranking when the call will need a backward (grad mode
    on and an input or weight requires grad), else from the forward ranking (session 25: at lmax 5 on the AVX2
    EPYC the forward table's fft cost 1.2x grid's time forward + backward)."""
    _fake_route_tables(monkeypatch)
    ran = _spy_routes(monkeypatch)
    x1, x2, w = _rand(4, 9, seed=90), _rand(4, 16, seed=91), _rand(4, seed=92)
    cases = [
        ("plain", lambda: ga.gaunt_tensor_product(x1, x2, 3), "direct"),
        ("x1 requires grad", lambda: ga.gaunt_tensor_product(x1.clone().requires_grad_(), x2, 3), "fft"),
        ("x2 requires grad", lambda: ga.gaunt_tensor_product(x1, x2.clone().requires_grad_(), 3), "fft"),
        ("weight_out requires grad",
         lambda: ga.gaunt_tensor_product(x1, x2, 3, weight_out=w.clone().requires_grad_()), "fft"),
        ("weight1 requires grad",
         lambda: ga.gaunt_tensor_product(x1, x2, 3, weight1=_rand(3, seed=93).requires_grad_()), "fft"),
        ("non-leaf input", lambda: ga.gaunt_tensor_product(x1.clone().requires_grad_() * 2, x2, 3), "fft"),
        ("nu = 3, no grad", lambda: ga.gaunt_power(x1, 3, 3), "grid_gemm"),
        ("nu = 3, grad", lambda: ga.gaunt_power(x1.clone().requires_grad_(), 3, 3), "fft"),
        ("gaunt_product, grad on one weight",
         lambda: ga.gaunt_product([x1, x2, x1], 3, weights=[None, None, _rand(3, seed=94).requires_grad_()]),
         "fft"),
    ]
    for name, call, want in cases:
        ran.clear()
        out = call()
        assert ran == [want], name
        if want == "fft":
            assert out.requires_grad, name
    a = x1.clone().requires_grad_()
    for ctx in (torch.no_grad, torch.inference_mode):
        with ctx():  # the ranking follows requires_grad, not the grad mode: the training route, the same bits
            ran.clear()
            ga.gaunt_tensor_product(a, x2, 3)
            ga.gaunt_power(a, 3, 3)
            ga.gaunt_tensor_product(x1, x2, 3)
            assert ran == ["fft", "fft", "direct"], ctx.__name__
    with torch.enable_grad():
        ran.clear()
        ga.gaunt_tensor_product(a, x2, 3).sum().backward()
        assert ran[0] == "fft" and set(ran) == {"fft"}  # the backward's products run the forward's route
    assert ga.needs_backward(a, None) and not ga.needs_backward(x1, None, x2)
    with torch.no_grad():
        assert ga.needs_backward(a) and not ga.needs_backward(x1)


def test_auto_route_without_fwd_bwd_ranking_falls_back(monkeypatch):
    """A class measured before session 26 (forward ranking only) uses its forward ranking for training calls."""
    from geoops import _gaunt_routes
    cpu = torch.device("cpu")
    for cls, t in _gaunt_routes.TABLES.items():
        for nu, kind in ((2, "binary"), (3, "many")):
            assert ga.route_table(nu, cpu, cls) == t[kind]
            assert ga.route_table(nu, cpu, cls, backward=True) == t.get(kind + "_fwd_bwd", t[kind])
            if kind + "_fwd_bwd" in t:
                assert cls in _gaunt_routes.MEASURED_FWD_BWD
                assert set(t[kind + "_fwd_bwd"].values()) <= {"grid", "grid_gemm", "direct", "fft"}
    # at least one class is measured without it (the fallback is exercised by the shipped tables too)
    assert any("binary_fwd_bwd" not in t for t in _gaunt_routes.TABLES.values())
    _fake_route_tables(monkeypatch, fwd_bwd=False)
    ran = _spy_routes(monkeypatch)
    x1, x2 = _rand(4, 9, seed=95).requires_grad_(), _rand(4, 9, seed=96)
    ga.gaunt_tensor_product(x1, x2, 2)
    ga.gaunt_power(x1, 3, 2)
    assert ran == ["direct", "grid_gemm"]
    assert ga.choose_route([2, 2], 2, 4, cpu, backward=True) == "direct"


def test_write_routes_writes_both_rankings_and_keeps_the_rest(tmp_path, monkeypatch):
    """bench.gaunt.write_routes (what --write-routes runs): this class's forward and forward + backward rankings
    merged into its tables (degrees and rankings a run did not measure kept), the other classes unchanged, and the
    file a module 'auto' can read back."""
    import importlib.util

    from bench import gaunt as bg
    from geoops import _backend, _gaunt_routes
    cls = _backend.cpu_class()
    monkeypatch.setitem(_gaunt_routes.TABLES, cls, {"binary": {1: "direct", 2: "grid"}, "many": {1: "grid"},
                                                    "many_fwd_bwd": {1: "fft", 2: "grid"}})

    def load(path):
        spec = importlib.util.spec_from_file_location("routes_under_test", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    out = tmp_path / "routes.py"
    bg.write_routes({2: "fft"}, {}, out, "test", {1: "grid", 3: "direct"}, {2: "fft"}, "test fwd+bwd")
    mod = load(out)
    for other, t in _gaunt_routes.TABLES.items():
        if other != cls:
            assert mod.TABLES[other] == t and mod.MEASURED[other] == _gaunt_routes.MEASURED[other]
    assert mod.TABLES[cls] == {"binary": {1: "direct", 2: "fft"}, "many": {1: "grid"},
                               "binary_fwd_bwd": {1: "grid", 3: "direct"}, "many_fwd_bwd": {1: "fft", 2: "fft"}}
    assert mod.MEASURED[cls].endswith("test") and mod.MEASURED_FWD_BWD[cls].endswith("test fwd+bwd")
    assert mod.DEFAULT_CLASS == _gaunt_routes.DEFAULT_CLASS
    # a forward-only run keeps the forward + backward rankings and their stamp
    monkeypatch.setattr(_gaunt_routes, "TABLES", mod.TABLES)
    monkeypatch.setattr(_gaunt_routes, "MEASURED_FWD_BWD", mod.MEASURED_FWD_BWD)
    bg.write_routes({1: "grid"}, {}, out, "fwd only")
    mod2 = load(out)
    assert mod2.TABLES[cls]["binary_fwd_bwd"] == {1: "grid", 3: "direct"}
    assert mod2.TABLES[cls]["binary"] == {1: "grid", 2: "fft"}
    assert mod2.MEASURED_FWD_BWD[cls] == mod.MEASURED_FWD_BWD[cls]


def test_auto_route_table_on_cuda(monkeypatch):
    """CUDA devices read the table of their compute capability (session 32: the H200's lmax 4 / 8 measurement;
    before, 'auto' ran grid on every GPU, 1.8x slower than direct / grid_gemm at lmax 4), else the nearest measured
    capability's, else none (grid); other non-CPU devices have none."""
    from geoops import _backend, _gaunt_routes
    cuda = torch.device("cuda", 0)
    sm90 = _gaunt_routes.TABLES["cuda-sm90"]
    assert "H200" in _gaunt_routes.MEASURED["cuda-sm90"] and "cuda-sm90" in _gaunt_routes.MEASURED_FWD_BWD
    assert sm90["binary"][4] in ("direct", "grid_gemm") and sm90["binary_fwd_bwd"][4] in ("direct", "grid_gemm")
    for cls in ("cuda-sm90", "cuda-sm80", "cuda-sm100"):
        assert ga.route_table(2, cuda, cls) == sm90["binary"]
        assert ga.route_table(2, cuda, cls, backward=True) == sm90["binary_fwd_bwd"]
        assert ga.route_table(3, cuda, cls) == {}
    monkeypatch.setattr(_backend, "device_class", lambda device: "cuda-sm86")
    assert ga.route_table(2, cuda) == sm90["binary"]
    assert ga.choose_route([4, 4], 4, 10000, cuda) == sm90["binary"][4]
    assert ga.choose_route([8, 8], 8, 10000, cuda, backward=True) == sm90["binary_fwd_bwd"][8]
    assert ga.choose_route([6, 6], 6, 10000, cuda) == sm90["binary"][4]  # nearest measured lmax (ties: lower)
    assert ga.choose_route([4, 4, 4], 4, 10000, cuda) == "grid"  # nu = 3 not measured on a GPU yet
    # the nearest capability among several, and a GPU class nobody measured when no CUDA table exists
    monkeypatch.setitem(_gaunt_routes.TABLES, "cuda-sm80", {"binary": {4: "fft"}, "many": {}})
    assert ga.route_table(2, cuda, "cuda-sm86") == {4: "fft"}
    assert ga.route_table(2, cuda, "cuda-sm89") == {4: "fft"}  # the same major version first
    assert ga.route_table(2, cuda, "cuda-sm100") == sm90["binary"]
    monkeypatch.setattr(_gaunt_routes, "TABLES", {k: v for k, v in _gaunt_routes.TABLES.items()
                                                  if not k.startswith("cuda")})
    assert ga.route_table(2, cuda, "cuda-sm90") == {} and ga.choose_route([4, 4], 4, 10, cuda) == "grid"
    assert ga.route_table(2, torch.device("meta")) == {}


def test_bench_device_routes_and_gpu_table(tmp_path, monkeypatch):
    """bench.gaunt's GPU ranking (--device cuda) measures every route per lmax and writes the GPU's class table
    beside the CPU classes (run here on the CPU device at a tiny shape; the class and the device name faked)."""
    import importlib.util

    from bench import gaunt as bg
    from geoops import _backend, _gaunt_routes
    res = bg.device_routes([1, 2], 3, 2, torch.float64, torch.device("cpu"), repeats=1)
    assert set(res) == {1, 2} and all(set(r) == set(bg.ROUTES) and min(r.values()) > 0 for r in res.values())
    many = bg.device_routes([1], 3, 2, torch.float64, torch.device("cpu"), repeats=1, many=True, bwd=True)
    assert set(many[1]) == {"grid", "grid_gemm", "fft"}
    monkeypatch.setattr(_backend, "device_class", lambda device: "cuda-sm75")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    out = tmp_path / "routes.py"
    bg.write_routes({1: "grid", 2: "fft"}, {1: "fft"}, out, "gpu test", {1: "direct"}, {}, "gpu test fwd+bwd",
                    device=torch.device("cuda", 0))
    spec = importlib.util.spec_from_file_location("routes_gpu_under_test", out)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.TABLES["cuda-sm75"] == {"binary": {1: "grid", 2: "fft"}, "many": {1: "fft"},
                                       "binary_fwd_bwd": {1: "direct"}}
    assert mod.MEASURED["cuda-sm75"].endswith("Fake GPU, gpu test")
    for other, t in _gaunt_routes.TABLES.items():
        assert mod.TABLES[other] == t


def test_torch_compile_fullgraph_auto_route_for_training(monkeypatch):
    """Under torch.compile(fullgraph=True) 'auto' still traces (the route is chosen at trace time from
    requires_grad, which dynamo guards on): a graph with inputs requiring grad runs the forward + backward
    ranking's route, under no_grad too (the same bits as training); inputs not requiring grad recompile to the
    forward ranking's."""
    _fake_route_tables(monkeypatch)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append("".join(m.code for m in gm.modules() if isinstance(m, torch.fx.GraphModule)))
        return gm.forward

    torch._dynamo.reset()
    try:
        f = torch.compile(lambda a, b, w: ga.gaunt_tensor_product(a, b, 3, weight_out=w), fullgraph=True,
                          backend=backend)
        x1, x2, w = _rand(5, 9, seed=97), _rand(5, 4, seed=98), _rand(4, seed=99)
        a = x1.clone().requires_grad_()
        out = f(a, x2, w)
        out.square().sum().backward()
        A = x1.clone().requires_grad_()
        oracle(A, x2, 3, wo=w).square().sum().backward()
        torch.testing.assert_close(out, oracle(x1, x2, 3, wo=w), atol=1e-12, rtol=0)
        torch.testing.assert_close(a.grad, A.grad, atol=1e-11, rtol=0)
        with torch.no_grad():
            assert torch.equal(f(a, x2, w), out.detach())
            torch.testing.assert_close(f(x1, x2, w), oracle(x1, x2, 3, wo=w), atol=1e-12, rtol=0)
    finally:
        torch._dynamo.reset()
    assert len(graphs) == 3
    for g in graphs[:2]:
        assert "'fft'" in g and "'direct'" not in g
    assert "'direct'" in graphs[2] and "'fft'" not in graphs[2]


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    f = torch.compile(lambda a, b, w: ga.gaunt_tensor_product(a, b, 3, weight_out=w, route="grid"), fullgraph=True)
    x1, x2, w = _rand(5, 9, seed=49), _rand(5, 4, seed=50), _rand(4, seed=51)
    torch.testing.assert_close(f(x1, x2, w), oracle(x1, x2, 3, wo=w), atol=1e-12, rtol=0)
    # route="auto", and gradients through the compiled graph (the backward is the same custom op)
    fa = torch.compile(lambda a, b, w: ga.gaunt_tensor_product(a, b, 3, weight_out=w), fullgraph=True)
    a, b, c = (t.clone().requires_grad_() for t in (x1, x2, w))
    fa(a, b, c).square().sum().backward()
    A, B, C = (t.clone().requires_grad_() for t in (x1, x2, w))
    oracle(A, B, 3, wo=C).square().sum().backward()
    for ours, ref in ((a, A), (b, B), (c, C)):
        torch.testing.assert_close(ours.grad, ref.grad, atol=1e-11, rtol=0)


def test_torch_compile_auto_route_before_any_eager_call():
    """route="auto" (the default) reads the CPU class from /proc/cpuinfo; compiled (fullgraph) before any eager call
    had cached it, dynamo failed on the file read ("builtin operator `open`").  Session 24: cpu_class is a
    constant to dynamo."""
    from geoops import _backend
    torch._dynamo.reset()
    _backend._cache.pop("cpu_class", None)  # as in a fresh process
    f = torch.compile(lambda a, b: ga.gaunt_tensor_product(a, b), fullgraph=True)
    x1, x2 = _rand(3, 9, seed=52), _rand(3, 4, seed=53)
    torch.testing.assert_close(f(x1, x2), oracle(x1, x2, 3), atol=1e-12, rtol=0)
    assert "cpu_class" in _backend._cache


def test_torch_compile_dynamic_shapes():
    """torch.compile(dynamic=True) makes the coefficient dims symbolic: lmax_of's math.isqrt could not be traced
    (fullgraph failed with 'torch.* op returned non-Tensor')."""
    torch._dynamo.reset()
    f = torch.compile(lambda a, b: ga.gaunt_tensor_product(a, b, 2).square().sum(), fullgraph=True, dynamic=True,
                      backend="aot_eager")
    for n in (3, 5):
        a = _rand(n, 9, seed=60 + n).requires_grad_()
        b = _rand(n, 4, seed=70 + n)
        f(a, b).backward()
        A = a.detach().clone().requires_grad_()
        oracle(A, b, 2).square().sum().backward()
        torch.testing.assert_close(a.grad, A.grad, atol=1e-11, rtol=0)


# ---------------------------------------------------------------- nn module
@needs_e3nn
def test_nn_gaunt_tensor_product_matches_e3nn():
    from geoops.nn import GauntTensorProduct

    C = 3
    i1, i2, io = f"{C}x0e+{C}x1o+{C}x2e", f"{C}x0e+{C}x1o", f"{C}x0e+{C}x1o+{C}x2e+{C}x3o"
    mod = GauntTensorProduct(i1, i2, io, route="grid").double()
    G = oracle_gaunt(2, 1, 3)
    instr = []
    ir1, ir2, iro = o3.Irreps(i1), o3.Irreps(i2), o3.Irreps(io)
    for a, (_, r1) in enumerate(ir1):
        for b, (_, r2) in enumerate(ir2):
            for c, (_, r3) in enumerate(iro):
                l1, l2, l3 = r1.l, r2.l, r3.l
                if abs(l1 - l2) <= l3 <= l1 + l2 and (l1 + l2 + l3) % 2 == 0:
                    g = G[l1 * l1:(l1 + 1) ** 2, l2 * l2:(l2 + 1) ** 2, l3 * l3:(l3 + 1) ** 2].norm().item()
                    instr.append((a, b, c, "uuu", False, g * g))
    with f64_default():
        tp = o3.TensorProduct(ir1, ir2, iro, instr, irrep_normalization="none", path_normalization="none").double()
    x1, x2 = _rand(4, ir1.dim, seed=60), _rand(4, ir2.dim, seed=61)
    torch.testing.assert_close(mod(x1, x2), tp(x1, x2), atol=1e-12, rtol=0)
    # learnable weights get gradients
    mod(x1, x2).square().sum().backward()
    assert mod.weight1.grad is not None and mod.weight_out.grad.shape == (C, 4)


@needs_e3nn
def test_nn_refuses_what_gaunt_cannot_express():
    from geoops.nn import GauntTensorProduct

    with pytest.raises(ValueError, match="natural parity"):
        GauntTensorProduct("1x1o", "1x1o", "1x1e")  # the cross product: odd l1 + l2 + l3
    with pytest.raises(ValueError, match="natural parity"):
        GauntTensorProduct("2x0e+2x0o", "2x0e", "2x0e")
    with pytest.raises(ValueError, match="one multiplicity"):
        GauntTensorProduct("2x0e+3x1o", "2x0e", "2x0e")
    with pytest.raises(ValueError, match="multiplicity of irreps_out"):
        GauntTensorProduct("2x0e", "3x0e", "2x0e")
    mod = GauntTensorProduct("2x0e+2x1o", "2x0e", "2x1o")
    with pytest.raises(ValueError, match="x1 must have last dimension 8"):
        mod(torch.randn(3, 7), torch.randn(3, 2))


@pytest.mark.parametrize("rank", ["fwd,bwd", "", "fwd+bwd,forward"])
def test_bench_rank_is_validated_on_every_path(rank, capsys):
    """An unknown --rank is an error before anything is measured, for the CPU rankings and --device alike (the
    device path used to ignore it)."""
    from bench import gaunt as bg
    for extra in ([], ["--device", "cpu"], ["--cpu-time", "--no-wall"]):
        with pytest.raises(SystemExit) as e:
            bg.main(["--lmax", "1", "--rank", rank] + extra)
        assert e.value.code == 2
        assert "--rank: comma list of fwd, fwd+bwd" in capsys.readouterr().err


def test_leading_dims_broadcast_helper_matches_torch():
    """Session 38 (perfcheck): _run broadcasts the leading dims with geoops._args.broadcast_shapes (plain Python for
    int sizes, torch.broadcast_shapes cost ~10 us a call): the same shapes, and the same error, as torch's."""
    import itertools

    from geoops import _args

    shapes = [(), (1,), (3,), (0,), (2, 1), (1, 3), (2, 3), (4, 1, 3), (1, 0), (5, 1, 1)]
    for combo in itertools.chain(itertools.product(shapes, repeat=2), itertools.product(shapes[:6], repeat=3)):
        try:
            want = torch.broadcast_shapes(*combo)
        except RuntimeError:
            with pytest.raises(RuntimeError):
                _args.broadcast_shapes(*map(torch.Size, combo))
            continue
        got = _args.broadcast_shapes(*map(torch.Size, combo))
        assert got == want and isinstance(got, torch.Size), combo
    # through the op: broadcast factors and weights, and the error naming the shapes
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(3, 1, 9, generator=g, dtype=torch.float64), torch.randn(1, 4, 4, generator=g, dtype=torch.float64)
    w1 = torch.randn(4, 3, generator=g, dtype=torch.float64)
    out = ga.gaunt_tensor_product(x1, x2, weight1=w1)
    ref = ga.gaunt_tensor_product(x1.expand(3, 4, 9), x2.expand(3, 4, 4), weight1=w1.expand(3, 4, 3))
    assert out.shape == (3, 4, 16) and torch.equal(out, ref)
    with pytest.raises(ValueError, match="do not broadcast"):
        ga.gaunt_tensor_product(torch.randn(3, 9, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="nu must be a positive int, got 0"):
        ga.choose_route([], 0, 1, torch.device("cpu"))
