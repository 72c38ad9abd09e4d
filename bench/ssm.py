"""Benchmark rows of the diagonal SSM family: geoops vs the eager S4D recipe vs torch.compile of it.

    python -m bench --families ssm                      # the issue's CPU targets (fp32)
    python -m bench --families ssm --ssm-L 4096         # shorter sequences

Rows:
* ``s4d_kernel`` H=256, N=32, L=16384: geoops (blocked Vandermonde, no (H, N, L) tensor) vs the eager
  recipe ``2 * einsum('hn,hnl->hl', C~, exp(dtA[..., None] * arange(L))).real`` (materialises the complex
  (H, N, L) tensor) and its torch.compile; "limit" is the real batched SGEMM of the blocked product (the
  same GEMM FLOPs); GFLOP/s counts 8 H N L useful flops per pass (a complex multiply-add per (h, n, l));
  the peak extra memory of one call (a call after the first) is reported for geoops and the peer (CPU: the
  process's resident set, sampled; GPU: the CUDA allocator's peak).
* ``s4d_kernel`` at L=65536: geoops only (the eager recipe needs > 16 GB), peak memory reported.
* ``fftconv`` B=8, H=256, L=16384: geoops vs eager ``irfft(rfft(u, 2L) * rfft(k, 2L), 2L)[..., :L] + D u``
  and its torch.compile; "limit" is ``irfft(rfft(u, 2L), 2L)`` (the two big FFTs alone; fwd+bwd: and their
  backward, two more); GFLOP/s with 2.5 n log2 n flops per real FFT of size n.
* ``ssm_conv`` B=8, H=256, N=32, L=16384: the fused pair vs the two-call composition
  ``fftconv(u, s4d_kernel(log_dt, A, B, C, L), D)`` (geoops both; the peer column is that composition);
  "limit" is irfft(rfft(u, n), n); same GFLOP/s count as fftconv plus the kernel's 8 H N L.
"""
from __future__ import annotations

import math
import os
import threading
import time
from typing import Callable, Dict

import torch

from geoops.reference.ssm import vandermonde_blocking as _blocking

from ._runner import DTYPE_SHORT, Row, compiled_peer, parse_list, pass_runner

TITLE = "diagonal SSM (S4D) kernel generation and FFT convolution vs the eager recipe"
PEER = "eager"
PEER_MODULES = ("scipy",)  # scipy.signal, the family's test oracle: its version goes into the JSON
ALL_OPS = ("s4d_kernel", "s4d_kernel_64k", "fftconv", "ssm_conv")
OP_NAMES = ALL_OPS  # the ops --ops may name
DTYPES = (torch.float32, torch.float64)  # the rows' dtypes (complex64 / complex128 parameters)
_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def add_arguments(parser) -> None:
    g = parser.add_argument_group("ssm")
    g.add_argument("--ssm-H", type=int, default=256, help="ssm: channels H (default 256)")
    g.add_argument("--ssm-N", type=int, default=32, help="ssm: complex modes N (half spectrum; default 32)")
    g.add_argument("--ssm-L", type=int, default=16384, help="ssm: sequence length L (default 16384)")
    g.add_argument("--ssm-B", type=int, default=8, help="ssm: batch for fftconv (default 8)")
    g.add_argument("--ssm-no-memory", action="store_true", help="ssm: skip the peak-memory sampling")


# ---------------------------------------------------------------- memory
def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _trim_heap() -> None:
    """Hand the C allocator's free heap memory back to the OS (glibc's malloc_trim; a no-op elsewhere)."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes

            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


def peak_extra_rss(fn: Callable[[], object], period_s: float = 0.0005, leaves=()) -> int:
    """Peak resident memory above the starting point while fn() runs (sampled by a thread; bytes).

    The starting point is clean, so that the figure does not depend on what ran before: the ``.grad`` of
    `leaves` (a fwd+bwd call's inputs, which the call would drop first) are dropped before it, and the memory
    that earlier calls freed but the C allocator kept resident is handed back (a call would reuse it without
    growing the resident set)."""
    import gc

    for t in leaves:
        t.grad = None
    gc.collect()
    _trim_heap()
    base = _rss()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(period_s)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        out = fn()
        peak[0] = max(peak[0], _rss())
        del out
    finally:
        done.set()
        th.join()
    return peak[0] - base


def peak_extra(fn: Callable[[], object], device, leaves=()) -> int:
    """Peak memory above the starting point while fn() runs (bytes), where the row's tensors live: on a GPU the
    CUDA allocator's peak (``max_memory_allocated``), on the CPU the process's resident set (peak_extra_rss).
    Measured on a second call (the first one's one-time allocations, lazy tables or a BLAS workspace, stay out);
    the ``.grad`` of `leaves` are dropped before the start."""
    device = torch.device(device)
    out = fn()  # warm-up: one-time allocations
    del out
    if device.type != "cuda":
        return peak_extra_rss(fn, leaves=leaves)
    import gc

    for t in leaves:
        t.grad = None
    gc.collect()
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    out = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del out
    return peak - base


# ---------------------------------------------------------------- inputs and contenders
def _params(H, N, device, seed=0, dtype=torch.float32):
    """log_dt (H,) in `dtype`; A, B, C (H, N) in its complex dtype (the same values for fp32 and fp64)."""
    g = torch.Generator().manual_seed(seed)
    log_dt = torch.rand(H, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)
    A = torch.complex(-0.5 * torch.ones(H, N), math.pi * torch.arange(N, dtype=torch.float32).expand(H, N))
    B = torch.ones(H, N, dtype=torch.complex64)
    C = torch.randn(H, N, generator=g, dtype=torch.complex64)
    return [log_dt.to(device=device, dtype=dtype)] + [t.to(device=device, dtype=_COMPLEX[dtype]) for t in (A, B, C)]


def eager_s4d_kernel(log_dt, A, B, C, L: int):
    """The eager S4D recipe (state-spaces' S4DKernel.forward with B folded in): materialises (H, N, L)."""
    dt = torch.exp(log_dt)
    dtA = A * dt.unsqueeze(-1)
    K = dtA.unsqueeze(-1) * torch.arange(L, device=A.device)
    Ct = C * B * (torch.exp(dtA) - 1.0) / A
    return 2 * torch.einsum("hn,hnl->hl", Ct, torch.exp(K)).real


def eager_fftconv(u, k, D):
    L = u.shape[-1]
    k_f = torch.fft.rfft(k, n=2 * L)
    u_f = torch.fft.rfft(u, n=2 * L)
    y = torch.fft.irfft(u_f * k_f, n=2 * L)[..., :L]
    return y + u * D.unsqueeze(-1)


_compiled: Dict[str, Callable] = {}




def _s4d_setup(H, N, L, pass_, device, args, with_peer, dtype=torch.float32):
    def setup():
        import geoops.ssm as gs

        want = pass_ == "fwd+bwd"
        ps = [t.detach().requires_grad_(want) for t in _params(H, N, device, dtype=dtype)]
        gout = torch.randn(H, L, device=device, dtype=dtype) if want else None
        calls = {"geoops": lambda *p: gs.s4d_kernel(*p, L)}
        T, J = _blocking(L)
        W = torch.randn(H, J, 2 * N, device=device, dtype=dtype)
        Z = torch.randn(H, 2 * N, T, device=device, dtype=dtype)
        Zb = torch.randn(H, T, 4 * N, device=device, dtype=dtype)
        G = torch.randn(H, J, T, device=device, dtype=dtype)
        skipped = {}
        if with_peer:
            calls["peer"] = lambda *p: eager_s4d_kernel(*p, L)
            comp = compiled_peer(_compiled, f"s4d{L}", eager_s4d_kernel, args.no_compile, skipped)
            if comp is not None:
                calls["compiled"] = lambda *p: comp(*p, L)
        else:
            gb = 4 * H * N * L * 8 / 2 ** 30
            skipped["peer"] = skipped["compiled"] = f"n/a: the eager recipe's (H, N, L) tensors need > {gb:.0f} GiB"
        fns = {name: pass_runner(c, ps, pass_, gout) for name, c in calls.items()}
        if want:
            fns["limit"] = lambda: (torch.bmm(W, Z), torch.bmm(G, Zb))
        else:
            fns["limit"] = lambda: torch.bmm(W, Z)
        if not args.ssm_no_memory:
            row_extra["peak_extra_MiB_geoops"] = round(peak_extra(fns["geoops"], device, leaves=ps) / 2 ** 20, 1)
            if "peer" in fns:
                row_extra["peak_extra_MiB_peer"] = round(peak_extra(fns["peer"], device, leaves=ps) / 2 ** 20, 1)
        check = None
        if pass_ == "fwd" and "peer" in calls:
            def check():
                with torch.no_grad():
                    return calls["geoops"](*ps), calls["peer"](*ps)
        return fns, check, skipped

    row_extra: dict = {}
    return setup, row_extra


def _conv_contenders(calls, ins, pass_, gout, u, n, args, row_extra):
    """(fns, check) of a convolution row: the contenders, "limit" = irfft(rfft(u, n), n)[..., :L] (in the fwd+bwd
    pass with its backward, like every contender), peak memory."""
    fns = {name: pass_runner(c, ins, pass_, gout) for name, c in calls.items()}
    ud = u.detach().requires_grad_(pass_ == "fwd+bwd")
    L = u.shape[-1]
    fns["limit"] = pass_runner(lambda v: torch.fft.irfft(torch.fft.rfft(v, n=n), n=n)[..., :L], [ud], pass_, gout)
    if not args.ssm_no_memory:
        row_extra["peak_extra_MiB_geoops"] = round(peak_extra(fns["geoops"], u.device, leaves=ins) / 2 ** 20, 1)
        row_extra["peak_extra_MiB_peer"] = round(peak_extra(fns["peer"], u.device, leaves=ins) / 2 ** 20, 1)

    def check():
        with torch.no_grad():
            return calls["geoops"](*ins), calls["peer"](*ins)
    return fns, (check if pass_ == "fwd" else None)


def _fft_setup(Bn, H, L, pass_, device, args, dtype=torch.float32):
    def setup():
        import geoops.ssm as gs

        want = pass_ == "fwd+bwd"
        g = torch.Generator().manual_seed(1)
        u = torch.randn(Bn, H, L, generator=g).to(device=device, dtype=dtype).requires_grad_(want)
        k = (torch.randn(H, L, generator=g) * torch.exp(-torch.arange(L) / 2000.0)).to(
            device=device, dtype=dtype).requires_grad_(want)
        D = torch.randn(H, generator=g).to(device=device, dtype=dtype).requires_grad_(want)
        ins = [u, k, D]
        gout = torch.randn(Bn, H, L, device=device, dtype=dtype) if want else None
        calls = {"geoops": lambda u, k, D: gs.fftconv(u, k, D), "peer": eager_fftconv}
        skipped = {}
        comp = compiled_peer(_compiled, "fft", eager_fftconv, args.no_compile, skipped)
        if comp is not None:
            calls["compiled"] = comp
        return _conv_contenders(calls, ins, pass_, gout, u, 2 * L, args, row_extra) + (skipped,)

    row_extra: dict = {}
    return setup, row_extra


def _pair_setup(Bn, H, N, L, pass_, device, args, dtype=torch.float32):
    def setup():
        import geoops.ssm as gs
        from geoops.reference.ssm import fft_size

        want = pass_ == "fwd+bwd"
        g = torch.Generator().manual_seed(2)
        u = torch.randn(Bn, H, L, generator=g).to(device=device, dtype=dtype).requires_grad_(want)
        D = torch.randn(H, generator=g).to(device=device, dtype=dtype).requires_grad_(want)
        ins = [u] + [t.detach().requires_grad_(want) for t in _params(H, N, device, dtype=dtype)] + [D]
        gout = torch.randn(Bn, H, L, device=device, dtype=dtype) if want else None

        def pair(u, log_dt, A, B, C, D):
            return gs.fftconv(u, gs.s4d_kernel(log_dt, A, B, C, L), D)

        calls = {"geoops": gs.ssm_conv, "peer": pair}
        return _conv_contenders(calls, ins, pass_, gout, u, fft_size(L), args, row_extra) + (
            {"compiled": "n/a (the peer is geoops' own two calls)"},)

    row_extra: dict = {}
    return setup, row_extra


def rows(args, device: torch.device):
    ops = parse_list(args.ops, ALL_OPS, ALL_OPS, "op")
    H, N, L, Bn = args.ssm_H, args.ssm_N, args.ssm_L, args.ssm_B
    for dtype in args.dtypes or (torch.float32,):
        tol = 1e-9 if dtype == torch.float64 else None
        for op in ops:
            for pass_ in args.passes:
                mult = 1 if pass_ == "fwd" else 3
                if op in ("s4d_kernel", "s4d_kernel_64k"):
                    LL = L if op == "s4d_kernel" else 65536
                    setup, extra = _s4d_setup(H, N, LL, pass_, device, args, with_peer=op == "s4d_kernel", dtype=dtype)
                    yield Row(family="ssm", op="s4d_kernel", pass_=pass_, shape=[H, N, LL], dtype=DTYPE_SHORT[dtype],
                              setup=setup, work=8.0 * H * N * LL * mult, unit="GFLOP/s",
                              limit="bmm of the blocked real GEMM", peer=PEER, check_tol=tol or 1e-3, extra=extra,
                              label="" if op == "s4d_kernel" else "64K, no peer")
                elif op == "ssm_conv":
                    n = 2 * L
                    ffts = (2 * Bn * H + H) if pass_ == "fwd" else (4 * Bn * H + 2 * H)  # bwd: rfft(g), irfft du, dk
                    setup, extra = _pair_setup(Bn, H, N, L, pass_, device, args, dtype)
                    yield Row(family="ssm", op="ssm_conv", pass_=pass_, shape=[Bn, H, N, L], dtype=DTYPE_SHORT[dtype],
                              setup=setup, work=2.5 * n * math.log2(n) * ffts + 8.0 * H * N * L * mult,
                              unit="GFLOP/s", limit="irfft(rfft(u, n), n)", peer="s4d_kernel+fftconv",
                              check_tol=tol or 1e-4, extra=extra, label="vs the two calls")
                else:
                    n = 2 * L
                    ffts = (2 * Bn * H + H) if pass_ == "fwd" else (4 * Bn * H + 2 * H)  # bwd: rfft(g), irfft du, dk
                    setup, extra = _fft_setup(Bn, H, L, pass_, device, args, dtype)
                    yield Row(family="ssm", op="fftconv", pass_=pass_, shape=[Bn, H, L], dtype=DTYPE_SHORT[dtype],
                              setup=setup, work=2.5 * n * math.log2(n) * ffts, unit="GFLOP/s",
                              limit="irfft(rfft(u, 2L), 2L)", peer=PEER, check_tol=tol or 1e-4, extra=extra)
