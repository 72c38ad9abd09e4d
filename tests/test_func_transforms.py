"""torch.func transforms (grad, vmap, jacrev) over the public ops of the ssm, attention and gaunt families.

geoops._library.func_twin gives each family's autograd.Function a torch.func variant and define_op gives
every custom op a vmap rule (geoops._library.loop_vmap); these tests hold the transformed geoops ops to the
same transforms of the eager reference compositions.  (geoops.stereographic has its own, folded vmap rules:
tests/test_stereographic_func.py.)
"""
import pytest
import torch
from torch.func import grad, jacrev, vmap

import geoops
import geoops.attention as ga
import geoops.gaunt as gg
import geoops.ssm as ssm
from geoops.reference import attention as ra
from geoops.reference import gaunt as rg
from geoops.reference import ssm as rs

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _close(a, b, tol=1e-9):
    scale = b.abs().max().clamp_min(1e-30)
    assert (a - b).abs().max() / scale < tol, ((a - b).abs().max() / scale).item()


def _ssm_params(H=3, N=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    log_dt = torch.rand(H, generator=g, dtype=torch.float64) * -3 - 1
    A = torch.complex(-0.5 - torch.rand(H, N, generator=g, dtype=torch.float64),
                      torch.randn(H, N, generator=g, dtype=torch.float64))
    B = torch.complex(torch.randn(H, N, generator=g, dtype=torch.float64), torch.randn(H, N, generator=g, dtype=torch.float64))
    C = torch.complex(torch.randn(H, N, generator=g, dtype=torch.float64), torch.randn(H, N, generator=g, dtype=torch.float64))
    return log_dt, A, B, C


def test_fftconv_grad_and_vmap():
    g = torch.Generator().manual_seed(1)
    u = torch.randn(4, 2, 3, 11, generator=g, dtype=torch.float64)
    k = torch.randn(3, 11, generator=g, dtype=torch.float64)
    D = torch.randn(3, generator=g, dtype=torch.float64)
    f = lambda kk, uu: (ssm.fftconv(uu, kk, D) ** 2).sum()
    fr = lambda kk, uu: (rs.fftconv(uu, kk, D) ** 2).sum()
    _close(grad(f)(k, u[0]), grad(fr)(k, u[0]))
    # per-sample gradients: vmap over the batch of inputs, grad to the shared kernel
    _close(vmap(grad(f), in_dims=(None, 0))(k, u), vmap(grad(fr), in_dims=(None, 0))(k, u))
    _close(vmap(lambda uu: ssm.fftconv(uu, k, D))(u), torch.stack([rs.fftconv(x, k, D) for x in u]))


def test_s4d_kernel_and_ssm_conv_grad():
    log_dt, A, B, C = _ssm_params()
    u = torch.randn(2, 3, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    f = lambda ld: (ssm.s4d_kernel(ld, A, B, C, 9) ** 2).sum()
    fr = lambda ld: (rs.s4d_kernel(ld, A, B, C, 9) ** 2).sum()
    _close(grad(f)(log_dt), grad(fr)(log_dt))
    h = lambda ld: (ssm.ssm_conv(u, ld, A, B, C, None) ** 2).sum()
    hr = lambda ld: (rs.ssm_conv(u, ld, A, B, C, None) ** 2).sum()
    _close(grad(h)(log_dt), grad(hr)(log_dt))
    _close(jacrev(lambda ld: ssm.s4d_kernel(ld, A, B, C, 5))(log_dt),
           jacrev(lambda ld: rs.s4d_kernel(ld, A, B, C, 5))(log_dt))


def test_triple_attention_grad_vmap_and_nested_raises():
    g = torch.Generator().manual_seed(5)
    q, k1, k2, v1, v2 = (torch.randn(3, 1, 2, 6, 4, generator=g, dtype=torch.float64) for _ in range(5))
    f = lambda a, b: (ga.triple_attention(a, b, k2[0], v1[0], v2[0]) ** 2).sum()
    fr = lambda a, b: (ra.triple_attention(a, b, k2[0], v1[0], v2[0]) ** 2).sum()
    for x, y in zip(grad(f, argnums=(0, 1))(q[0], k1[0]), grad(fr, argnums=(0, 1))(q[0], k1[0])):
        _close(x, y)
    _close(vmap(ga.triple_attention)(q, k1, k2, v1, v2),
           torch.stack([ra.triple_attention(*t) for t in zip(q, k1, k2, v1, v2)]))
    # per-sample gradients (the backward op under vmap), one input mapped, the others shared
    ps = vmap(grad(lambda a: (ga.triple_attention(a, k1[0], k2[0], v1[0], v2[0]) ** 2).sum()))(q)
    psr = vmap(grad(lambda a: (ra.triple_attention(a, k1[0], k2[0], v1[0], v2[0]) ** 2).sum()))(q)
    _close(ps, psr)
    with pytest.raises(RuntimeError, match="once-differentiable"):
        jacrev(grad(lambda a: f(a, k1[0])))(q[0])


def test_gaunt_grad_vmap_and_second_order():
    g = torch.Generator().manual_seed(7)
    x1 = torch.randn(4, 5, 9, generator=g, dtype=torch.float64)
    x2 = torch.randn(5, 9, generator=g, dtype=torch.float64)
    f = lambda a: (gg.gaunt_tensor_product(a, x2, 2) ** 2).sum()
    fr = lambda a: (rg.gaunt_tensor_product(a, x2, 2) ** 2).sum()
    _close(grad(f)(x1[0]), grad(fr)(x1[0]))
    _close(vmap(lambda a: gg.gaunt_tensor_product(a, x2, 2))(x1),
           torch.stack([rg.gaunt_tensor_product(a, x2, 2) for a in x1]))
    # a mapped per-degree weight with one row (broadcast over the rows inside the op), mapped on dim 1
    w = torch.rand(3, 4, generator=g, dtype=torch.float64)  # (L + 1, mapped)
    _close(vmap(lambda ww: gg.gaunt_tensor_product(x1[0], x2, 2, weight1=ww), in_dims=1)(w[:3]),
           torch.stack([rg.gaunt_tensor_product(x1[0], x2, 2, weight1=w[:3, i]) for i in range(4)]))
    # the Gaunt backward is itself a Gaunt product: second derivatives work under transforms too
    f2 = lambda a: (gg.gaunt_tensor_product(a, x2[:2], 2) ** 2).sum()
    fr2 = lambda a: (rg.gaunt_tensor_product(a, x2[:2], 2) ** 2).sum()
    _close(jacrev(grad(f2))(x1[0, :2]), jacrev(grad(fr2))(x1[0, :2]))


def test_fold_rules_make_one_kernel_call():
    """vmap over attention and gaunt folds the mapped dim into the kernel's batch: one call, not one per index."""
    from geoops._ops import gaunt as og
    calls = []
    real = og._fwd
    torch.library.register_kernel("geoops::gaunt_fwd", "cpu", lambda *a: calls.append(1) or real(*a))
    try:
        x = torch.randn(6, 5, 9, dtype=torch.float64)
        vmap(lambda a: gg.gaunt_tensor_product(a, a, 2))(x)
    finally:
        torch.library.register_kernel("geoops::gaunt_fwd", "cpu", real)
    assert len(calls) == 1, len(calls)


def test_outside_transforms_the_eager_function_runs():
    """The twin is only for transforms: eager calls keep the plain Function (its graph node names it)."""
    x = torch.randn(3, 9, dtype=torch.float64, requires_grad=True)
    u = torch.randn(2, 3, 7, dtype=torch.float64)
    y = ssm.fftconv(u, x[:, :7])
    names, stack = set(), [y.grad_fn]
    while stack:  # the graph's node names
        node = stack.pop()
        if node is not None:
            names.add(type(node).__name__)
            stack.extend(n for n, _ in node.next_functions)
    assert "FftconvFnBackward" in names and not any(n.startswith("FftconvFnFunc") for n in names), names
    assert not geoops._library.functorch_active()


def test_poincare_fc_and_relu_grad_and_vmap():
    import geoops.poincare as gp
    from geoops.reference import poincare as rp

    g = torch.Generator().manual_seed(11)
    x = (torch.rand(3, 5, 6, generator=g, dtype=torch.float64) - 0.5) * 0.3
    z = torch.randn(6, 4, generator=g, dtype=torch.float64)
    b = torch.randn(4, generator=g, dtype=torch.float64) * 0.1
    c = torch.tensor(0.7, dtype=torch.float64)
    f = lambda zz, xx: (gp.poincare_fc(xx, zz, b, c=c) ** 2).sum()
    fr = lambda zz, xx: (rp.poincare_fc(xx, zz, b, c) ** 2).sum()
    _close(grad(f)(z, x[0]), grad(fr)(z, x[0]))
    _close(vmap(grad(f), in_dims=(None, 0))(z, x), vmap(grad(fr), in_dims=(None, 0))(z, x))
    _close(vmap(lambda xx: gp.poincare_relu(xx, c=c))(x), torch.stack([rp.poincare_relu(xx, c) for xx in x]))
