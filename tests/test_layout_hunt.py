"""Session 38 hunt (helper "layouthunt"): memory layout and aliasing over the five families, CPU backend and
reference.

Each layout case compares a call on a strided / expanded / offset / channels-last / conjugate-bit input (or
with a strided / expanded grad_output) with the same call on contiguous copies: bitwise where the same kernel
runs.  Aliasing cases check that one tensor passed twice gets the sum of both uses' gradients, that in-place
changes of outputs or inputs under autograd give the right gradient or torch's error, never a silently wrong
one.  Defects found (each test below named after it failed before its fix):

* triple_attention's C++ backward divided by zero (SIGFPE, the process died) for a windowed call with no
  queries (N = 0): the windowed tile grouping divided by the tiles per group, 0 there.
* batch_norm / batch_norm2d with no features (D = 0 / C = 0): the forward ran and the backward failed inside
  autograd (an invalid gradient shape), or the 2-D path failed in a reshape; now a clear ValueError up front,
  as the other image layers give.
* max_pool2d with no channels: torch's max-pool message about 3-D / 4-D input; now the clear ValueError of
  avg_pool2d / conv.
* reference.attention.triple_attention with D = 0 and the default scale raised ZeroDivisionError (the public
  function uses scale 1 there, the empty dot product being 0 anyway).
"""
from __future__ import annotations

import pytest
import torch

import geoops
import geoops.attention as ga
import geoops.gaunt as gg
import geoops.poincare as gp
import geoops.ssm as gs
import geoops.stereographic as st
from geoops import _backend
from geoops.reference import attention as ref_att

needs_cpp = pytest.mark.skipif(_backend.compiled() is None, reason="geoops._C (the C++ CPU kernels) is not built")


# ---------------------------------------------------------------- helpers
def _layouts(t: torch.Tensor):
    """(name, tensor equal to t in another memory layout)."""
    g = torch.Generator().manual_seed(7)

    def rnd(*shape):
        if t.is_complex():
            return torch.randn(*shape, dtype=t.dtype, generator=g)
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(t.dtype)

    if t.dim() >= 2:
        yield "transposed", t.transpose(-1, -2).contiguous().transpose(-1, -2)
        b = rnd(*t.shape[:-2], 2 * t.shape[-2], t.shape[-1])
        b[..., ::2, :] = t
        yield "every-other-row", b[..., ::2, :]
        if t.shape[-2] > 1:
            yield "expanded-row", t[..., :1, :].expand(t.shape)
    if t.dim() >= 1:
        w = rnd(*t.shape[:-1], t.shape[-1] + 3)
        w[..., 1:1 + t.shape[-1]] = t
        yield "column-slice", w[..., 1:1 + t.shape[-1]]
        b = rnd(*t.shape[:-1], 3 * t.shape[-1])
        b[..., ::3] = t
        yield "step-3", b[..., ::3]
        buf = rnd(t.numel() + 5)
        v = buf[5:].view(t.shape)
        v.copy_(t)
        yield "storage-offset", v
        for d in range(t.dim()):
            if t.shape[d] == 1:
                s = list(t.stride())
                s[d] = 999
                yield f"size1-odd-stride{d}", t.as_strided(t.shape, s, t.storage_offset())
    if t.dim() == 4:
        yield "channels-last", t.contiguous(memory_format=torch.channels_last)
        yield "channels-last-step", torch.cat([t, t], 1).contiguous(memory_format=torch.channels_last)[:, ::2]
    if t.is_complex():
        yield "conj-bit", t.conj().resolve_conj().conj()


def _grad_outs(o: torch.Tensor):
    yield "expanded-scalar", torch.ones((), dtype=o.dtype).expand(o.shape)
    g = torch.randn(o.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(o.dtype)
    if o.dim() >= 2:
        yield "transposed", g.transpose(-1, -2).contiguous().transpose(-1, -2)
        b = torch.zeros(*o.shape[:-1], 2 * o.shape[-1], dtype=o.dtype)
        b[..., ::2] = g
        yield "step-2", b[..., ::2]
        yield "expanded-row", g[..., :1, :].expand(o.shape)
    if o.dim() == 4:
        yield "channels-last", g.contiguous(memory_format=torch.channels_last)


def _eval(fn, args, diff, gout=None):
    ins = [a.detach().requires_grad_(i in diff) if i in diff else a.detach() for i, a in enumerate(args)]
    out = fn(*ins)
    out = out[0] if isinstance(out, tuple) else out
    if gout is None:
        return out.detach(), None
    return out.detach(), torch.autograd.grad(out, [ins[i] for i in diff], gout, allow_unused=True)


def _same(a, b, what, exact):
    assert (a is None) == (b is None), what
    if a is None:
        return
    assert a.shape == b.shape, what
    if exact:
        assert torch.equal(a, b), f"{what}: max |diff| {(a - b).abs().max().item():.3e}"
    else:
        torch.testing.assert_close(a, b, msg=what)


def _check_layouts(fn, args, exact=True, skip=()):
    """fn on each argument in each layout (and with each grad_output layout) == fn on contiguous copies."""
    diff = [i for i, a in enumerate(args) if a.is_floating_point() or a.is_complex()]
    contig = [a.detach().contiguous() for a in args]
    out, _ = _eval(fn, contig, diff)
    for gname, g in _grad_outs(out):
        _, want = _eval(fn, contig, diff, g.contiguous())
        _, got = _eval(fn, contig, diff, g)
        for j, (a, b) in enumerate(zip(got, want)):
            _same(a, b, f"grad_output {gname}: grad of arg {diff[j]}", exact)
    for i, a in enumerate(args):
        for lname, w in _layouts(a.detach()):
            if lname in skip:
                continue
            weird, plain = list(contig), list(contig)
            weird[i], plain[i] = w, w.contiguous()
            g = torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(out.dtype)
            o1, g1 = _eval(fn, weird, diff, g)
            o2, g2 = _eval(fn, plain, diff, g)
            _same(o1, o2, f"arg {i} {lname}: output", exact)
            for j, (x1, x2) in enumerate(zip(g1, g2)):
                _same(x1, x2, f"arg {i} {lname}: grad of arg {diff[j]}", exact)


def _pts(*shape, scale=0.2, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype)


# ---------------------------------------------------------------- defects
@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kw", [{"window": 2}, {"window": (1, 3)}, {"causal": True}, {}])
def test_attention_no_queries_backward(dtype, kw):
    """N = 0 queries: the output and dq are empty, dk / dv are zeros.  The windowed C++ backward divided by the
    tiles per group (0 without queries): SIGFPE killed the process."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 2, 0, 4, generator=g, dtype=dtype, requires_grad=True)
    kv = [torch.randn(2, 1, m, d, generator=g, dtype=dtype, requires_grad=True)
          for m, d in ((5, 4), (3, 4), (5, 3), (3, 3))]
    out = ga.triple_attention(q, *kv, **kw)
    assert out.shape == (2, 2, 0, 3)
    out.sum().backward()
    assert q.grad.shape == q.shape
    for t in kv:
        assert torch.equal(t.grad, torch.zeros_like(t))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_batch_norm_no_features_is_refused(dtype, backend):
    """batch_norm of (N, 0) rows ran forward and failed in autograd's backward ("returned an invalid gradient");
    batch_norm2d of a (B, 0, H, W) image failed in a reshape.  Both now refuse D = 0 up front, naming x."""
    w = torch.tensor(1.0, dtype=dtype)
    with geoops.use_backend(backend):
        with pytest.raises(ValueError, match=r"batch_norm: x must have at least one"):
            gp.batch_norm(torch.zeros(6, 0, dtype=dtype), torch.zeros(0, dtype=dtype), w, c=1.0)
        for fmt in (torch.contiguous_format, torch.channels_last):
            x = torch.zeros(2, 0, 3, 4, dtype=dtype).contiguous(memory_format=fmt)
            with pytest.raises(ValueError, match=r"batch_norm2d: x must have at least one"):
                gp.batch_norm2d(x, torch.zeros(0, dtype=dtype), w, c=1.0)


def test_max_pool_no_channels_is_refused():
    """max_pool2d of a channel-less image: torch's max-pool error about 3-D / 4-D input before; now the clear
    error avg_pool2d and poincare_conv2d give."""
    with pytest.raises(ValueError, match=r"max_pool2d: x must have at least one channel"):
        gp.max_pool2d(torch.zeros(2, 0, 4, 4), c=1.0, kernel_size=2)


def test_reference_attention_no_features_default_scale():
    """The reference with D = 0 and scale=None raised ZeroDivisionError (0 ** -0.5); the public function uses
    scale 1 there (every score is the empty sum 0): the reference now agrees with it."""
    g = torch.Generator().manual_seed(0)
    q, k1, k2 = (torch.randn(1, 1, n, 0, generator=g) for n in (3, 4, 2))
    v1, v2 = torch.randn(1, 1, 4, 2, generator=g), torch.randn(1, 1, 2, 2, generator=g)
    got = ref_att.triple_attention(q, k1, k2, v1, v2)
    got = got[0] if isinstance(got, tuple) else got
    torch.testing.assert_close(got, ga.triple_attention(q, k1, k2, v1, v2))


# ---------------------------------------------------------------- layouts: same bits as contiguous copies
_ST_OPS = {
    "mobius_add": (lambda a, b, k: st.mobius_add(a, b, k=k), 2),
    "logmap": (lambda a, b, k: st.logmap(a, b, k=k), 2),
    "dist_keepdim": (lambda a, b, k: st.dist(a, b, k=k, keepdim=True), 2),
    "project": (lambda a, k: st.project(a, k=k), 1),
    "expmap0": (lambda a, k: st.expmap0(a, k=k), 1),
    "mobius_scalar_mul": (lambda r, a, k: st.mobius_scalar_mul(r, a, k=k), 2),
}


@needs_cpp
@pytest.mark.parametrize("op", sorted(_ST_OPS))
@pytest.mark.parametrize("kv", [-1.0, 0.7])
@pytest.mark.parametrize("krow", [False, True], ids=["k-scalar", "k-per-row"])
def test_stereographic_layouts(op, kv, krow):
    fn, n = _ST_OPS[op]
    x, y = _pts(5, 7, seed=1), _pts(5, 7, seed=2)
    if op == "project":
        x = x * 8  # rows outside the ball: the scaling branch
    k = torch.tensor(kv, dtype=torch.float64)
    if krow:
        k = k + 0.01 * _pts(5, 1, seed=3)
    if op == "mobius_scalar_mul":
        args = (torch.rand(5, 1, dtype=torch.float64), x, k)
    else:
        args = (x, y, k) if n == 2 else (x, k)
    _check_layouts(fn, args)


@needs_cpp
@pytest.mark.parametrize("kv", [-1.0, 0.0, 0.7])
def test_pairwise_layouts(kv):
    """cdist and knn (its distances; the indices have no gradient).  A storage offset of a GEMM operand can change
    the BLAS kernel's blocking (last-bit differences of torch.mm itself): compared to round-off there."""
    x, y = _pts(5, 6, seed=1), _pts(7, 6, seed=2)
    k = torch.tensor(kv, dtype=torch.float64)
    _check_layouts(lambda a, b, kk: st.cdist(a, b, k=kk), (x, y, k), skip=("storage-offset",))
    _check_layouts(lambda a, b, kk: st.knn(a, b, 3, k=kk), (x, y, k), skip=("storage-offset",))
    _check_layouts(lambda a, b, kk: st.cdist(a, b, k=kk), (x, y, k), exact=False)


def _image(dtype=torch.float64, seed=0):
    k = torch.tensor(-0.8, dtype=dtype)
    return st.project(_pts(2, 4, 5, 3, scale=0.3, dtype=dtype, seed=seed), k=k).permute(0, 3, 1, 2).contiguous()


_PC_IMG = {
    "relu": lambda x: gp.poincare_relu(x, c=0.8, dim=1),
    "max_pool2d": lambda x: gp.max_pool2d(x, c=0.8, kernel_size=2),
    "avg_pool2d": lambda x: gp.avg_pool2d(x, c=0.8, kernel_size=2),
    "flatten": lambda x: gp.flatten(x, c=0.8),
    "unfold": lambda x: gp.poincare_unfold(x, c=0.8, kernel_size=2, padding=1),
}


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("op", sorted(_PC_IMG) + ["conv2d", "batch_norm2d"])
def test_poincare_image_layouts(op, dtype):
    """The image layers on channels-last, strided, offset and expanded images, and with channels-last / strided /
    expanded grad_outputs (the C++ routes take channels-last images as free row views)."""
    x = _image(dtype)
    if op == "conv2d":
        z, b = _pts(12, 2, scale=0.3, dtype=dtype, seed=4), _pts(2, scale=0.1, dtype=dtype, seed=5)
        _check_layouts(lambda a, zz, bb: gp.poincare_conv2d(a, zz, bb, c=0.8, kernel_size=2, padding=1), (x, z, b))
    elif op == "batch_norm2d":
        b, w = _pts(3, scale=0.05, dtype=dtype, seed=6), torch.tensor(1.2, dtype=dtype)
        _check_layouts(lambda a, bb, ww: gp.batch_norm2d(a, bb, ww, c=0.8), (x, b, w))
    else:
        _check_layouts(_PC_IMG[op], (x,))


@needs_cpp
@pytest.mark.parametrize("op", ["fc", "mlr", "relu", "batch_norm", "mobius_linear", "transp"])
def test_poincare_row_layouts(op):
    x = _pts(6, 4, seed=1)
    z, b = _pts(4, 3, scale=0.5, seed=2), _pts(3, scale=0.1, seed=3)
    if op == "fc":
        _check_layouts(lambda a, zz, bb: gp.poincare_fc(a, zz, bb, c=0.8), (x, z, b))
    elif op == "mlr":
        _check_layouts(lambda a, zz, bb: gp.mlr(a, zz, bb, c=0.8), (x, z, b))
    elif op == "relu":
        _check_layouts(lambda a: gp.poincare_relu(a, c=0.8), (x,))
    elif op == "batch_norm":
        _check_layouts(lambda a, bb, w: gp.batch_norm(a, bb, w, c=0.8), (x, _pts(4, scale=0.05, seed=4),
                                                                           torch.tensor(1.2, dtype=torch.float64)))
    elif op == "mobius_linear":
        _check_layouts(lambda a, w, bb: gp.mobius_linear(a, w, bb, c=0.8), (x, _pts(3, 4, scale=0.3, seed=5), b))
    else:
        _check_layouts(lambda a, bb, v: gp.transp(a, bb, v, c=0.8), (x, x.flip(0), 2 * x))


@needs_cpp
@pytest.mark.parametrize("route", ["grid", "direct", "fft"])
def test_gaunt_layouts(route):
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(4, 9, generator=g, dtype=torch.float64), torch.randn(4, 16, generator=g, dtype=torch.float64)
    w1, w2, wo = (torch.randn(4, n, generator=g, dtype=torch.float64) for n in (3, 4, 4))
    _check_layouts(lambda a, b, c, d, e: gg.gaunt_tensor_product(a, b, 3, weight1=c, weight2=d, weight_out=e,
                                                                 route=route), (x1, x2, w1, w2, wo))


@needs_cpp
@pytest.mark.parametrize("kw", [{}, {"causal": True}, {"window": 2}])
def test_attention_layouts(kw):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 2, 5, 4, generator=g, dtype=torch.float64)
    k1, k2, v1, v2 = (torch.randn(2, 1, m, d, generator=g, dtype=torch.float64)
                      for m, d in ((6, 4), (3, 4), (6, 3), (3, 3)))
    _check_layouts(lambda *a: ga.triple_attention(*a, **kw), (q, k1, k2, v1, v2))


def _ssm_params(rdt=torch.float64, cdt=torch.complex128, H=3, N=4):
    g = torch.Generator().manual_seed(0)
    log_dt = -3 * torch.rand(H, generator=g, dtype=rdt)
    A = torch.complex(-torch.rand(H, N, generator=g, dtype=rdt) - 0.1,
                      torch.randn(H, N, generator=g, dtype=rdt)).to(cdt)
    B, C = torch.randn(H, N, generator=g, dtype=cdt), torch.randn(2, H, N, generator=g, dtype=cdt)
    return log_dt, A, B, C


@needs_cpp
@pytest.mark.parametrize("op", ["vandermonde", "discretize_v", "discretize_x", "s4d_kernel", "fftconv", "ssm_conv"])
def test_ssm_layouts(op):
    """Strided, offset, expanded and conjugate-bit (x.conj() of a conjugated tensor: torch's lazy conjugation)
    complex parameters; strided real signals and kernels."""
    log_dt, A, B, C = _ssm_params()
    g = torch.Generator().manual_seed(1)
    u, k, D = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((2, 3, 10), (2, 3, 10), (2, 3)))
    if op == "vandermonde":
        _check_layouts(lambda v, x: gs.vandermonde(v, x, 10), (C, A))
    elif op == "discretize_v":
        _check_layouts(lambda *a: gs.discretize(*a)[0], (log_dt, A, B, C))
    elif op == "discretize_x":
        _check_layouts(lambda *a: gs.discretize(*a, "bilinear")[1], (log_dt, A, B, C[0]))
    elif op == "s4d_kernel":
        _check_layouts(lambda *a: gs.s4d_kernel(*a, 10), (log_dt, A, B, C))
    elif op == "fftconv":
        _check_layouts(lambda a, b, d: gs.fftconv(a, b, d), (u, k, D))
    else:
        _check_layouts(lambda a, *p: gs.ssm_conv(a, *p, bidirectional=True), (u, log_dt, A, B, C, D[0]))


# ---------------------------------------------------------------- aliasing
def _twice(fn, x0):
    """fn(x, x) against fn(a, b) on two copies: the same output, and x's gradient the sum of a's and b's."""
    x = x0.clone().requires_grad_()
    out = fn(x, x)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=out.dtype)
    gx, = torch.autograd.grad(out, x, g)
    a, b = x0.clone().requires_grad_(), x0.clone().requires_grad_()
    out2 = fn(a, b)
    ga, gb = torch.autograd.grad(out2, (a, b), g)
    assert torch.equal(out, out2)
    torch.testing.assert_close(gx, ga + gb, rtol=1e-12, atol=1e-12)


@needs_cpp
@pytest.mark.parametrize("kv", [-1.0, 0.7])
def test_one_tensor_twice_stereographic(kv):
    x = _pts(5, 7, seed=1)
    k = torch.tensor(kv, dtype=torch.float64)
    for fn in (lambda a, b: st.mobius_add(a, b, k=k), lambda a, b: st.dist(a, b, k=k),
               lambda a, b: st.logmap(a, b, k=k), lambda a, b: st.cdist(a, b, k=k),
               lambda a, b: st.knn(a, b, 3, k=k)[0]):
        _twice(fn, x)


@needs_cpp
def test_one_tensor_twice_other_families():
    x = _pts(4, 4, seed=1)
    _twice(lambda a, b: gp.mobius_add(a, b, c=0.8), x)
    _twice(lambda a, b: gp.transp(a, b, a, c=0.8), x)
    _twice(lambda a, b: gp.poincare_fc(a, b, None, c=0.8), x)
    c = torch.randn(4, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for route in ("grid", "direct", "fft"):
        _twice(lambda a, b: gg.gaunt_tensor_product(a, b, route=route), c)
        _twice(lambda a, b: gg.gaunt_product([a, b, a], 3, route=route), c)
    t = torch.randn(1, 2, 5, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for kw in ({}, {"window": 2}):
        _twice(lambda a, b: ga.triple_attention(t, a, b, t.flip(2), t.flip(3), **kw), t)  # k1 is k2
        _twice(lambda a, b: ga.triple_attention(t, t.flip(2), t.flip(3), a, b, **kw), t)  # v1 is v2
        _twice(lambda a, b: ga.triple_attention(a, b, t.flip(3), t.flip(2), t, **kw), t)  # q is k1


@needs_cpp
def test_fftconv_kernel_a_view_of_u():
    """k = u[0] (and D = u[0, :, 0]): both uses of u reach its gradient, as in the reference backend."""
    u0 = torch.randn(1, 3, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g = torch.randn(1, 3, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = {}
    for backend in ("cpp", "reference"):
        u = u0.clone().requires_grad_()
        with geoops.use_backend(backend):
            out = gs.fftconv(u, u[0], u[0, :, 0])
        got[backend] = (out.detach(), torch.autograd.grad(out, u, g)[0])
    torch.testing.assert_close(got["cpp"], got["reference"], rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- in-place changes under autograd
_INPLACE_CALLS = {
    "st.project": lambda x: st.project(x * 4, k=torch.tensor(-1.0, dtype=x.dtype)),
    "st.mobius_add": lambda x: st.mobius_add(x, x.flip(0), k=torch.tensor(-1.0, dtype=x.dtype)),
    "st.dist0": lambda x: st.dist0(x, k=torch.tensor(0.7, dtype=x.dtype)),
    "st.knn": lambda x: st.knn(x, x.flip(0) * 0.9, 2, k=-1.0)[0],
    "pc.relu_image": lambda x: gp.poincare_relu(x.reshape(2, 3, 2, 2), c=0.8, dim=1),
    "pc.batch_norm": lambda x: gp.batch_norm(x, torch.zeros(4, dtype=x.dtype), torch.tensor(1.1, dtype=x.dtype), c=0.8),
    "gaunt": lambda x: gg.gaunt_tensor_product(x[:, :4], x, route="direct"),
    "attention": lambda x: ga.triple_attention(*(x.reshape(1, 1, 6, 4),) * 5, window=2),
    "fftconv": lambda x: gs.fftconv(x.reshape(1, 4, 6), x.t()),
}


@needs_cpp
@pytest.mark.parametrize("name", sorted(_INPLACE_CALLS))
def test_inplace_on_output_right_or_refused(name):
    """out.mul_(2) / out.add_(1) then backward: the gradient of the composed function, or torch's error."""
    fn = _INPLACE_CALLS[name]
    x0 = _pts(6, 4, seed=1)
    for change in (lambda o: o.mul_(2), lambda o: o.add_(1), lambda o: o.pow_(2)):
        x = x0.clone().requires_grad_()
        out = fn(x)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(4), dtype=out.dtype)
        try:
            got, = torch.autograd.grad(change(out), x, g)
        except RuntimeError as e:
            assert "inplace" in str(e) or "in-place" in str(e) or "view" in str(e)
            continue
        xr = x0.clone().requires_grad_()
        want, = torch.autograd.grad(change(fn(xr).clone()), xr, g)
        torch.testing.assert_close(got, want)


@needs_cpp
@pytest.mark.parametrize("name, fmt",
                         [(n, "rows") for n in sorted(_INPLACE_CALLS)] + [("pc.relu_image", "channels-last")])
def test_inplace_on_input_after_forward(name, fmt):
    """An input changed in place between the forward and the backward: torch's error where the backward reads
    it, else the gradient at the values the forward saw (never one at the changed values)."""
    fn = _INPLACE_CALLS[name]
    if fmt == "channels-last":  # (the pixel rows are a free view of the image: saved as such)
        fn = lambda x: gp.poincare_relu(x, c=0.8, dim=1)  # noqa: E731
        x0 = _image()
    else:
        x0 = _pts(6, 4, seed=1)
    x = x0.clone().requires_grad_()
    xx = x * 1.0
    if fmt == "channels-last":
        xx = xx.contiguous(memory_format=torch.channels_last)
    out = fn(xx)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(4), dtype=out.dtype)
    with torch.no_grad():
        xx.mul_(0.5)
    try:
        got, = torch.autograd.grad(out, x, g)
    except RuntimeError as e:
        assert "inplace" in str(e) or "in-place" in str(e) or "modified" in str(e)
        return
    xr = x0.clone().requires_grad_()
    want, = torch.autograd.grad(fn(xr * 1.0), xr, g)
    torch.testing.assert_close(got, want)


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("op", ["mobius_add", "dist", "logmap"])
@pytest.mark.parametrize("xshape, yshape", [((1, 6), (5, 6)), ((6,), (5, 6)), ((2, 1, 6), (2, 4, 6))])
def test_broadcast_rows_with_strided_vectors(op, dtype, xshape, yshape):
    """x's rows repeated in the broadcast ((..., 1, D) against y of the broadcast shape: the row-group kernels)
    with x's vector entries not adjacent (x[..., ::2] of a wider tensor, a transposed x): the row-group copy read
    x's rows as if their entries were adjacent, a silently wrong result (and gradient)."""
    fn = getattr(st, op)
    k = torch.tensor(-1.0, dtype=dtype)
    x0, y0 = _pts(*xshape, dtype=dtype, seed=1), _pts(*yshape, dtype=dtype, seed=2)
    wide = torch.zeros(*xshape[:-1], 2 * xshape[-1], dtype=dtype)
    wide[..., ::2] = x0
    shape = torch.broadcast_shapes(xshape, yshape)
    g = _pts(*shape[:-1], *((shape[-1],) if op != "dist" else ()), dtype=dtype, seed=3)
    other = x0.transpose(-1, 0).contiguous().transpose(-1, 0)  # (3-D x: a transposed storage, last-dim stride 2)
    for x in (wide[..., ::2], other):
        for rg in (False, True):
            a = x.detach().requires_grad_(rg)
            a0 = x0.clone().requires_grad_(rg)
            out = fn(a, y0, k=k)
            want = fn(a0.expand(shape).contiguous(), y0, k=k)
            torch.testing.assert_close(out, want, rtol=0, atol=0)
            if rg:
                torch.testing.assert_close(torch.autograd.grad(out, a, g)[0], torch.autograd.grad(want, a0, g)[0])


@needs_cpp
@pytest.mark.parametrize("path", ["public", "compat"])
def test_riemannian_sgd_step_bumps_the_version(path):
    """The fused C++ step wrote x in place through its data pointer without telling autograd: a graph that saved
    x before the step then ran its backward at the stepped values, a silently wrong gradient, where torch's own
    optimizers' in-place updates raise the version error.  (Also geoops.compat's direct step of geoopt's
    RiemannianSGD.)"""
    from geoops import compat
    x = _pts(4, 3, seed=1).requires_grad_()
    g = _pts(4, 3, seed=2)
    loss = st.dist0(x, k=torch.tensor(-1.0, dtype=torch.float64)).sum()
    v0 = x._version
    with torch.no_grad():
        if path == "public":
            st.riemannian_sgd_step_(x, g, lr=0.1, k=-1.0)
        else:
            assert compat._direct_rsgd_step(x, g, torch.tensor(-1.0, dtype=torch.float64), -1.0, 0.1)
    assert x._version > v0
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
