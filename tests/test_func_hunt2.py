"""Session 35 user trial ("modhunt"): torch integration of the public ops (torch.func, autocast, opcheck)."""
from __future__ import annotations

import contextlib

import pytest
import torch
from torch.func import jacfwd, jacrev, jvp, vmap

import geoops.poincare as gp
import geoops.stereographic as gs

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

F64 = torch.float64
K = torch.tensor(-1.0, dtype=F64)


def _pts(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return gs.expmap0(torch.randn(*shape, generator=g, dtype=F64) * 0.3, k=K)


_BINARY = {
    "mobius_add": lambda x, b: gs.mobius_add(x, b, k=K),
    "mobius_sub": lambda x, b: gs.mobius_sub(x, b, k=K),
    "dist": lambda x, b: gs.dist(x, b, k=K),
    "expmap": lambda x, b: gs.expmap(x, b, k=K),
    "logmap": lambda x, b: gs.logmap(x, b, k=K),
    "gyration": lambda x, b: gs.gyration(x, b, b, k=K),
    "parallel_transport0": lambda x, b: gs.parallel_transport0(b, x, k=K),
}


@pytest.mark.parametrize("name", sorted(_BINARY))
def test_forward_mode_with_a_broadcast_second_input(name):
    """jvp / jacfwd of a row op whose other input broadcasts ((D,) against (B, D) rows: a bias) raised torch's
    'more than one element of the written-to tensor refers to a single memory location': the broadcast input
    reached the forward derivative as a stride-0 view, which torch.func.jvp cannot make a dual of."""
    f = _BINARY[name]
    x, b = _pts(3, 4, seed=1), _pts(4, seed=2)
    t = torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(3))
    _, got = jvp(lambda xx: f(xx, b), (x,), (t,))
    J = jacrev(lambda xx: f(xx, b))(x)  # reverse mode: (*out, 3, 4)
    torch.testing.assert_close(got, (J * t).sum((-2, -1)), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(jacfwd(lambda xx: f(xx, b))(x), J, rtol=1e-10, atol=1e-12)


def test_mobius_linear_jacfwd_with_bias():
    """geoops.poincare.mobius_linear (nn.MobiusLinear) adds its (out,) bias by mobius_add: jacfwd failed there."""
    g = torch.Generator().manual_seed(4)
    W, bias = torch.randn(5, 4, generator=g, dtype=F64) * 0.3, _pts(5, seed=5)
    x, c = _pts(2, 4, seed=6), torch.tensor(1.0, dtype=F64)
    f = lambda xx: gp.mobius_linear(xx, W, bias, c=c)
    torch.testing.assert_close(jacfwd(f)(x), jacrev(f)(x), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- torch.autocast
import geoops  # noqa: E402
import geoops.attention as ga  # noqa: E402
import geoops.gaunt as gg  # noqa: E402
import geoops.ssm as ssm  # noqa: E402


def _autocast_cases():
    g = torch.Generator().manual_seed(7)
    k, c = torch.tensor(-1.0), torch.tensor(1.0)
    r = lambda *s, scale=1.0: torch.randn(*s, generator=g) * scale
    p = lambda *s: gs.expmap0(r(*s, scale=0.3), k=k)
    img = lambda *s: gp.expmap0(r(*s, scale=0.3), c=c, dim=1)
    H, N, L = 3, 4, 16
    A = torch.complex(-0.5 - torch.rand(H, N, generator=g), r(H, N))
    ssm_p = (r(H) * 0.1 - 3, A, torch.complex(r(H, N), r(H, N)), torch.complex(r(H, N), r(H, N)), r(H))
    return {
        "mobius_matvec": (lambda M, x: gs.mobius_matvec(M, x, k=k), (r(12, 8, scale=0.2), p(6, 8))),
        "mobius_blockdiag_matvec": (lambda M, x: gs.mobius_blockdiag_matvec(M, x, k=k), (r(2, 4, 4, scale=0.2), p(6, 8))),
        "mobius_add": (lambda x, y: gs.mobius_add(x, y, k=k), (p(6, 8), p(6, 8))),
        "cdist": (lambda x, y: gs.cdist(x, y, k=k), (p(6, 8), p(5, 8))),
        "poincare_fc": (lambda x, z, b: gp.poincare_fc(x, z, b, c=c), (p(6, 8), r(8, 5, scale=0.2), r(5, scale=0.1))),
        "mlr": (lambda x, z, b: gp.mlr(x, z, b, c=c), (p(6, 8), r(8, 5, scale=0.2), r(5, scale=0.1))),
        "mobius_linear": (lambda x, w, b: gp.mobius_linear(x, w, b, c=c), (p(6, 8), r(5, 8, scale=0.2), p(5))),
        "poincare_conv2d": (lambda x, w, b: gp.poincare_conv2d(x, w, b, c=c, kernel_size=3, padding=1),
                            (img(2, 3, 5, 5), r(27, 4, scale=0.2), r(4, scale=0.1))),
        "poincare_conv2d_wide": (lambda x, w, b: gp.poincare_conv2d(x, w, b, c=c, kernel_size=3, padding=1),
                                 (img(2, 4, 5, 5), r(36, 20, scale=0.1), r(20, scale=0.1))),  # MKL-DNN's conv2d
        "batch_norm": (lambda x, b: gp.batch_norm(x, b, torch.tensor(1.0), c=c, training=True), (p(6, 8), r(8, scale=0.1))),
        "batch_norm2d": (lambda x, b: gp.batch_norm2d(x, b, torch.tensor(1.0), c=c, training=True),
                         (img(2, 3, 4, 4), r(3, scale=0.1))),
        "avg_pool2d": (lambda x: gp.avg_pool2d(x, c=c, kernel_size=2), (img(2, 3, 4, 4),)),
        "ssm_conv": (lambda u: ssm.ssm_conv(u, *ssm_p), (r(2, H, L),)),
        "gaunt": (lambda a, b: gg.gaunt_tensor_product(a, b, 2), (r(3, 2, 9), r(3, 2, 9))),
        "attention": (lambda q, k1, k2, v1, v2: ga.triple_attention(q, k1, k2, v1, v2), tuple(r(1, 2, 5, 4) for _ in range(5))),
    }


_AC = _autocast_cases()


def _run_modes(f, args, mode):
    if mode == "vmap":
        batched = [a.unsqueeze(0).expand(2, *a.shape).contiguous() for a in args]
        return vmap(f)(*batched)
    return f(*args)


@pytest.mark.parametrize("mode", ["eager", "vmap", "fused_off", "reference"])
@pytest.mark.parametrize("name", sorted(_AC))
def test_autocast_leaves_the_ops_in_their_inputs_dtype(name, mode, monkeypatch):
    """geoops' ops are not on autocast's cast lists: under torch.autocast("cpu", bfloat16) float32 inputs give the
    float32 result, as the C++ kernels always did.  The torch compositions of some paths (vmap, the reference
    backend, GEOOPS_POINCARE_FUSED=0) ran their matmul / conv2d in bfloat16: mobius_matvec returned bfloat16
    (float32 eager), mlr / mobius_linear / batch_norm came out at bfloat16 accuracy (5e-3), and
    poincare_conv2d failed on every path ("poincare_fc_rows: t, U and z must share a dtype")."""
    f, args = _AC[name]
    if mode == "vmap" and name in ("batch_norm", "batch_norm2d", "avg_pool2d", "ssm_conv", "attention"):
        pytest.skip("batch-reducing / 4-D ops: vmap of the public op is tested elsewhere")
    if mode == "fused_off":
        monkeypatch.setenv("GEOOPS_POINCARE_FUSED", "0")
    ctx = geoops.use_backend("reference") if mode == "reference" else contextlib.nullcontext()
    with ctx:
        want = _run_modes(f, args, mode)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = _run_modes(f, args, mode)
    assert got.dtype == want.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["mlr", "poincare_conv2d_wide"])
def test_autocast_under_torch_compile(name):
    """The same under torch.compile(fullgraph=True): the traced composition (mlr's matmul) stays in float32."""
    f, args = _AC[name]
    want = f(*args)
    torch._dynamo.reset()
    cf = torch.compile(f, fullgraph=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = cf(*args)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_gaunt_weights_export_with_a_dynamic_batch():
    """gaunt_tensor_product with (C, L+1) weights (nn.GauntTensorProduct's) compared the weights' leading shape (C,)
    with the batch's (B, C) element by element, a guard B != C: torch.export with a dynamic batch failed ("Not all
    values of batch ... satisfy the generated guard"), torch.compile(dynamic=True) recompiled at B == C."""
    C = 2
    w1, w2, wo = torch.rand(C, 2) + 0.5, torch.rand(C, 2) + 0.5, torch.rand(C, 2) + 0.5

    class M(torch.nn.Module):
        def forward(self, a, b):
            return gg.gaunt_tensor_product(a, b, 1, weight1=w1, weight2=w2, weight_out=wo)

    batch = torch.export.Dim("batch", min=1, max=1024)
    ep = torch.export.export(M(), (torch.randn(5, C, 4), torch.randn(5, C, 4)), dynamic_shapes=({0: batch}, {0: batch}))
    for B in (2, 7):
        a, b = torch.randn(B, C, 4), torch.randn(B, C, 4)
        torch.testing.assert_close(ep.module()(a, b), M()(a, b))


_CURV_OPS = {
    "poincare_fc": lambda x, c: gp.poincare_fc(x, x[:4].t().contiguous() * 0.5, None, c=c),
    "mlr": lambda x, c: gp.mlr(x, x[:3].t().contiguous() * 0.5, torch.full((3,), 0.1, dtype=F64), c=c),
    "expmap0": lambda x, c: gp.expmap0(x, c=c),
    "poincare_relu": lambda x, c: gp.poincare_relu(x, c=c, dim=-1),
    "batch_norm": lambda x, c: gp.batch_norm(x, torch.full((4,), 0.1, dtype=F64), torch.tensor(1.0, dtype=F64), c=c,
                                             training=True),
    "mobius_linear": lambda x, c: gp.mobius_linear(x, x[:4] * 0.5, None, c=c),
}


@pytest.mark.parametrize("name", sorted(_CURV_OPS))
def test_poincare_vmap_over_the_curvature(name):
    """vmap over c (an ensemble of models with their own balls, torch.func.stack_module_state): the positivity check
    read the batched c with float() and vmap raised "calling .item() on a Tensor" (geoops.stereographic's ops take a
    batched k).  The check now reads the values under the vmap wrapper; a c <= 0 among them still raises."""
    f = _CURV_OPS[name]
    x, cs = _pts(5, 4, seed=8) * 0.5, torch.tensor([0.5, 1.0, 2.0], dtype=F64)  # (inside the c = 2 ball)
    got = vmap(lambda c: f(x, c))(cs)
    torch.testing.assert_close(got, torch.stack([f(x, c) for c in cs]), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="c must be > 0"):
        vmap(lambda c: f(x, c))(torch.tensor([0.5, -1.0], dtype=F64))
