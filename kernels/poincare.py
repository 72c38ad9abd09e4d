"""Triton kernels of the Poincaré-ball layer family (forward and backward).

Installed as ``geoops.kernels.poincare``; ``geoops._backend`` uses it for CUDA tensors, and for CPU tensors
under the Triton interpreter (``TRITON_INTERPRET=1``).  It implements the contract of
``geoops._ops.poincare`` (the same one as the C++ kernels of csrc/cpu/poincare*.cpp)::

    poincare_fc_fwd(x, z, bias, c, eps, save, tangent) -> (y, t)
    poincare_fc_bwd(g, x, z, bias, c, t, eps, mask, tangent) -> (dx, dz, dbias, dc)
    poincare_relu_fwd(x, c, eps) -> y;                 poincare_relu_bwd(g, x, c, eps) -> (dx, dc)
    poincare_midpoint_sums_fwd(x, c) -> (F, L);        poincare_midpoint_sums_bwd(gF, gL, x, c) -> (dx, dc)
    poincare_bn_rows_fwd(u, M, b, c, eps) -> y;        poincare_bn_rows_bwd(g, u, M, b, c, eps) -> (du, dM, db, dc)
    poincare_fc_rows_fwd(t, U, z, bias, c, eps, tangent) -> y
    poincare_fc_rows_bwd(g, t, U, z, bias, c, eps, mask, tangent) -> (dt, dU, dz, dbias, dc)

Layout.  Every kernel is a row kernel: a program takes BLOCK_R rows and walks them in BLOCK_D-wide
chunks (reduce, then write: a chunk is reloaded, never kept), so any width runs.  Offsets are 64-bit
(the program id is widened before any arithmetic).  Reductions over rows (the midpoint's sums, the
column terms of the fc backward, the batch norm's bias gradient, the curvature gradients) are written
as per-program / per-row partials and summed by torch in float64: deterministic, no atomics.

GEMMs.  ``t = x @ z`` and the backward's ``dt z^T`` / ``x^T dt`` (and the batch norm's ``u @ M`` with its
two backward products) run in cuBLAS (torch.mm) -- in IEEE fp32 for float32: when
``torch.backends.cuda.matmul.allow_tf32`` is set the product runs in ``_mm_kernel`` instead (tl.dot with
``input_precision="ieee"``), so the layer never depends on the global TF32 switch.

fully connected.  Per row i (torch in float64 on N-vectors): X = |x|^2 (tangent rows: s = tanh(sc|u|)/(sc|u|)
or the projection's maxnorm/|u|, X = s^2|u|^2), lam = 2/(1 - cX), k1 = sc lam s, k0 = lam - 1; per
column j: C = cosh(2 sc r)/|z_j|, S = sinh(2 sc r), Z = 2|z_j|.  ``_fc_fwd_kernel``: a = k1 t C - k0 S,
w = sinh(Z asinh a)/sc, |w|^2 (pass 1), then y = w / (1 + sqrt(1 + c|w|^2)) times the projection's factor
(pass 2, w recomputed).  ``_fc_bwd_kernel`` recomputes a, w from the saved t (pass 1: |w|^2, <g, w>),
then writes dL/dt and the row terms (through lam, sc) and the per-program column partials (through
|z_j|, C, S) in pass 2 -- csrc/cpu/poincare.cpp's fc_bwd_impl, term by term.  The rest (dx = dt z^T +
row coefficient * x, the tangent rows' extra term, dz = x^T dt + column coefficient * z, db, dc) is torch.
The row scalars and column constants come from two prologue kernels (``_fc_colprep_kernel``, ``_fc_rowprep_kernel``:
the same float64 formulas), and the backward's assembly (row coefficient, dc, dL/dU, the column terms, db) from the
fc backward kernel's FIN epilogue and ``_fc_colfin_kernel``: ~12 / ~31 torch ops and 3 / 4 launches per call
instead of ~60 / ~120 small torch ops (GEOOPS_POINCARE_TRITON_FUSED_PREP=0: the torch glue; session 32).
The fc_rows entry (poincare_conv2d: t and U = |x|^2 given, no x) runs the same two kernels with the row scalars
from U; dU = row coefficient / 2 (tangent: u . (dt z^T) = t . dt), dz only the column term
(GEOOPS_POINCARE_TRITON_FC_ROWS=0: the eager reference instead).
Large distances: pass 1 also finds each row's largest |u_j| = T; a block with a row beyond T = 20 (where w and
|w|^2 overflow near 44 in float32, 355 in float64) takes one more pass for that row's sums with w scaled by
sinh(T) (v = sinh(u)/sinh(T) from exp(+-u - T)) and writes / differentiates it in that form (the C++ scaled
row pass's formulas, in the tile type); other blocks run as before.  Large offsets (|2 sc r| > 20): the
column constants C, S come divided by e^ell (geoops.reference.poincare.offset_consts) with per-column Q = e^-2ell
and L = ell, and a chunk with such a column takes asinh(a) = ell + log(|b| + sqrt(b^2 + Q)) of b = a e^-ell.

ReLU, midpoint sums, batch norm rows: the row math of csrc/cpu/poincare_relu.cpp and poincare_bn.cpp in float64 per
row (the batch norm's expmap / project coefficients and their vjps are the stereographic family's ``_fwd_coef`` /
``_vjp``, the same forms as geoops/stereo_math.h), element-wise passes in the tile type (float32 or float64).

Precision: float32 or float64 (geoops.poincare upcasts the half types, as the CPU path does).  Every float32
division is IEEE (``_div``).  The interpreter has no libdevice: asinh/sinh/cosh/tanh/log1p resolve to numpy
there (``_NumpyMath``).
"""
from __future__ import annotations

import contextlib
import os
import struct

import torch
import triton
import triton.language as tl

from . import stereographic as _st
from . import with_env
from .stereographic import EXPMAP, PROJECT, _atanc, _atanc_d, _div, _fwd_coef, _sqrt, _tanc, _tanc_d, _vjp

try:  # Triton >= 3.0: backend-neutral stubs, mapped to CUDA/HIP libdevice at compile time
    from triton.language.extra import libdevice as _libdevice
except ImportError:  # pragma: no cover - older layouts
    from triton.language.extra.cuda import libdevice as _libdevice

__all__ = ["poincare_fc_fwd", "poincare_fc_bwd", "poincare_relu_fwd", "poincare_relu_bwd",
           "poincare_midpoint_sums_fwd", "poincare_midpoint_sums_bwd", "poincare_bn_rows_fwd",
           "poincare_bn_rows_bwd", "poincare_fc_rows_fwd", "poincare_fc_rows_bwd", "poincare_bn_running_update_",
           "poincare_bn_transport_fwd", "poincare_bn_transport_bwd", "poincare_midpoint_mean_fwd",
           "poincare_midpoint_mean_bwd", "poincare_mlr_fwd", "poincare_mlr_bwd", "compile_variants"]

F64 = tl.constexpr(tl.float64)
_CUT = tl.constexpr(1e-3)  # Taylor cut of the float64 row math (as the C++ kernels)


class _NumpyMath(_st._NumpyMath):
    """The interpreter's stand-ins for the libdevice functions used here."""

    expm1 = staticmethod(lambda x: _st._NumpyMath._unary("expm1", x))
    exp = staticmethod(lambda x: _st._NumpyMath._unary("exp", x))
    log = staticmethod(lambda x: _st._NumpyMath._unary("log", x))


_math = _libdevice


# ---------------------------------------------------------------- row math (float64), k = -c < 0
@triton.jit
def _tanhc(p, CUT: tl.constexpr):
    """tanh(s)/s for s = sqrt(p), p >= 0 (series below CUT)."""
    small = p < CUT
    series = 1.0 - p * (1.0 / 3 - p * (2.0 / 15 - p * (17.0 / 315 - p * (62.0 / 2835))))
    s = tl.sqrt(tl.where(small, 1.0, p))
    return tl.where(small, series, _math.tanh(s) / s)


@triton.jit
def _tanhc_d(p, t, CUT: tl.constexpr):
    """d/dp of tanh(sqrt p)/sqrt p given its value t."""
    small = p < CUT
    series = -1.0 / 3 + p * (4.0 / 15 - p * (51.0 / 315 - p * (248.0 / 2835)))
    ps = tl.where(small, 1.0, p)
    return tl.where(small, series, (1.0 - ps * t * t - t) / (2.0 * ps))


@triton.jit
def _rows_of(pid, BLOCK_R: tl.constexpr):
    return pid * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)


@triton.jit
def _row_block(N, D, BLOCK_R: tl.constexpr):
    """This program's rows of an (N, D) row-major tensor: (pid, rows, row mask, 64-bit row offsets (BLOCK_R, 1))."""
    pid = tl.program_id(0).to(tl.int64)
    rows = _rows_of(pid, BLOCK_R)
    return pid, rows, rows < N, rows[:, None] * D


@triton.jit
def _chunk(d0, rmask, D, BLOCK_D: tl.constexpr):
    """Columns d0 .. d0 + BLOCK_D of a row walk and the tile mask."""
    cols = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
    return cols, rmask[:, None] & (cols[None, :] < D)


# ---------------------------------------------------------------- Poincaré ReLU
@triton.jit
def _relu_row(X, R, c, eps, GRADS: tl.constexpr):
    """f (y = f relu(x)) and, with GRADS, (fR2, fX2, fk) of csrc/cpu/poincare_relu.cpp's relu_row_f, k = -c."""
    # h = artanh(sqrt(cX))/sqrt(cX) = atanc(z1), z1 = -cX (the stereographic family's _atanc / _atanc_d, stereo_math.h's
    # rule: q1 = 1 + z1 clamped only where q1 <= 0, outside the ball, where no 1/q1 gradient flows; session 49);
    # z2 = -c h^2 R; f = tanh(sqrt(-z2))/sqrt(-z2) h
    z1 = -c * X
    q1 = 1.0 + z1
    h = _atanc(z1, q1, _CUT, True)  # (NEG: z1 <= 0, no atan branch)
    p2 = c * h * h * R
    t2 = _tanhc(p2, _CUT)
    f = t2 * h
    ny = f * tl.sqrt(R)
    mx = (1.0 - eps) / tl.sqrt(c)
    nr = tl.maximum(tl.sqrt(R), 1e-15)
    proj = ny > mx
    f = tl.where(proj, mx / nr, f)
    fR2 = tl.zeros_like(f)
    fX2 = tl.zeros_like(f)
    fk = tl.zeros_like(f)
    if GRADS:
        k = -c
        t2d = -_tanhc_d(p2, t2, _CUT)        # d tanc / dz at z = -p2
        h1 = _atanc_d(z1, q1, h, _CUT)
        dh_dX = k * h1
        dh_dk = X * h1
        df_dh = t2 + 2.0 * k * h * h * R * t2d
        fR2 = tl.where(proj, -mx / (nr * nr * nr), 2.0 * k * h * h * h * t2d)
        fX2 = tl.where(proj, 0.0, 2.0 * df_dh * dh_dX)
        fk = tl.where(proj, 0.5 * (1.0 - eps) / (c * tl.sqrt(c)) / nr, h * t2d * h * h * R + df_dh * dh_dk)
    return f, fR2, fX2, fk


@triton.jit
def _relu_sums(X_ptr, G_ptr, base, rmask, D, GRADS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """Row sums |x|^2, |relu x|^2 and (GRADS) <g, relu x> in float64 (G_ptr is not read without GRADS).

    The entries are widened before the products (exact in float64 for float32 entries), as the C++ kernel's double
    sums: 1 - c|x|^2 is tiny near the boundary, and float32 sums rounded |x|^2 by ~eps against it (dx 1.7e-3 off at
    1 - 1e-5 of the radius; session 50)."""
    XX = tl.zeros((BLOCK_R,), tl.float64)
    RR = tl.zeros((BLOCK_R,), tl.float64)
    GG = tl.zeros((BLOCK_R,), tl.float64)
    for d0 in range(0, D, BLOCK_D):
        cols, m = _chunk(d0, rmask, D, BLOCK_D)
        x = tl.load(X_ptr + base + cols[None, :], mask=m, other=0.0).to(tl.float64)
        r = tl.where(x > 0, x, 0.0)
        XX += tl.sum(x * x, 1)
        RR += tl.sum(r * r, 1)
        if GRADS:
            g = tl.load(G_ptr + base + cols[None, :], mask=m, other=0.0).to(tl.float64)
            GG += tl.sum(g * r, 1)
    return XX, RR, GG


@triton.jit
def _relu_fwd_kernel(X_ptr, Y_ptr, C_ptr, N, D, eps: tl.float64,
                     BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    _pid, rows, rmask, base = _row_block(N, D, BLOCK_R)
    c = tl.load(C_ptr).to(tl.float64)
    XX, RR, _GG = _relu_sums(X_ptr, X_ptr, base, rmask, D, False, BLOCK_R, BLOCK_D)
    f, _a, _b, _c = _relu_row(XX, RR, c, eps, False)
    fT = f.to(Y_ptr.dtype.element_ty)
    for d0 in range(0, D, BLOCK_D):
        cols, m = _chunk(d0, rmask, D, BLOCK_D)
        x = tl.load(X_ptr + base + cols[None, :], mask=m, other=0.0)
        tl.store(Y_ptr + base + cols[None, :], tl.where(x > 0, fT[:, None] * x, 0.0), mask=m)


@triton.jit
def _relu_bwd_kernel(G_ptr, X_ptr, GX_ptr, GK_ptr, C_ptr, N, D, eps: tl.float64,
                     BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    _pid, rows, rmask, base = _row_block(N, D, BLOCK_R)
    c = tl.load(C_ptr).to(tl.float64)
    XX, RR, GG = _relu_sums(X_ptr, G_ptr, base, rmask, D, True, BLOCK_R, BLOCK_D)
    f, fR2, fX2, fk = _relu_row(XX, RR, c, eps, True)
    ty = GX_ptr.dtype.element_ty
    fT = f.to(ty)[:, None]
    aT = (GG * fR2).to(ty)[:, None]
    bT = (GG * fX2).to(ty)[:, None]
    for d0 in range(0, D, BLOCK_D):
        cols, m = _chunk(d0, rmask, D, BLOCK_D)
        x = tl.load(X_ptr + base + cols[None, :], mask=m, other=0.0)
        g = tl.load(G_ptr + base + cols[None, :], mask=m, other=0.0)
        gx = tl.where(x > 0, fT * g + aT * x, 0.0) + bT * x
        tl.store(GX_ptr + base + cols[None, :], gx, mask=m)
    tl.store(GK_ptr + rows, GG * fk, mask=rmask)


# ---------------------------------------------------------------- midpoint sums
@triton.jit
def _mid_fwd_kernel(X_ptr, PF_ptr, PL_ptr, C_ptr, N, D,
                    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, SCATTER: tl.constexpr):
    """Per program: PF[pid] = sum over its rows of lam_i x_i (D,), PL[pid] = sum of (lam_i - 1).  SCATTER (the
    batch midpoint's root, _mid_fin_fwd_kernel): PL[pid] is the row (sum (lam_i - 1), Lt = sum lam_i, W = sum
    lam_i |x_i - p|^2 about the program's own centroid p = PF[pid] / Lt, R = sum of lam_i (1 - c|x_i|^2) - 2 over
    the rows whose lam is clamped); W per column chunk, as p's chunk is known there (no third pass)."""
    pid, rows, rmask, base = _row_block(N, D, BLOCK_R)
    c = tl.load(C_ptr).to(tl.float64)
    XX = tl.zeros((BLOCK_R,), tl.float64)
    for d0 in range(0, D, BLOCK_D):
        cols, m = _chunk(d0, rmask, D, BLOCK_D)
        x = tl.load(X_ptr + base + cols[None, :], mask=m, other=0.0).to(tl.float64)
        XX += tl.sum(x * x, 1)
    den = 1.0 - c * XX
    lam = 2.0 / tl.maximum(den, 1e-15)
    lam = tl.where(rmask, lam, 0.0)
    Lm = tl.sum(tl.where(rmask, lam - 1.0, 0.0), 0)
    if SCATTER:
        Lt = tl.sum(lam, 0)
        Wv = tl.zeros((BLOCK_R,), tl.float64)
        for d0 in range(0, D, BLOCK_D):
            cols, m = _chunk(d0, rmask, D, BLOCK_D)
            x = tl.load(X_ptr + base + cols[None, :], mask=m, other=0.0).to(tl.float64)
            Fc = tl.sum(lam[:, None] * x, 0)
            tl.store(PF_ptr + pid * D + cols, Fc, mask=cols < D)
            e = tl.where(m, x - (Fc / Lt)[None, :], 0.0)
            Wv += tl.sum(e * e, 1)
        tl.store(PL_ptr + pid * 4, Lm)
        tl.store(PL_ptr + pid * 4 + 1, Lt)
        tl.store(PL_ptr + pid * 4 + 2, tl.sum(lam * Wv, 0))
        tl.store(PL_ptr + pid * 4 + 3, tl.sum(tl.where(rmask & ~(den > 1e-15), lam * den - 2.0, 0.0), 0))
    else:
        tl.store(PL_ptr + pid, Lm)
        for d0 in range(0, D, BLOCK_D):
            cols, m = _chunk(d0, rmask, D, BLOCK_D)
            x = tl.load(X_ptr + base + cols[None, :], mask=m, other=0.0).to(tl.float64)
            tl.store(PF_ptr + pid * D + cols, tl.sum(lam[:, None] * x, 0), mask=cols < D)


@triton.jit
def _mid_bwd_kernel(GF_ptr, GL_ptr, X_ptr, GX_ptr, GC_ptr, C_ptr, FS_ptr, SC_ptr, N, D,
                    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, SCATTER: tl.constexpr):
    """dx_i = lam_i gF + (<gF, x_i> + gL) c lam_i^2 x_i; GC[i] = (<gF, x_i> + gL) lam_i^2 |x_i|^2 / 2.  SCATTER
    (_mid_fin_bwd_kernel's GL = (gL, -, gV, gR)): also V's and R's parts (see _mid_fin_fwd_kernel) with
    e_i = x_i - p, p = F / Lt = f L / Lt the weighted centroid (FS = f, SC = (L, Lt, W, ...)): dV/dx_i =
    2 lam_i Lt e_i + dV/dlam_i c lam_i^2 x_i, dV/dlam_i = W + Lt |e_i|^2 (zero where lam is clamped); there
    dR/dx_i = -2 c lam_i x_i, dR/dc = -lam_i |x_i|^2 (lam a constant).  (sum_i lam_i e_i = 0 at p: dropped.)"""
    pid, rows, rmask, base = _row_block(N, D, BLOCK_R)
    c = tl.load(C_ptr).to(tl.float64)
    gL = tl.load(GL_ptr).to(tl.float64)
    XX = tl.zeros((BLOCK_R,), tl.float64)
    PP = tl.zeros((BLOCK_R,), tl.float64)
    EE = tl.zeros((BLOCK_R,), tl.float64)
    ps = 0.0
    if SCATTER:
        ps = tl.load(SC_ptr) / tl.load(SC_ptr + 1)  # p = f L / Lt
    for d0 in range(0, D, BLOCK_D):
        cols, m = _chunk(d0, rmask, D, BLOCK_D)
        x = tl.load(X_ptr + base + cols[None, :], mask=m, other=0.0).to(tl.float64)
        gf = tl.load(GF_ptr + cols, mask=cols < D, other=0.0).to(tl.float64)
        XX += tl.sum(x * x, 1)
        PP += tl.sum(gf[None, :] * x, 1)
        if SCATTER:
            p = tl.load(FS_ptr + cols, mask=cols < D, other=0.0) * ps
            e = tl.where(m, x - p[None, :], 0.0)
            EE += tl.sum(e * e, 1)
    den = 1.0 - c * XX
    lam = 2.0 / tl.maximum(den, 1e-15)
    ty = GX_ptr.dtype.element_ty
    if SCATTER:
        Lt = tl.load(SC_ptr + 1)
        gV = tl.load(GL_ptr + 2)
        gR = tl.load(GL_ptr + 3)
        live = den > 1e-15
        w = tl.where(live, (PP + gL + gV * (tl.load(SC_ptr + 2) + Lt * EE)) * lam * lam, 0.0)
        bx = tl.where(live, w * c, -2.0 * c * gR * lam)[:, None]
        be = (2.0 * gV * Lt * lam)[:, None]
        for d0 in range(0, D, BLOCK_D):
            cols, m = _chunk(d0, rmask, D, BLOCK_D)
            x = tl.load(X_ptr + base + cols[None, :], mask=m, other=0.0).to(tl.float64)
            gf = tl.load(GF_ptr + cols, mask=cols < D, other=0.0).to(tl.float64)
            p = tl.load(FS_ptr + cols, mask=cols < D, other=0.0) * ps
            gx = lam[:, None] * gf[None, :] + bx * x + be * (x - p[None, :])
            tl.store(GX_ptr + base + cols[None, :], gx.to(ty), mask=m)
        tl.store(GC_ptr + rows, tl.where(live, 0.5 * w * XX, -gR * lam * XX), mask=rmask)
    else:
        w = tl.where(den > 1e-15, (PP + gL) * lam * lam, 0.0)
        aT = lam.to(ty)[:, None]
        bT = (w * c).to(ty)[:, None]
        for d0 in range(0, D, BLOCK_D):
            cols, m = _chunk(d0, rmask, D, BLOCK_D)
            x = tl.load(X_ptr + base + cols[None, :], mask=m, other=0.0)
            gf = tl.load(GF_ptr + cols, mask=cols < D, other=0.0)
            tl.store(GX_ptr + base + cols[None, :], aT * gf[None, :] + bT * x, mask=m)
        tl.store(GC_ptr + rows, 0.5 * w * XX, mask=rmask)


@triton.jit
def _mid_fin_f(PF_ptr, P, D, d0, Lc, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
    """Columns d0.. of f = sum_p PF[p] / Lc (float64) and their indices."""
    pp = tl.arange(0, BLOCK_P).to(tl.int64)
    cols = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
    F = tl.zeros((BLOCK_D,), tl.float64)
    for p0 in range(0, P, BLOCK_P):
        rows = p0 + pp
        F += tl.sum(tl.load(PF_ptr + rows[:, None] * D + cols[None, :],
                            mask=(rows[:, None] < P) & (cols[None, :] < D), other=0.0), 0)
    return cols, F / Lc


@triton.jit
def _mid_fin_fwd_kernel(PF_ptr, PL_ptr, C_ptr, M_ptr, FS_ptr, SC_ptr, P, N, D,
                        BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
    """One program: the midpoint from _mid_fwd_kernel's P partial rows (SCATTER).  F = sum_p PF[p] (D,), L, Lt, R
    the sums of PL's columns, f = F / max(L, 1e-15), r = sqrt(q), M = f / (1 + r) in M's dtype with q = 1 - c|f|^2
    formed as (N^2 + c V + Lt R) / L^2 (geoops.poincare.midpoint: 1 - c|f|^2 cancels near the boundary): the
    weighted scatter V = Lt W, W = sum_p (W_p + Lt_p |p_p - p|^2) about the centroid p = F / Lt from the programs'
    own (p_p = PF[p] / Lt_p; all terms >= 0).  FS = f (D,) and SC = (L, Lt, W, V, R, r) in float64 for the
    backward.  F is summed twice (two sweeps over D) instead of stored and read back."""
    c = tl.load(C_ptr).to(tl.float64)
    pp = tl.arange(0, BLOCK_P).to(tl.int64)
    Lv = tl.zeros((BLOCK_P,), tl.float64)
    Tv = tl.zeros((BLOCK_P,), tl.float64)
    Wv = tl.zeros((BLOCK_P,), tl.float64)
    Rv = tl.zeros((BLOCK_P,), tl.float64)
    for p0 in range(0, P, BLOCK_P):
        pm = p0 + pp < P
        Lv += tl.load(PL_ptr + (p0 + pp) * 4, mask=pm, other=0.0)
        Tv += tl.load(PL_ptr + (p0 + pp) * 4 + 1, mask=pm, other=0.0)
        Wv += tl.load(PL_ptr + (p0 + pp) * 4 + 2, mask=pm, other=0.0)
        Rv += tl.load(PL_ptr + (p0 + pp) * 4 + 3, mask=pm, other=0.0)
    L = tl.sum(Lv, 0)
    Lt = tl.sum(Tv, 0)
    R = tl.sum(Rv, 0)
    Lc = tl.maximum(L, 1e-15)
    Bv = tl.zeros((BLOCK_P,), tl.float64)  # the programs' Lt_p |p_p - p|^2, over the column chunks
    for d0 in range(0, D, BLOCK_D):
        cols, f = _mid_fin_f(PF_ptr, P, D, d0, Lc, BLOCK_P, BLOCK_D)
        pc = f * (L / Lt)
        for p0 in range(0, P, BLOCK_P):
            prow = p0 + pp
            pm = prow < P
            Fp = tl.load(PF_ptr + prow[:, None] * D + cols[None, :], mask=pm[:, None] & (cols[None, :] < D),
                         other=0.0)
            Tp = tl.load(PL_ptr + prow * 4 + 1, mask=pm, other=1.0)
            dlt = tl.where(pm[:, None] & (cols[None, :] < D), Fp / Tp[:, None] - pc[None, :], 0.0)
            Bv += tl.where(pm, Tp * tl.sum(dlt * dlt, 1), 0.0)
    W = tl.sum(Wv, 0) + tl.sum(Bv, 0)
    V = Lt * W
    n = N.to(tl.float64)
    r = tl.sqrt(n * n + c * V + Lt * R) / Lc
    for d0 in range(0, D, BLOCK_D):
        cols, f = _mid_fin_f(PF_ptr, P, D, d0, Lc, BLOCK_P, BLOCK_D)
        tl.store(FS_ptr + cols, f, mask=cols < D)
        tl.store(M_ptr + cols, (f / (1.0 + r)).to(M_ptr.dtype.element_ty), mask=cols < D)
    tl.store(SC_ptr, L)
    tl.store(SC_ptr + 1, Lt)
    tl.store(SC_ptr + 2, W)
    tl.store(SC_ptr + 3, V)
    tl.store(SC_ptr + 4, R)
    tl.store(SC_ptr + 5, r)


@triton.jit
def _mid_fin_bwd_kernel(GM_ptr, FS_ptr, SC_ptr, C_ptr, GF_ptr, GL_ptr, D, BLOCK_D: tl.constexpr):
    """One program: _mid_fin_fwd_kernel's backward on the D-vector.  gq = -<gm, f> / (2 r (1 + r)^2) (d/dq of
    f / (1 + sqrt(q))), GF = gm / ((1 + r) max(L, 1e-15)) (GF's dtype); q = (N^2 + c V + Lt R) / L^2 (Lt = L + N):
    GL = (gL = -<GF, f> + gq (R / L - 2 q) / L [L > 1e-15], the root's direct dL/dc gq V / L^2, gV = gq c / L^2,
    gR = gq Lt / L^2) in float64; V's and R's row parts in _mid_bwd_kernel (not through f: that chain,
    1 - c <f, x_i> - q, cancels as 1 - c|f|^2 did)."""
    c = tl.load(C_ptr).to(tl.float64)
    L = tl.load(SC_ptr)
    Lt = tl.load(SC_ptr + 1)
    V = tl.load(SC_ptr + 3)
    R = tl.load(SC_ptr + 4)
    r = tl.load(SC_ptr + 5)
    opr = 1.0 + r
    Lc = tl.maximum(L, 1e-15)
    dd = tl.arange(0, BLOCK_D).to(tl.int64)
    hv = tl.zeros((BLOCK_D,), tl.float64)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + dd
        gm = tl.load(GM_ptr + cols, mask=cols < D, other=0.0).to(tl.float64)
        f = tl.load(FS_ptr + cols, mask=cols < D, other=0.0)
        hv += gm * f
    gq = -tl.sum(hv, 0) / (2.0 * r * opr * opr)
    gv = tl.zeros((BLOCK_D,), tl.float64)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + dd
        gm = tl.load(GM_ptr + cols, mask=cols < D, other=0.0).to(tl.float64)
        f = tl.load(FS_ptr + cols, mask=cols < D, other=0.0)
        gF = gm / (opr * Lc)
        tl.store(GF_ptr + cols, gF.to(GF_ptr.dtype.element_ty), mask=cols < D)
        gv += gF * f
    L2 = Lc * Lc
    tl.store(GL_ptr, tl.where(L > 1e-15, -tl.sum(gv, 0) + gq * (R / Lc - 2.0 * r * r) / Lc, 0.0))
    tl.store(GL_ptr + 1, gq * V / L2)
    tl.store(GL_ptr + 2, gq * c / L2)
    tl.store(GL_ptr + 3, gq * Lt / L2)


# ---------------------------------------------------------------- batch norm row pass
# y_i = project(expmap_b(v_i), eps), v = u @ M (the GEMM): csrc/cpu/poincare_bn.cpp's bn_fwd_impl with the
# stereographic coefficient forms (k = -c).  Row scalars: s1 = (bb, vv, bv, dd) for expmap at b, s2 = (ee,)
# for project.
@triton.jit
def _bn_tiles(V_ptr, B_ptr, base, rmask, d0, D, BLOCK_D: tl.constexpr):
    """Chunk d0 of the rows: (cols, mask, v, b) in float64."""
    cols, m = _chunk(d0, rmask, D, BLOCK_D)
    v = tl.load(V_ptr + base + cols[None, :], mask=m, other=0.0).to(tl.float64)
    b = tl.load(B_ptr + cols, mask=cols < D, other=0.0).to(tl.float64)
    return cols, m, v, b


@triton.jit
def _bn_bb(B_ptr, D, BLOCK_D: tl.constexpr):
    acc = tl.zeros((BLOCK_D,), tl.float64)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
        b = tl.load(B_ptr + cols, mask=cols < D, other=0.0).to(tl.float64)
        acc += b * b
    return tl.sum(acc, 0)


@triton.jit
def _bn_expmap(V_ptr, B_ptr, base, rmask, bb, k, N, D, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """Pass 1 (row sums of v against b) and expmap's coefficients: (vv, bv, dd, a1, b1, c1)."""
    vv = tl.zeros((BLOCK_R,), tl.float64)
    bv = tl.zeros((BLOCK_R,), tl.float64)
    dd = tl.zeros((BLOCK_R,), tl.float64)
    for d0 in range(0, D, BLOCK_D):
        _cols, m, v, b = _bn_tiles(V_ptr, B_ptr, base, rmask, d0, D, BLOCK_D)
        vv += tl.sum(v * v, 1)
        bv += tl.sum(b[None, :] * v, 1)
        dl = b[None, :] - v
        dd += tl.sum(dl * dl, 1)
    bbr = tl.zeros_like(vv) + bb
    kr = tl.zeros_like(vv) + k
    a1, b1, c1 = _fwd_coef(EXPMAP, bbr, vv, bv, dd, kr, kr, 0.0, _CUT)
    return vv, bv, dd, a1, b1, c1


@triton.jit
def _bn_e(v, b, a1, b1, c1):
    """The expmap tile e = a1 b + b1 v + c1 (b - v) of rows v (float64) at b."""
    return a1[:, None] * b[None, :] + b1[:, None] * v + c1[:, None] * (b[None, :] - v)


@triton.jit
def _bn_e_sums(V_ptr, B_ptr, G_ptr, base, rmask, a1, b1, c1, D, GRADS: tl.constexpr, BLOCK_R: tl.constexpr,
               BLOCK_D: tl.constexpr):
    """Pass 2: row sums |e|^2 and (GRADS) <g, e> in float64 (G_ptr is not read without GRADS)."""
    ee = tl.zeros((BLOCK_R,), tl.float64)
    ga = tl.zeros((BLOCK_R,), tl.float64)
    for d0 in range(0, D, BLOCK_D):
        cols, m, v, b = _bn_tiles(V_ptr, B_ptr, base, rmask, d0, D, BLOCK_D)
        e = _bn_e(v, b, a1, b1, c1)
        ee += tl.sum(e * e, 1)
        if GRADS:
            g = tl.load(G_ptr + base + cols[None, :], mask=m, other=0.0).to(tl.float64)
            ga += tl.sum(g * e, 1)
    return ee, ga


@triton.jit
def _bn_ge(G_ptr, V_ptr, B_ptr, base, rmask, d0, D, a1, b1, c1, ac2, r2xx, BLOCK_D: tl.constexpr):
    """Chunk d0 of dL/de = (a2 + c2) g + 2 r2xx e (project's vjp): (cols, mask, v, b, ge)."""
    cols, m, v, b = _bn_tiles(V_ptr, B_ptr, base, rmask, d0, D, BLOCK_D)
    g = tl.load(G_ptr + base + cols[None, :], mask=m, other=0.0).to(tl.float64)
    ge = ac2[:, None] * g + 2.0 * r2xx[:, None] * _bn_e(v, b, a1, b1, c1)
    return cols, m, v, b, ge


@triton.jit
def _bn_fwd_kernel(V_ptr, B_ptr, Y_ptr, C_ptr, N, D,
                   EPS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    _pid, rows, rmask, base = _row_block(N, D, BLOCK_R)
    k = -tl.load(C_ptr).to(tl.float64)
    bb = _bn_bb(B_ptr, D, BLOCK_D)
    vv, bv, dd, a1, b1, c1 = _bn_expmap(V_ptr, B_ptr, base, rmask, bb, k, N, D, BLOCK_R, BLOCK_D)
    ee, _ga = _bn_e_sums(V_ptr, B_ptr, V_ptr, base, rmask, a1, b1, c1, D, False, BLOCK_R, BLOCK_D)
    z0 = tl.zeros_like(ee)
    a2, _b2, _c2 = _fwd_coef(PROJECT, ee, z0, z0, z0, z0 + k, z0, EPS, _CUT)
    for d0 in range(0, D, BLOCK_D):
        cols, m, v, b = _bn_tiles(V_ptr, B_ptr, base, rmask, d0, D, BLOCK_D)
        e = _bn_e(v, b, a1, b1, c1)
        tl.store(Y_ptr + base + cols[None, :], (a2[:, None] * e).to(Y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _bn_bwd_kernel(G_ptr, V_ptr, B_ptr, GV_ptr, PB_ptr, GK_ptr, C_ptr, N, D,
                   EPS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """GV = dL/dv (N, D), PB[pid] = this program's part of dL/db (D,), GK[i] = row i's dL/dk."""
    pid, rows, rmask, base = _row_block(N, D, BLOCK_R)
    k = -tl.load(C_ptr).to(tl.float64)
    bb = _bn_bb(B_ptr, D, BLOCK_D)
    vv, bv, dd, a1, b1, c1 = _bn_expmap(V_ptr, B_ptr, base, rmask, bb, k, N, D, BLOCK_R, BLOCK_D)
    ee, ga = _bn_e_sums(V_ptr, B_ptr, G_ptr, base, rmask, a1, b1, c1, D, True, BLOCK_R, BLOCK_D)
    z0 = tl.zeros_like(ee)
    kr = z0 + k
    a2, _b2, c2 = _fwd_coef(PROJECT, ee, z0, z0, z0, kr, z0, EPS, _CUT)
    r2xx, _y, _xy, _dd, r2k, _r = _vjp(PROJECT, ee, z0, z0, z0, kr, z0, ga, z0, z0, EPS, _CUT)
    ac2 = a2 + c2
    gab = tl.zeros((BLOCK_R,), tl.float64)
    gav = tl.zeros((BLOCK_R,), tl.float64)
    gad = tl.zeros((BLOCK_R,), tl.float64)
    for d0 in range(0, D, BLOCK_D):
        _cols, _m, v, b, ge = _bn_ge(G_ptr, V_ptr, B_ptr, base, rmask, d0, D, a1, b1, c1, ac2, r2xx, BLOCK_D)
        gab += tl.sum(ge * b[None, :], 1)
        gav += tl.sum(ge * v, 1)
        gad += tl.sum(ge * (b[None, :] - v), 1)
    bbr = z0 + bb
    r1xx, r1yy, r1xy, r1dd, r1k, _r1 = _vjp(EXPMAP, bbr, vv, bv, dd, kr, kr, gab, gav, gad, 0.0, _CUT)
    tl.store(GK_ptr + rows, r2k + r1k, mask=rmask)
    for d0 in range(0, D, BLOCK_D):
        cols, m, v, b, ge = _bn_ge(G_ptr, V_ptr, B_ptr, base, rmask, d0, D, a1, b1, c1, ac2, r2xx, BLOCK_D)
        dl = b[None, :] - v
        pb = (a1 + c1)[:, None] * ge + 2.0 * r1xx[:, None] * b[None, :] + r1xy[:, None] * v + 2.0 * r1dd[:, None] * dl
        gv = (b1 - c1)[:, None] * ge + 2.0 * r1yy[:, None] * v + r1xy[:, None] * b[None, :] - 2.0 * r1dd[:, None] * dl
        tl.store(GV_ptr + base + cols[None, :], gv.to(GV_ptr.dtype.element_ty), mask=m)
        tl.store(PB_ptr + pid * D + cols, tl.sum(tl.where(m, pb, 0.0), 0), mask=cols < D)


# ---------------------------------------------------------------- fully connected
@triton.jit
def _asinh(a):
    """asinh(a) = sign(a) log1p(|a| + a^2 / (1 + sqrt(1 + a^2))) (as csrc/cpu/poincare.cpp; IEEE division)."""
    ax = tl.abs(a)
    a2 = ax * ax
    r = _math.log1p(ax + _div(a2, 1.0 + _sqrt(a2 + 1.0)))
    return tl.where(a < 0, -r, r)


@triton.jit
def _sinh_cosh(u):
    """sinh(u), cosh(u) from e = expm1(|u|): no cancellation near 0, no inf/inf for large |u|."""
    e = _math.expm1(tl.abs(u))
    ep1 = e + 1.0
    frac = tl.where(e > 1e30, 1.0, _div(e, ep1))
    sh = (e + frac) * 0.5
    ch = (ep1 + _div(tl.full(ep1.shape, 1.0, ep1.dtype), ep1)) * 0.5
    return tl.where(u < 0, -sh, sh), ch


@triton.jit
def _fc_u(t, Cj, Sj, Zj, Qj, Lj, k1, k0):
    """a, A = asinh(a) and u = Z A of a tile.  Columns with a scaled offset (L_j = ell_j > 0,
    geoops.reference.poincare.offset_consts: C_j, S_j divided by e^ell) hold b = a e^-ell in `a` and
    A = sign(b) (ell + log(|b| + sqrt(b^2 + Q_j))), Q_j = e^(-2 ell): a = e^ell b is never formed (the branch runs
    only for a chunk that has such a column)."""
    a = k1[:, None] * t * Cj[None, :] - k0[:, None] * Sj[None, :]
    A = _asinh(a)
    if tl.max(Lj, 0) > 0:
        ab = tl.abs(a)
        r = Lj[None, :] + _math.log(tl.maximum(ab + _sqrt(ab * ab + Qj[None, :]), 1e-30))  # Q may underflow
        A = tl.where(Lj[None, :] > 0, tl.where(a < 0, -r, r), A)
    return a, A, Zj[None, :] * A


@triton.jit
def _fc_w(t, Cj, Sj, Zj, Qj, Lj, k1, k0, inv_sc):
    """a, asinh(a), cosh(u), w = sinh(u)/sc and u = Z asinh a for a tile (compute type of t)."""
    a, A, u = _fc_u(t, Cj, Sj, Zj, Qj, Lj, k1, k0)
    sh, ch = _sinh_cosh(u)
    return a, A, ch, sh * inv_sc, u


@triton.jit
def _sinh_scaled(u, Tb, den):
    """sinh(u) / sigma and cosh(u) / sigma, sigma = sinh(T) of the row (|u| <= T): (e^(u-T) -+ e^(-u-T)) / den,
    den = -expm1(-2T) (no exponent above 0)."""
    ep = _math.exp(u - Tb[:, None])
    em = _math.exp(-u - Tb[:, None])
    return _div(ep - em, den[:, None]), _div(ep + em, den[:, None])


@triton.jit
def _fc_cols(CC_ptr, SS_ptr, ZZ_ptr, QQ_ptr, LL_ptr, cols, cm):
    Cj = tl.load(CC_ptr + cols, mask=cm, other=0.0)
    Sj = tl.load(SS_ptr + cols, mask=cm, other=0.0)
    Zj = tl.load(ZZ_ptr + cols, mask=cm, other=0.0)
    Qj = tl.load(QQ_ptr + cols, mask=cm, other=1.0)
    Lj = tl.load(LL_ptr + cols, mask=cm, other=0.0)
    return Cj, Sj, Zj, Qj, Lj


@triton.jit
def _fc_tiles(T_ptr, CC_ptr, SS_ptr, ZZ_ptr, QQ_ptr, LL_ptr, base, rmask, j0, M, BLOCK_M: tl.constexpr):
    """Columns j0 .. j0 + BLOCK_M of the rows: (cols, column mask, tile mask, t tile, C_j, S_j, Z_j, Q_j, L_j)."""
    cols, m = _chunk(j0, rmask, M, BLOCK_M)
    cm = cols < M
    t = tl.load(T_ptr + base + cols[None, :], mask=m, other=0.0)
    Cj, Sj, Zj, Qj, Lj = _fc_cols(CC_ptr, SS_ptr, ZZ_ptr, QQ_ptr, LL_ptr, cols, cm)
    return cols, cm, m, t, Cj, Sj, Zj, Qj, Lj


# Rows whose largest |u_j| passes this take the scaled form (geoops.reference.poincare.SINH_SCALED_FROM; the
# C++ scaled row pass): w = sinh(u) / sc and |w|^2 overflow near |u| ~ 44 (float32; ~355 float64).
_SCALED_FROM = tl.constexpr(20.0)


@triton.jit
def _scaled_row_consts(Tu, rmask):
    """The scaled rows of a block: big (largest |u| > 20), their T (20 elsewhere), den = -expm1(-2T) (tile type)
    and q = 1 / sinh(T) = 2 e^-T / -expm1(-2T) (float64)."""
    big = (Tu > _SCALED_FROM) & rmask
    Tb = tl.where(big, Tu, _SCALED_FROM)
    den = -_math.expm1(-2.0 * Tb)
    Td = Tb.to(tl.float64)
    qd = 2.0 * _math.exp(-Td) / (-_math.expm1(-2.0 * Td))
    return big, Tb, den, qd


@triton.jit
def _fc_fwd_kernel(T_ptr, Y_ptr, CC_ptr, SS_ptr, ZZ_ptr, QQ_ptr, LL_ptr, K1_ptr, K0_ptr, C_ptr, N, M, eps: tl.float64,
                   BLOCK_R: tl.constexpr, BLOCK_M: tl.constexpr):
    """Pass 1: |w|^2 and the largest |u| per row; rows with |u| > 20 (a block that has one) take one more pass for
    |v|^2 of v = sinh(u) / sinh(T) (the scaled form: y = v / (sc (q + hypot(q, |v|))), q = 1 / sinh(T), or
    maxnorm v / |v| when projected); pass 2 writes y (the scaled rows' from v)."""
    _pid, rows, rmask, base = _row_block(N, M, BLOCK_R)
    c = tl.load(C_ptr).to(tl.float64)
    sc = tl.sqrt(c)
    ty = Y_ptr.dtype.element_ty
    inv_sc = (1.0 / sc).to(ty)
    k1 = tl.load(K1_ptr + rows, mask=rmask, other=0.0).to(ty)
    k0 = tl.load(K0_ptr + rows, mask=rmask, other=0.0).to(ty)
    Sw = tl.zeros((BLOCK_R,), tl.float64)
    Tu = tl.zeros((BLOCK_R,), ty)
    for j0 in range(0, M, BLOCK_M):
        cols, cm, m, t, Cj, Sj, Zj, Qj, Lj = _fc_tiles(T_ptr, CC_ptr, SS_ptr, ZZ_ptr, QQ_ptr, LL_ptr, base, rmask, j0,
                                                       M, BLOCK_M)
        _a, _A, _ch, w, u = _fc_w(t, Cj, Sj, Zj, Qj, Lj, k1, k0, inv_sc)
        w = tl.where(m, w, 0.0)
        Sw += tl.sum(w * w, 1).to(tl.float64)
        Tu = tl.maximum(Tu, tl.max(tl.where(m, tl.abs(u), 0.0), 1))
    q = tl.sqrt(1.0 + c * Sw)
    s = 1.0 / (1.0 + q)
    ny = tl.sqrt(Sw) * s
    maxnorm = (1.0 - eps) / tl.sqrt(c + 1e-15)
    s = tl.where(ny > maxnorm, s * (maxnorm / tl.where(ny > 0, ny, 1.0)), s)
    big, Tb, den, qd = _scaled_row_consts(Tu, rmask)
    if tl.max(big.to(tl.int32), 0) > 0:
        Sv = tl.zeros((BLOCK_R,), tl.float64)
        for j0 in range(0, M, BLOCK_M):
            cols, cm, m, t, Cj, Sj, Zj, Qj, Lj = _fc_tiles(T_ptr, CC_ptr, SS_ptr, ZZ_ptr, QQ_ptr, LL_ptr, base, rmask,
                                                           j0, M, BLOCK_M)
            _a, _A, u = _fc_u(t, Cj, Sj, Zj, Qj, Lj, k1, k0)
            v, _chs = _sinh_scaled(u, Tb, den)
            v = tl.where(m, v, 0.0)
            Sv += tl.sum(v * v, 1).to(tl.float64)
        nv = tl.sqrt(Sv)
        Dh = qd + tl.sqrt(qd * qd + Sv)
        fb = tl.where(nv > sc * Dh * maxnorm, maxnorm / tl.where(nv > 0, nv, 1.0), 1.0 / (sc * Dh))
        sT = s.to(ty)
        fT = fb.to(ty)
        for j0 in range(0, M, BLOCK_M):
            cols, cm, m, t, Cj, Sj, Zj, Qj, Lj = _fc_tiles(T_ptr, CC_ptr, SS_ptr, ZZ_ptr, QQ_ptr, LL_ptr, base, rmask,
                                                           j0, M, BLOCK_M)
            _a, _A, _ch, w, u = _fc_w(t, Cj, Sj, Zj, Qj, Lj, k1, k0, inv_sc)
            v, _chs = _sinh_scaled(u, Tb, den)
            y = tl.where(big[:, None], v * fT[:, None], w * sT[:, None])
            tl.store(Y_ptr + base + cols[None, :], y, mask=m)
    else:
        sT = s.to(ty)
        for j0 in range(0, M, BLOCK_M):
            cols, cm, m, t, Cj, Sj, Zj, Qj, Lj = _fc_tiles(T_ptr, CC_ptr, SS_ptr, ZZ_ptr, QQ_ptr, LL_ptr, base, rmask,
                                                           j0, M, BLOCK_M)
            _a, _A, _ch, w, _u = _fc_w(t, Cj, Sj, Zj, Qj, Lj, k1, k0, inv_sc)
            tl.store(Y_ptr + base + cols[None, :], w * sT[:, None], mask=m)


@triton.jit
def _fc_bwd_elems(GT_ptr, PZ_ptr, PC_ptr, PS_ptr, base, pid, M, cols, cm, m, t, Cj, Sj, Zj, Qj, a, A, k1, l1, sl,
                  scT, lamT, sT, gu, gww, COLS: tl.constexpr):
    """From dL/du (gu) and dL/dw w (gww) of a tile: dL/dt, the column partials and the row sums' terms
    (r_sa, r_lam, r_sb contributions)."""
    gu = tl.where(m, gu, 0.0)
    ra = _div(tl.full(a.shape, 1.0, a.dtype), _sqrt(a * a + Qj[None, :]))
    ga = tl.where(m, gu * Zj[None, :] * ra, 0.0)  # ra = inf where a = 0 and Q underflowed (masked rows)
    tl.store(GT_ptr + base + cols[None, :], ga * k1[:, None] * Cj[None, :], mask=m)
    tmp = ga * t * sT
    if COLS:
        tl.store(PZ_ptr + pid * M + cols, tl.sum((gu * 2.0 * A).to(tl.float64), 0), mask=cm)
        tl.store(PC_ptr + pid * M + cols, tl.sum((tmp * sl).to(tl.float64), 0), mask=cm)
        tl.store(PS_ptr + pid * M + cols, -tl.sum((ga * l1).to(tl.float64), 0), mask=cm)
    return (tl.sum(tl.where(m, gww, 0.0), 1).to(tl.float64),
            tl.sum(tmp * scT * Cj[None, :] - ga * Sj[None, :], 1).to(tl.float64),
            tl.sum(tmp * lamT * Cj[None, :], 1).to(tl.float64))


@triton.jit
def _fc_bwd_kernel(G_ptr, T_ptr, GT_ptr, CC_ptr, SS_ptr, ZZ_ptr, QQ_ptr, LL_ptr, K1_ptr, K0_ptr, SR_ptr, C_ptr,
                   PZ_ptr, PC_ptr, PS_ptr, RL_ptr, RG_ptr, RS_ptr, PR_ptr, N, M, eps: tl.float64,
                   COLS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_M: tl.constexpr, FIN: tl.constexpr = False,
                   TAN: tl.constexpr = False, HALF: tl.constexpr = False):
    """dL/dt into GT; per row RL = dL/dlam, RG = the direct dc terms, RS = the sc terms (before 1/(2 sc));
    with COLS per program the column partials PZ (through |z_j|), PC (through C_j), PS (through S_j).
    Rows whose largest |u| passes 20 (a block that has one) take the scaled form of csrc/cpu/poincare.cpp's
    scaled_row_bwd: with v = sinh(u) / sinh(T), Gv = <g, v>, Sv = |v|^2, Sh = hypot(q, |v|), Dh = q + Sh,
    dL/dw = Gam / sinh(T), Gam_j = (B_j + q Dh g_j) / (Dh^2 Sh) (projected: sc maxnorm B_j / (|v| Sv)),
    B_j = g_j Sv - v_j Gv, B of the row's largest |u_j| as g_j S' - v_j G' (S', G': the sums without j).
    FIN (the fused finish, GEOOPS_POINCARE_TRITON_FUSED_PREP): the row terms of the assembly instead -- RL (the
    tile type) = the row coefficient rl c lam^2 (HALF: half of it, the fc_rows entry's dL/dU; TAN: the tangent
    rows' dL/dU from <t, dL/dt> = sc r_sb and the prologue's rows PR = _fc_rowprep_kernel's (7, N)), RG = the row's part
    of dL/dc (the direct terms, the X and sc terms, the tangent rows' s terms); RS is not written."""
    pid, rows, rmask, base = _row_block(N, M, BLOCK_R)
    c = tl.load(C_ptr).to(tl.float64)
    sc = tl.sqrt(c)
    ty = GT_ptr.dtype.element_ty
    inv_sc = (1.0 / sc).to(ty)
    k1d = tl.load(K1_ptr + rows, mask=rmask, other=0.0)
    k0d = tl.load(K0_ptr + rows, mask=rmask, other=0.0)
    srd = tl.load(SR_ptr + rows, mask=rmask, other=1.0)
    k1 = k1d.to(ty)
    k0 = k0d.to(ty)
    Sw = tl.zeros((BLOCK_R,), tl.float64)
    gyw = tl.zeros((BLOCK_R,), tl.float64)
    Tu = tl.zeros((BLOCK_R,), ty)
    jmax = tl.zeros((BLOCK_R,), tl.int64)
    for j0 in range(0, M, BLOCK_M):
        cols, cm, m, t, Cj, Sj, Zj, Qj, Lj = _fc_tiles(T_ptr, CC_ptr, SS_ptr, ZZ_ptr, QQ_ptr, LL_ptr, base, rmask, j0,
                                                       M, BLOCK_M)
        g = tl.load(G_ptr + base + cols[None, :], mask=m, other=0.0)
        _a, _A, _ch, w, u = _fc_w(t, Cj, Sj, Zj, Qj, Lj, k1, k0, inv_sc)
        w = tl.where(m, w, 0.0)
        Sw += tl.sum(w * w, 1).to(tl.float64)
        gyw += tl.sum(g * w, 1).to(tl.float64)
        au = tl.where(m & (u == u), tl.abs(u), 0.0)  # (a NaN row's |u| as 0: its result is NaN anyway, and an
        Tc = tl.max(au, 1)                          # all-NaN argmax raises in the interpreter)
        jc = tl.argmax(au, 1).to(tl.int64)
        jmax = tl.where(Tc > Tu, j0 + jc, jmax)
        Tu = tl.maximum(Tu, Tc)
    q = tl.sqrt(1.0 + c * Sw)
    s0 = 1.0 / (1.0 + q)
    nw = tl.sqrt(Sw)
    ny = nw * s0
    maxnorm = (1.0 - eps) / tl.sqrt(c + 1e-15)
    dmax_dc = -0.5 * (1.0 - eps) / ((c + 1e-15) * tl.sqrt(c + 1e-15))
    proj = ny > maxnorm
    Sws = tl.where(Sw > 0, Sw, 1.0)
    alpha = tl.where(proj, maxnorm / tl.where(proj, ny, 1.0) * s0, s0)
    beta = tl.where(proj, -alpha * gyw / Sws, -gyw * c * s0 * s0 / q)
    gcd = tl.where(proj, gyw / tl.where(nw > 0, nw, 1.0) * dmax_dc, -gyw * Sw * s0 * s0 / (2.0 * q))
    aT = alpha.to(ty)[:, None]
    bT = beta.to(ty)[:, None]
    lam = k0d + 1.0
    sl = (sc * lam).to(ty)[:, None]
    l1 = k0[:, None]
    lamT = lam.to(ty)[:, None]
    scT = sc.to(ty)
    sT = srd.to(ty)[:, None]
    r_lam = tl.zeros((BLOCK_R,), tl.float64)
    r_sa = tl.zeros((BLOCK_R,), tl.float64)
    r_sb = tl.zeros((BLOCK_R,), tl.float64)
    big, Tb, den, qd = _scaled_row_consts(Tu, rmask)
    if tl.max(big.to(tl.int32), 0) > 0:
        Sv = tl.zeros((BLOCK_R,), tl.float64)
        Gv = tl.zeros((BLOCK_R,), tl.float64)
        S1 = tl.zeros((BLOCK_R,), tl.float64)
        G1 = tl.zeros((BLOCK_R,), tl.float64)
        vj = tl.zeros((BLOCK_R,), tl.float64)
        gj = tl.zeros((BLOCK_R,), tl.float64)
        for j0 in range(0, M, BLOCK_M):
            cols, cm, m, t, Cj, Sj, Zj, Qj, Lj = _fc_tiles(T_ptr, CC_ptr, SS_ptr, ZZ_ptr, QQ_ptr, LL_ptr, base, rmask,
                                                           j0, M, BLOCK_M)
            g = tl.load(G_ptr + base + cols[None, :], mask=m, other=0.0)
            _a, _A, u = _fc_u(t, Cj, Sj, Zj, Qj, Lj, k1, k0)
            v, _chs = _sinh_scaled(u, Tb, den)
            v = tl.where(m, v, 0.0)
            ismax = cols[None, :] == jmax[:, None]
            vv = (v * v).to(tl.float64)
            gv = (g * v).to(tl.float64)
            Sv += tl.sum(vv, 1)
            Gv += tl.sum(gv, 1)
            S1 += tl.sum(tl.where(ismax, 0.0, vv), 1)
            G1 += tl.sum(tl.where(ismax, 0.0, gv), 1)
            vj += tl.sum(tl.where(ismax, v, 0.0).to(tl.float64), 1)
            gj += tl.sum(tl.where(ismax, g, 0.0).to(tl.float64), 1)
        Bmax = gj * S1 - vj * G1
        nv = tl.sqrt(Sv)
        Sh = tl.sqrt(qd * qd + Sv)
        Dh = qd + Sh
        pb = nv > sc * Dh * maxnorm
        Svs = tl.where(Sv > 0, Sv, 1.0)
        nvs = tl.where(nv > 0, nv, 1.0)
        Bf = tl.where(pb, sc * maxnorm / (nvs * Svs), 1.0 / (Dh * Dh * Sh))
        Bq = tl.where(pb, 0.0, qd * Dh)
        gcd = tl.where(big, tl.where(pb, Gv / nvs * dmax_dc, -Gv * Sv / (2.0 * sc * c * Dh * Dh * Sh)), gcd)
        SvT = Sv.to(ty)[:, None]
        GvT = Gv.to(ty)[:, None]
        BmT = Bmax.to(ty)[:, None]
        BfT = Bf.to(ty)[:, None]
        BqT = Bq.to(ty)[:, None]
        for j0 in range(0, M, BLOCK_M):
            cols, cm, m, t, Cj, Sj, Zj, Qj, Lj = _fc_tiles(T_ptr, CC_ptr, SS_ptr, ZZ_ptr, QQ_ptr, LL_ptr, base, rmask,
                                                           j0, M, BLOCK_M)
            g = tl.load(G_ptr + base + cols[None, :], mask=m, other=0.0)
            a, A, chu, w, u = _fc_w(t, Cj, Sj, Zj, Qj, Lj, k1, k0, inv_sc)
            v, chs = _sinh_scaled(u, Tb, den)
            B = tl.where(cols[None, :] == jmax[:, None], BmT, g * SvT - v * GvT)
            Gam = BfT * (B + BqT * g)
            gw = aT * g + bT * w
            gu = tl.where(big[:, None], Gam * chs * inv_sc, gw * chu * inv_sc)
            gww = tl.where(big[:, None], Gam * v * inv_sc, gw * w)
            d_sa, d_lam, d_sb = _fc_bwd_elems(GT_ptr, PZ_ptr, PC_ptr, PS_ptr, base, pid, M, cols, cm, m, t, Cj, Sj, Zj,
                                              Qj, a, A, k1, l1, sl, scT, lamT, sT, gu, gww, COLS)
            r_sa += d_sa
            r_lam += d_lam
            r_sb += d_sb
    else:
        for j0 in range(0, M, BLOCK_M):
            cols, cm, m, t, Cj, Sj, Zj, Qj, Lj = _fc_tiles(T_ptr, CC_ptr, SS_ptr, ZZ_ptr, QQ_ptr, LL_ptr, base, rmask,
                                                           j0, M, BLOCK_M)
            g = tl.load(G_ptr + base + cols[None, :], mask=m, other=0.0)
            a, A, chu, w, _u = _fc_w(t, Cj, Sj, Zj, Qj, Lj, k1, k0, inv_sc)
            gw = aT * g + bT * w
            d_sa, d_lam, d_sb = _fc_bwd_elems(GT_ptr, PZ_ptr, PC_ptr, PS_ptr, base, pid, M, cols, cm, m, t, Cj, Sj, Zj,
                                              Qj, a, A, k1, l1, sl, scT, lamT, sT, gw * chu * inv_sc, gw * w, COLS)
            r_sa += d_sa
            r_lam += d_lam
            r_sb += d_sb
    if FIN:
        X = tl.load(PR_ptr + 2 * N + rows, mask=rmask, other=0.0)
        lam2 = lam * lam
        rowcoef = r_lam * c * lam2
        dcrow = gcd + r_lam * X * lam2 * 0.5 + (r_sb - r_sa / sc) / (2.0 * sc)
        if TAN:
            dn = tl.load(PR_ptr + 4 * N + rows, mask=rmask, other=0.0)
            dcs = tl.load(PR_ptr + 5 * N + rows, mask=rmask, other=0.0)
            U = tl.load(PR_ptr + 6 * N + rows, mask=rmask, other=0.0)
            # <t, dL/dt> = sum_j t ga k1 C_j = sc r_sb (k1 = sc lam s and r_sb = s lam sum_j ga t C_j): no
            # extra row sum in the loops (one more float64 accumulator spilled in the float64 variant)
            u_gx = sc * r_sb / srd + rowcoef * srd * U
            rl_out = 0.5 * (rowcoef * srd * srd + u_gx * dn)
            dcrow += u_gx * dcs
        elif HALF:
            rl_out = 0.5 * rowcoef
        else:
            rl_out = rowcoef
        tl.store(RL_ptr + rows, rl_out.to(RL_ptr.dtype.element_ty), mask=rmask)
        tl.store(RG_ptr + rows, dcrow, mask=rmask)
    else:
        tl.store(RL_ptr + rows, r_lam, mask=rmask)
        tl.store(RG_ptr + rows, gcd, mask=rmask)
        tl.store(RS_ptr + rows, -r_sa / sc + r_sb, mask=rmask)


# ---------------------------------------------------------------- fc prologue and column finish (fused prep)
# GEOOPS_POINCARE_TRITON_FUSED_PREP (default on): the fc layer's per-column constants and per-row scalars come
# from the two prologue kernels below (one launch each) instead of ~60 torch ops on length-m / length-N vectors,
# and the backward's assembly (row coefficient, dL/dU, dL/dc, the column terms, db) from the fc backward
# kernel's FIN epilogue and _fc_colfin_kernel instead of ~60 more: the same float64 formulas as _fc_col_prep /
# _fc_row_prep / _fc_col_grads (only the summation order and libdevice's float64 functions differ).
_LOG2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _fc_colprep_kernel(Z_ptr, B_ptr, C_ptr, CT_ptr, CD_ptr, n, M, HAS_B: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_M: tl.constexpr):
    """Per column j of z (n, M): CT (5, M) in the tile type = (C_j = ch/|z_j|, S_j = sh, Z_j = 2|z_j|, Q_j, L_j)
    (_fc_col_prep's `cols`, geoops.reference.poincare.offset_consts for the offsets) and CD (3, M) float64 =
    (|z_j|, ch, sh) for the backward's column terms."""
    pid = tl.program_id(0).to(tl.int64)
    cols = pid * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    cm = cols < M
    acc = tl.zeros((BLOCK_N, BLOCK_M), tl.float64)
    for i0 in range(0, n, BLOCK_N):
        r = i0 + tl.arange(0, BLOCK_N).to(tl.int64)
        zt = tl.load(Z_ptr + r[:, None] * M + cols[None, :], mask=(r[:, None] < n) & cm[None, :],
                     other=0.0).to(tl.float64)
        acc += zt * zt
    zn = tl.maximum(tl.sqrt(tl.sum(acc, 0)), 1e-15)
    one = tl.full((BLOCK_M,), 1.0, tl.float64)
    ch = one
    sh = one * 0.0
    q = one
    ell = one * 0.0
    if HAS_B:
        sc = tl.sqrt(tl.load(C_ptr).to(tl.float64))
        rho = 2.0 * sc * tl.load(B_ptr + cols, mask=cm, other=0.0).to(tl.float64)
        big = tl.abs(rho) > 20.0  # geoops.reference.poincare.OFFSET_SCALED_FROM
        ar = tl.where(big, tl.abs(rho), 21.0)
        e2 = _math.expm1(-2.0 * ar)
        sh0, ch0 = _sinh_cosh(tl.where(big, 0.0, rho))
        ch = tl.where(big, 2.0 + e2, ch0)
        sh = tl.where(big, tl.where(rho < 0, e2, -e2), sh0)
        q = tl.where(big, 4.0 * (1.0 + e2), 1.0)
        ell = tl.where(big, ar - _LOG2, 0.0)
    ty = CT_ptr.dtype.element_ty
    tl.store(CT_ptr + cols, (ch / zn).to(ty), mask=cm)
    tl.store(CT_ptr + M + cols, sh.to(ty), mask=cm)
    tl.store(CT_ptr + 2 * M + cols, (2.0 * zn).to(ty), mask=cm)
    tl.store(CT_ptr + 3 * M + cols, q.to(ty), mask=cm)
    tl.store(CT_ptr + 4 * M + cols, ell.to(ty), mask=cm)
    tl.store(CD_ptr + cols, zn, mask=cm)
    tl.store(CD_ptr + M + cols, ch, mask=cm)
    tl.store(CD_ptr + 2 * M + cols, sh, mask=cm)


@triton.jit
def _fc_rowprep_kernel(X_ptr, U_ptr, C_ptr, R_ptr, N, D, eps: tl.float64, FROM_X: tl.constexpr,
                       TANGENT: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """Per row i: R (7, N) float64 = (k1, k0, X, s, ds/dn / n, ds/dc, U) of _fc_row_prep, U = |x_i|^2 (FROM_X: rows
    of X_ptr (N, D)) or U_ptr[i] (any float type); s = 1, the derivatives 0 without TANGENT."""
    _pid, rows, rmask, base = _row_block(N, D, BLOCK_R)
    c = tl.load(C_ptr).to(tl.float64)
    sc = tl.sqrt(c)
    if FROM_X:
        U = tl.zeros((BLOCK_R,), tl.float64)
        for d0 in range(0, D, BLOCK_D):
            cols, m = _chunk(d0, rmask, D, BLOCK_D)
            x = tl.load(X_ptr + base + cols[None, :], mask=m, other=0.0).to(tl.float64)
            U += tl.sum(x * x, 1)
    else:
        U = tl.load(U_ptr + rows, mask=rmask, other=0.0).to(tl.float64)
    X = U
    s = tl.full((BLOCK_R,), 1.0, tl.float64)
    dn = s * 0.0
    dcs = s * 0.0
    if TANGENT:
        cm = c + 1e-15
        maxnorm = (1.0 - eps) / tl.sqrt(cm)
        dmax_dc = -0.5 * (1.0 - eps) / (cm * tl.sqrt(cm))
        nn = tl.maximum(tl.sqrt(U), 1e-15)
        q = sc * nn
        small = q < 1e-3
        qs = tl.where(small, 1.0, q)
        th = _math.tanh(qs)
        q2 = q * q  # the series to q^4, as _fc_row_prep
        s = tl.where(small, 1.0 + q2 * (-1.0 / 3.0 + q2 * (2.0 / 15.0)), th / qs)
        dsdq = tl.where(small, q * (-2.0 / 3.0 + q2 * (8.0 / 15.0)), ((1.0 - th * th) - th / qs) / qs)
        proj = s * nn > maxnorm
        s = tl.where(proj, maxnorm / nn, s)
        dn = tl.where(proj, -maxnorm / (nn * nn * nn), sc * dsdq / nn)
        dcs = tl.where(proj, dmax_dc / nn, nn * dsdq / (2.0 * sc))
        X = s * s * U
    lam = 2.0 / (1.0 - c * X)
    tl.store(R_ptr + rows, sc * lam * s, mask=rmask)
    tl.store(R_ptr + N + rows, lam - 1.0, mask=rmask)
    tl.store(R_ptr + 2 * N + rows, X, mask=rmask)
    tl.store(R_ptr + 3 * N + rows, s, mask=rmask)
    tl.store(R_ptr + 4 * N + rows, dn, mask=rmask)
    tl.store(R_ptr + 5 * N + rows, dcs, mask=rmask)
    tl.store(R_ptr + 6 * N + rows, U, mask=rmask)


@triton.jit
def _fc_colfin_kernel(PZ_ptr, PC_ptr, PS_ptr, CD_ptr, B_ptr, C_ptr, COLF_ptr, GB_ptr, DC_ptr, P, M,
                      HAS_B: tl.constexpr, WANT_B: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_M: tl.constexpr):
    """The column terms of the fc backward (_fc_col_grads): the partials PZ, PC, PS (P, M) summed over the
    programs, COLF (tile type) = the factor of z in dL/dz, GB (WANT_B) = dL/dbias, DC[j] = column j's part of
    dL/dc (r_j (gch sh + gS ch) / sc; 0 without bias)."""
    pid = tl.program_id(0).to(tl.int64)
    cols = pid * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    cm = cols < M
    az = tl.zeros((BLOCK_P, BLOCK_M), tl.float64)
    ac = tl.zeros((BLOCK_P, BLOCK_M), tl.float64)
    aS = tl.zeros((BLOCK_P, BLOCK_M), tl.float64)
    for p0 in range(0, P, BLOCK_P):
        pr = p0 + tl.arange(0, BLOCK_P).to(tl.int64)
        off = pr[:, None] * M + cols[None, :]
        pm = (pr[:, None] < P) & cm[None, :]
        az += tl.load(PZ_ptr + off, mask=pm, other=0.0)
        ac += tl.load(PC_ptr + off, mask=pm, other=0.0)
        aS += tl.load(PS_ptr + off, mask=pm, other=0.0)
    gzn = tl.sum(az, 0)
    gC = tl.sum(ac, 0)
    gS = tl.sum(aS, 0)
    zn = tl.load(CD_ptr + cols, mask=cm, other=1.0)
    ch = tl.load(CD_ptr + M + cols, mask=cm, other=1.0)
    sh = tl.load(CD_ptr + 2 * M + cols, mask=cm, other=0.0)
    gch = gC / zn
    gzn = gzn - gC * ch / (zn * zn)
    dcc = gzn * 0.0
    if HAS_B:
        sc = tl.sqrt(tl.load(C_ptr).to(tl.float64))
        h = gch * sh + gS * ch
        if WANT_B:
            tl.store(GB_ptr + cols, (2.0 * sc * h).to(GB_ptr.dtype.element_ty), mask=cm)
        dcc = tl.load(B_ptr + cols, mask=cm, other=0.0).to(tl.float64) * h / sc
    tl.store(DC_ptr + cols, dcc, mask=cm)
    tl.store(COLF_ptr + cols, tl.where(zn > 1e-15, gzn / zn, 0.0).to(COLF_ptr.dtype.element_ty), mask=cm)


# ---------------------------------------------------------------- MLR head (hyperplane distances), fused
# geoops.poincare.hyperplane_dists / mlr of rows x (N, n): csrc/cpu/poincare_head.cpp's two row passes around the
# GEMMs (t = x z and the backward's dt z^T, x^T dt by _mm: IEEE float32).  The column constants come from
# _fc_colprep_kernel (C_j = ch/|z_j|, S_j = sh, Z_j = 2|z_j|, Q_j, L_j; offsets beyond |2 sc r| = 20 scaled as
# the reference's offset_consts), the row scalars lam = 2/(1 - c|x|^2) in float64 from x inside the row pass:
#   a = k1 t C - k0 S (k1 = sc lam, k0 = lam - 1; a scaled column holds b = a e^-ell),  y = Z asinh(a) / sc
# Backward (ga = dL/da = g Z / (sc sqrt(a^2 + Q))): dt = ga k1 C; dlam_i = sum_j ga (sc t C - S);
#   row coefficient of dx = c lam^2 dlam; the rows' dc = (sum_j (-g y / sc + ga lam t C)) / (2 sc) + dlam lam^2 X / 2;
#   column partials PZ = sum_i g 2 A / sc (through |z_j|), PC = sum_i ga k1 t (through C_j), PS = -sum_i ga k0
#   (through S_j), finished by _fc_colfin_kernel (dz's column factor, dbias, the offsets' dc terms).
@triton.jit
def _mlr_rows(X_ptr, rows, rmask, n, c, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr):
    """X = |x_i|^2 (float64) of the block's rows of x (N, n) and lam = 2 / (1 - c X)."""
    basex = rows[:, None] * n
    X = tl.zeros((BLOCK_R,), tl.float64)
    for d0 in range(0, n, BLOCK_D):
        cols, m = _chunk(d0, rmask, n, BLOCK_D)
        x = tl.load(X_ptr + basex + cols[None, :], mask=m, other=0.0).to(tl.float64)
        X += tl.sum(x * x, 1)
    return X, 2.0 / (1.0 - c * X)


@triton.jit
def _mlr_fwd_kernel(X_ptr, T_ptr, Y_ptr, CC_ptr, SS_ptr, ZZ_ptr, QQ_ptr, LL_ptr, C_ptr, N, n, M,
                    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    """y = Z_j asinh(a) / sc of the block's rows from t = x z."""
    _pid, rows, rmask, base = _row_block(N, M, BLOCK_R)
    c = tl.load(C_ptr).to(tl.float64)
    sc = tl.sqrt(c)
    ty = Y_ptr.dtype.element_ty
    _X, lam = _mlr_rows(X_ptr, rows, rmask, n, c, BLOCK_D, BLOCK_R)
    k1 = (sc * lam).to(ty)
    k0 = (lam - 1.0).to(ty)
    inv_sc = (1.0 / sc).to(ty)
    for j0 in range(0, M, BLOCK_M):
        cols, cm, m, t, Cj, Sj, Zj, Qj, Lj = _fc_tiles(T_ptr, CC_ptr, SS_ptr, ZZ_ptr, QQ_ptr, LL_ptr, base, rmask, j0,
                                                       M, BLOCK_M)
        _a, _A, u = _fc_u(t, Cj, Sj, Zj, Qj, Lj, k1, k0)
        tl.store(Y_ptr + base + cols[None, :], u * inv_sc, mask=m)


@triton.jit
def _mlr_bwd_kernel(G_ptr, X_ptr, T_ptr, GT_ptr, CC_ptr, SS_ptr, ZZ_ptr, QQ_ptr, LL_ptr, CD_ptr, C_ptr, PZ_ptr, PC_ptr,
                    PS_ptr, RC_ptr, DC_ptr, N, n, M, COLS: tl.constexpr, BLOCK_R: tl.constexpr,
                    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    """dL/dt into GT, the row coefficient of dx into RC (tile type), the rows' dc into DC (float64) and, with
    COLS, the per-program column partials PZ, PC, PS (float64)."""
    pid, rows, rmask, base = _row_block(N, M, BLOCK_R)
    c = tl.load(C_ptr).to(tl.float64)
    sc = tl.sqrt(c)
    ty = GT_ptr.dtype.element_ty
    X, lam = _mlr_rows(X_ptr, rows, rmask, n, c, BLOCK_D, BLOCK_R)
    k1 = (sc * lam).to(ty)
    k0 = (lam - 1.0).to(ty)
    lamT = lam.to(ty)
    scT = sc.to(ty)
    inv_sc = (1.0 / sc).to(ty)
    inv_c = 1.0 / c
    glam = tl.zeros((BLOCK_R,), tl.float64)
    gsc = tl.zeros((BLOCK_R,), tl.float64)
    for j0 in range(0, M, BLOCK_M):
        cols, cm, m, t, Cj, Sj, Zj, Qj, Lj = _fc_tiles(T_ptr, CC_ptr, SS_ptr, ZZ_ptr, QQ_ptr, LL_ptr, base, rmask, j0,
                                                       M, BLOCK_M)
        a, A, u = _fc_u(t, Cj, Sj, Zj, Qj, Lj, k1, k0)
        g = tl.load(G_ptr + base + cols[None, :], mask=m, other=0.0)
        gs = g * inv_sc
        ra = _div(tl.full(a.shape, 1.0, a.dtype), _sqrt(a * a + Qj[None, :]))
        ga = tl.where(m, gs * Zj[None, :] * ra, 0.0)  # ra = inf where a = 0 and Q underflowed (masked rows)
        tl.store(GT_ptr + base + cols[None, :], ga * k1[:, None] * Cj[None, :], mask=m)
        gat = ga * t
        glam += tl.sum(gat * (scT * Cj[None, :]) - ga * Sj[None, :], 1).to(tl.float64)
        # (in float64: with large offsets the -g y / sc terms nearly cancel the offsets' dc terms)
        gsc += tl.sum(tl.where(m, gat.to(tl.float64) * (lam[:, None] * Cj[None, :].to(tl.float64))
                               - g.to(tl.float64) * u.to(tl.float64) * inv_c, 0.0), 1)
        if COLS:
            tl.store(PZ_ptr + pid * M + cols, tl.sum(tl.where(m, gs * 2.0 * A, 0.0).to(tl.float64), 0), mask=cm)
            # (products in float64: dbias = 2 sc (PC sh / |z| + PS ch) cancels ~10x near the boundary, and a large
            # offset multiplies dbias's error into dc)
            zn = tl.load(CD_ptr + cols, mask=cm, other=1.0)
            ch = tl.load(CD_ptr + M + cols, mask=cm, other=1.0)
            sh = tl.load(CD_ptr + 2 * M + cols, mask=cm, other=0.0)
            t64 = t.to(tl.float64)
            a64 = (sc * lam)[:, None] * t64 * (ch / zn)[None, :] - (lam - 1.0)[:, None] * sh[None, :]
            ga64 = tl.where(m, g.to(tl.float64) * (2.0 * zn / sc)[None, :]
                            / tl.sqrt(a64 * a64 + Qj.to(tl.float64)[None, :]), 0.0)
            tl.store(PC_ptr + pid * M + cols, tl.sum(ga64 * t64 * (sc * lam)[:, None], 0), mask=cm)
            tl.store(PS_ptr + pid * M + cols, -tl.sum(ga64 * (lam - 1.0)[:, None], 0), mask=cm)
    l2 = lam * lam
    tl.store(RC_ptr + rows, (glam * c * l2).to(RC_ptr.dtype.element_ty), mask=rmask)
    tl.store(DC_ptr + rows, gsc / (2.0 * sc) + glam * l2 * X * 0.5, mask=rmask)


# ---------------------------------------------------------------- batch norm running statistics (fused)
# GEOOPS_POINCARE_TRITON_FUSED_BN (default on): the training batch norm's running-statistics update (the
# geodesic step of running_mean towards the batch midpoint, the running variance's average) as one launch
# instead of the stereographic geodesic composition (~39 torch ops and 3 launches): the geodesic
# x (+) t (x) ((-x) (+) y) is A x + B (y - x) with A, B from |x|^2, <x, y - x>, |y - x|^2, |y|^2 (the formulas
# of geoops.poincare._running_mean_step_, the CPU path's, in float64).


@triton.jit
def _f64_join(hi, lo):
    """The float64 scalar hi + lo of a float32-exact pair (_f64_pair), summed in float64."""
    return (tl.full((), 0.0, tl.float64) + hi) + lo


@triton.jit
def _bn_running_kernel(RM_ptr, RV_ptr, M_ptr, V_ptr, C_ptr, D, mom_hi: tl.float64, mom_lo: tl.float64,
                       ub_hi: tl.float64, ub_lo: tl.float64, BLOCK_D: tl.constexpr):
    """One program, in place: RM (D,) <- geodesic(momentum, RM, M) on the ball of curvature -c, RV (1,) <-
    (1 - momentum) RV + momentum unbias V (V: the batch variance, 1 entry).  momentum and unbias come as
    float32-exact pairs hi + lo (_f64_pair): the interpreter passes Python floats as float32."""
    momentum = _f64_join(mom_hi, mom_lo)
    unbias = _f64_join(ub_hi, ub_lo)
    offs = tl.arange(0, BLOCK_D).to(tl.int64)
    # in x = RM and the difference g = M - RM (session 44: the <x, y> form cancels for M near RM near the boundary;
    # geoops.poincare._running_mean_step_)
    s_xx = tl.zeros((BLOCK_D,), tl.float64)
    s_xg = tl.zeros((BLOCK_D,), tl.float64)
    s_gg = tl.zeros((BLOCK_D,), tl.float64)
    s_yy = tl.zeros((BLOCK_D,), tl.float64)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + offs
        dm = cols < D
        xv = tl.load(RM_ptr + cols, mask=dm, other=0.0).to(tl.float64)
        yv = tl.load(M_ptr + cols, mask=dm, other=0.0).to(tl.float64)
        gv = yv - xv
        s_xx += xv * xv
        s_xg += xv * gv
        s_gg += gv * gv
        s_yy += yv * yv
    x2 = tl.sum(s_xx, 0)
    xg = tl.sum(s_xg, 0)
    g2 = tl.sum(s_gg, 0)
    y2 = tl.sum(s_yy, 0)
    k = -tl.load(C_ptr).to(tl.float64)
    t = momentum
    # v = (-x) (+) y = p x + q g
    nb = 1.0 + k * x2
    pp = nb * (1.0 + k * y2)
    den = tl.maximum(pp - k * g2, 1e-15)
    p = k * g2 / den
    q = nb / den
    v2 = p * p * x2 + 2.0 * p * q * xg + q * q * g2
    # w = t (x) v = s v: s = t atanc(k v2) tanc(k t^2 v2 atanc^2), atanc the stereographic family's with
    # 1 + k|v|^2 = pp / den (_ball_q; the CPU path's stereo_math.h atanc, session 49)
    z = k * v2
    a = _atanc(z, _st._ball_q(nb, pp / den), _CUT, True)
    z2 = k * t * t * v2 * a * a
    s2 = tl.sqrt(tl.maximum(-z2, 0.0))
    s2_ = tl.maximum(s2, 1e-300)
    s = t * a * tl.where(z2 > -1e-12, 1.0 + z2 / 3.0, _math.tanh(s2_) / s2_)
    w2 = s * s * v2
    xw = s * (p * x2 + q * xg)
    # x (+) w = A x + B g
    den2 = tl.maximum(1.0 - 2.0 * k * xw + k * k * x2 * w2, 1e-15)
    A = ((1.0 - 2.0 * k * xw - k * w2) + (1.0 + k * x2) * s * p) / den2
    B = (1.0 + k * x2) * s * q / den2
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + offs
        dm = cols < D
        xv = tl.load(RM_ptr + cols, mask=dm, other=0.0).to(tl.float64)
        yv = tl.load(M_ptr + cols, mask=dm, other=0.0).to(tl.float64)
        tl.store(RM_ptr + cols, (A * xv + B * (yv - xv)).to(RM_ptr.dtype.element_ty), mask=dm)
    rv = tl.load(RV_ptr).to(tl.float64)
    bv = tl.load(V_ptr).to(tl.float64)
    tl.store(RV_ptr, ((1.0 - momentum) * rv + momentum * (bv * unbias)).to(RV_ptr.dtype.element_ty))


# The batch norm's transport matrix (FUSED_BN): M = alpha I + [a; f]^T Wt [a; f] for a = b, f = b - m (the
# scalar chain of geoops.poincare._gram / _transport_matrix, and in training var = lam_m^2 S / n) as one
# forward launch and one backward launch instead of ~30 / ~90 torch ops on 2 x 2 and length-D tensors.  Rows
# [a; f] and |f|^2 summed from the differences (session 44): geoopt's rows [b; -m] cancel for b near m near the
# boundary (see _transport_matrix).


@triton.jit
def _bn_tr_a(B_ptr, i, msk, sa, FROM_BIAS: tl.constexpr):
    """Entries i of a = b in float64: loaded, or (FROM_BIAS: B_ptr is the bias) b = expmap0(bias) = sa bias with
    sa the expmap0 coefficient in the tile type (``_bn_bias_coef``), rounded to the tile type as the
    stereographic kernel's output."""
    a = tl.load(B_ptr + i, mask=msk, other=0.0)
    if FROM_BIAS:
        a = sa * a
    return a.to(tl.float64)


@triton.jit
def _bn_bias_coef(B_ptr, C_ptr, D, CUT: tl.constexpr, BLOCK: tl.constexpr):
    """(|bias|^2 in float64, the expmap0 coefficient tanc(k |bias|^2) in float64 and in the tile type): the
    stereographic EXPMAP0 row (its float64 row sum of the widened tile, ``_fwd_coef``'s tanc), k = -c."""
    offs = tl.arange(0, BLOCK).to(tl.int64)
    acc = tl.zeros((BLOCK,), tl.float64)
    for d0 in range(0, D, BLOCK):
        i = d0 + offs
        v = tl.load(B_ptr + i, mask=i < D, other=0.0).to(tl.float64)
        acc += v * v
    xx = tl.sum(acc, 0)
    k = -tl.load(C_ptr).to(tl.float64)
    sa = _tanc(k * xx, CUT)
    return xx, sa, sa.to(B_ptr.dtype.element_ty)


@triton.jit
def _bn_tr_sums(B_ptr, M_ptr, D, BLOCK: tl.constexpr, sa, FROM_BIAS: tl.constexpr):
    """(|a|^2, |f|^2, |m|^2) in float64 for a = b, f = a - m (FROM_BIAS: b = sa bias, see ``_bn_tr_a``)."""
    offs = tl.arange(0, BLOCK).to(tl.int64)
    s_aa = tl.zeros((BLOCK,), tl.float64)
    s_ff = tl.zeros((BLOCK,), tl.float64)
    s_ee = tl.zeros((BLOCK,), tl.float64)
    for d0 in range(0, D, BLOCK):
        i = d0 + offs
        a = _bn_tr_a(B_ptr, i, i < D, sa, FROM_BIAS)
        e = tl.load(M_ptr + i, mask=i < D, other=0.0).to(tl.float64)
        f = a - e
        s_aa += a * a
        s_ff += f * f
        s_ee += e * e
    return tl.sum(s_aa, 0), tl.sum(s_ff, 0), tl.sum(s_ee, 0)


@triton.jit
def _bn_tr_scalars(a2, f2, e2, k, S_ptr, W_ptr, n, eps, TRAIN: tl.constexpr):
    """The forward scalar chain: lam_m, var, s, d, alpha, Wt (the four entries of W * 2 alpha / d), in the rows
    [a; f]: d = p q - k f2, W = [[-k^2 f2, k p], [-k q + k^2 f2, -k^2 a2]] (p = 1 + k a2, q = 1 + k e2)."""
    one_ke = 1.0 + k * e2
    lam = 2.0 / tl.maximum(one_ke, 1e-15)
    Sv = tl.load(S_ptr).to(tl.float64)
    if TRAIN:
        var = lam * lam * Sv / n
    else:
        var = Sv
    w = tl.load(W_ptr).to(tl.float64)
    s = tl.sqrt(w / (var + eps))
    one_ka = 1.0 + k * a2
    d = tl.maximum(one_ka * one_ke - k * f2, 1e-15)
    alpha = s * one_ka / one_ke
    f = 2.0 * alpha / d
    w00 = -k * k * f2
    w01 = k * one_ka
    w10 = k * k * f2 - k * one_ke
    w11 = -k * k * a2
    return lam, var, w, s, d, alpha, f, w00, w01, w10, w11


@triton.jit
def _bn_tr_fwd_kernel(B_ptr, M_ptr, S_ptr, W_ptr, C_ptr, OUT_ptr, VAR_ptr, BO_ptr, D, n_hi: tl.float64,
                      n_lo: tl.float64, eps_hi: tl.float64, eps_lo: tl.float64, TRAIN: tl.constexpr,
                      BLOCK_G: tl.constexpr, BLOCK_T: tl.constexpr, FROM_BIAS: tl.constexpr, CUT: tl.constexpr):
    """OUT (D, D) tile (program_id(0), program_id(1)) of M; VAR (1 entry) = var from program (0, 0).  n and eps
    as float32-exact pairs (_f64_pair).  FROM_BIAS (session 34): B_ptr is the bias, b = expmap0(bias) is formed
    here (every program; ``_bn_bias_coef``) and the programs of column block 0 write their rows of it to BO."""
    n = _f64_join(n_hi, n_lo)
    eps = _f64_join(eps_hi, eps_lo)
    pr = tl.program_id(0).to(tl.int64)
    pc = tl.program_id(1).to(tl.int64)
    k = -tl.load(C_ptr).to(tl.float64)
    sa = 0.0
    if FROM_BIAS:
        _xx, _sa64, sa = _bn_bias_coef(B_ptr, C_ptr, D, CUT, BLOCK_G)
    a2, f2, e2 = _bn_tr_sums(B_ptr, M_ptr, D, BLOCK_G, sa, FROM_BIAS)
    lam, var, w, s, d, alpha, f, w00, w01, w10, w11 = _bn_tr_scalars(a2, f2, e2, k, S_ptr, W_ptr, n, eps, TRAIN)
    rows = pr * BLOCK_T + tl.arange(0, BLOCK_T).to(tl.int64)
    cols = pc * BLOCK_T + tl.arange(0, BLOCK_T).to(tl.int64)
    rm = rows < D
    cm = cols < D
    ar = _bn_tr_a(B_ptr, rows, rm, sa, FROM_BIAS)
    er = ar - tl.load(M_ptr + rows, mask=rm, other=0.0).to(tl.float64)  # (f = a - m)
    ac = _bn_tr_a(B_ptr, cols, cm, sa, FROM_BIAS)
    ec = ac - tl.load(M_ptr + cols, mask=cm, other=0.0).to(tl.float64)
    # row p of [a f] times Wt: u_p = f (W00 a_p + W10 f_p), v_p = f (W01 a_p + W11 f_p); M_pq = u_p a_q + v_p f_q
    u = f * (w00 * ar + w10 * er)
    v = f * (w01 * ar + w11 * er)
    Mt = u[:, None] * ac[None, :] + v[:, None] * ec[None, :]
    Mt = tl.where(rows[:, None] == cols[None, :], Mt + alpha, Mt)
    tl.store(OUT_ptr + rows[:, None] * D + cols[None, :], Mt.to(OUT_ptr.dtype.element_ty),
             mask=rm[:, None] & cm[None, :])
    if (pr == 0) & (pc == 0):
        tl.store(VAR_ptr, var.to(VAR_ptr.dtype.element_ty))
    if FROM_BIAS:
        if pc == 0:
            tl.store(BO_ptr + rows, ar.to(BO_ptr.dtype.element_ty), mask=rm)


@triton.jit
def _bn_bias_bwd_kernel(GB_ptr, BIAS_ptr, C_ptr, GS_ptr, D, CUT: tl.constexpr, BLOCK_G: tl.constexpr,
                        BLOCK_T: tl.constexpr):
    """One program (session 34, FUSED_BIAS), after ``_bn_tr_bwd_kernel``: expmap0's backward from b's gradient g
    (GB) to the bias, in place (the stereographic kernel's EXPMAP0 row: |bias|^2 and sa = tanc(k |bias|^2), <g,
    bias> in float64, the vjp of sa, dbias = sa g + 2 g_xx bias in the tile type), and its dc added to the
    transport's (GS[2]) in the tile type (autograd's accumulation of the old path).  Its own launch: in the
    transport's backward kernel the extra sweeps spilled on sm_80."""
    k = -tl.load(C_ptr).to(tl.float64)
    xx, _sa64, sa = _bn_bias_coef(BIAS_ptr, C_ptr, D, CUT, BLOCK_G)
    offs = tl.arange(0, BLOCK_T).to(tl.int64)
    s_gx = tl.zeros((BLOCK_T,), tl.float64)
    for p0 in range(0, D, BLOCK_T):
        rows = p0 + offs
        rm = rows < D
        gv = tl.load(GB_ptr + rows, mask=rm, other=0.0).to(tl.float64)
        xv = tl.load(BIAS_ptr + rows, mask=rm, other=0.0).to(tl.float64)
        s_gx += gv * xv
    z = k * xx
    z_ = tl.sum(s_gx, 0) * _tanc_d(z, _tanc(z, CUT), CUT)
    cxx = (2.0 * (z_ * k)).to(GB_ptr.dtype.element_ty)
    gc_tr = tl.load(GS_ptr + 2)
    tl.store(GS_ptr + 2, gc_tr + (-(z_ * xx)).to(GS_ptr.dtype.element_ty))
    for p0 in range(0, D, BLOCK_T):
        rows = p0 + offs
        rm = rows < D
        gv = tl.load(GB_ptr + rows, mask=rm, other=0.0)
        xv = tl.load(BIAS_ptr + rows, mask=rm, other=0.0)
        dxv = cxx * xv
        tl.store(GB_ptr + rows, sa * gv + dxv, mask=rm)


@triton.jit
def _bn_tr_gm_vec(G_ptr, B_ptr, M_ptr, rows, rm, D, x0, x1, y0, y1, BLOCK_T: tl.constexpr):
    """For the rows p of the block: (gM (x0 a + x1 f))_p and (gM^T (y0 a + y1 f))_p (f = a - m), and the diagonal
    entries."""
    offs = tl.arange(0, BLOCK_T).to(tl.int64)
    acc_r = tl.zeros((BLOCK_T,), tl.float64)
    acc_c = tl.zeros((BLOCK_T,), tl.float64)
    diag = tl.zeros((BLOCK_T,), tl.float64)
    for q0 in range(0, D, BLOCK_T):
        q = q0 + offs
        qm = q < D
        aq = tl.load(B_ptr + q, mask=qm, other=0.0).to(tl.float64)
        eq = aq - tl.load(M_ptr + q, mask=qm, other=0.0).to(tl.float64)
        m2 = rm[:, None] & qm[None, :]
        g_pq = tl.load(G_ptr + rows[:, None] * D + q[None, :], mask=m2, other=0.0).to(tl.float64)
        g_qp = tl.load(G_ptr + q[None, :] * D + rows[:, None], mask=m2, other=0.0).to(tl.float64)
        acc_r += tl.sum(g_pq * (x0 * aq + x1 * eq)[None, :], 1)
        acc_c += tl.sum(g_qp * (y0 * aq + y1 * eq)[None, :], 1)
        diag += tl.sum(tl.where(rows[:, None] == q[None, :], g_pq, 0.0), 1)
    return acc_r, acc_c, diag


@triton.jit
def _bn_tr_bwd_kernel(G_ptr, B_ptr, M_ptr, S_ptr, W_ptr, C_ptr, GB_ptr, GM_ptr, GS_ptr, GBO_ptr, D,
                      n_hi: tl.float64, n_lo: tl.float64, eps_hi: tl.float64, eps_lo: tl.float64,
                      TRAIN: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_T: tl.constexpr, HAS_GBO: tl.constexpr):
    """One program: gb (D), gm (D), GS (3) = (gS (train: dL/dS; else dL/dvar), gw, gc) from gM (D, D).
    HAS_GBO (session 34, FUSED_BIAS): b's gradient from its other users (GBO) added to gb in the tile type (as
    autograd accumulates them), for ``_bn_bias_bwd_kernel`` to take on to the bias."""
    n = _f64_join(n_hi, n_lo)
    eps = _f64_join(eps_hi, eps_lo)
    k = -tl.load(C_ptr).to(tl.float64)
    a2, f2, e2 = _bn_tr_sums(B_ptr, M_ptr, D, BLOCK_G, 0.0, False)
    lam, var, w, s, d, alpha, f, w00, w01, w10, w11 = _bn_tr_scalars(a2, f2, e2, k, S_ptr, W_ptr, n, eps, TRAIN)
    offs = tl.arange(0, BLOCK_T).to(tl.int64)
    # pass 1: gWt_ij = X_i^T gM X_j (X_0 = a, X_1 = f) and tr gM
    h00 = tl.zeros((BLOCK_T,), tl.float64)
    h01 = tl.zeros((BLOCK_T,), tl.float64)
    h10 = tl.zeros((BLOCK_T,), tl.float64)
    h11 = tl.zeros((BLOCK_T,), tl.float64)
    trv = tl.zeros((BLOCK_T,), tl.float64)
    for p0 in range(0, D, BLOCK_T):
        rows = p0 + offs
        rm = rows < D
        ap = tl.load(B_ptr + rows, mask=rm, other=0.0).to(tl.float64)
        ep = ap - tl.load(M_ptr + rows, mask=rm, other=0.0).to(tl.float64)
        ga_r, ge_r, dg = _bn_tr_gm_vec(G_ptr, B_ptr, M_ptr, rows, rm, D, 1.0, 0.0, 0.0, 0.0, BLOCK_T)
        ge_r2, _unused, _d2 = _bn_tr_gm_vec(G_ptr, B_ptr, M_ptr, rows, rm, D, 0.0, 1.0, 0.0, 0.0, BLOCK_T)
        h00 += ap * ga_r
        h10 += ep * ga_r
        h01 += ap * ge_r2
        h11 += ep * ge_r2
        trv += dg
    g00 = tl.sum(h00, 0)
    g01 = tl.sum(h01, 0)
    g10 = tl.sum(h10, 0)
    g11 = tl.sum(h11, 0)
    tr = tl.sum(trv, 0)
    # the scalar chain backwards
    hh = g00 * w00 + g01 * w01 + g10 * w10 + g11 * w11  # dL/df
    gw00 = g00 * f
    gw01 = g01 * f
    gw10 = g10 * f
    gw11 = g11 * f
    g_alpha = tr + hh * 2.0 / d
    one_ke = 1.0 + k * e2
    one_ka = 1.0 + k * a2
    dd_raw = one_ka * one_ke - k * f2
    g_d = tl.where(dd_raw > 1e-15, -hh * 2.0 * alpha / (d * d), 0.0)
    # W00 = -k^2 f2, W01 = k + k^2 a2, W10 = -k - k^2 e2 + k^2 f2, W11 = -k^2 a2; d = p q - k f2
    g_a2 = k * k * (gw01 - gw11) + k * one_ke * g_d
    g_f2 = k * k * (gw10 - gw00) - k * g_d
    g_e2 = -k * k * gw10 + k * one_ka * g_d
    g_k = (-2.0 * k * f2 * gw00 + (1.0 + 2.0 * k * a2) * gw01 + (-1.0 - 2.0 * k * e2 + 2.0 * k * f2) * gw10
           - 2.0 * k * a2 * gw11)
    g_k += (a2 * one_ke + one_ka * e2 - f2) * g_d
    g_s = g_alpha * (1.0 + k * a2) / one_ke
    g_a2 += g_alpha * s * k / one_ke
    g_e2 += -g_alpha * alpha * k / one_ke
    g_k += g_alpha * (s * a2 - alpha * e2) / one_ke
    ve = var + eps
    g_q = g_s / (2.0 * s)
    g_w = g_q / ve
    g_var = -g_q * w / (ve * ve)
    if TRAIN:
        Sv = tl.load(S_ptr).to(tl.float64)
        tl.store(GS_ptr, (g_var * lam * lam / n).to(GS_ptr.dtype.element_ty))
        g_lam = g_var * 2.0 * lam * Sv / n
        g_pre = tl.where(one_ke > 1e-15, -g_lam * lam / one_ke, 0.0)  # dL/d(1 + k e2)
        g_e2 += g_pre * k
        g_k += g_pre * e2
    else:
        tl.store(GS_ptr, g_var.to(GS_ptr.dtype.element_ty))
    tl.store(GS_ptr + 1, g_w.to(GS_ptr.dtype.element_ty))
    tl.store(GS_ptr + 2, (-g_k).to(GS_ptr.dtype.element_ty))
    # pass 2: ga = gM r1 + gM^T c1 + 2 g_a2 a, gf = gM r2 + gM^T c2 + 2 g_f2 f with r1 = Wt00 a + Wt01 f,
    # c1 = Wt00 a + Wt10 f, r2 = Wt10 a + Wt11 f, c2 = Wt01 a + Wt11 f (Wt = f W); f = a - m: gb = ga + gf,
    # gm = 2 g_e2 m - gf
    for p0 in range(0, D, BLOCK_T):
        rows = p0 + offs
        rm = rows < D
        ap = tl.load(B_ptr + rows, mask=rm, other=0.0).to(tl.float64)
        mp_ = tl.load(M_ptr + rows, mask=rm, other=0.0).to(tl.float64)
        r1, c1, _d3 = _bn_tr_gm_vec(G_ptr, B_ptr, M_ptr, rows, rm, D, f * w00, f * w01, f * w00, f * w10, BLOCK_T)
        r2, c2, _d4 = _bn_tr_gm_vec(G_ptr, B_ptr, M_ptr, rows, rm, D, f * w10, f * w11, f * w01, f * w11, BLOCK_T)
        gf = r2 + c2 + 2.0 * g_f2 * (ap - mp_)
        ga = r1 + c1 + 2.0 * g_a2 * ap + gf
        ge = gf - 2.0 * g_e2 * mp_  # (-dL/dm)
        ga_t = ga.to(GB_ptr.dtype.element_ty)
        if HAS_GBO:  # b's two gradients summed in the tile type (autograd's accumulation of the old path)
            ga_t = ga_t + tl.load(GBO_ptr + rows, mask=rm, other=0.0).to(GB_ptr.dtype.element_ty)
        tl.store(GB_ptr + rows, ga_t, mask=rm)
        tl.store(GM_ptr + rows, (-ge).to(GM_ptr.dtype.element_ty), mask=rm)


# ---------------------------------------------------------------- launchers
_MAX_BLOCK_D = 256
_TILE = 2048


def _device_guard(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _blocks(N: int, D: int, tile: int = _TILE, max_block_d: int = _MAX_BLOCK_D, dtype=torch.float32):
    """(BLOCK_R, BLOCK_D, num_warps): rows of a program and the chunk width (a heuristic, not autotuned).

    float64 tiles take half the elements (twice the registers a value)."""
    if dtype == torch.float64:
        tile //= 2
    block_d = min(triton.next_power_of_2(max(D, 1)), max_block_d)
    block_r = max(1, min(tile // block_d, 64, triton.next_power_of_2(max(N, 1))))
    elems = block_r * block_d
    num_warps = 1 if elems <= 128 else 2 if elems <= 512 else 4
    return block_r, block_d, num_warps


def _check(op: str, x: torch.Tensor):
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"geoops.kernels.poincare.{op}: float32 or float64 expected, got {x.dtype}")


def _cval(c: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """c as a tensor of one entry on like's device, read by the kernels as ``tl.load(C_ptr).to(tl.float64)`` (no
    host sync).  Only the ops it needs (session 33: each is ~5-20 us of host time on a GPU): no detach without a
    gradient (the kernels only read it), no reshape (a 0-dim tensor is a pointer to its entry as well), and c's own
    floating dtype (the kernels widen it to float64 on load: the same value as a float64 copy made on the host,
    without the to() op).  Host code that computes with it in float64 converts it itself (_fc_prep_scalars)."""
    if c.requires_grad:
        c = c.detach()
    if not c.is_floating_point() or c.device != like.device:
        c = c.to(device=like.device, dtype=torch.float64)
    return c if c.numel() == 1 else c.reshape(1)


def _tf32_on() -> bool:
    return bool(torch.backends.cuda.matmul.allow_tf32)


@triton.jit
def _mm_kernel(A_ptr, B_ptr, C_ptr, M, N, K, sam, sak, sbk, sbn,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """C = A @ B in IEEE float32 (tl.dot input_precision="ieee"): the GEMM when TF32 is switched on globally."""
    pid_m = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1).to(tl.int64)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
        a = tl.load(A_ptr + rm[:, None] * sam + rk[None, :] * sak, mask=(rm[:, None] < M) & (rk[None, :] < K),
                    other=0.0)
        b = tl.load(B_ptr + rk[:, None] * sbk + rn[None, :] * sbn, mask=(rk[:, None] < K) & (rn[None, :] < N),
                    other=0.0)
        acc += tl.dot(a, b, input_precision="ieee")
    tl.store(C_ptr + rm[:, None] * N + rn[None, :], acc, mask=(rm[:, None] < M) & (rn[None, :] < N))


def _mm(a: torch.Tensor, b: torch.Tensor, force_ieee: bool = False) -> torch.Tensor:
    """a @ b, exact float32 products: cuBLAS unless TF32 is switched on (then _mm_kernel)."""
    if a.dtype == torch.float32 and (force_ieee or (a.device.type == "cuda" and _tf32_on())):
        M, K = a.shape
        N = b.shape[1]
        out = torch.empty((M, N), device=a.device, dtype=a.dtype)
        if M == 0 or N == 0:
            return out
        if K == 0:
            return out.zero_()
        grid = (triton.cdiv(M, 64), triton.cdiv(N, 64))
        with _device_guard(a):
            _mm_kernel[grid](a, b, out, M, N, K, a.stride(0), a.stride(1), b.stride(0), b.stride(1),
                             BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, num_warps=4)
        return out
    return torch.mm(a, b)


def _rowsq(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x, dim=1, dtype=torch.float64).square()


# ---- fully connected
def _fc_col_prep(z, bias, c, ct, device):
    """Per-column constants of the fc layer: float64 (cd, sc, zn, ch, sh) and the kernels' columns in type ct."""
    cd = c.detach().to(device=device, dtype=torch.float64).reshape(())
    sc = cd.sqrt()
    zn = torch.linalg.vector_norm(z, dim=0, dtype=torch.float64).clamp_min(1e-15)
    if bias is not None and bias.numel():
        # offsets beyond |2 sc r| = 20: ch, sh divided by e^ell, a scaled the same way (the kernels' L_j, Q_j);
        # the column terms below take the scaled ch, sh as they are (dL/dC e^ell times C e^-ell)
        from ..reference.poincare import offset_consts

        ch, sh, qq, ll, _big = offset_consts(bias.to(torch.float64), sc)
    else:
        ch, sh = torch.ones_like(zn), torch.zeros_like(zn)
        qq, ll = torch.ones_like(zn), torch.zeros_like(zn)
    cols = ((ch / zn).to(ct).contiguous(), sh.to(ct).contiguous(), (2.0 * zn).to(ct).contiguous(),
            qq.to(ct).contiguous(), ll.to(ct).contiguous())
    return dict(cd=cd, sc=sc, zn=zn, ch=ch, sh=sh, cols=cols)


def _fc_row_prep(U, cd, sc, eps, tangent):
    """Per-row scalars (float64) of the fc layer from U = |x|^2 (tangent: |u|^2 of the tangent rows u)."""
    X = U
    s = dsdn_n = dsdc = None
    if tangent:
        maxnorm = (1.0 - eps) / (cd + 1e-15).sqrt()
        dmax_dc = -0.5 * (1.0 - eps) / ((cd + 1e-15) * (cd + 1e-15).sqrt())
        n = U.sqrt().clamp_min(1e-15)
        q = sc * n
        qs = torch.where(q < 1e-3, torch.ones_like(q), q)
        th = torch.tanh(qs)
        q2 = q * q  # the series to q^4 (as the C++ kernels): d/dq accurate to 1e-12 relative below the cut
        s = torch.where(q < 1e-3, 1.0 + q2 * (-1.0 / 3.0 + q2 * (2.0 / 15.0)), th / qs)
        dsdq = torch.where(q < 1e-3, q * (-2.0 / 3.0 + q2 * (8.0 / 15.0)), ((1.0 - th * th) - th / qs) / qs)
        proj = s * n > maxnorm
        s = torch.where(proj, maxnorm / n, s)
        dsdn_n = torch.where(proj, -maxnorm / (n * n * n), sc * dsdq / n)
        dsdc = torch.where(proj, dmax_dc / n, n * dsdq / (2.0 * sc))
        X = s * s * U
    lam = 2.0 / (1.0 - cd * X)
    k1 = sc * lam * (s if tangent else 1.0)
    k0 = lam - 1.0
    return dict(X=X, U=U, s=s, dsdn_n=dsdn_n, dsdc=dsdc, lam=lam, k1=k1.contiguous(), k0=k0.contiguous())


def _fc_prep(x, z, bias, c, eps, tangent, U=None):
    """Per-column constants (compute type + float64) and per-row scalars (float64) of the fc layer; the rows from
    U (float64) when given (the fc_rows entry), else from X = |x|^2."""
    p = _fc_col_prep(z, bias, c, x.dtype, x.device)
    p.update(_fc_row_prep(_rowsq(x) if U is None else U, p["cd"], p["sc"], eps, tangent))
    return p


def _fused_prep_on() -> bool:
    """GEOOPS_POINCARE_TRITON_FUSED_PREP=0 (README knob table, read per call): the fc layer's column constants,
    row scalars and backward assembly as torch ops (_fc_prep, _fc_col_grads: ~60-120 small ops per call, the
    path before session 32) instead of the prologue kernels and the backward kernel's FIN epilogue."""
    return os.environ.get("GEOOPS_POINCARE_TRITON_FUSED_PREP", "")[:1] != "0"


def fused_bn_on() -> bool:
    """GEOOPS_POINCARE_TRITON_FUSED_BN=0 (README knob table, read per call): the batch norm's running-statistics
    update as the stereographic geodesic composition (~39 torch ops, 3 launches; the path before session 32)
    instead of _bn_running_kernel; likewise the transport matrix (BnTransportFn) and, session 33, the midpoint
    finish (geoops.poincare.MidpointMeanFn: poincare_midpoint_mean_fwd / _bwd), which geoops.poincare switches on
    the same variable."""
    return os.environ.get("GEOOPS_POINCARE_TRITON_FUSED_BN", "")[:1] != "0"


def _bn_tr_blocks(D: int):
    return min(triton.next_power_of_2(max(D, 1)), 256), min(triton.next_power_of_2(max(D, 1)), 32)


def poincare_bn_transport_fwd(b, m, S, w, c, n: float, eps: float, train: bool, from_bias: bool = False):
    """(M (D, D), var (0-dim)) in b's dtype: the batch norm's transport-and-rescale matrix (see
    geoops.poincare._transport_matrix) from b = expmap0(bias), the midpoint m, S (train: sum |u_i|^2, var =
    lam_m^2 S / n; eval: var itself), the weight w and c.  b, m contiguous (D,); S, w, c one entry each.
    from_bias (session 34): b is the bias itself; expmap0 runs inside the kernel and (M, var, b) come back (b:
    the stereographic expmap0's value, to the row sum's summation order)."""
    D = b.numel()
    out = torch.empty((D, D), dtype=b.dtype, device=b.device)
    var = torch.empty((), dtype=b.dtype, device=b.device)
    bo = torch.empty_like(b) if from_bias else out
    bg, bt = _bn_tr_blocks(D)
    with _device_guard(b):
        _bn_tr_fwd_kernel[(triton.cdiv(D, bt), triton.cdiv(D, bt))](
            b, m, S, w, _cval(c, b), out, var, bo, D, *_f64_pair(n), *_f64_pair(eps), TRAIN=bool(train), BLOCK_G=bg,
            BLOCK_T=bt, FROM_BIAS=bool(from_bias), CUT=_st._CUT_F64, num_warps=4 if bt >= 32 else 1)
    return (out, var, bo) if from_bias else (out, var)


def poincare_bn_transport_bwd(gM, b, m, S, w, c, n: float, eps: float, train: bool, from_bias: bool = False,
                              gbo=None, bias=None):
    """(gb, gm, gS, gw, gc) of poincare_bn_transport_fwd's M (gS: dL/dvar in eval); gS, gw, gc 0-dim.
    from_bias: b is the forward's b output, bias the bias, gbo (or None) b's gradient from its other users, and gb
    is dL/dbias."""
    D = b.numel()
    gb = torch.empty_like(b)
    gm = torch.empty_like(b)
    gs = torch.empty((3,), dtype=b.dtype, device=b.device)
    bg, bt = _bn_tr_blocks(D)
    # 16 x 16 tiles: at 32 x 32 the two float64 tiles (gM and its transpose) and the scalar chain live across the
    # sweeps spilled on sm_80 (Triton 3.6: 16 B with 4 warps, 128-168 B with 8)
    bt = min(bt, 16)
    with _device_guard(b):
        _bn_tr_bwd_kernel[(1,)](gM, b, m, S, w, _cval(c, b), gb, gm, gs, gb if gbo is None else gbo, D,
                                *_f64_pair(n), *_f64_pair(eps), TRAIN=bool(train), BLOCK_G=bg, BLOCK_T=bt,
                                HAS_GBO=bool(from_bias) and gbo is not None, num_warps=2 if D > 16 else 1)
        if from_bias:
            _bn_bias_bwd_kernel[(1,)](gb, bias, _cval(c, b), gs, D, CUT=_st._CUT_F64, BLOCK_G=bg, BLOCK_T=bt,
                                      num_warps=2 if D > 16 else 1)
    return gb, gm, gs


def _f64_pair(v: float):
    """v as hi + lo with hi, lo exact in float32 (v to ~2^-48 relative): a float64 scalar argument that survives
    the interpreter's float32 conversion of Python floats."""
    hi = _round_f32(v)
    return hi, _round_f32(v - hi)


def _round_f32(v: float) -> float:
    return struct.unpack("f", struct.pack("f", v))[0]


def poincare_bn_running_update_(running_mean, running_var, mean, var, c, momentum: float, unbias: float) -> None:
    """The batch norm's running statistics in place, one launch (_bn_running_kernel): running_mean (D,)
    contiguous, running_var one entry (contiguous), mean (D,), var one entry, c the curvature (any shape of one
    entry); all on one device, no gradient."""
    D = running_mean.numel()
    mean = mean.contiguous()  # no detach / reshape ops: the kernel only reads them (var: one entry, any shape)
    block_d = min(triton.next_power_of_2(max(D, 1)), 1024)
    with _device_guard(running_mean):
        _bn_running_kernel[(1,)](running_mean, running_var, mean, var, _cval(c, running_mean), D,
                                 *_f64_pair(momentum), *_f64_pair(unbias), BLOCK_D=block_d,
                                 num_warps=1 if block_d <= 128 else 4)


def _fc_prep_fused(x, z, bias, cv, eps, tangent, U=None):
    """_fc_prep by two launches (_fc_colprep_kernel, _fc_rowprep_kernel): cols (the kernels' five column vectors,
    x's dtype), CD (3, m) float64 (|z_j|, ch, sh), R (7, N) float64 (k1, k0, X, s, ds/dn / n, ds/dc, U) and their
    rows under _fc_prep's names; U (N,) contiguous (the fc_rows entry) or None (|x|^2 of x's rows).  cv: c as
    _cval makes it."""
    N, n = x.shape[0], z.shape[0]
    m = z.shape[1]
    dev = x.device
    ct = torch.empty((5, m), device=dev, dtype=x.dtype)
    cd = torch.empty((3, m), device=dev, dtype=torch.float64)
    R = torch.empty((7, N), device=dev, dtype=torch.float64)
    has_b = bias is not None and bias.numel() > 0
    bm = min(triton.next_power_of_2(max(m, 1)), 128)
    bn = max(1, min(triton.next_power_of_2(max(n, 1)), 1024 // bm))
    br, bd, nw = _blocks(N, x.shape[1] if U is None else 1, 512, dtype=torch.float64)
    with _device_guard(x):
        _fc_colprep_kernel[(triton.cdiv(m, bm),)](z, bias if has_b else z, cv, ct, cd, n, m, HAS_B=has_b,
                                                  BLOCK_N=bn, BLOCK_M=bm, num_warps=1 if bn * bm <= 128 else 4)
        _fc_rowprep_kernel[(triton.cdiv(N, br),)](x, x if U is None else U, cv, R, N, x.shape[1], float(eps),
                                                  FROM_X=U is None, TANGENT=bool(tangent), BLOCK_R=br, BLOCK_D=bd,
                                                  num_warps=nw)
    k1, k0, X, s, dn, dcs, Ur = R.unbind(0)
    zn, ch, sh = cd.unbind(0)
    return dict(cols=ct.unbind(0), CD=cd, R=R, k1=k1, k0=k0, X=X, U=Ur, s=s if tangent else None, s1=s, dsdn_n=dn,
                dsdc=dcs, zn=zn, ch=ch, sh=sh, cv=cv)


def _fc_prep_scalars(p):
    """_fc_prep's float64 scalars (cd, sc, lam) for a fused prep that takes the torch assembly (tangent rows of
    poincare_fc_bwd, whose dL/dx needs dt z^T first)."""
    if "cd" not in p:
        p["cd"] = p["cv"].reshape(()).to(torch.float64)  # _cval keeps c's dtype
        p["sc"] = p["cd"].sqrt()
        p["lam"] = p["k0"] + 1.0
    return p


def _fc_bwd_fused(g, t, p, eps, need_cols, bias, want_b, tangent, half):
    """_fc_bwd_kernel with the FIN epilogue and (need_cols) _fc_colfin_kernel: (gt, rl (t's dtype: the row
    coefficient, or dL/dU for the fc_rows entry: half / tangent), dc (N [+ m]) float64 partials of dL/dc, colf
    (t's dtype) or None, db (t's dtype) or empty).  N, m > 0."""
    N, m = t.shape
    br, bm, nw = _blocks(N, m, 1024 if t.dtype == torch.float32 else 512, dtype=t.dtype)
    nprog = triton.cdiv(N, br)
    dev = t.device
    gt = torch.empty((N, m), device=dev, dtype=t.dtype)
    rl = torch.empty(N, device=dev, dtype=t.dtype)
    dc = torch.empty(N + (m if need_cols else 0), device=dev, dtype=torch.float64)
    part = torch.empty((3, nprog, m), device=dev, dtype=torch.float64) if need_cols else gt
    pz, pc, ps = part.unbind(0) if need_cols else (gt, gt, gt)
    has_b = bias is not None and bias.numel() > 0
    cv = p["cv"]
    with _device_guard(t):
        _fc_bwd_kernel[(nprog,)](g, t, gt, *p["cols"], p["k1"], p["k0"], p["s1"], cv, pz, pc, ps, rl, dc,
                                 dc, p["R"], N, m, float(eps), COLS=need_cols,
                                 BLOCK_R=br, BLOCK_M=bm, FIN=True, TAN=bool(tangent), HALF=bool(half), num_warps=nw,
                                 **_st._maxnreg(nw))
    colf, gb = None, t.new_empty(0)
    if need_cols:
        colf = torch.empty(m, device=dev, dtype=t.dtype)
        if want_b:
            gb = torch.empty(m, device=dev, dtype=t.dtype)
        cbm = min(triton.next_power_of_2(m), 128)
        cbp = max(1, min(triton.next_power_of_2(nprog), 1024 // cbm))
        with _device_guard(t):
            _fc_colfin_kernel[(triton.cdiv(m, cbm),)](pz, pc, ps, p["CD"], bias if has_b else colf, cv, colf,
                                                      gb if want_b else colf, dc[N:], nprog, m, HAS_B=has_b,
                                                      WANT_B=bool(want_b), BLOCK_P=cbp, BLOCK_M=cbm,
                                                      num_warps=1 if cbp * cbm <= 128 else 4)
    return gt, rl, dc, colf, gb


def _fc_epilogue_fwd(t, p, c, eps):
    """y (N, m) of the fc layer from t = x @ z (contiguous) and _fc_prep's constants: _fc_fwd_kernel."""
    N, m = t.shape
    y = t.new_empty((N, m))
    if N and m:
        br, bm, nw = _blocks(N, m, 1024 if t.dtype == torch.float32 else 512, dtype=t.dtype)
        cv = p["cv"] if "cv" in p else _cval(c, t)
        with _device_guard(t):
            _fc_fwd_kernel[(triton.cdiv(N, br),)](t, y, *p["cols"], p["k1"], p["k0"], cv, N, m, float(eps),
                                                  BLOCK_R=br, BLOCK_M=bm, num_warps=nw, **_st._maxnreg(nw))
    return y


def _fc_epilogue_bwd(g, t, p, c, eps, need_cols, tangent):
    """_fc_bwd_kernel on t = x @ z: (gt = dL/dt, the row partials rl, rg, rs, the column partials pz, pc, ps)."""
    N, m = t.shape
    br, bm, nw = _blocks(N, m, 1024 if t.dtype == torch.float32 else 512, dtype=t.dtype)
    nprog = triton.cdiv(N, br) if N else 0
    f64 = dict(device=t.device, dtype=torch.float64)
    gt = t.new_empty((N, m))
    pz, pc, ps = (torch.zeros((max(nprog, 1), m), **f64) for _ in range(3)) if need_cols else (gt, gt, gt)
    rl, rg, rs = (torch.zeros(N, **f64) for _ in range(3))
    if N and m:
        sr = p["s"].contiguous() if tangent else torch.ones(N, **f64)
        with _device_guard(t):
            _fc_bwd_kernel[(nprog,)](g, t, gt, *p["cols"], p["k1"], p["k0"], sr, _cval(c, t), pz, pc, ps, rl, rg, rs,
                                     rl, N, m, float(eps), COLS=need_cols, BLOCK_R=br, BLOCK_M=bm, num_warps=nw,
                                     **_st._maxnreg(nw))
    elif N:
        gt.zero_()
    return gt, rl, rg, rs, pz, pc, ps


def _fc_col_grads(p, bias, pz, pc, ps, has_b, want_b, need_cols, gsc, like):
    """The column terms: (colf, so that dL/dz = x^T dt + colf z, or None without the columns; db or empty (like's
    dtype); gsc plus the sc terms of dc through the bias)."""
    gb = like.new_empty(0)
    if not need_cols:
        return None, gb, gsc
    zn, ch, sh, sc = p["zn"], p["ch"], p["sh"], p["sc"]
    gC, gS, gzn = pc.sum(0), ps.sum(0), pz.sum(0)
    gch = gC / zn
    gzn = gzn - gC * ch / (zn * zn)
    if has_b:
        rj = bias.to(torch.float64)
        gr = 2.0 * sc * (gch * sh + gS * ch)
        gsc = gsc + (2.0 * rj * (gch * sh + gS * ch)).sum()
        if want_b:
            gb = gr.to(like.dtype)
    colf = torch.where(zn > 1e-15, gzn / zn, torch.zeros_like(zn))
    return colf, gb, gsc


def poincare_fc_fwd(x, z, bias, c, eps, save, tangent):
    _check("poincare_fc", x)
    x, z = x.contiguous(), z.contiguous()
    if bias is not None:
        bias = bias.to(x.dtype).contiguous()
    N, m = x.shape[0], z.shape[1]
    t = _mm(x, z)
    if not (N and m):
        y = x.new_empty((N, m))
    elif _fused_prep_on():
        y = _fc_epilogue_fwd(t, _fc_prep_fused(x, z, bias, _cval(c, x), eps, tangent), c, eps)
    else:
        y = _fc_epilogue_fwd(t, _fc_prep(x, z, bias, c, eps, tangent), c, eps)
    return y, (t if save else x.new_empty(0))


def poincare_fc_bwd(g, x, z, bias, c, t, eps, mask, tangent):
    _check("poincare_fc", x)
    x, z = x.contiguous(), z.contiguous()
    if bias is not None:
        bias = bias.to(x.dtype).contiguous()
    g = g.to(x.dtype).contiguous()
    N, n = x.shape
    m = z.shape[1]
    mask = int(mask)
    t = t.contiguous() if t.numel() == N * m and t.numel() else _mm(x, z)
    has_b = bias is not None and bias.numel() > 0
    want_x, want_z, want_b, want_c = bool(mask & 1), bool(mask & 2), bool(mask & 4) and has_b, bool(mask & 8)
    need_cols = want_z or want_b or want_c
    fused = N > 0 and m > 0 and _fused_prep_on()
    if fused and not tangent:
        # the prologue kernels, the backward kernel's FIN epilogue, the column finish: dx and dz by their GEMMs
        p = _fc_prep_fused(x, z, bias, _cval(c, x), eps, False)
        gt, rowc, dc, colf, gb = _fc_bwd_fused(g, t, p, eps, need_cols, bias, want_b, False, False)
        gx = _mm(gt, z.t()).addcmul_(rowc.unsqueeze(1), x) if want_x else x.new_empty(0)
        gz = _mm(x.t(), gt).addcmul_(colf.unsqueeze(0), z) if want_z else x.new_empty(0)
        gc = dc.sum().to(c.dtype) if want_c else c.new_empty(0)
        return gx, gz, gb, gc
    p = _fc_prep_scalars(_fc_prep_fused(x, z, bias, _cval(c, x), eps, tangent)) if fused else \
        _fc_prep(x, z, bias, c, eps, tangent)
    gt, rl, rg, rs, pz, pc, ps = _fc_epilogue_bwd(g, t, p, c, eps, need_cols, tangent)
    cd, sc, lam, X = p["cd"], p["sc"], p["lam"], p["X"]
    rowcoef = rl * cd * lam * lam
    gcd = rg.sum() + (rl * X * lam * lam * 0.5).sum()
    gsc = rs.sum()
    gx = x.new_empty(0)
    tan_gc = torch.zeros((), device=x.device, dtype=torch.float64)
    if want_x or (tangent and want_c):
        gxb = _mm(gt, z.t())
        if not tangent:
            gxb = gxb.addcmul_(rowcoef.to(x.dtype)[:, None], x)
        else:
            s = p["s"]
            ug = (gxb.to(torch.float64) * x.to(torch.float64)).sum(1)
            u_gx = ug / s + rowcoef * s * p["U"]
            coef = rowcoef * s * s + u_gx * p["dsdn_n"]
            gxb = gxb.addcmul_(coef.to(x.dtype)[:, None], x)
            tan_gc = (u_gx * p["dsdc"]).sum()
        if want_x:
            gx = gxb
    colf, gb, gsc = _fc_col_grads(p, bias, pz, pc, ps, has_b, want_b, need_cols, gsc, x)
    gz = _mm(x.t(), gt).addcmul_(colf.to(x.dtype)[None, :], z) if want_z else x.new_empty(0)
    gc = (gcd + tan_gc + gsc / (2.0 * sc)).to(c.dtype) if want_c else c.new_empty(0)
    return gx, gz, gb, gc


# ---- MLR head (hyperplane distances)
def _mlr_args(x, z, bias):
    _check("poincare_mlr", x)
    x, z = x.contiguous(), z.to(x.dtype).contiguous()
    if bias is not None:
        bias = bias.to(x.dtype).contiguous()
    return x, z, bias


def _mlr_blocks(N, n, m, dtype):
    br, bm, nw = _blocks(N, m, 1024 if dtype == torch.float32 else 512, dtype=dtype)
    bd = min(triton.next_power_of_2(max(n, 1)), max(bm, 16))
    return br, bd, bm, nw


def _mlr_cols(z, bias, cv):
    """The columns' constants (_fc_colprep_kernel): CT (5, m) in z's dtype and CD (3, m) float64."""
    n, m = z.shape
    ct = torch.empty((5, m), device=z.device, dtype=z.dtype)
    cd = torch.empty((3, m), device=z.device, dtype=torch.float64)
    has_b = bias is not None and bias.numel() > 0
    bm = min(triton.next_power_of_2(max(m, 1)), 128)
    bn = max(1, min(triton.next_power_of_2(max(n, 1)), 1024 // bm))
    with _device_guard(z):
        _fc_colprep_kernel[(triton.cdiv(m, bm),)](z, bias if has_b else z, cv, ct, cd, n, m, HAS_B=has_b,
                                                  BLOCK_N=bn, BLOCK_M=bm, num_warps=1 if bn * bm <= 128 else 4)
    return ct, cd


def poincare_mlr_fwd(x, z, bias, c):
    """(y, t) of the MLR head, x (N, n), z (n, m), bias (m,) or None, c one entry: y = hyperplane_dists (N, m) and
    t = x z (N, m), what the backward reads (csrc/cpu/poincare_head.cpp's poincare_mlr_fwd_cpu)."""
    x, z, bias = _mlr_args(x, z, bias)
    N, n = x.shape
    m = z.shape[1]
    t = _mm(x, z)
    y = x.new_empty((N, m))
    if N and m:
        cv = _cval(c, x)
        ct, _cd = _mlr_cols(z, bias, cv)
        br, bd, bm, nw = _mlr_blocks(N, n, m, x.dtype)
        with _device_guard(x):
            _mlr_fwd_kernel[(triton.cdiv(N, br),)](x, t, y, *ct.unbind(0), cv, N, n, m, BLOCK_R=br, BLOCK_D=bd,
                                                   BLOCK_M=bm, num_warps=nw, **_st._maxnreg(nw))
    return y, t


def poincare_mlr_bwd(g, x, z, bias, c, t, mask):
    """(dx, dz, dbias, dc) of poincare_mlr_fwd's y (mask bits 1, 2, 4, 8; unselected ones are empty; dc 0-dim in
    c's dtype) from the saved t = x z (recomputed when empty)."""
    x, z, bias = _mlr_args(x, z, bias)
    N, n = x.shape
    m = z.shape[1]
    mask = int(mask)
    g = g.to(x.dtype).contiguous()
    t = t.contiguous() if t.numel() == N * m and t.numel() else _mm(x, z)
    has_b = bias is not None and bias.numel() > 0
    want_x, want_z, want_b, want_c = bool(mask & 1), bool(mask & 2), bool(mask & 4) and has_b, bool(mask & 8)
    need_cols = want_z or want_b or want_c
    gb = x.new_empty(0)
    if not (N and m):  # no rows or no columns: every gradient is 0
        gx = torch.zeros_like(x) if want_x else x.new_empty(0)
        gz = torch.zeros_like(z) if want_z else x.new_empty(0)
        gb = torch.zeros_like(bias) if want_b else gb
        gc = torch.zeros((), device=x.device, dtype=c.dtype) if want_c else c.new_empty(0)
        return gx, gz, gb, gc
    cv = _cval(c, x)
    ct, cd = _mlr_cols(z, bias, cv)
    br, bd, bm, nw = _mlr_blocks(N, n, m, x.dtype)
    nprog = triton.cdiv(N, br)
    dev = x.device
    gt = torch.empty((N, m), device=dev, dtype=x.dtype)
    rc = torch.empty(N, device=dev, dtype=x.dtype)
    dc = torch.empty(N + (m if need_cols else 0), device=dev, dtype=torch.float64)
    part = torch.empty((3, nprog, m), device=dev, dtype=torch.float64) if need_cols else None
    pz, pc, ps = part.unbind(0) if need_cols else (dc, dc, dc)
    with _device_guard(x):
        _mlr_bwd_kernel[(nprog,)](g, x, t, gt, *ct.unbind(0), cd, cv, pz, pc, ps, rc, dc, N, n, m, COLS=need_cols,
                                  BLOCK_R=br, BLOCK_D=bd, BLOCK_M=bm, num_warps=nw, **_st._maxnreg(nw))
    colf = None
    if need_cols:
        colf = torch.empty(m, device=dev, dtype=x.dtype)
        if want_b:
            gb = torch.empty(m, device=dev, dtype=x.dtype)
        cbm = min(triton.next_power_of_2(m), 128)
        cbp = max(1, min(triton.next_power_of_2(nprog), 1024 // cbm))
        with _device_guard(x):
            _fc_colfin_kernel[(triton.cdiv(m, cbm),)](pz, pc, ps, cd, bias if has_b else colf, cv, colf,
                                                      gb if want_b else colf, dc[N:], nprog, m, HAS_B=has_b,
                                                      WANT_B=bool(want_b), BLOCK_P=cbp, BLOCK_M=cbm,
                                                      num_warps=1 if cbp * cbm <= 128 else 4)
    gx = _mm(gt, z.t()).addcmul_(rc.unsqueeze(1), x) if want_x else x.new_empty(0)
    gz = _mm(x.t(), gt).addcmul_(colf.unsqueeze(0), z) if want_z else x.new_empty(0)
    gc = dc.sum().to(c.dtype) if want_c else c.new_empty(0)
    return gx, gz, gb, gc


# ---- ReLU
def poincare_relu_fwd(x, c, eps):
    _check("poincare_relu", x)
    x = x.contiguous()
    N, D = x.shape
    y = torch.empty_like(x)
    if N and D:
        br, bd, nw = _blocks(N, D, dtype=x.dtype)
        with _device_guard(x):
            _relu_fwd_kernel[(triton.cdiv(N, br),)](x, y, _cval(c, x), N, D, float(eps),
                                                    BLOCK_R=br, BLOCK_D=bd, num_warps=nw, **_st._maxnreg(nw))
    return y


def poincare_relu_bwd(g, x, c, eps):
    _check("poincare_relu", x)
    x = x.contiguous()
    g = g.to(x.dtype).contiguous()
    N, D = x.shape
    gx = torch.empty_like(x)
    gk = torch.zeros(N, device=x.device, dtype=torch.float64)
    if N and D:
        br, bd, nw = _blocks(N, D, 1024, dtype=x.dtype)
        with _device_guard(x):
            _relu_bwd_kernel[(triton.cdiv(N, br),)](g, x, gx, gk, _cval(c, x), N, D, float(eps),
                                                    BLOCK_R=br, BLOCK_D=bd, num_warps=nw, **_st._maxnreg(nw))
    return gx, (-gk.sum()).to(c.dtype)


# ---- midpoint sums
def poincare_midpoint_sums_fwd(x, c):
    _check("poincare_midpoint_sums", x)
    x = x.contiguous()
    N, D = x.shape
    br, bd, nw = _blocks(N, D, dtype=x.dtype)
    nprog = triton.cdiv(N, br) if N else 0
    pf = torch.zeros((max(nprog, 1), D), device=x.device, dtype=torch.float64)
    pl = torch.zeros(max(nprog, 1), device=x.device, dtype=torch.float64)
    if N:
        with _device_guard(x):
            _mid_fwd_kernel[(nprog,)](x, pf, pl, _cval(c, x), N, D, BLOCK_R=br, BLOCK_D=bd, SCATTER=False,
                                      num_warps=nw, **_st._maxnreg(nw))
    return pf.sum(0).to(x.dtype), pl.sum().to(x.dtype)


def poincare_midpoint_sums_bwd(gF, gL, x, c):
    _check("poincare_midpoint_sums", x)
    x = x.contiguous()
    N, D = x.shape
    gF = gF.to(x.dtype).reshape(-1).contiguous()
    if gF.numel() != D:
        raise ValueError(f"geoops.kernels.poincare.poincare_midpoint_sums: grad of F must have {D} entries")
    gx = torch.empty_like(x)
    gc = torch.zeros(N, device=x.device, dtype=torch.float64)
    if N:
        br, bd, nw = _blocks(N, D, 1024, dtype=x.dtype)
        gl = gL.detach().reshape(1).to(device=x.device, dtype=torch.float64)
        with _device_guard(x):
            _mid_bwd_kernel[(triton.cdiv(N, br),)](gF, gl, x, gx, gc, _cval(c, x), gl, gl, N, D,  # (no FS, SC)
                                                   BLOCK_R=br, BLOCK_D=bd, SCATTER=False, num_warps=nw,
                                                   **_st._maxnreg(nw))
    return gx, gc.sum().to(c.dtype)


def _mid_fin_blocks(P: int, D: int):
    return min(triton.next_power_of_2(max(P, 1)), 16), min(triton.next_power_of_2(max(D, 1)), 256)


def poincare_midpoint_mean_fwd(x, c):
    """(m, fs, sc): the batch midpoint m (D,) in x's dtype of rows x (N, D) contiguous, N > 0 (the batch norm's
    MidpointMeanFn), two launches: _mid_fwd_kernel's partial sums and scatters, _mid_fin_fwd_kernel's finish (the
    root from the scatter: no cancellation near the boundary); fs = f (D,) and sc = (L, Lt, W, V, R, r) float64
    for poincare_midpoint_mean_bwd."""
    N, D = x.shape
    br, bd, nw = _blocks(N, D, dtype=x.dtype)
    nprog = triton.cdiv(N, br)
    f64 = dict(device=x.device, dtype=torch.float64)
    pf = torch.empty((nprog, D), **f64)  # every program writes its row
    pl = torch.empty((nprog, 4), **f64)  # (sum (lam - 1), Lt, W, R) per program
    m = torch.empty(D, device=x.device, dtype=x.dtype)
    fs = torch.empty(D, **f64)
    sc = torch.empty(6, **f64)
    cv = _cval(c, x)
    bp, bfd = _mid_fin_blocks(nprog, D)
    with _device_guard(x):
        _mid_fwd_kernel[(nprog,)](x, pf, pl, cv, N, D, BLOCK_R=br, BLOCK_D=bd, SCATTER=True, num_warps=nw,
                                  **_st._maxnreg(nw))
        # (8 warps for the widest tiles: the scatter's (BLOCK_P, BLOCK_D) float64 tile spilled at 4 on sm_80 / sm_90)
        _mid_fin_fwd_kernel[(1,)](pf, pl, cv, m, fs, sc, nprog, N, D, BLOCK_P=bp, BLOCK_D=bfd,
                                  num_warps=1 if bp * bfd <= 256 else (4 if bp * bfd <= 2048 else 8))
    return m, fs, sc


def poincare_midpoint_mean_bwd(gm, x, c, fs, sc, need_c: bool):
    """(gx, gc) of poincare_midpoint_mean_fwd's m: _mid_fin_bwd_kernel (dL/dF, dL/dL, the root's part of dL/dc,
    dL/dV, dL/dR) then _mid_bwd_kernel (with the scatter's row parts); gc (c's dtype, 0-dim) only with need_c, else
    None."""
    N, D = x.shape
    gm = gm.contiguous()
    gF = torch.empty(D, device=x.device, dtype=x.dtype)
    gl = torch.empty(4, device=x.device, dtype=torch.float64)
    gx = torch.empty_like(x)
    gc = torch.empty(N, device=x.device, dtype=torch.float64)  # every row written
    cv = _cval(c, x)
    br, bd, nw = _blocks(N, D, 1024, dtype=x.dtype)
    with _device_guard(x):
        _mid_fin_bwd_kernel[(1,)](gm, fs, sc, cv, gF, gl, D, BLOCK_D=_mid_fin_blocks(1, D)[1],
                                  num_warps=1 if D <= 256 else 4)
        _mid_bwd_kernel[(triton.cdiv(N, br),)](gF, gl, x, gx, gc, cv, fs, sc, N, D,
                                               BLOCK_R=br, BLOCK_D=bd, SCATTER=True, num_warps=nw,
                                               **_st._maxnreg(nw))
    if not need_c:
        return gx, None
    return gx, (gc.sum() + gl[1]).to(c.dtype)


# ---- batch norm rows
def _bn_args(u, M, b):
    _check("poincare_bn_rows", u)
    D = u.shape[1]
    if tuple(M.shape) != (D, D) or tuple(b.shape) != (D,):
        raise ValueError(f"geoops.kernels.poincare.poincare_bn_rows: M must be ({D}, {D}) and b ({D},)")
    if M.dtype != u.dtype or b.dtype != u.dtype:
        raise TypeError("geoops.kernels.poincare.poincare_bn_rows: u, M, b must share a dtype")
    return u.contiguous(), M.contiguous(), b.contiguous()


def _bn_blocks(N, D, dtype):
    # float64 row math on every element of the tile: half the usual tile
    return _blocks(N, D, tile=512, max_block_d=128, dtype=dtype)


def poincare_bn_rows_fwd(u, M, b, c, eps):
    u, M, b = _bn_args(u, M, b)
    N, D = u.shape
    y = torch.empty_like(u)
    if N and D:
        v = _mm(u, M)
        br, bd, nw = _bn_blocks(N, D, u.dtype)
        with _device_guard(u):
            _bn_fwd_kernel[(triton.cdiv(N, br),)](v, b, y, _cval(c, u), N, D, EPS=float(eps),
                                                  BLOCK_R=br, BLOCK_D=bd, num_warps=nw, **_st._maxnreg(nw))
    return y


def poincare_bn_rows_bwd(g, u, M, b, c, eps):
    u, M, b = _bn_args(u, M, b)
    g = (g if g.dtype == u.dtype else g.to(u.dtype)).contiguous()
    N, D = u.shape
    f64 = dict(device=u.device, dtype=torch.float64)
    if not (N and D):
        return torch.zeros_like(u), torch.zeros_like(M), torch.zeros_like(b), torch.zeros((), dtype=c.dtype,
                                                                                             device=c.device)
    v = _mm(u, M)
    br, bd, nw = _bn_blocks(N, D, u.dtype)
    nprog = triton.cdiv(N, br)
    gv = torch.empty_like(u)
    pb = torch.zeros((nprog, D), **f64)
    gk = torch.zeros(N, **f64)
    with _device_guard(u):
        _bn_bwd_kernel[(nprog,)](g, v, b, gv, pb, gk, _cval(c, u), N, D, EPS=float(eps),
                                 BLOCK_R=br, BLOCK_D=bd, num_warps=nw, **_st._maxnreg(nw))
    gu = _mm(gv, M.t())
    gM = _mm(u.t(), gv)
    gb = pb.sum(0)
    return gu, gM, gb if gb.dtype == u.dtype else gb.to(u.dtype), (-gk.sum()).to(c.dtype)


INTERPRETED = type(_relu_fwd_kernel).__name__ == "InterpretedFunction"
if INTERPRETED:
    _math = _NumpyMath  # noqa: F811 - the interpreter cannot call libdevice


# ---------------------------------------------------------------- compile check (.ci/triton_compile_check.py)
COMPILE_NOTES = """\
Row kernels of the Poincaré layers: per-row scalar math in float64 for both dtypes (as the C++ kernels),
element-wise passes in the tile type.  The batch norm row pass takes expmap's and project's coefficient
forms and vjps from kernels/stereographic.py (`_fwd_coef` / `_vjp`); fc/mm is the IEEE float32 GEMM that
replaces cuBLAS only when torch's TF32 switch is on."""


def compile_variants():
    """Every Triton variant the launchers of this module can run, for the CI compile check.

    Per dtype (float32, float64): the MLR head's row passes (forward, backward with and without the column
    partials; session 38) for the same two shapes as the fc layer; the fc epilogue forward and backward (with and
    without the column
    partials; the prologue kernels and the column finish of the fused prep; its tangent rows; the backward
    kernel without the FIN epilogue under GEOOPS_POINCARE_TRITON_FUSED_PREP=0) and the fc_rows entry (tangent
    and plain rows) for the convolution's thin shape (144 -> 16) and a wide layer (512 -> 512, chunked columns);
    the ReLU, midpoint sums and batch norm row pass forward and backward for a narrow (16) and a wide
    (chunked, 300 / 200) row, the batch norm's running update and transport matrix (train and eval, forward and
    backward; GEOOPS_POINCARE_TRITON_FUSED_BN); and (float32) the IEEE GEMM.  The launches
    call the module's own launchers on small CPU tensors.  Expectations: 64-bit program-id arithmetic, IEEE
    float32 division; no spill in float32, up to 32 B in float64 (libdevice's float64 tan reduction in the
    batch norm's expmap coefficients, as in the stereographic rows).
    """
    entries = []
    for dtype in (torch.float32, torch.float64):
        dn = str(dtype).replace("torch.", "")
        expect = {"ieee_div": True, "index64": True, "max_spill_bytes": 32 if dtype == torch.float64 else 0}
        c = torch.ones((), dtype=dtype)

        def add(label, fn):
            entries.append({"label": f"{label.split('/')[0]}/{dn}/{label.split('/', 1)[1]}", "launch": fn,
                            "expect": expect})

        for shape, N, n, m in (("conv 144x16", 256, 144, 16), ("wide 512x512", 64, 512, 512)):
            x = torch.zeros(N, n, dtype=dtype)
            z = torch.ones(n, m, dtype=dtype)
            b = torch.zeros(m, dtype=dtype)
            g = torch.zeros(N, m, dtype=dtype)
            add(f"fc/{shape} fwd", lambda x=x, z=z, b=b: poincare_fc_fwd(x, z, b, c, 1e-3, True, False))
            add(f"fc/{shape} bwd", lambda g=g, x=x, z=z, b=b: poincare_fc_bwd(g, x, z, b, c, x.new_empty(0), 1e-3,
                                                                            15, False))
            add(f"fc/{shape} bwd dx only", lambda g=g, x=x, z=z, b=b: poincare_fc_bwd(g, x, z, b, c, x.new_empty(0),
                                                                                    1e-3, 1, False))
            add(f"fc/{shape} bwd tangent", lambda g=g, x=x, z=z, b=b: poincare_fc_bwd(g, x, z, b, c, x.new_empty(0),
                                                                                    1e-3, 15, True))
            add(f"fc/{shape} bwd torch prep", lambda g=g, x=x, z=z, b=b: with_env(
                "GEOOPS_POINCARE_TRITON_FUSED_PREP", "0", poincare_fc_bwd, g, x, z, b, c, x.new_empty(0), 1e-3, 15,
                False))
            # the MLR head (session 38): its row passes around the GEMMs, the fc column prologue / finish
            add(f"mlr/{shape} fwd", lambda x=x, z=z, b=b: poincare_mlr_fwd(x, z, b, c))
            add(f"mlr/{shape} bwd", lambda g=g, x=x, z=z, b=b: poincare_mlr_bwd(g, x, z, b, c, g, 15))
            add(f"mlr/{shape} bwd dx only", lambda g=g, x=x, z=z, b=b: poincare_mlr_bwd(g, x, z, b, c, g, 1))
            U = torch.zeros(N, dtype=dtype)
            for tan in (True, False):
                tn = "tangent" if tan else "plain"
                add(f"fc_rows/{shape} fwd {tn}", lambda g=g, U=U, z=z, b=b, tan=tan: poincare_fc_rows_fwd(
                    g, U, z, b, c, 1e-3, tan))
                add(f"fc_rows/{shape} bwd {tn}", lambda g=g, U=U, z=z, b=b, tan=tan: poincare_fc_rows_bwd(
                    g, g, U, z, b, c, 1e-3, 14, tan))
        for shape, N, D in (("narrow", 4096, 16), ("wide", 64, 300)):
            x = torch.zeros(N, D, dtype=dtype)
            add(f"relu/{shape} fwd", lambda x=x: poincare_relu_fwd(x, c, 1e-3))
            add(f"relu/{shape} bwd", lambda x=x: poincare_relu_bwd(x, x, c, 1e-3))
            add(f"midpoint_sums/{shape} fwd", lambda x=x: poincare_midpoint_sums_fwd(x, c))
            add(f"midpoint_sums/{shape} bwd", lambda x=x, D=D: poincare_midpoint_sums_bwd(x[0], c, x, c))
            add(f"midpoint_mean/{shape} fwd", lambda x=x: poincare_midpoint_mean_fwd(x, c))
            add(f"midpoint_mean/{shape} bwd", lambda x=x, D=D: poincare_midpoint_mean_bwd(
                x[0], x, c, torch.zeros(D, dtype=torch.float64), torch.ones(6, dtype=torch.float64), True))
            Db = 200 if shape == "wide" else D
            u = torch.zeros(N, Db, dtype=dtype)
            M = torch.zeros(Db, Db, dtype=dtype)
            bb = torch.zeros(Db, dtype=dtype)
            add(f"bn_rows/{shape} fwd", lambda u=u, M=M, bb=bb: poincare_bn_rows_fwd(u, M, bb, c, 1e-3))
            add(f"bn_rows/{shape} bwd", lambda u=u, M=M, bb=bb: poincare_bn_rows_bwd(u, u, M, bb, c, 1e-3))
            rmn, rvr = torch.zeros(Db, dtype=dtype), torch.ones(1, dtype=dtype)
            add(f"bn_running/{shape}", lambda rmn=rmn, rvr=rvr: poincare_bn_running_update_(
                rmn, rvr, rmn.clone(), rvr.clone(), c, 0.1, 1.0))
            one = torch.ones((), dtype=dtype)
            for train in (True, False):
                tn = "train" if train else "eval"
                add(f"bn_transport/{shape} fwd {tn}", lambda rmn=rmn, one=one, train=train: poincare_bn_transport_fwd(
                    rmn, rmn, one, one, c, 10.0, 1e-6, train))
                add(f"bn_transport/{shape} bwd {tn}", lambda rmn=rmn, one=one, M=M, Db=Db, train=train:
                    poincare_bn_transport_bwd(torch.zeros(Db, Db, dtype=rmn.dtype), rmn, rmn, one, one, c, 10.0,
                                              1e-6, train))
                # session 34: b = expmap0(bias) formed in the kernels (GEOOPS_POINCARE_TRITON_FUSED_BIAS)
                add(f"bn_transport/{shape} fwd {tn} bias", lambda rmn=rmn, one=one, train=train:
                    poincare_bn_transport_fwd(rmn, rmn, one, one, c, 10.0, 1e-6, train, True))
                add(f"bn_transport/{shape} bwd {tn} bias", lambda rmn=rmn, one=one, M=M, Db=Db, train=train:
                    poincare_bn_transport_bwd(torch.zeros(Db, Db, dtype=rmn.dtype), rmn, rmn, one, one, c, 10.0,
                                              1e-6, train, True, rmn, rmn))
        if dtype == torch.float32:
            a = torch.zeros(256, 144, dtype=dtype)
            bm = torch.zeros(144, 16, dtype=dtype)
            add("mm/ieee", lambda a=a, bm=bm: _mm(a, bm, force_ieee=True))
    return entries


# ---- fc row passes from a given t = u z and U = |u|^2 (poincare_conv2d's entry, t from F.conv2d)
def _fc_rows_fallback() -> bool:
    """GEOOPS_POINCARE_TRITON_FC_ROWS=0 (README knob table, read per call): the eager reference composition."""
    return os.environ.get("GEOOPS_POINCARE_TRITON_FC_ROWS", "")[:1] == "0"


def _fc_rows_args(t, U, z, bias):
    _check("poincare_fc_rows", t)
    if t.dim() != 2 or z.dim() != 2 or t.shape[1] != z.shape[1] or U.numel() != t.shape[0]:
        raise ValueError("geoops.kernels.poincare.poincare_fc_rows: t [N, m], U [N], z [n, m]")
    t, z = t.contiguous(), z.to(t.dtype).contiguous()
    if bias is not None:
        bias = bias.to(t.dtype).contiguous()
    return t, z, bias


def poincare_fc_rows_fwd(t, U, z, bias, c, eps, tangent):
    """y of the fc layer from t = x @ z (cuDNN made it) and U = |x|^2: _fc_fwd_kernel on t, as poincare_fc_fwd
    after its GEMM (the row scalars from U instead of x; tangent rows likewise)."""
    if _fc_rows_fallback():
        from .._ops.poincare import _Reference

        return _Reference.poincare_fc_rows_fwd(t, U, z, bias, c, eps, tangent)
    t, z, bias = _fc_rows_args(t, U, z, bias)
    N, m = t.shape
    if not (N and m):
        return t.new_empty((N, m))
    if _fused_prep_on():
        return _fc_epilogue_fwd(t, _fc_prep_fused(t, z, bias, _cval(c, t), eps, tangent, U=_rows_u(U, N)), c, eps)
    p = _fc_prep(t, z, bias, c, eps, tangent, U=U.reshape(N).to(torch.float64))
    return _fc_epilogue_fwd(t, p, c, eps)


def _rows_u(U, N):
    """U as the contiguous (N,) vector _fc_rowprep_kernel reads (a view when it is one already)."""
    U = U.reshape(N)
    return U if U.is_contiguous() else U.contiguous()


def poincare_fc_rows_bwd(g, t, U, z, bias, c, eps, mask, tangent):
    """(dt, dU, dz, dbias, dc) of poincare_fc_rows_fwd (csrc/cpu/poincare.cpp's poincare_fc_rows_bwd_cpu contract):
    dt and dU always (t's dtype); dz (mask 2) only the terms through z's column norms (the caller adds x^T dt);
    dbias (mask 4, with a bias); dc (mask 8, 0-dim, c's dtype); unselected ones empty.  poincare_fc_bwd's
    assembly without x: dL/dx = dt z^T + coef x there, and coef x is the U term (dL/dU 2 x), so dU = coef / 2;
    tangent rows: u . (dt z^T) = t . dt."""
    if _fc_rows_fallback():
        from .._ops.poincare import _Reference

        return _Reference.poincare_fc_rows_bwd(g, t, U, z, bias, c, eps, mask, tangent)
    t, z, bias = _fc_rows_args(t, U, z, bias)
    g = g.to(t.dtype).contiguous()
    N, m = t.shape
    mask = int(mask)
    has_b = bias is not None and bias.numel() > 0
    want_z, want_b, want_c = bool(mask & 2), bool(mask & 4) and has_b, bool(mask & 8)
    need_cols = want_z or want_b or want_c
    if N and m and _fused_prep_on():
        Ur = _rows_u(U, N)
        p = _fc_prep_fused(t, z, bias, _cval(c, t), eps, tangent, U=Ur)
        gt, gU, dc, colf, gb = _fc_bwd_fused(g, t, p, eps, need_cols, bias, want_b, tangent, True)
        gz = colf.unsqueeze(0) * z if want_z else t.new_empty(0)
        gc = dc.sum().to(c.dtype) if want_c else c.new_empty(0)
        return gt, gU.reshape(U.shape), gz, gb, gc
    p = _fc_prep(t, z, bias, c, eps, tangent, U=U.reshape(N).to(torch.float64))
    gt, rl, rg, rs, pz, pc, ps = _fc_epilogue_bwd(g, t, p, c, eps, need_cols, tangent)
    cd, sc, lam, X = p["cd"], p["sc"], p["lam"], p["X"]
    rowcoef = rl * cd * lam * lam
    gcd = rg.sum() + (rl * X * lam * lam * 0.5).sum()
    gsc = rs.sum()
    tan_gc = torch.zeros((), device=t.device, dtype=torch.float64)
    if not tangent:
        gU = 0.5 * rowcoef
    else:
        s = p["s"]
        ug = (t.to(torch.float64) * gt.to(torch.float64)).sum(1)
        u_gx = ug / s + rowcoef * s * p["U"]
        gU = 0.5 * (rowcoef * s * s + u_gx * p["dsdn_n"])
        tan_gc = (u_gx * p["dsdc"]).sum()
    colf, gb, gsc = _fc_col_grads(p, bias, pz, pc, ps, has_b, want_b, need_cols, gsc, t)
    gz = colf.to(t.dtype)[None, :] * z if want_z else t.new_empty(0)
    gc = (gcd + tan_gc + gsc / (2.0 * sc)).to(c.dtype) if want_c else c.new_empty(0)
    return gt, gU.to(t.dtype).reshape(U.shape), gz, gb, gc
