"""torch.compile(fullgraph=True) of geoops ops called with one tensor in two argument places.

Dynamo (2.13) refuses ``autograd.Function.apply`` with the same tensor passed twice ("duplicate tensor input"), a
graph break: ``gaunt_power``, ``gaunt_product([a, b, a])``, ``mobius_add(x, x)``, ``dist(x, x)`` and
self-attention (``k1 is k2``) ran eagerly between graph fragments, and the Gaunt models re-traced frame by frame
(session 44).  geoops._library.distinct_inputs passes the repeats as views under torch.compile; each case compiles
with fullgraph=True (a graph break raises) and compares value and gradients with eager, whose autograd sums the
repeats' gradients, and with the same op on distinct copies (the sum of their gradients, computed independently).
"""
import pytest
import torch

import geoops._library as lib
import geoops.attention as ga
import geoops.gaunt as gg
import geoops.stereographic as st

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning"),
              pytest.mark.build_relative("compiled against eager in one build; the entry points it reads are read "
                                         "by each family's eager tests, which the portable stage runs")]
F64 = torch.float64
K = torch.tensor(-0.7, dtype=F64)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _leaf(*shape, seed=0, scale=1.0):
    return (torch.randn(*shape, dtype=F64, generator=_gen(seed)) * scale).requires_grad_()


def _att(q, k, v):
    return ga.triple_attention(q, k, k, v, v)


# name: (f with repeated tensors, the same with each repeat its own argument, inputs, how the repeats map to args)
CASES = {
    "gaunt_power": (lambda a: gg.gaunt_power(a, 3, 2),
                    lambda a, b, c: gg.gaunt_product([a, b, c], 2), lambda: (_leaf(3, 4),), (0, 0, 0)),
    "gaunt_product_aba": (lambda a, b: gg.gaunt_product([a, b, a]),
                          lambda a, b, c: gg.gaunt_product([a, b, c]), lambda: (_leaf(2, 4), _leaf(2, 9, seed=1)),
                          (0, 1, 0)),
    "gaunt_tensor_product_xx": (lambda a: gg.gaunt_tensor_product(a, a, 2),
                                lambda a, b: gg.gaunt_tensor_product(a, b, 2), lambda: (_leaf(3, 4),), (0, 0)),
    "mobius_add_xx": (lambda x: st.mobius_add(x, x, k=K), lambda x, y: st.mobius_add(x, y, k=K),
                      lambda: (_leaf(4, 3, scale=0.3),), (0, 0)),
    "dist_xy_yx": (lambda x, y: st.dist(x, y, k=K) + st.dist(x, x, k=K), None,
                   lambda: (_leaf(4, 3, scale=0.3), _leaf(4, 3, seed=1, scale=0.3)), None),
    "gyration_aau": (lambda a, u: st.gyration(a, a, u, k=K), lambda a, b, u: st.gyration(a, b, u, k=K),
                     lambda: (_leaf(4, 3, scale=0.3), _leaf(4, 3, seed=1, scale=0.3)), (0, 0, 1)),
    "attention_self": (lambda q: ga.triple_attention(q, q, q, q, q),
                       lambda q, a, b, c, d: ga.triple_attention(q, a, b, c, d), lambda: (_leaf(1, 2, 5, 4),),
                       (0, 0, 0, 0, 0)),
    "attention_k1k2_v1v2": (_att, lambda q, a, b, c, d: ga.triple_attention(q, a, b, c, d),
                            lambda: (_leaf(1, 2, 5, 4), _leaf(1, 2, 6, 4, seed=1), _leaf(1, 2, 6, 4, seed=2)),
                            (0, 1, 1, 2, 2)),
}


def _value_and_grads(f, args):
    out = f(*args)
    return out.detach(), torch.autograd.grad(out.square().sum(), args)


@pytest.mark.parametrize("name", CASES)
def test_repeated_inputs_compile_fullgraph(name):
    """No graph break (fullgraph=True raised "duplicate tensor input" before); value and gradients equal eager's and
    the sum of the gradients of the same op on distinct copies of the repeated tensor."""
    f, split, make, where = CASES[name]
    args = make()
    want, gwant = _value_and_grads(f, args)
    torch._dynamo.reset()
    got, ggot = _value_and_grads(torch.compile(f, fullgraph=True, backend="aot_eager"), args)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for a, b in zip(ggot, gwant):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    if split is None:
        return
    copies = [args[i].detach().clone().requires_grad_() for i in where]
    _, gsplit = _value_and_grads(split, copies)
    for j, g in enumerate(ggot):
        summed = sum(gs for gs, i in zip(gsplit, where) if i == j)
        torch.testing.assert_close(g, summed, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["gaunt_power", "mobius_add_xx", "attention_k1k2_v1v2"])
def test_repeated_inputs_compiled_gradcheck(name):
    """gradcheck (float64) of the compiled function: the repeats' summed gradient against finite differences."""
    f, _, make, _ = CASES[name]
    torch._dynamo.reset()
    assert torch.autograd.gradcheck(torch.compile(f, fullgraph=True, backend="aot_eager"), make())


def test_distinct_inputs_eager_is_identity():
    """Outside torch.compile the arguments pass unchanged (the same tuple): eager mode pays no view."""
    x = torch.ones(2)
    args = (x, 1.0, x, None)
    assert lib.distinct_inputs(args) is args
