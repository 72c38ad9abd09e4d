# Emulation (numpy float32, exact products via float64) of 1 + k|x|^2 for fp32 rows near the boundary: (a) double sums
# rounded once (lane mode 1), (b) float pairs (pairs.patch), (c) plain float FMAs; max relative error vs the exact value
# (fractions).  usage: python scripts/short_rows/pairs_emu.py
import numpy as np
from fractions import Fraction
f32 = np.float32
def fms(a, b, c):  # fl32(a*b - c), exact product
    return f32(np.float64(a) * np.float64(b) - np.float64(c))
def fma(a, b, c):
    return f32(np.float64(a) * np.float64(b) + np.float64(c))
rng = np.random.default_rng(0)
for D in (2, 5, 8, 16):
    for k in (-1.0, -0.25, -4.0, float(f32(-0.3))):
        kf = f32(k)
        ea, eb, ec = [], [], []
        for i in range(3000):
            v = rng.standard_normal(D)
            delta = np.exp(rng.uniform(np.log(1e-6), np.log(1e-3)))
            x = (v / np.linalg.norm(v) * (1 - delta) / np.sqrt(-k)).astype(f32)
            exact = 1 + Fraction(float(kf)) * sum(Fraction(float(t)) ** 2 for t in x)
            # (a) double
            a = f32(1.0 + np.float64(kf) * sum(np.float64(t) * np.float64(t) for t in x))
            # (b) float pairs
            sh = f32(x[0] * x[0]); sl = fms(x[0], x[0], sh)
            for t in x[1:]:
                p = f32(t * t); e = fms(t, t, p)
                s = f32(sh + p); bb = f32(s - sh); err = f32(f32(sh - f32(s - bb)) + f32(p - bb))
                sh = s; sl = f32(sl + f32(e + err))
            kh = f32(kf * sh); kl = fms(kf, sh, kh)
            b = f32(f32(f32(1) + kh) + fma(kf, sl, kl))
            # (c) plain float FMAs
            s = f32(0)
            for t in x: s = fma(t, t, s)
            c = fma(kf, s, f32(1))
            for lst, val in ((ea, a), (eb, b), (ec, c)):
                lst.append(abs(float(Fraction(float(val)) - exact) / float(exact)))
        print(f"D={D:2d} k={k:6.3f}  max rel err of 1+k|x|^2: double-rounded {max(ea):.2e}  float pairs {max(eb):.2e}  plain float {max(ec):.2e}", flush=True)
