"""The poincare step of scripts/gpu_check.sh: CUDA parity and timings of the Poincaré layers' Triton kernels.

Parity: each layer (poincare_fc with/without tangent rows, poincare_relu, poincare_conv2d, batch_norm, the
residual block) on CUDA (the triton backend) against the same call on the CPU (the C++ kernels), float32
and float64, values and gradients to every input.  Bench: forward and forward+backward of the residual
block (batch 32, 16 channels, 32 x 32) against the Euclidean block of the same shape, and the fc layer
4096 x 512 -> 512 against F.linear; CUDA events, interleaved, median (issue 11's GPU target: the block
within 3x of the Euclidean block).  The block's forward+backward is also replayed from a CUDA graph, both sides
(``graph`` rows: the device time without the host's per-op cost, what a user gets from ``torch.cuda.graphs``; a
capture that fails reports why).  --dry-run: the same code on the CPU at tiny shapes (no GPU needed).

    python scripts/gpu_poincare_check.py [--dry-run] [--json OUT.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import geoops  # noqa: E402
import geoops.poincare as gp  # noqa: E402
from bench.poincare import _euc_layers, _geo_layers, _img  # noqa: E402
from gpu_targets import graph_ms  # noqa: E402


def _block_fns(C):
    ball, geo = _geo_layers("block", C)
    euc = _euc_layers("block", C)

    def seq(mods, x):
        for m_ in mods:
            x = m_(x)
        return x

    def f_geo(x):
        return gp.poincare_relu(gp.mobius_add(seq(geo, x), x, c=ball(), dim=1), c=ball(), dim=1)

    def f_euc(x):
        return torch.relu(seq(euc, x) + x)
    return f_geo, geo, f_euc, euc


def _cases(dtype, small):
    g = torch.Generator().manual_seed(0)
    N, n, m = (33, 20, 17) if small else (1000, 144, 16)
    x = torch.randn(N, n, generator=g, dtype=dtype)
    x = x / x.norm(dim=1, keepdim=True) * torch.rand(N, 1, generator=g, dtype=dtype) * 0.9
    z = torch.randn(n, m, generator=g, dtype=dtype) / n ** 0.5
    b = torch.randn(m, generator=g, dtype=dtype) * 0.2
    c = torch.tensor(0.8, dtype=dtype)
    img = _img(2, 3, 6, 5).to(dtype)
    zc = torch.randn(27, 4, generator=g, dtype=dtype) * 0.3
    bias = torch.randn(n, generator=g, dtype=dtype) * 0.2
    w = torch.tensor(1.5, dtype=dtype)
    return {
        "fc": (lambda x, z, b, c: gp.poincare_fc(x, z, b, c=c), (x, z, b, c)),
        "fc_tangent": (lambda x, z, b, c: gp.poincare_fc(x, z, b, c=c, from_tangent=True), (x * 2, z, b, c)),
        "relu": (lambda x, c: gp.poincare_relu(x, c=c), (x, c)),
        "conv2d": (lambda x, z, c: gp.poincare_conv2d(x, z, None, c=c, kernel_size=3, padding=1), (img, zc, c)),
        "batch_norm": (lambda x, b, w, c: gp.batch_norm(x, b, w, c=c), (x, bias, w, c)),
    }


def parity(device, small):
    worst = 0.0
    lines = []
    for dtype, tol in ((torch.float64, 1e-8), (torch.float32, 5e-4)):
        for name, (fn, args) in _cases(dtype, small).items():
            outs = []
            for dev in ("cpu", device):
                ins = [a.detach().to(dev).requires_grad_(True) for a in args]
                y = fn(*ins)
                wgt = torch.linspace(-1, 1, y.numel(), dtype=dtype).reshape(y.shape).to(dev)
                grads = torch.autograd.grad((y * wgt).sum(), ins)
                outs.append([y.detach().cpu()] + [gr.cpu() for gr in grads])
            errs = [((a - b).abs().max() / b.abs().max().clamp_min(1.0)).item() for a, b in zip(outs[1], outs[0])]
            e = max(errs)
            worst = max(worst, e / tol)
            lines.append(f"| {name} | {str(dtype)[6:]} | {e:.2e} | {'ok' if e <= tol else 'FAIL'} |")
    return worst <= 1.0, lines


def _timer(device):
    if device == "cuda":
        def run(fn):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            torch.cuda.synchronize()
            return s.elapsed_time(e)
    else:
        def run(fn):
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
    return run


def bench(device, small, reps):
    run = _timer(device)
    B, C, H, W = (2, 4, 8, 8) if small else (32, 16, 32, 32)
    N, n, m = (64, 32, 32) if small else (4096, 512, 512)
    f_geo, geo, f_euc, euc = _block_fns(C)
    for mod in geo + euc:
        mod.to(device)
    x = _img(B, C, H, W).to(device).requires_grad_(True)
    gx = torch.randn(B, C, H, W, device=device)
    g = torch.Generator().manual_seed(1)
    xf = (torch.rand(N, n, generator=g) * 0.8 / n ** 0.5).to(device).requires_grad_(True)
    z = (torch.randn(n, m, generator=g) / n ** 0.5).to(device).requires_grad_(True)
    bb = torch.zeros(m, device=device, requires_grad=True)
    Wl = torch.randn(m, n, generator=g).to(device).requires_grad_(True)
    gy = torch.randn(N, m, device=device)

    def fb(f, inp, go):
        def call():
            y = f(inp)
            y.backward(go)
        return call

    def fw(f, inp):
        def call():
            with torch.no_grad():
                f(inp)
        return call

    pairs = {
        "block fwd": (fw(f_geo, x), fw(f_euc, x)),
        "block fwd+bwd": (fb(f_geo, x, gx), fb(f_euc, x, gx)),
        "fc fwd": (fw(lambda t: gp.poincare_fc(t, z, bb, c=1.0), xf), fw(lambda t: torch.nn.functional.linear(t, Wl, bb), xf)),
        "fc fwd+bwd": (fb(lambda t: gp.poincare_fc(t, z, bb, c=1.0), xf, gy),
                       fb(lambda t: torch.nn.functional.linear(t, Wl, bb), xf, gy)),
    }
    res = {}
    for name, (a, b) in pairs.items():
        for _ in range(3):
            a()
            b()
        ta, tb = [], []
        for _ in range(reps):  # interleaved
            ta.append(run(a))
            tb.append(run(b))
        res[name] = (statistics.median(ta), statistics.median(tb))
    dev = torch.device(device)
    gg, ge = graph_ms(pairs["block fwd+bwd"][0], dev), graph_ms(pairs["block fwd+bwd"][1], dev)
    if gg is not None:  # CUDA only: (ms, ms), or the capture's error text in place of a time
        res["block fwd+bwd, CUDA graph"] = (gg, ge)
    return res, (B, C, H, W), (N, n, m)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--reps", type=int, default=20)
    a = ap.parse_args()
    device = "cpu" if a.dry_run else "cuda"
    if not a.dry_run and not torch.cuda.is_available():
        print("gpu_poincare_check: no CUDA device (use --dry-run)")
        return 1
    if not a.dry_run:
        from geoops import _backend

        assert _backend.resolve(torch.device("cuda"), "poincare") == "triton", "poincare does not run Triton on CUDA"
    print(geoops.backend_info() if hasattr(geoops, "backend_info") else "")
    ok = True
    print("| layer | dtype | max rel err (CUDA vs CPU C++) | |\n| --- | --- | --- | --- |")
    if a.dry_run:
        print("| (dry run: parity needs CUDA; skipped) | | | |")
    else:
        ok, lines = parity(device, small=False)
        print("\n".join(lines))
    res, img, fc = bench(device, a.dry_run, 3 if a.dry_run else a.reps)
    print(f"\n| row ({device}, fp32; block {img}, fc {fc}) | geoops ms | Euclidean ms | ratio |\n| --- | --- | --- | --- |")
    for name, (tg, te) in res.items():
        if isinstance(tg, float) and isinstance(te, float):
            print(f"| {name} | {tg:.3f} | {te:.3f} | {tg / te:.2f}x |")
        else:
            print(f"| {name} | {tg} | {te} | |")
    if a.json:
        Path(a.json).write_text(json.dumps({"device": device, "block": img, "fc": fc,
                                            "rows": {k: {"geoops_ms": v[0], "euclidean_ms": v[1]} for k, v in res.items()},
                                            "parity_ok": ok}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
