#!/usr/bin/env python3
"""Where the GPU time goes, for the rows the first H200 run found far from their targets (a step of
scripts/gpu_check.sh, ``probe``):

- attention: triple_attention forward (and forward + backward) in float32 at the bench's shape (B, H) = (1, 2)
  and at (8, 16) - one query tile per program, so a small B * H leaves most multiprocessors idle - with the time
  per head (ms / (B H)) and the eager einsum peer at the same shapes;
- poincare: torch.profiler's CUDA kernel table of the residual block's forward + backward and of poincare_fc
  forward (4096 x 512 -> 512), next to the kernel count and the CPU-side total;
- ssm: the same table for s4d_kernel forward (256 x 32 x 16384);
- stereographic: the Triton row ops with float64 row sums against float32 ones (GEOOPS_TRITON_STEREO_F64_SUMS=0) at
  D = 64 and D = 4096.

    python scripts/gpu_probe.py [--dry-run] [--json OUT.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import geoops.attention as gatt  # noqa: E402
import geoops.poincare as gp  # noqa: E402
import geoops.ssm as gs  # noqa: E402
from gpu_targets import _s4d_params, time_ms  # noqa: E402


def _einsum_attention(q, k1, k2, v1, v2, scale):
    s = torch.einsum("bhnd,bhjd,bhkd->bhnjk", q * scale, k1, k2)
    B, H, N, M1, M2 = s.shape
    p = torch.softmax(s.reshape(B, H, N, M1 * M2), -1).reshape(B, H, N, M1, M2)
    return torch.einsum("bhnjk,bhje,bhke->bhne", p, v1, v2)


def attention(dev, small):
    rows = []
    N, D = (24, 16) if small else (192, 64)
    for B, H in ((1, 2), (8, 16)):
        g = torch.Generator().manual_seed(B * H)
        ins = [torch.randn(B, H, N, D, generator=g).to(dev) for _ in range(5)]
        scale = D ** -0.5
        ms = time_ms(lambda: gatt.triple_attention(*ins), dev, samples=5)
        ms_e = time_ms(lambda: _einsum_attention(*ins, scale), dev, samples=5)
        leaves = [t.clone().requires_grad_() for t in ins]
        go = torch.randn(B, H, N, D, device=dev)
        ms_fb = time_ms(lambda: torch.autograd.grad(gatt.triple_attention(*leaves), leaves, go), dev, samples=5)
        flops = 2.0 * B * H * N * N * N * D * 2  # scores and P V over the N x N key pairs
        rows.append(dict(shape=[B, H, N, D], ms=ms, ms_per_head=ms / (B * H), einsum_ms=ms_e, vs_einsum=ms_e / ms,
                         fwd_bwd_ms=ms_fb, gflops=flops / ms / 1e6))
    return rows


def _table(fn, dev, rows=12):
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    fn()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    with profile(activities=acts) as prof:
        for _ in range(3):
            fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
    key = "cuda_time_total" if dev.type == "cuda" else "cpu_time_total"
    try:
        table = prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=60)
    except Exception:  # older/newer profiler column names
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    return table


def profiles(dev, small):
    out = {}
    from gpu_poincare_check import _block_fns  # noqa: E402
    from bench.poincare import _img  # noqa: E402

    B, C, Hh, W = (2, 4, 8, 8) if small else (32, 16, 32, 32)
    f_geo, geo, _f_euc, _euc = _block_fns(C)
    for mod in geo:
        mod.to(dev)
    x = _img(B, C, Hh, W).to(dev).requires_grad_(True)
    gx = torch.randn(B, C, Hh, W, device=dev)

    def block():
        f_geo(x).backward(gx)
    out["poincare block fwd+bwd"] = _table(block, dev)
    N, n, m = (64, 32, 32) if small else (4096, 512, 512)
    g = torch.Generator().manual_seed(1)
    xf = (torch.rand(N, n, generator=g) * 0.8 / n ** 0.5).to(dev)
    z = (torch.randn(n, m, generator=g) / n ** 0.5).to(dev)
    bb = torch.zeros(m, device=dev)
    out["poincare_fc fwd"] = _table(lambda: gp.poincare_fc(xf, z, bb, c=1.0), dev)
    H, Nn, L = (4, 8, 256) if small else (256, 32, 16384)
    ps = _s4d_params(H, Nn, dev)
    out["s4d_kernel fwd"] = _table(lambda: gs.s4d_kernel(*ps, L), dev)
    return out


def stereo_sums_ab(dev, small):
    """The Triton row ops with float64 row sums (default since session 31) against float32 sums
    (GEOOPS_TRITON_STEREO_F64_SUMS=0), forward and forward + backward, at D = 64 and at wide rows (D = 4096)."""
    import os

    import geoops.stereographic as st

    rows = []
    k = torch.tensor(-1.0, device=dev)
    for N, D in (((64, 16), (4, 256)) if small else ((1 << 18, 64), (1 << 12, 4096))):
        g = torch.Generator().manual_seed(D)
        x = (torch.randn(N, D, generator=g) * 0.5 / D ** 0.5).to(dev)
        y = (torch.randn(N, D, generator=g) * 0.5 / D ** 0.5).to(dev)
        for op in ("mobius_add", "dist"):
            fn = getattr(st, op)
            xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_()
            r = {"op": op, "shape": [N, D]}
            for flag in ("1", "0"):
                os.environ["GEOOPS_TRITON_STEREO_F64_SUMS"] = flag
                r[f"fwd_ms_f64sums={flag}"] = time_ms(lambda: fn(x, y, k=k), dev, samples=7)
                r[f"fwd_bwd_ms_f64sums={flag}"] = time_ms(
                    lambda: torch.autograd.grad(fn(xr, yr, k=k).sum(), (xr, yr)), dev, samples=7)
            os.environ.pop("GEOOPS_TRITON_STEREO_F64_SUMS", None)
            rows.append(r)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default=None)
    p.add_argument("--dry-run", action="store_true")
    a = p.parse_args(argv)
    small = a.dry_run or not torch.cuda.is_available()
    dev = torch.device("cpu" if small else "cuda")
    res, status = {}, 0
    for name, fn in (("attention", lambda: attention(dev, small)), ("stereo_sums_ab", lambda: stereo_sums_ab(dev, small)),
                     ("profiles", lambda: profiles(dev, small))):
        try:
            res[name] = fn()
        except Exception:
            res[name] = {"error": traceback.format_exc()}
            status = 1
        print(f"== {name}")
        if name == "profiles" and isinstance(res[name], dict) and "error" not in res[name]:
            for k, t in res[name].items():
                print(f"-- {k}\n{t}")
        else:
            print(json.dumps(res[name], indent=1, default=str))
        sys.stdout.flush()
        if a.json:
            Path(a.json).write_text(json.dumps(res, indent=1, default=str))
    return status


if __name__ == "__main__":
    sys.exit(main())
