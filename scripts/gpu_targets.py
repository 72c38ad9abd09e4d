#!/usr/bin/env python3
"""The GPU targets of the issues, measured in one short run (a step of scripts/gpu_check.sh).

- ceilings: device-to-device copy bandwidth (bytes read + written), the float32 GEMM rate with TF32 off
  (what an IEEE float32 kernel can reach) and the bfloat16 GEMM rate, on random data;
- ssm (issue 7): fftconv in bfloat16 at B = 64, H = 768, L in {1024, 4096, 8192}, forward, against
  FlashFFTConv's published H100 times for its convolution (0.29, 1.43, 3.58 ms; target: within 1.5x) and
  against the eager float32 rfft recipe run on the same inputs; s4d_kernel in float32 (H = 256, N = 32,
  L = 16384, and H = 1024 to fill the chip), forward and forward + backward, as useful GFLOP/s (8 H N L
  per pass: one complex multiply-add per (h, n, l)) over the measured float32 GEMM rate (target >= 50 %),
  with its relative error to the float64 result at L = 65536 on slowly decaying modes;
- gaunt (issue 8): gaunt_tensor_product at lmax 4 and 8 on 10^4 rows, float32, every route, forward and
  forward + backward, against the fastest published A100 figures (0.15 ms and 0.50 ms, forward).

Timing: CUDA events around each call, after warm-up, median of the samples (each sample long enough to
leave launch noise out: calls are repeated inside it).  Every check draws random inputs.

    python scripts/gpu_targets.py [--json OUT.json] [--dry-run]

--dry-run runs the same code on the CPU at tiny shapes (no GPU; the control flow only).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import geoops  # noqa: E402
import geoops.gaunt as ga  # noqa: E402
import geoops.ssm as gs  # noqa: E402

FLASHFFTCONV_H100_MS = {1024: 0.29, 4096: 1.43, 8192: 3.58}
GAUNT_A100_MS = {4: 0.15, 8: 0.50}


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_ms(fn, dev, samples=9, min_ms=20.0):
    """Median ms of one call: each sample runs the call `inner` times between two events (or clocks)."""
    fn()
    _sync(dev)
    t0 = time.perf_counter()
    fn()
    _sync(dev)
    one = max((time.perf_counter() - t0) * 1e3, 1e-3)
    inner = max(1, min(1000, int(min_ms / one)))
    out = []
    for _ in range(samples):
        if dev.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(inner):
                fn()
            b.record()
            b.synchronize()
            out.append(a.elapsed_time(b) / inner)
        else:
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            out.append((time.perf_counter() - t0) * 1e3 / inner)
    return statistics.median(out)


def _rel(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def ceilings(dev, small):
    res = {}
    n = (1 << 16) if small else (1 << 28)  # 1 GiB of float32
    x = torch.randn(n, device=dev)
    y = torch.empty_like(x)
    ms = time_ms(lambda: y.copy_(x), dev)
    res["copy_gbps"] = 2 * x.numel() * 4 / ms / 1e6
    m = 128 if small else 8192
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        a, b = torch.randn(m, m, device=dev), torch.randn(m, m, device=dev)
        ms = time_ms(lambda: a @ b, dev, samples=5)
        res["sgemm_tflops"] = 2 * m ** 3 / ms / 1e9
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    a, b = a.bfloat16(), b.bfloat16()
    ms = time_ms(lambda: a @ b, dev, samples=5)
    res["bf16_gemm_tflops"] = 2 * m ** 3 / ms / 1e9
    return res


def graph_ms(fn, dev):
    """Median ms of one replay of fn captured in a CUDA graph (the device time without the host's per-op and
    per-launch cost), or the capture's error text; None off CUDA."""
    if dev.type != "cuda":
        return None
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return time_ms(graph.replay, dev)
    except Exception as e:  # a host sync or an uncapturable op inside fn
        return f"capture failed: {type(e).__name__}: {str(e)[:200]}"


def _eager_fftconv(u, k, D):
    """The eager recipe, in float32 (torch's FFTs take no bfloat16): pad, rfft, multiply, irfft, slice, + D u."""
    L = u.shape[-1]
    n = 2 * L
    uf = torch.fft.rfft(u.float(), n=n)
    kf = torch.fft.rfft(k.float(), n=n)
    y = torch.fft.irfft(uf * kf, n=n)[..., :L] + D.float().unsqueeze(-1) * u.float()
    return y.to(u.dtype)


def _monarch_size(L):
    try:
        from geoops.kernels import ssm as S
    except ImportError:  # no triton
        return 0
    return S.monarch_size(L, torch.bfloat16)


def ssm_fftconv(dev, small):
    rows = []
    B, H = (2, 8) if small else (64, 768)
    for L in ((64, 100) if small else (1024, 4096, 8192)):
        g = torch.Generator(device="cpu").manual_seed(L)
        u = torch.randn(B, H, L, generator=g).to(dev, torch.bfloat16)
        k = (torch.randn(H, L, generator=g) * torch.exp(-torch.arange(L) / (L / 4))).to(dev, torch.bfloat16)
        D = torch.randn(H, generator=g).to(dev, torch.bfloat16)
        y = gs.fftconv(u, k, D)
        ref = _eager_fftconv(u[:2].double(), k.double(), D.double())
        err = _rel(y[:2], ref)
        err_eager = _rel(_eager_fftconv(u[:2], k, D), ref)
        ms = time_ms(lambda: gs.fftconv(u, k, D), dev)
        ms_eager = time_ms(lambda: _eager_fftconv(u, k, D), dev)
        # session 34: the tensor-core path (default for half u up to L = 4096) against the cuFFT path (knob 0)
        try:
            os.environ["GEOOPS_SSM_TRITON_MONARCH"] = "2"
            err_two = _rel(gs.fftconv(u, k, D)[:2], ref)
            ms_two = time_ms(lambda: gs.fftconv(u, k, D), dev)
            os.environ["GEOOPS_SSM_TRITON_MONARCH"] = "0"
            err_cufft = _rel(gs.fftconv(u, k, D)[:2], ref)
            ms_cufft = time_ms(lambda: gs.fftconv(u, k, D), dev)
        finally:
            del os.environ["GEOOPS_SSM_TRITON_MONARCH"]
        uu = u.float()
        ms_limit = time_ms(lambda: torch.fft.irfft(torch.fft.rfft(uu, n=2 * L), n=2 * L), dev)
        # forward + backward (no published figure; for the record)
        ur, kr, Dr = (t.detach().requires_grad_() for t in (u, k, D))
        gy = torch.randn_like(y)

        def fb():
            torch.autograd.grad(gs.fftconv(ur, kr, Dr), (ur, kr, Dr), gy)
        ms_fb = time_ms(fb, dev)
        pub = FLASHFFTCONV_H100_MS.get(L)
        rows.append(dict(op="fftconv", dtype="bf16", shape=[B, H, L], pass_="fwd", ms=ms, eager_fp32_ms=ms_eager,
                         limit_rfft_irfft_fp32_ms=ms_limit, fwd_bwd_ms=ms_fb, flashfftconv_h100_ms=pub,
                         ratio_to_published=(ms / pub if pub else None), target_met=(ms <= 1.5 * pub if pub else None),
                         speedup_vs_eager=ms_eager / ms, rel_err_vs_fp64=err, eager_bf16io_rel_err=err_eager,
                         cufft_path_ms=ms_cufft, cufft_path_rel_err=err_cufft, two_pass_ms=ms_two,
                         two_pass_rel_err=err_two,
                         monarch_fft_size=_monarch_size(L)))
    return rows


def _s4d_params(H, N, dev, slow=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    log_dt = torch.log(torch.full((H,), 1e-3)) if slow else (torch.rand(H, generator=g) * 4.6 - 6.9)
    re = -torch.full((H, N), 0.1) if slow else -0.5 * torch.ones(H, N)
    im = math.pi * torch.arange(N).float().expand(H, N).contiguous()
    A = torch.complex(re, im)
    Bp = torch.complex(torch.randn(H, N, generator=g), torch.randn(H, N, generator=g))
    C = torch.complex(torch.randn(H, N, generator=g), torch.randn(H, N, generator=g)) * 0.5
    return [t.to(dev) for t in (log_dt, A, Bp, C)]


def ssm_s4d(dev, small, sgemm_tflops):
    rows = []
    N = 32
    for H, L in (((4, 64),) if small else ((256, 16384), (1024, 16384))):
        ps = _s4d_params(H, N, dev)
        K = gs.s4d_kernel(*ps, L)
        ms = time_ms(lambda: gs.s4d_kernel(*ps, L), dev)
        pr = [p.detach().requires_grad_() for p in ps]
        gK = torch.randn_like(K)

        def fb():
            torch.autograd.grad(gs.s4d_kernel(*pr, L), pr, gK)
        ms_fb = time_ms(fb, dev)
        flops = 8.0 * H * N * L
        # session 34: the same call replayed from a CUDA graph: its kernels' device time without the host's
        # per-op cost (the session 31 profile: a 25 us GEMM inside a 0.68 ms call)
        gms = graph_ms(lambda: gs.s4d_kernel(*ps, L), dev)
        frac_graph = (flops / gms / 1e9) / sgemm_tflops if isinstance(gms, float) and sgemm_tflops else None
        rows.append(dict(op="s4d_kernel", dtype="fp32", shape=[H, N, L], ms=ms, fwd_bwd_ms=ms_fb, graph_ms=gms,
                         fraction_of_sgemm_graph=frac_graph,
                         useful_gflops=flops / ms / 1e6, useful_gflops_fwd_bwd=3 * flops / ms_fb / 1e6,
                         fraction_of_sgemm=(flops / ms / 1e9) / sgemm_tflops if sgemm_tflops else None,
                         fraction_of_sgemm_fwd_bwd=(3 * flops / ms_fb / 1e9) / sgemm_tflops if sgemm_tflops else None))
    # accuracy at L = 65536 on slowly decaying modes (Re(dt A) = -1e-4 per step), float32 vs float64
    H, L = (4, 4096) if small else (64, 65536)
    ps = _s4d_params(H, N, dev, slow=True, seed=1)
    K32 = gs.s4d_kernel(*ps, L)
    K64 = gs.s4d_kernel(*[p.to(torch.complex128) if p.is_complex() else p.double() for p in ps], L)
    err = ((K32.double() - K64).abs().amax(-1) / K64.abs().amax(-1)).max().item()
    rows.append(dict(op="s4d_kernel accuracy", dtype="fp32", shape=[H, N, L], max_rel_err_per_channel=err,
                     target_met=err <= 1e-5))
    return rows


def gaunt(dev, small):
    rows = []
    R = 64 if small else 10000
    for L in (4, 8):
        n = (L + 1) ** 2
        g = torch.Generator().manual_seed(L)
        x1 = torch.randn(R, n, generator=g).to(dev)
        x2 = torch.randn(R, n, generator=g).to(dev)
        ref = ga.gaunt_tensor_product(x1.double(), x2.double(), L, route="grid")
        pub = GAUNT_A100_MS[L]
        for route in ("auto", "grid", "grid_gemm", "direct", "fft"):
            try:
                out = ga.gaunt_tensor_product(x1, x2, L, route=route)
                err = _rel(out, ref)
                ms = time_ms(lambda: ga.gaunt_tensor_product(x1, x2, L, route=route), dev)
                a, b = x1.clone().requires_grad_(), x2.clone().requires_grad_()
                go = torch.randn_like(out)

                def fb():
                    torch.autograd.grad(ga.gaunt_tensor_product(a, b, L, route=route), (a, b), go)
                ms_fb = time_ms(fb, dev)
                rows.append(dict(op="gaunt_tensor_product", route=route, dtype="fp32", shape=[R, n], lmax=L, ms=ms,
                                 fwd_bwd_ms=ms_fb, published_a100_ms=pub, ratio_to_published=ms / pub,
                                 target_met=ms < pub, rel_err_vs_fp64=err))
            except Exception as e:  # a route that does not run here: recorded, not fatal
                rows.append(dict(op="gaunt_tensor_product", route=route, lmax=L, error=f"{type(e).__name__}: {e}"))
    return rows


def fp64_check(dev, small):
    """float64 on the device must be float64: gaunt and s4d_kernel in float32 and float64 on `dev` against the CPU
    float64 result (the C++ kernels) of the same inputs; a float64 error near the float32 one is a defect."""
    rows = []
    L, n = 4, 25
    g = torch.Generator().manual_seed(11)
    x1, x2 = torch.randn(256, n, generator=g, dtype=torch.float64), torch.randn(256, n, generator=g, dtype=torch.float64)
    cpu = ga.gaunt_tensor_product(x1, x2, L, route="grid")
    for route in ("grid", "direct"):
        r = {"op": "gaunt_tensor_product", "route": route}
        for dt in (torch.float32, torch.float64):
            out = ga.gaunt_tensor_product(x1.to(dev, dt), x2.to(dev, dt), L, route=route)
            r[f"{dt}"] = _rel(out, cpu)
        rows.append(r)
    ps = _s4d_params(8, 16, "cpu", seed=2)
    ps64 = [p.to(torch.complex128) if p.is_complex() else p.double() for p in ps]
    cpu = gs.s4d_kernel(*ps64, 1000)
    r = {"op": "s4d_kernel"}
    r["torch.float32"] = _rel(gs.s4d_kernel(*[p.to(dev) for p in ps], 1000), cpu)
    r["torch.float64"] = _rel(gs.s4d_kernel(*[p.to(dev) for p in ps64], 1000), cpu)
    rows.append(r)
    a, b = torch.randn(64, 48, generator=g, dtype=torch.float64), torch.randn(48, 40, generator=g, dtype=torch.float64)
    rows.append({"op": "torch.mm float64 (the device's own)", "torch.float64": _rel(a.to(dev) @ b.to(dev), a @ b)})
    for r in rows:
        r["fp64_ok"] = r["torch.float64"] < 1e-12
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default=None)
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--only", default="", help="comma list of sections (default all)")
    a = p.parse_args(argv)
    small = a.dry_run or not torch.cuda.is_available()
    dev = torch.device("cpu" if small else "cuda")
    meta = dict(device=torch.cuda.get_device_name(0) if dev.type == "cuda" else platform.processor(),
                torch=torch.__version__, cuda=torch.version.cuda, backend_info=str(geoops.backend_info()),
                date=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
    try:
        import triton
        meta["triton"] = triton.__version__
    except ImportError:
        pass
    out = {"meta": meta, "sections": {}}
    status = 0
    sg = None
    for name, fn in (("fp64_check", lambda: fp64_check(dev, small)), ("ceilings", lambda: ceilings(dev, small)),
                     ("ssm_fftconv", lambda: ssm_fftconv(dev, small)),
                     ("ssm_s4d", lambda: ssm_s4d(dev, small, sg)), ("gaunt", lambda: gaunt(dev, small))):
        if a.only and name not in a.only.split(",") and not (name == "ceilings" and "ssm_s4d" in a.only):
            continue
        t0 = time.perf_counter()
        try:
            res = fn()
            if name == "ceilings":
                sg = res["sgemm_tflops"]
        except Exception:
            res = {"error": traceback.format_exc()}
            status = 1
        out["sections"][name] = res
        print(f"== {name} ({time.perf_counter() - t0:.1f} s)")
        for r in (res if isinstance(res, list) else [res]):
            print("  " + json.dumps(r, default=str))
        sys.stdout.flush()
        if a.json:
            Path(a.json).write_text(json.dumps(out, indent=1, default=str))
    return status


if __name__ == "__main__":
    sys.exit(main())
