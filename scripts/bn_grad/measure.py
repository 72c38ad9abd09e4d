"""Measure the training layer's gradient error against the 50-digit oracle near the boundary."""
import sys
import time
import warnings

import torch
warnings.filterwarnings("ignore")
sys.path.insert(0, "tests")
import _bn_transport_exact as ex
import geoops.poincare as gp
from geoops import _backend

def run(N, D, c, delta, spread, seed, mode):
    x, bias = ex.cloud(N, D, c, delta, spread, seed=seed)
    w = torch.tensor([1.0], dtype=torch.float64)
    ct = torch.tensor(c, dtype=torch.float64)
    xs = [t.clone().requires_grad_() for t in (x, bias, w, ct)]
    def f(x, b, w, c):
        return gp.batch_norm(x, b, w, c=c, eps=1e-6)
    if mode == "cpp":
        y = f(*xs)
    elif mode == "comp":
        _backend.set_checks(True)
        try: y = f(*xs)
        finally: _backend.set_checks(False)
    else:
        with _backend.use_backend("reference"): y = f(*xs)
    g = torch.randn(N, D, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
    gr = torch.autograd.grad(y, xs, g)
    yt = ex.layer(x, bias, 1.0, c, 1e-6, 1e-15)
    gx, gb, gw, gc = ex.layer_grad(g, x, bias, 1.0, c, 1e-6, 1e-15)
    out = dict(y=ex.rel(y.detach(), yt), dx=ex.rel(gr[0], gx), db=ex.rel(gr[1], gb),
               dw=abs(float(gr[2]) - gw) / abs(gw), dc=abs(float(gr[3]) - gc) / abs(gc))
    return out

if __name__ == "__main__":
    for spread in (1e-3, 0.5):
        for mode in ("cpp", "comp", "ref"):
            t = time.time()
            print(spread, mode, {k: f"{v:.1e}" for k, v in run(6, 3, 1.0, 1e-4, spread, 0, mode).items()}, f"{time.time()-t:.0f}s", flush=True)
