"""Session 52: tests/_bn_transport_exact.py's transport_grad (central differences in the ten scalars <gM, M> depends
on, chain rule for b, m) against its old form _transport_grad_fd (central differences in every coordinate of b, m,
M re-formed for each) at the tests' cases, train and eval: the largest |new - old| relative to the largest |old|,
both at full precision (mpf), and the CPU seconds each took (fair under load).  The S component apart: the old
form's step 1e-20 is not small against the tests' S ~ 3e-13 (train, delta = 1e-6), a truncation error
~(h / S)^2 = 1e-15 of its own; "self" is the new form against itself at a 1000x larger step (its own step error).

usage: PYTHONPATH=$PWD:$PWD/tests python scripts/bn_transport/oracle_check.py [DIMS [CS [DELTAS]]]
  e.g. (the default) 2,7 1.0,0.3 1e-6,1e-4;  64 1.0 1e-6 (the old form: ~2 min per case there)
"""
import sys
import time

import torch

import _bn_transport_exact as ex

mp = ex.mp
DIMS, CS, DELTAS = ([f(v) for v in (sys.argv[i] if len(sys.argv) > i else d).split(",")]
                     for i, f, d in ((1, int, "2,7"), (2, float, "1.0,0.3"), (3, float, "1e-6,1e-4")))
worst = 0.0
for D in DIMS:
    for c in CS:
        for delta in DELTAS:
            for train in (True, False):
                b, m = ex.pair(D, c, delta)
                S = 0.3 * (1 - c * float(m @ m)) ** 2 if train else 0.7
                n = 8.0 if train else 1.0
                gM = torch.randn(D, D, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
                args = (gM, b, m, -c, S, 0.5, n, 1e-6, train)
                t0 = time.process_time()
                new = ex.transport_grad(*args, exact=True)
                t1 = time.process_time()
                old = ex._transport_grad_fd(*args, exact=True)
                t2 = time.process_time()
                big = ex.transport_grad(*args, exact=True, h=mp.mpf("1e-42"))
                with mp.workdps(80):
                    sc = max(abs(o) for o in old)
                    diff = [abs(a - o) / sc for a, o in zip(new, old)]
                    r, rS = float(max(diff[:2 * D] + diff[2 * D + 1:])), float(diff[2 * D])
                    r2 = float(max(abs(a - o) for a, o in zip(new, big)) / sc)
                worst = max(worst, r)
                print(f"D={D} c={c} delta={delta:g} train={train}: rel {r:.1e} (S: {rS:.1e}, self {r2:.1e}), "
                      f"new {t1 - t0:.3f} s, old {t2 - t1:.2f} s", flush=True)
print(f"worst (b, m, w, c) {worst:.1e}")
