"""Triton kernels of the Gaunt family: the fused sphere-grid route.

Installed as ``geoops.kernels.gaunt``; ``geoops._backend`` uses it for CUDA tensors, and for CPU tensors under
the Triton interpreter (``TRITON_INTERPRET=1``).  It implements the kernel-set contract of
``geoops._ops.gaunt``::

    gaunt_fwd(xs, ws, wout, lmax_out, route) -> (N, (lmax_out+1)^2)

Binary products on the "grid" route (and "direct", which on a GPU is the same GEMM-shaped work) run the fused
kernel ``_gaunt_grid_fwd_kernel``: a program takes BLOCK_R rows, evaluates both factors on the exact grid with
``tl.dot`` (X1 @ E1, X2 @ E2, grid chunks of BLOCK_P points), multiplies them point by point and accumulates
the projection ``(F1 * F2) @ Proj`` for the chunk, so the grid values live only in registers.  Matrices are
zero-padded to powers of two (>= 16, as tl.dot wants).  Per-degree weights are applied to the rows before the
kernel and to the output after it (elementwise, by torch).  Other routes and nu != 2 run the torch routes of
``geoops._ops.gaunt``.  float16/bfloat16 never reach here (the public layer computes them in float32);
float64 is computed in float64; float32 uses ``input_precision="ieee"`` (exact fp32 products, as the
tests need; "tf32" would be faster on Ampere+ but rounds the inputs to 10 bits).
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

__all__ = ["gaunt_fwd"]


@triton.jit
def _gaunt_grid_fwd_kernel(x1_ptr, x2_ptr, e1_ptr, e2_ptr, pr_ptr, out_ptr, N, n1, n2, n_out,
                           N1P: tl.constexpr, N2P: tl.constexpr, NOP: tl.constexpr, PP: tl.constexpr,
                           BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr, IS_F64: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)  # 64-bit offsets
    rmask = rows < N
    c1 = tl.arange(0, N1P)
    c2 = tl.arange(0, N2P)
    co = tl.arange(0, NOP)
    x1 = tl.load(x1_ptr + rows[:, None] * n1 + c1[None, :], mask=rmask[:, None] & (c1[None, :] < n1), other=0.0)
    x2 = tl.load(x2_ptr + rows[:, None] * n2 + c2[None, :], mask=rmask[:, None] & (c2[None, :] < n2), other=0.0)
    if IS_F64:
        acc = tl.zeros((BLOCK_R, NOP), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_R, NOP), dtype=tl.float32)
    for p0 in range(0, PP, BLOCK_P):
        pp = p0 + tl.arange(0, BLOCK_P)
        # padded constant matrices: (N1P, PP), (N2P, PP), (PP, NOP), zeros outside the real sizes
        e1 = tl.load(e1_ptr + c1[:, None] * PP + pp[None, :])
        e2 = tl.load(e2_ptr + c2[:, None] * PP + pp[None, :])
        f1 = tl.dot(x1, e1, input_precision="ieee")
        f2 = tl.dot(x2, e2, input_precision="ieee")
        pr = tl.load(pr_ptr + pp[:, None] * NOP + co[None, :])
        acc += tl.dot(f1 * f2, pr, input_precision="ieee")
    tl.store(out_ptr + rows[:, None] * n_out + co[None, :], acc, mask=rmask[:, None] & (co[None, :] < n_out))


def _p2(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


@functools.lru_cache(maxsize=64)
def _padded(L1: int, L2: int, lmax_out: int, dtype: torch.dtype, device: torch.device):
    from geoops._ops.gaunt import grid_consts

    (e1, e2), proj = grid_consts((L1, L2), lmax_out, dtype, device)
    n1, n2, P, n_out = e1.shape[0], e2.shape[0], proj.shape[0], proj.shape[1]
    N1P, N2P, PP, NOP = _p2(n1), _p2(n2), _p2(P), _p2(n_out)
    E1 = torch.zeros(N1P, PP, dtype=dtype, device=device)
    E1[:n1, :P] = e1
    E2 = torch.zeros(N2P, PP, dtype=dtype, device=device)
    E2[:n2, :P] = e2
    PR = torch.zeros(PP, NOP, dtype=dtype, device=device)
    PR[:P, :n_out] = proj
    return E1, E2, PR, N1P, N2P, PP, NOP


def _gaunt_grid_fwd(x1: torch.Tensor, x2: torch.Tensor, lmax_out: int) -> torch.Tensor:
    from geoops.reference.gaunt import lmax_of

    L1, L2 = lmax_of(x1.shape[1]), lmax_of(x2.shape[1])
    E1, E2, PR, N1P, N2P, PP, NOP = _padded(L1, L2, lmax_out, x1.dtype, x1.device)
    N, n_out = x1.shape[0], (lmax_out + 1) ** 2
    out = torch.empty((N, n_out), dtype=x1.dtype, device=x1.device)
    if N == 0:
        return out
    BLOCK_R = 16 if x1.dtype == torch.float64 else 32
    BLOCK_P = min(PP, 32)
    # float64 with 64+ coefficient columns: 8 warps (4 spilled 8-28 B with Triton 3.6 on sm_90 at L = 5..7)
    # and one pipeline stage (the default stages' operand buffers need 233 KB of shared memory at lmax 8,
    # over the per-block limit of sm_80 and sm_90: it would compile but not launch)
    wide64 = x1.dtype == torch.float64 and max(N1P, N2P, NOP) >= 64
    grid = (triton.cdiv(N, BLOCK_R),)
    _gaunt_grid_fwd_kernel[grid](x1, x2, E1, E2, PR, out, N, x1.shape[1], x2.shape[1], n_out,
                                 N1P=N1P, N2P=N2P, NOP=NOP, PP=PP, BLOCK_R=BLOCK_R, BLOCK_P=BLOCK_P,
                                 IS_F64=x1.dtype == torch.float64, num_warps=8 if wide64 else 4,
                                 num_stages=1 if wide64 else 3)
    return out


def gaunt_fwd(xs, ws, wout, lmax_out, route):
    """The kernel-set entry point (see the module docstring)."""
    from geoops._ops import gaunt as impl

    if len(xs) == 2 and route in ("grid", "grid_gemm", "direct"):
        from geoops.reference.gaunt import lmax_of

        a = impl._weighted(xs[0], ws[0], lmax_of(xs[0].shape[1])).contiguous()
        b = impl._weighted(xs[1], ws[1], lmax_of(xs[1].shape[1])).contiguous()
        return impl._weighted(_gaunt_grid_fwd(a, b, lmax_out), wout, lmax_out)
    return impl.Torch.gaunt_fwd(xs, ws, wout, lmax_out, route)


# degree triples (L1, L2, lmax_out) of the compile check, by the role they play: forward products (the
# benchmark grid L1 = L2 = lmax_out = 1..8, whose backward products have the same degrees; a degree-0 factor;
# an asymmetric product) and the backward products of the asymmetric ones (grad x1: (L2, Lout) -> L1,
# grad x2: (L1, Lout) -> L2)
_COMPILE_DEGREES = {
    "fwd": tuple((L, L, L) for L in range(1, 9)) + ((0, 1, 1), (2, 1, 3)),
    "bwd": ((1, 1, 0), (1, 3, 2), (2, 3, 1)),
}


def compile_variants():
    """Every Triton variant the launcher of this module can run, for the CI compile check.

    One kernel, ``_gaunt_grid_fwd_kernel``, serves the forward and the backward of the binary grid/direct
    routes (a gradient of a Gaunt product is a Gaunt product: GauntFn's backward launches the same kernel with
    the degrees permuted); its constexprs are the padded sizes of the degrees and the dtype, so one entry per
    (dtype, degree triple) of ``_COMPILE_DEGREES``, labelled fwd / bwd by the role the triple plays in the
    benchmark and gradient runs.  float16/bfloat16 never reach the kernel (computed in float32 by the public
    layer).  Expectations: 64-bit row offsets, no spills, no division at all (none in the kernel).
    """
    entries = []
    for dtype in (torch.float32, torch.float64):
        dname = str(dtype).replace("torch.", "")
        for role, triples in _COMPILE_DEGREES.items():
            for L1, L2, Lo in triples:
                x1 = torch.zeros(40, (L1 + 1) ** 2, dtype=dtype)  # 40 rows: more than one block, a partial one
                x2 = torch.zeros(40, (L2 + 1) ** 2, dtype=dtype)

                def launch(x1=x1, x2=x2, Lo=Lo):
                    _gaunt_grid_fwd(x1, x2, Lo)

                entries.append({"label": f"gaunt_grid/{dname}/L={L1},{L2}->{Lo} {role}", "launch": launch,
                                "expect": {"index64": True, "max_spill_bytes": 0, "ieee_div": True}})
    return entries
