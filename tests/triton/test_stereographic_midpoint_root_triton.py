"""weighted_midpoint's root for k < 0 in the Triton kernels (kernels/stereographic.py: midpoint_root_fwd / _bwd,
the triton / cuda backends' geoops::stereo_midpoint_root_fwd / _bwd) under TRITON_INTERPRET=1 (or on a GPU): S =
(Q, A, W, S2, R) and the backward (gF, gL, gQ) against the torch reference (_ops.midpoint_root_sums_reference and its
autograd) and the C++ op, on tests/test_stereographic_midpoint_root.py's groups (near / far, posweight with per-group
k of every sign, mixed-sign weights, rows outside the ball, one group over several programs); weighted_midpoint on
the triton backend runs MidpointFn (no torch pass over the points, no host read of k), gradcheck through it."""
import os
import sys

import pytest
import torch
from torch.autograd import gradcheck

pytest.importorskip("triton")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import geoops  # noqa: E402
import geoops.stereographic as gs  # noqa: E402
from geoops._ops import stereographic as _ops  # noqa: E402
from geoops.kernels import stereographic as KS  # noqa: E402

import test_stereographic_midpoint_root as R  # noqa: E402

from conftest import DEVICE  # noqa: E402


def _rel(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300)) if a.numel() else 0.0


def _case(case, dtype=torch.float64):
    x, w, k, pw = R._groups(case, dtype)
    return x.to(DEVICE), (None if w is None else w.to(DEVICE)), k.to(DEVICE), pw


def _grads(G, D, S):
    gg = torch.Generator().manual_seed(3)
    gF = torch.randn(G, D, generator=gg, dtype=torch.float64).to(DEVICE)
    gL = torch.randn(G, generator=gg, dtype=torch.float64).to(DEVICE)
    gQ = torch.randn(G, generator=gg, dtype=torch.float64).to(DEVICE) / S[:, 0].abs().clamp_min(1.0)
    return gF, gL, gQ


def _reference_bwd(gF, gL, gQ, x, w, k, pw, mask):
    def sums(a, b, c):
        F, L, S = _ops.midpoint_root_sums_reference(a, b, c, pw)
        return F, L, S[:, 0]
    return _ops.midpoint_reference_bwd(sums, (gF, gL, gQ), x, w, k, mask)


@pytest.mark.parametrize("case", R.CASES)
def test_root_sums_match_reference(case):
    """F, L as the plain sums kernel (bit for bit: the root's scalars ride along), S as the reference (Q and S2 only
    in the near groups), the backward as the reference's autograd for every mask."""
    x, w, k, pw = _case(case)
    G, N, D = x.shape
    # the "chunks" group (1300 points) spans several splits (programs) in both launches and the backward
    assert (KS._midpoint_launch(x, k)[5] > 1) == (case == "chunks")
    F, L, S = KS.midpoint_root_fwd(x, w, k, pw)
    F0, L0 = KS.midpoint_fwd(x, w, k, pw)
    assert torch.equal(F, F0) and torch.equal(L, L0)
    Fr, Lr, Sr = _ops.midpoint_root_sums_reference(x, w, k.expand(G), pw)
    assert S.shape == (G, 5) and S.dtype == torch.float64
    near = _ops.midpoint_near(F, L, k.expand(G))
    assert torch.equal(S[:, 0] != 0, near) and (case != "near" or near.tolist() == [True, True, False])
    for j in range(5):
        assert _rel(S[:, j], Sr[:, j]) < 1e-11 or float((S[:, j] - Sr[:, j]).abs().max()) < 1e-12, (j, S, Sr)
    gF, gL, gQ = _grads(G, D, S)
    for mask in (7, 1, 2, 4):
        ours = KS.midpoint_root_bwd(gF, gL, gQ, F, S, x, w, k, pw, mask)
        ref = _reference_bwd(gF, gL, gQ, x, w, k, pw, mask)
        for a, b in zip(ours, ref):
            assert a.shape == b.shape and a.dtype == b.dtype
            assert _rel(a, b) < 1e-9, (_rel(a, b), case, mask)


@pytest.mark.parametrize("case", ["near", "posweight", "outside"])
def test_root_sums_float32(case):
    x, w, k, pw = _case(case, torch.float32)
    G, N, D = x.shape
    F, L, S = KS.midpoint_root_fwd(x, w, k, pw)
    Fr, Lr, Sr = _ops.midpoint_root_sums_reference(x, w, k.expand(G), pw)
    for j in range(5):
        assert _rel(S[:, j], Sr[:, j]) < 1e-11 or float((S[:, j] - Sr[:, j]).abs().max()) < 1e-12, (j, S, Sr)
    gF, gL, gQ = _grads(G, D, S)
    ours = KS.midpoint_root_bwd(gF, gL, gQ, F, S, x, w, k, pw, 7)
    ref = _reference_bwd(gF, gL, gQ, x, w, k, pw, 7)
    for a, b in zip(ours, ref):
        assert _rel(a, b) < 1e-5


@pytest.mark.skipif(DEVICE != "cpu", reason="the C++ op runs on CPU tensors")
@pytest.mark.parametrize("case", R.CASES)
def test_root_sums_match_cpp(case):
    lib = geoops._backend.compiled()
    if not hasattr(lib, "stereo_midpoint_root_fwd_cpu"):
        pytest.skip("geoops._C without stereo_midpoint_root_fwd_cpu (an older build)")
    x, w, k, pw = _case(case)
    G, N, D = x.shape
    F, L, S = KS.midpoint_root_fwd(x, w, k, pw)
    Fc, Lc, Sc = lib.stereo_midpoint_root_fwd_cpu(x, w, k, pw)
    assert _rel(F, Fc) < 1e-12 and _rel(L, Lc) < 1e-12
    assert torch.equal(S[:, 0] != 0, Sc[:, 0] != 0)
    for j in range(5):
        assert _rel(S[:, j], Sc[:, j]) < 1e-11 or float((S[:, j] - Sc[:, j]).abs().max()) < 1e-12, j
    gF, gL, gQ = _grads(G, D, Sc)
    ours = KS.midpoint_root_bwd(gF, gL, gQ, Fc, Sc, x, w, k, pw, 7)
    cpp = lib.stereo_midpoint_root_bwd_cpu(gF, gL, gQ, Fc, Sc, x, w, k, pw, 7)
    for a, b in zip(ours, cpp):
        assert _rel(a, b) < 1e-9


def test_root_op_dispatches_to_triton(monkeypatch):
    """On the triton backend the root op pair runs the Triton kernels, not the torch reference."""
    def boom(*a, **kw):
        raise AssertionError("the torch reference ran")
    monkeypatch.setattr(_ops, "midpoint_root_sums_reference", boom)
    monkeypatch.setattr(_ops, "midpoint_reference_bwd", boom)
    x, w, k, pw = _case("posweight")
    F, L, S = torch.ops.geoops.stereo_midpoint_root_fwd(x, w, k, pw)
    gF, gL, gQ = _grads(*F.shape, S)
    torch.ops.geoops.stereo_midpoint_root_bwd(gF, gL, gQ, F, S, x, w, k, pw, 7)


def test_weighted_midpoint_runs_midpoint_fn(monkeypatch):
    """weighted_midpoint on the triton backend: MidpointFn (the root inside the kernels): no torch pass over the
    points (_ops.midpoint_root_sums) and no read of k on the host (Tensor.__bool__ of k < 0)."""
    def boom(*a, **kw):
        raise AssertionError("the sums path's torch pass ran")
    monkeypatch.setattr(_ops, "midpoint_root_sums", boom)
    x, w, k, pw = _case("near")
    xr, wr, kr = x.clone().requires_grad_(), w.clone().requires_grad_(), k.clone().requires_grad_()
    m = gs.weighted_midpoint(xr, wr, k=kr, reducedim=[1])
    m.sum().backward()
    assert xr.grad is not None and wr.grad is not None and kr.grad is not None


@pytest.mark.parametrize("name,kw", R.GRAD_CASES)
def test_weighted_midpoint_gradcheck_triton(name, kw):
    """gradcheck (float64, x, weights, k) of weighted_midpoint on the triton backend: MidpointFn's root ops."""
    xs, w, k = (t.to(DEVICE) for t in R._grad_inputs(name))
    if name == "posweight":  # two of the CPU test's three groups (each with its rows 1, 4 flipped): 61 inputs, not 91
        xs, w = xs[:2].contiguous(), w[:2].contiguous()
    if name != "dim0":  # (points far from the boundary there): the root's groups are there
        S = torch.ops.geoops.stereo_midpoint_root_fwd(xs, w, k.reshape(1), name == "posweight")[2]
        assert bool((S[:, 0] > 0).any())
    x3 = xs.reshape(1, -1, xs.shape[-1]).requires_grad_()
    assert "MidpointFn" in type(gs._midpoint_mean(x3, None, k.reshape(1), False).grad_fn).__name__
    ins = (xs.clone().requires_grad_(), w.clone().requires_grad_(), k.clone().requires_grad_())
    eps = 1e-9 if name == "near_groups" else 1e-6
    assert gradcheck(lambda a, b, c: gs.weighted_midpoint(a, b, k=c, **kw), ins, eps=eps, atol=1e-6, rtol=1e-6)


def test_root_ops_opcheck_triton():
    """The op pair on the triton backend: schema, fake tensors, autograd registration (outputs not aliased)."""
    x, w, k, pw = _case("posweight")
    torch.library.opcheck(torch.ops.geoops.stereo_midpoint_root_fwd.default, (x, w, k, pw))
    F, L, S = torch.ops.geoops.stereo_midpoint_root_fwd(x, w, k, pw)
    gF, gL, gQ = _grads(*F.shape, S)
    for mask in (1, 6, 7):
        torch.library.opcheck(torch.ops.geoops.stereo_midpoint_root_bwd.default, (gF, gL, gQ, F, S, x, w, k, pw, mask))
