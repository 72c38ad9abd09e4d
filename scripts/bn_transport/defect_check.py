"""Session 52: do tests/test_poincare_bn_transport.py's exact tests still fail on the defect they guard (session 44,
commit 987247e: geoopt's closed form in the rows [b; -m] cancelled for a bias point near the batch midpoint near the
boundary)?  Puts the old closed form back -- geoops.poincare's _gram / _transport_matrix by the pre-session-44 torch
composition (scripts/bn_transport/old_form.py), the C++ hook poincare_bn_transport_cpu by the same closed form in
float64 with autograd for its backward -- and runs test_reference_transport_exact / test_cpp_transport_exact on
their cases; prints which fail and the assertion that failed.  grad: the current M (value) with the old closed
form's gradient, to see the gradient assertions (the exact oracle transport_grad's) fail by themselves.

usage: PYTHONPATH=$PWD:$PWD/tests python scripts/bn_transport/defect_check.py [DIMS [grad]]   (DIMS default 2,7,64)
"""
import sys
import traceback
import types

import torch

import geoops.poincare as gp
from geoops import _backend

import test_poincare_bn_transport as T
from old_form import old_gram, old_transport_matrix

DIMS = [int(v) for v in (sys.argv[1] if len(sys.argv) > 1 else "2,7,64").split(",")]
GRAD = sys.argv[2:] == ["grad"]
NEW_TM, NEW_HOOK = gp._transport_matrix, _backend.compiled().poincare_bn_transport_cpu


def old_hook(b, m, gM, S, w, c, n, eps):
    """poincare_bn_transport_cpu's contract (training: var = lam_m^2 S / n) with the old closed form."""
    bb, mm = b.clone().requires_grad_(), m.clone().requires_grad_()
    Sw = torch.tensor([S, w, c], dtype=torch.float64, requires_grad=True)
    var = (2 / (1 - Sw[2] * (mm @ mm))) ** 2 * Sw[0] / n
    M = old_transport_matrix(*old_gram(bb, mm), -Sw[2], (Sw[1] / (var + eps)).sqrt())
    gb, gm, gs = torch.autograd.grad(M, (bb, mm, Sw), gM)
    return M.detach(), gb, gm, gs


def grad_only_tm(AF, G, k, s):
    """The current M's value, the old closed form's derivative."""
    AE = torch.stack((AF[0], -AF[2]))
    old = old_transport_matrix(AE, AE @ AE.t(), k, s)
    return NEW_TM(AF, G, k, s).detach() + old - old.detach()


def grad_only_hook(b, m, gM, S, w, c, n, eps):
    return (NEW_HOOK(b, m, gM, S, w, c, n, eps)[0],) + old_hook(b, m, gM, S, w, c, n, eps)[1:]


if GRAD:
    gp._transport_matrix = grad_only_tm
else:
    gp._gram, gp._transport_matrix = old_gram, old_transport_matrix
hook = grad_only_hook if GRAD else old_hook
_backend.compiled = lambda: types.SimpleNamespace(poincare_bn_transport_cpu=hook)
failed = total = 0
for name in ("test_reference_transport_exact", "test_cpp_transport_exact"):
    for D, c, delta in T.CASES:
        if D not in DIMS:
            continue
        total += 1
        try:
            getattr(T, name)(D, c, delta)
            print(f"{name}[{D}-{c}-{delta:g}]: passed", flush=True)
        except AssertionError as e:
            failed += 1
            line = traceback.extract_tb(e.__traceback__)[-1].line
            print(f"{name}[{D}-{c}-{delta:g}]: FAILED at `{line}`", flush=True)
print(f"{failed} of {total} failed with the old closed form" + ("'s gradient" if GRAD else ""))
