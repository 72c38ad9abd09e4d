"""weighted_midpoint's root for k < 0 inside the C++ kernels (session 46, helper wmidk): the sums op with the root's
S = (Q, A, W, S2, R) (geoops::stereo_midpoint_root_fwd / _bwd) and the mean op from Q, against their torch
reference (values; the backward against the reference's autograd), gradcheck of weighted_midpoint through them in
float64 (x, weights, k) with groups near the boundary, rows outside the ball, posweight, mixed-sign weights, several
chunks of points, reducedim / keepdim; the C++ path no longer re-runs groups (no near-boundary check)."""
from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

import geoops
import geoops.stereographic as gs
from geoops._ops import stereographic as _ops

import _bn_transport_exact as ex


def _near(G, N, D, c, delta, gen):
    """[G, N, D] points within ~delta / 10 of a point P per group with 1 - c|P|^2 = delta (inside the ball)."""
    u = torch.randn(G, 1, D, generator=gen, dtype=torch.float64)
    P = u / u.norm(dim=-1, keepdim=True) * ((1 - delta) / c) ** 0.5
    return P + torch.randn(G, N, D, generator=gen, dtype=torch.float64) * delta / (10 * D ** 0.5 * c ** 0.5)


def _groups(case, dtype=torch.float64):
    """(x [G, N, D], w [G, N] or None, k [1] or [G], posweight) for the root ops."""
    g = torch.Generator().manual_seed(11)
    if case == "near":  # two groups near the boundary (1 - |x|^2 ~ 1e-4), one far
        xs = [ex.cloud(6, 3, 1.0, 1e-4, s, seed=i)[0] for i, s in enumerate((1e-3, 0.5))]
        xs.append(ex.cloud(6, 3, 1.0, 0.9, 0.5, seed=3)[0])
        x = torch.stack(xs)
        w = torch.rand(3, 6, generator=g, dtype=torch.float64) + 0.25
        return x.to(dtype), w.to(dtype), torch.tensor([-1.0], dtype=torch.float64), False
    if case == "posweight":  # negative weights flipped (-x, |w|), per-group k of every sign; the first two groups
        k = torch.tensor([-1.0, -0.3, -1.0, 0.0, 0.7], dtype=torch.float64)  # near the boundary, the third far
        x = torch.cat([_near(1, 7, 5, 1.0, 1e-3, g), _near(1, 7, 5, 0.3, 1e-4, g),
                       torch.randn(3, 7, 5, generator=g, dtype=torch.float64) * 0.3])
        w = torch.rand(5, 7, generator=g, dtype=torch.float64) + 0.2
        w[:, [0, 3]] *= -1  # given as -x with weight -w: posweight flips them back
        x[:, [0, 3]] *= -1
        return x.to(dtype), w.to(dtype), k, True
    if case == "mixed":  # mixed-sign weights without posweight, near the boundary
        x = _near(3, 9, 4, 0.8, 1e-3, g)
        w = torch.rand(3, 9, generator=g, dtype=torch.float64) + 0.3
        w[:, 2] = -0.2  # (the midpoint inside the ball: q > 0)
        return x.to(dtype), w.to(dtype), torch.tensor([-0.8], dtype=torch.float64), False
    if case == "outside":  # rows outside the ball (lam clamped): R != 0
        x = torch.randn(2, 8, 3, generator=g, dtype=torch.float64) * 0.45
        x[:, :2] *= 3.0
        k = torch.tensor([-1.0], dtype=torch.float64)
        assert bool((1 + k * x.square().sum(-1) <= 0).any())
        return x.to(dtype), None, k, False
    # "chunks": more points than one chunk of the kernel (chunk_points(64) = 512), one group
    x = _near(1, 1300, 64, 1.5, 1e-4, g)
    w = torch.rand(1, 1300, generator=g, dtype=torch.float64) + 0.1
    return x.to(dtype), w.to(dtype), torch.tensor([-1.5], dtype=torch.float64), False


CASES = ["near", "posweight", "mixed", "outside", "chunks"]


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


@pytest.mark.parametrize("case", CASES)
def test_root_sums_op_matches_reference(case):
    """stereo_midpoint_root_fwd_cpu: F, L as the plain sums op, S = (Q, A, W, S2, R) as the torch reference (zeros
    for k >= 0); its backward (gF, gL, gQ) as the reference's autograd."""
    x, w, k, pw = _groups(case)
    lib = geoops._backend.compiled()
    F, L, S = lib.stereo_midpoint_root_fwd_cpu(x, w, k, pw)
    F0, L0 = lib.stereo_midpoint_fwd_cpu(x, w, k, pw)
    assert torch.equal(F, F0) and torch.equal(L, L0)
    Fr, Lr, Sr = _ops.midpoint_root_sums_reference(x, w, k.expand(x.shape[0]), pw)
    assert S.shape == (x.shape[0], 5)
    near = _ops.midpoint_near(F, L, k.expand(x.shape[0]))
    assert torch.equal(S[:, 0] != 0, near) and (case != "near" or near.tolist() == [True, True, False])
    for j in range(5):
        assert _rel(S[:, j], Sr[:, j]) < 1e-11 or float((S[:, j] - Sr[:, j]).abs().max()) < 1e-12, (j, S, Sr)
    G, N, D = x.shape
    gg = torch.Generator().manual_seed(3)
    gF = torch.randn(G, D, generator=gg, dtype=torch.float64)
    gL = torch.randn(G, generator=gg, dtype=torch.float64)
    gQ = torch.randn(G, generator=gg, dtype=torch.float64) / S[:, 0].abs().clamp_min(1.0)
    ours = lib.stereo_midpoint_root_bwd_cpu(gF, gL, gQ, F, S, x, w, k, pw, 7)
    with geoops.use_backend("reference"):
        ref = _ops._root_bwd(gF, gL, gQ, F, S, x, w, k, pw, 7)
    for a, b in zip(ours, ref):
        if a.numel():
            assert _rel(a, b) < 1e-9, (_rel(a, b), case)


@pytest.mark.parametrize("case", CASES)
def test_mean_op_with_q_matches_reference(case):
    """stereo_midpoint_mean_fwd / _bwd with Q: in the root's groups (k < 0, |L| >= 1e-10, Q > 0) the mean as
    midpoint_half of the reference, gradients (gF, gL, gQ, gk) as its autograd; elsewhere (k >= 0, or f outside
    the ball: Q <= 0) the op without Q, gQ = 0."""
    x, w, k, pw = _groups(case)
    F, L, S = geoops._backend.compiled().stereo_midpoint_root_fwd_cpu(x, w, k, pw)
    Q = S[:, 0].contiguous()
    G, D = F.shape
    root = (k.expand(G) < 0) & (L.abs() >= 1e-10) & (Q > 0)
    assert bool(root.any()) == (case != "outside")  # (a clamped row's lam = 2e15 puts f at that row: Q < 0)
    m = torch.ops.geoops.stereo_midpoint_mean_fwd(F, L, Q, k)
    gm = torch.randn(G, D, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    back = torch.ops.geoops.stereo_midpoint_mean_bwd(gm, F, L, Q, k, 4)
    m0 = torch.ops.geoops.stereo_midpoint_mean_fwd(F, L, None, k)
    b0 = torch.ops.geoops.stereo_midpoint_mean_bwd(gm, F, L, None, k, 4)
    with geoops.use_backend("reference"):
        mr = torch.ops.geoops.stereo_midpoint_mean_fwd(F, L, Q, k)
        br = torch.ops.geoops.stereo_midpoint_mean_bwd(gm, F, L, Q, k, 4)
    if bool(root.any()):
        assert float((m - mr)[root].abs().max()) < 1e-14
        for j, (a, b) in enumerate(zip(back, br)):
            assert _rel(a[root], b[root]) < 1e-11 or float((a - b)[root].abs().max()) < 1e-14, j
    assert torch.equal(m[~root], m0[~root])
    assert torch.equal(back[2][~root], torch.zeros_like(back[2][~root]))
    for a, b in zip(back[:2] + back[3:], b0[:2] + b0[3:]):
        assert torch.equal(a[~root], b[~root])


def test_root_ops_opcheck():
    x, w, k, pw = _groups("posweight")
    torch.library.opcheck(torch.ops.geoops.stereo_midpoint_root_fwd.default, (x, w, k, pw))
    F, L, S = torch.ops.geoops.stereo_midpoint_root_fwd(x, w, k, pw)
    G, N, D = x.shape
    gF, gL, gQ = torch.randn(G, D, dtype=torch.float64), torch.randn(G, dtype=torch.float64), torch.randn(G, dtype=torch.float64)
    for mask in (1, 6, 7):
        torch.library.opcheck(torch.ops.geoops.stereo_midpoint_root_bwd.default, (gF, gL, gQ, F, S, x, w, k, pw, mask))
    gm = torch.randn(G, D, dtype=torch.float64)
    torch.library.opcheck(torch.ops.geoops.stereo_midpoint_mean_fwd.default, (F, L, S[:, 0].contiguous(), k))
    torch.library.opcheck(torch.ops.geoops.stereo_midpoint_mean_bwd.default, (gm, F, L, S[:, 0].contiguous(), k, 4))


GRAD_CASES = [  # (xs builder, weights?, kwargs)
    ("near_groups", dict(reducedim=[1], keepdim=True)),
    ("posweight", dict(reducedim=[1], posweight=True)),
    ("mixed", dict(reducedim=1)),
    ("dim0", dict(reducedim=[0, 2], dim=1, keepdim=True)),
]


def _grad_inputs(name):
    g = torch.Generator().manual_seed(21)
    if name == "near_groups":  # 1 - |x|^2 ~ 1e-3 (finite differences need some room), and a far group
        xs = torch.stack([ex.cloud(5, 3, 1.0, 1e-3, 0.5, seed=1)[0], ex.cloud(5, 3, 1.0, 0.3, 0.5, seed=2)[0]])
        return xs, torch.rand(2, 5, generator=g, dtype=torch.float64) + 0.3, torch.tensor(-1.0, dtype=torch.float64)
    if name == "posweight":  # near the boundary (1 - c|x|^2 ~ 1e-2), rows 1, 4 given as -x with weight -w
        xs, w = _near(3, 6, 4, 0.7, 1e-2, g), torch.rand(3, 6, generator=g, dtype=torch.float64) + 0.2
        xs[:, [1, 4]] *= -1
        w[:, [1, 4]] *= -1
        return xs, w, torch.tensor(-0.7, dtype=torch.float64)
    if name == "mixed":  # near the boundary, mixed signs (the weights' sum well away from 0)
        xs = _near(2, 5, 3, 1.2, 1e-2, g)
        w = torch.rand(2, 5, generator=g, dtype=torch.float64) + 0.2
        w[:, 1] *= -0.3
        return xs, w, torch.tensor(-1.2, dtype=torch.float64)
    xs = torch.randn(3, 4, 2, generator=g, dtype=torch.float64) * 0.25  # vectors along dim 1
    return xs, torch.rand(3, 2, generator=g, dtype=torch.float64) + 0.2, torch.tensor(-0.5, dtype=torch.float64)


@pytest.mark.parametrize("name,kw", GRAD_CASES)
def test_weighted_midpoint_root_gradcheck(name, kw):
    """gradcheck (float64, x, weights, k) of weighted_midpoint on the C++ path: MidpointFn's root ops."""
    xs, w, k = _grad_inputs(name)
    if name != "dim0":  # (points far from the boundary there): the root's groups are there
        S = torch.ops.geoops.stereo_midpoint_root_fwd(xs, w, k.reshape(1), name == "posweight")[2]
        assert bool((S[:, 0] > 0).any())
    ins = (xs.requires_grad_(), w.requires_grad_(), k.requires_grad_())
    with geoops.use_backend("cpp"):
        x3 = xs.detach().reshape(1, -1, xs.shape[-1]).requires_grad_()
        assert "MidpointFn" in type(gs._midpoint_mean(x3, None, k.detach().reshape(1), False).grad_fn).__name__
        eps = 1e-9 if name == "near_groups" else 1e-6
        assert gradcheck(lambda a, b, c: gs.weighted_midpoint(a, b, k=c, **kw), ins, eps=eps, atol=1e-6, rtol=1e-6)


def test_cpp_path_runs_no_second_pass(monkeypatch):
    """The C++ path forms the root in its kernels: no group goes through the sums path's torch root (before: the
    groups with 1 + k|m|^2 < 2/3 ran again on it)."""
    def boom(*a, **k):
        raise AssertionError("the sums path's torch root ran on the C++ path")
    monkeypatch.setattr(_ops, "midpoint_root_sums", boom)
    monkeypatch.setattr(gs, "_midpoint_mean_generic", boom)
    x, w, k, pw = _groups("near")
    xs, ws, kt = x.clone().requires_grad_(), w.clone().requires_grad_(), torch.tensor(-1.0, requires_grad=True,
                                                                                       dtype=torch.float64)
    with geoops.use_backend("cpp"):
        m = gs.weighted_midpoint(xs, ws, k=kt, reducedim=1)
        m.sum().backward()
        gs.weighted_midpoint(x, w, k=-1.0, reducedim=1)  # no autograd


def test_root_ops_same_bits_for_any_thread_count():
    """The root's second pass and its backward sum in the sums' fixed chunks: 1 and 2 threads give the same bits
    (near-boundary groups, several chunks)."""
    x, w, k, pw = _groups("chunks")
    x = torch.cat([x, x.flip(1)])  # two groups, 3 chunks each
    w = torch.cat([w, w.flip(1)])
    lib = geoops._backend.compiled()
    gg = torch.Generator().manual_seed(8)
    gF, gL, gQ = (torch.randn(*s, generator=gg, dtype=torch.float64) for s in ((2, 64), (2,), (2,)))
    res = []
    n = torch.get_num_threads()
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            F, L, S = lib.stereo_midpoint_root_fwd_cpu(x, w, k, pw)
            res.append((F, L, S) + tuple(lib.stereo_midpoint_root_bwd_cpu(gF, gL, gQ, F, S, x, w, k, pw, 7)))
    finally:
        torch.set_num_threads(n)
    assert bool((res[0][2][:, 0] > 0).all())
    for a, b in zip(*res):
        assert torch.equal(a, b)
