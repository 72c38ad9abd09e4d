"""Stage by stage: the float64 midpoint and its 1 - c|f|^2 against 50-digit mpmath (near-boundary batch)."""
import sys, torch
sys.path.insert(0, "tests")
import _bn_transport_exact as ex
import geoops.poincare as gp
from geoops import stereographic as st
mp = ex.mp

def exact_mid(x, c):
    with mp.workdps(ex.DPS):
        X = [ex._v(r) for r in x]; c = mp.mpf(c); D = len(X[0])
        lam = [2 / (1 - c * ex._dot(r, r)) for r in X]
        den = mp.fsum(l - 1 for l in lam)
        f = [mp.fsum(lam[i] * X[i][d] for i in range(len(X))) / den for d in range(D)]
        q = 1 - c * ex._dot(f, f)
        return torch.tensor([float(fi / (1 + mp.sqrt(q))) for fi in f], dtype=torch.float64), float(q)

for spread in (1e-3, 0.5):
    x, bias = ex.cloud(6, 3, 1.0, 1e-4, spread, seed=0)
    m = gp.midpoint(x, c=1.0, dim=-1, batch_dim=0)
    me, q = exact_mid(x, 1.0)
    lam = 2 / (1 - x.pow(2).sum(-1, keepdim=True))
    f = (lam * x).sum(0) / (lam - 1).sum(0)
    qf = float(1 - f.pow(2).sum())
    k = torch.tensor(-1.0, dtype=torch.float64)
    u = st.logmap(m, x, k=k); ue = st.logmap(me, x, k=k)
    print(f"spread {spread}: q exact {q:.3e} float {qf:.3e} rel {abs(qf-q)/q:.1e}; m err {float((m-me).abs().max()):.1e} abs, "
          f"|x-m| {float((x-me).norm(dim=-1).mean()):.1e}; u(m) vs u(m exact) rel {ex.rel(u, ue):.1e}")
