"""How far do ulp-sized input perturbations move the exact layer's value and gradients?  (mpmath, 50 digits)"""
import sys, torch, mpmath
sys.path.insert(0, "tests")
import _bn_transport_exact as ex
mp = ex.mp
U = 2.0 ** -53

def exact_at(x, bias, c, g, rx, rb, rc):
    """the exact (y, grads) at inputs perturbed by relative rx, rb, rc (computed in mp, not rounded)"""
    with mp.workdps(ex.DPS):
        N, D = x.shape
        X = [[mp.mpf(float(x[i, j])) * (1 + mp.mpf(float(rx[i, j])) * U) for j in range(D)] for i in range(N)]
        B = [mp.mpf(float(bias[j])) * (1 + mp.mpf(float(rb[j])) * U) for j in range(D)]
        C = mp.mpf(c) * (1 + mp.mpf(rc) * U)
        G = ex._v(g)
        ee, ep, w = mp.mpf(1e-6), mp.mpf(1e-15), mp.mpf(1)
        Y = ex._layer(X, B, w, C, ee, ep)
        x0 = [t for r in X for t in r] + B + [w, C]
        def f(z):
            XX = [z[i * D:(i + 1) * D] for i in range(N)]
            YY = ex._layer(XX, z[N * D:N * D + D], z[-2], z[-1], ee, ep)
            return mp.fsum(G[i * D + j] * YY[i][j] for i in range(N) for j in range(D))
        gr = ex._central(f, x0, mp.mpf("1e-20"))
        t = torch.tensor(gr, dtype=torch.float64)
        y = torch.tensor([[float(v) for v in r] for r in Y], dtype=torch.float64)
        return y, t[:N * D].reshape(N, D), t[N * D:N * D + D], gr[-2], gr[-1]

def study(N, D, c, delta, spread, seed, trials=6):
    x, bias = ex.cloud(N, D, c, delta, spread, seed=seed)
    g = torch.randn(N, D, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
    z = torch.zeros(N, D, dtype=torch.float64)
    base = exact_at(x, bias, c, g, z, torch.zeros(D, dtype=torch.float64), 0.0)
    gen = torch.Generator().manual_seed(seed + 1)
    worst = dict(y=0, dx=0, db=0, dw=0, dc=0)
    for _ in range(trials):
        rx = torch.rand(N, D, generator=gen, dtype=torch.float64) * 2 - 1
        rb = torch.rand(D, generator=gen, dtype=torch.float64) * 2 - 1
        p = exact_at(x, bias, c, g, rx, rb, 0.0)
        d = dict(y=ex.rel(p[0], base[0]), dx=ex.rel(p[1], base[1]), db=ex.rel(p[2], base[2]),
                 dw=abs(p[3] - base[3]) / abs(base[3]), dc=abs(p[4] - base[4]) / abs(base[4]))
        worst = {k: max(worst[k], d[k]) for k in worst}
    return worst

if __name__ == "__main__":
    for spread in (1e-3, 0.5):
        print(spread, {k: f"{v:.1e}" for k, v in study(6, 3, 1.0, 1e-4, spread, 0).items()}, flush=True)
