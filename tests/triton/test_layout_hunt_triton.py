"""Session 38 hunt (helper "layouthunt"): the Triton kernels' stride handling (interpreter fixtures from conftest.py:
TRITON_INTERPRET=1 on the CPU, the triton backend forced for every test).  Each case compares a call on a strided /
expanded / offset / channels-last input (or with a strided / expanded grad_output) with the same call on
contiguous copies: the same bits, as the same kernel runs."""
import pytest
import torch

pytest.importorskip("triton")

import geoops.attention as ga  # noqa: E402
import geoops.poincare as gp  # noqa: E402
import geoops.ssm as gs  # noqa: E402
import geoops.stereographic as st  # noqa: E402


def _pts(*shape, scale=0.2, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype)


def _strided(t):
    """(name, t in another layout): every other entry of the last dim, a transposed storage, a storage offset,
    row 0 expanded over the rows, channels last (4-D)."""
    b = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
    b[..., ::2] = t
    yield "step-2", b[..., ::2]
    if t.dim() >= 2:
        yield "transposed", t.transpose(-1, -2).contiguous().transpose(-1, -2)
        yield "expanded-row", t[..., :1, :].expand(t.shape)
    buf = torch.zeros(t.numel() + 3, dtype=t.dtype)
    v = buf[3:].view(t.shape)
    v.copy_(t)
    yield "storage-offset", v
    if t.dim() == 4:
        yield "channels-last", t.contiguous(memory_format=torch.channels_last)


def _check(fn, args, which=None):
    """fn with each argument (or those in `which`) in each layout, and with strided / expanded grad_outputs, equal
    (bitwise) to fn on contiguous copies: outputs and the gradients of every floating argument."""
    plain = [a.detach().contiguous() for a in args]

    def run(ins, g=None):
        ins = [a.detach().requires_grad_() for a in ins]
        out = fn(*ins)
        if g is None:
            g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
        return out.detach(), torch.autograd.grad(out, ins, g, allow_unused=True), g

    ref, rgrads, g = run(plain)
    for gname, gw in (("expanded", torch.ones((), dtype=g.dtype).expand(g.shape)),
                      ("transposed", g.transpose(-1, -2).contiguous().transpose(-1, -2))):
        _, want, _ = run(plain, gw.contiguous())
        _, got, _ = run(plain, gw)
        for a, b in zip(got, want):
            assert (a is None and b is None) or torch.equal(a, b), f"grad_output {gname}"
    for i in (range(len(args)) if which is None else which):
        for name, w in _strided(plain[i]):
            ins, cins = list(plain), list(plain)
            ins[i], cins[i] = w, w.contiguous()
            out, grads, _ = run(ins, g)
            if torch.equal(cins[i], plain[i]):  # the same values: the contiguous call is the first one (ref)
                cout, cgrads = ref, rgrads
            else:  # expanded-row: other values
                cout, cgrads, _ = run(cins, g)
            assert torch.equal(out, cout), f"arg {i} {name}: output"
            for j, (a, b) in enumerate(zip(grads, cgrads)):
                assert (a is None and b is None) or torch.equal(a, b), f"arg {i} {name}: grad of arg {j}"


@pytest.mark.parametrize("op", ["mobius_add", "dist"])
def test_stereographic_broadcast_strided(device, op):
    """x (1, D) broadcast against y (N, D), x strided: the row-group route of the C++ backend read such x wrong;
    the Triton rows take their strides."""
    fn = getattr(st, op)
    k = torch.tensor(-1.0)
    x0, y0 = _pts(1, 6, seed=1).to(device), _pts(5, 6, seed=2).to(device)
    wide = torch.zeros(1, 12, device=device)
    wide[:, ::2] = x0
    torch.testing.assert_close(fn(wide[:, ::2], y0, k=k), fn(x0.expand(5, 6).contiguous(), y0, k=k), rtol=0, atol=0)


def test_stereographic_layouts(device):
    x, y = _pts(5, 6, seed=1).to(device), _pts(5, 6, seed=2).to(device)
    k = torch.full((5, 1), -1.0, device=device)
    _check(lambda a, b, kk: st.mobius_add(a, b, k=kk), (x, y, k), which=(0, 2))


def test_pairwise_layouts(device):
    x, y = _pts(4, 6, seed=1).to(device), _pts(5, 6, seed=2).to(device)
    k = torch.tensor(-1.0)
    _check(lambda a, b: st.cdist(a, b, k=k), (x, y), which=(0,))
    _check(lambda a, b: st.knn(a, b, 2, k=k)[0], (x, y), which=(1,))


def test_poincare_image_layouts(device):
    k = torch.tensor(-0.8)
    img = st.project(_pts(1, 3, 4, 2, scale=0.3), k=k).permute(0, 3, 1, 2).contiguous().to(device)
    _check(lambda a: gp.poincare_relu(a, c=0.8, dim=1), (img,))


def test_attention_layouts(device):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 4, 4, generator=g).to(device)
    k1, k2 = torch.randn(1, 1, 5, 4, generator=g).to(device), torch.randn(1, 1, 3, 4, generator=g).to(device)
    v1, v2 = torch.randn(1, 1, 5, 3, generator=g).to(device), torch.randn(1, 1, 3, 3, generator=g).to(device)
    _check(lambda *a: ga.triple_attention(*a, window=2), (q, k1, k2, v1, v2), which=(0,))


@pytest.mark.parametrize("kw", [{"window": 2}, {"causal": True}])
def test_attention_no_queries_backward(device, kw):
    q = torch.randn(2, 2, 0, 4, device=device, requires_grad=True)
    kv = [torch.randn(2, 1, m, d, device=device, requires_grad=True) for m, d in ((5, 4), (3, 4), (5, 3), (3, 3))]
    ga.triple_attention(q, *kv, **kw).sum().backward()
    for t in kv:
        assert torch.equal(t.grad, torch.zeros_like(t))


def test_fftconv_layouts(device):
    g = torch.Generator().manual_seed(0)
    u, k, D = (torch.randn(*s, generator=g).to(device) for s in ((2, 3, 8), (3, 8), (3,)))
    _check(lambda a, b, d: gs.fftconv(a, b, d), (u, k, D), which=(0, 1))


@pytest.mark.parametrize("kv", [-1.0, 0.7])
def test_cdist_empty_batch_backward(device, kv):
    """A batch of size 0 ((0, N, D) points): the backward's column-split heuristic divided by its 0 programs
    (ZeroDivisionError on the GPU as in the interpreter); the gradients are empty, as the C++ backend's."""
    x = torch.randn(0, 3, 4, device=device, requires_grad=True)
    y = torch.randn(0, 5, 4, device=device, requires_grad=True)
    k = torch.tensor(kv, device=device, requires_grad=True)
    out = st.cdist(x, y, k=k)
    assert out.shape == (0, 3, 5)
    gx, gy, gk = torch.autograd.grad(out.sum(), (x, y, k))
    assert gx.shape == x.shape and gy.shape == y.shape and torch.equal(gk, torch.zeros_like(k))
