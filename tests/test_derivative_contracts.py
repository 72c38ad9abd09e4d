"""Derivative contracts of every family's public ops, on every CPU backend.

A forward-mode derivative (``torch.func.jvp`` or ``torch.autograd.forward_ad`` dual tensors) and a second
derivative (``create_graph=True`` and differentiating the gradient again, with another term keeping the
gradient's graph alive) must each either be right (checked against central finite differences in float64) or
raise.  What these guard against: a custom op called outside its autograd.Function drops forward tangents
(a jvp of zeros), and a once-differentiable backward whose results have no graph makes the second derivative
silently miss the op's terms.
"""
import pytest
import torch
import torch.autograd.forward_ad as fwAD

import geoops
import geoops.attention as ga
import geoops.gaunt as gg
import geoops.poincare as gp
import geoops.ssm as ssm
import geoops.stereographic as gm

D64 = torch.float64


def _g(seed):
    return torch.Generator().manual_seed(seed)


def _ball(*shape, seed=0, scale=0.3):
    x = torch.randn(*shape, dtype=D64, generator=_g(seed))
    return x / (1 + x.norm(dim=-1, keepdim=True)) * scale * 2


def _ssm_params(H=3, N=2, seed=0):
    g = _g(seed)
    A = torch.complex(-0.5 - torch.rand(H, N, dtype=D64, generator=g), torch.randn(H, N, dtype=D64, generator=g))
    B = torch.complex(torch.randn(H, N, dtype=D64, generator=g), torch.randn(H, N, dtype=D64, generator=g))
    C = torch.complex(torch.randn(H, N, dtype=D64, generator=g), torch.randn(H, N, dtype=D64, generator=g))
    log_dt = torch.randn(H, dtype=D64, generator=g) * 0.3 - 2
    return log_dt, A, B, C


def _cases():
    """(id, f, args): f maps real float64 tensors to one real tensor; every arg is differentiated."""
    x, y, u = _ball(4, 3, seed=1), _ball(4, 3, seed=2), _ball(4, 3, seed=3)
    k = -1.0
    yield "stereographic.mobius_add", lambda a, b: gm.mobius_add(a, b, k=k), (x, y)
    yield "stereographic.expmap", lambda a, b: gm.expmap(a, b, k=k), (x, u)
    yield "stereographic.logmap", lambda a, b: gm.logmap(a, b, k=k), (x, y)
    yield "stereographic.dist", lambda a, b: gm.dist(a, b, k=k), (x, y)
    yield "stereographic.expmap0", lambda a: gm.expmap0(a, k=k), (u,)
    yield "stereographic.logmap0", lambda a: gm.logmap0(a, k=k), (y,)
    yield "stereographic.mobius_scalar_mul", lambda a: gm.mobius_scalar_mul(torch.tensor(0.7, dtype=D64), a, k=k), (x,)
    yield "stereographic.cdist", lambda a, b: gm.cdist(a, b, k=k), (x, _ball(5, 3, seed=4))
    m = torch.randn(2, 3, dtype=D64, generator=_g(5))
    yield "stereographic.mobius_matvec", lambda mm, a: gm.mobius_matvec(mm, a, k=k), (m, x)
    yield "stereographic.gyration", lambda a, b, c: gm.gyration(a, b, c, k=k), (x, y, u)
    yield "stereographic.parallel_transport", lambda a, b, c: gm.parallel_transport(a, b, c, k=k), (x, y, u)

    log_dt, A, B, C = _ssm_params()
    yield "ssm.s4d_kernel", lambda t: ssm.s4d_kernel(t, A, B, C, 7), (log_dt,)
    uu = torch.randn(2, 3, 7, dtype=D64, generator=_g(6))
    kk = torch.randn(3, 7, dtype=D64, generator=_g(7))
    dd = torch.randn(3, dtype=D64, generator=_g(8))
    yield "ssm.fftconv", lambda a, b, c: ssm.fftconv(a, b, c), (uu, kk, dd)
    yield "ssm.ssm_conv", lambda a, t, c: ssm.ssm_conv(a, t, A, B, C, c), (uu, log_dt, dd)

    x1 = torch.randn(3, 4, dtype=D64, generator=_g(9))
    x2 = torch.randn(3, 9, dtype=D64, generator=_g(10))
    yield "gaunt.gaunt_tensor_product", lambda a, b: gg.gaunt_tensor_product(a, b), (x1, x2)
    yield "gaunt.gaunt_power", lambda a: gg.gaunt_power(a, 3, lmax_out=2), (x1,)

    q, k1, k2, v1, v2 = (torch.randn(1, 1, 5, 4, dtype=D64, generator=_g(11 + i)) * 0.5 for i in range(5))
    yield "attention.triple_attention", lambda *t: ga.triple_attention(*t), (q, k1, k2, v1, v2)

    xp = _ball(4, 3, seed=20)
    z = torch.randn(3, 2, dtype=D64, generator=_g(21)) * 0.5
    bias = torch.randn(2, dtype=D64, generator=_g(22)) * 0.1
    yield "poincare.poincare_fc", lambda a, b, c: gp.poincare_fc(a, b, c, c=1.0), (xp, z, bias)
    yield "poincare.mlr", lambda a, b, c: gp.mlr(a, b, c, c=1.0), (xp, z, bias)
    yield "poincare.poincare_relu", lambda a: gp.poincare_relu(a, c=1.0), (xp,)


CASES = list(_cases())
IDS = [c[0] for c in CASES]
BACKENDS = ["auto", "reference"]
# families whose forward mode is documented to work (README "Use"): there it must not raise
FORWARD_MODE = ("stereographic.",)


def _fd_jvp(f, args, tans, h=1e-6):
    plus = f(*[a + h * t for a, t in zip(args, tans)])
    minus = f(*[a - h * t for a, t in zip(args, tans)])
    return (plus - minus) / (2 * h)


def _close(got, want, what):
    scale = max(1.0, float(want.abs().max()) if want.numel() else 1.0)
    err = float((got - want).abs().max()) if want.numel() else 0.0
    assert err <= 1e-5 * scale, f"{what}: max error {err:.3e} (scale {scale:.3e}): a silently wrong derivative"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("mode", ["func.jvp", "forward_ad"])
def test_forward_mode_right_or_raises(case, backend, mode):
    name, f, args = case
    tans = tuple(torch.randn(a.shape, dtype=D64, generator=_g(100 + i)) for i, a in enumerate(args))
    with geoops.use_backend(backend):
        try:
            if mode == "func.jvp":
                _, got = torch.func.jvp(f, args, tans)
            else:
                with fwAD.dual_level():
                    out = f(*[fwAD.make_dual(a, t) for a, t in zip(args, tans)])
                    got = fwAD.unpack_dual(out).tangent
                    if got is None:  # no tangent at all: the same silent zero
                        got = torch.zeros_like(fwAD.unpack_dual(out).primal)
        except (NotImplementedError, RuntimeError):
            if name.startswith(FORWARD_MODE):
                raise
            return  # refused: allowed
        want = _fd_jvp(f, args, tans)
    _close(got, want, f"{name} {mode} ({backend})")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_second_derivative_right_or_raises(case, backend):
    name, f, args = case
    w = None

    def grads(*xs, create_graph):
        nonlocal w
        out = f(*xs)
        if w is None:
            w = torch.randn(out.shape, dtype=D64, generator=_g(200))
        # the cubic term keeps the gradient's graph alive whatever the op does (the case once_differentiable's
        # error node alone misses)
        total = (out * w).sum() + sum((a ** 3).sum() for a in xs)
        return torch.autograd.grad(total, xs, create_graph=create_graph)

    vs = tuple(torch.randn(a.shape, dtype=D64, generator=_g(300 + i)) for i, a in enumerate(args))
    with geoops.use_backend(backend):
        xs = tuple(a.clone().requires_grad_() for a in args)
        try:
            gs = grads(*xs, create_graph=True)
            hv = torch.autograd.grad(sum((g * v).sum() for g, v in zip(gs, vs)), xs, allow_unused=True)
        except (NotImplementedError, RuntimeError):
            return  # refused: allowed
        h = 1e-5
        plus = grads(*[(a + h * v).requires_grad_() for a, v in zip(args, vs)], create_graph=False)
        minus = grads(*[(a - h * v).requires_grad_() for a, v in zip(args, vs)], create_graph=False)
    for i, (got, p, m) in enumerate(zip(hv, plus, minus)):
        want = (p - m) / (2 * h)
        got = torch.zeros_like(want) if got is None else got
        _close(got, want, f"{name} Hessian-vector product, argument {i} ({backend})")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_nested_transform_right_or_raises(case):
    """jacrev(jacrev(f)) along a direction (a Hessian-vector product through torch.func's nested levels, where a
    once-differentiable guard that counts levels missed the inner vjp's backward and returned zeros)."""
    name, f, args = case
    w = torch.randn(f(*args).shape, dtype=D64, generator=_g(400))
    vs = tuple(torch.randn(a.shape, dtype=D64, generator=_g(500 + i)) for i, a in enumerate(args))

    def scalar(*xs):
        return (f(*xs) * w).sum()

    def gdot(*xs):  # <grad scalar, v>
        gs = torch.func.grad(scalar, argnums=tuple(range(len(xs))))(*xs)
        return sum((g * v).sum() for g, v in zip(gs, vs))

    try:
        hv = torch.func.jacrev(gdot, argnums=tuple(range(len(args))))(*args)
    except (NotImplementedError, RuntimeError):
        return  # refused: allowed
    h = 1e-5
    g_at = lambda xs: torch.func.grad(scalar, argnums=tuple(range(len(xs))))(*xs)  # noqa: E731
    plus = g_at([a + h * v for a, v in zip(args, vs)])
    minus = g_at([a - h * v for a, v in zip(args, vs)])
    for i, (got, p, m) in enumerate(zip(hv, plus, minus)):
        _close(got, (p - m) / (2 * h), f"{name} nested jacrev(grad), argument {i}")
