"""torch.library registrations of the diagonal state-space (ssm) family, with fake implementations.

    geoops::vandermonde_fwd(Tensor v, Tensor x, int L, bool out64) -> Tensor
        v (C, H, N) complex, x (H, N) complex -> K (C, H, L), float64 if out64 else float32
    geoops::vandermonde_bwd(Tensor grad, Tensor v, Tensor x, int mask) -> (Tensor dv, Tensor dx)
        mask: 1 dv (C, H, N) in v's dtype, 2 dx (H, N) in x's dtype; unselected ones are empty
    geoops::fftconv_fwd(Tensor u, Tensor k, Tensor? D, bool save_uf) -> (Tensor y, Tensor uf)
        u (B, H, L), k (C, S, H, L) (S = 2: bidirectional), D (C, H) -> y (B, C, H, L) in u's dtype,
        uf = rfft(u, n) (B, H, n//2+1) complex (fp32/fp64 compute dtype) when save_uf, else empty (0,); (B, H, 0)
        where the backend's forward never forms it -- the Triton tensor-core path, ``fftconv_saves_uf``;
        n = fft_size(L) (geoops.reference.ssm: the smallest 2-3-5 size >= 2L - 1)
    geoops::fftconv_bwd(Tensor grad, Tensor u, Tensor uf, Tensor k, Tensor? D, int mask) -> (du, dk, dD)
        mask: 1 du (B, H, L), 2 dk (C, S, H, L), 4 dD (C, H); uf may be empty (then recomputed)
    geoops::ssm_discretize_fwd(Tensor log_dt, Tensor A, Tensor B, Tensor C, str disc) -> (Tensor v, Tensor x)
        v = C * Bbar (C's shape), x = log Abar (H, N), both complex128
    geoops::ssm_discretize_bwd(Tensor gv, Tensor gx, Tensor log_dt, Tensor A, Tensor B, Tensor C, str disc,
                               int mask) -> (dlog_dt, dA, dB, dC)
        gv / gx may be empty (no gradient); mask: 1 dlog_dt, 2 dA, 4 dB, 8 dC, in the inputs' dtypes
    geoops::ssm_conv_fwd(Tensor u, Tensor v, Tensor x, Tensor? D, bool save_uf, bool keep_kf=True)
        -> (Tensor y, Tensor kf, Tensor uf)
        v (C, S, H, N), x (H, N) complex: K[c, s] = vandermonde(v[c, s], x, L) convolved as fftconv's k;
        kf = rfft(circular K, n) / n (C, H, n//2+1) (kept for the backward) when keep_kf, else empty (a
        forward-only call: the CPU kernel then never writes the spectra to memory), uf as in fftconv_fwd
    geoops::ssm_conv_bwd(Tensor grad, Tensor u, Tensor uf, Tensor kf, Tensor v, Tensor x, Tensor? D, int mask)
        -> (du, dv, dx, dD); mask: 1 du, 2 dv (v's shape, complex128), 4 dx (H, N), 8 dD (C, H)

Each implementation picks the backend per call (kernel sets below), so one registration serves CPU,
CUDA (Triton) and the eager reference; torch.compile sees opaque ops.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _backend, _library
from .._library import masked_empty, masked_grads

FAMILY = "ssm"


# ---------------------------------------------------------------- backends
class _Cpp:
    @staticmethod
    def vandermonde_fwd(v, x, L, out64):
        return _backend.compiled().vandermonde_fwd_cpu(v, x, L, out64)

    @staticmethod
    def vandermonde_bwd(g, v, x, mask):
        return tuple(_backend.compiled().vandermonde_bwd_cpu(g, v, x, mask))

    @staticmethod
    def fftconv_fwd(u, k, D, save_uf):
        return tuple(_backend.compiled().fftconv_fwd_cpu(u, k, D, save_uf))

    @staticmethod
    def fftconv_bwd(g, u, uf, k, D, mask):
        return tuple(_backend.compiled().fftconv_bwd_cpu(g, u, uf, k, D, mask))

    @staticmethod
    def ssm_discretize_fwd(log_dt, A, B, C, disc):
        return tuple(_backend.compiled().ssm_discretize_fwd_cpu(log_dt, A, B, C, disc))

    @staticmethod
    def ssm_discretize_bwd(gv, gx, log_dt, A, B, C, disc, mask):
        return tuple(_backend.compiled().ssm_discretize_bwd_cpu(gv, gx, log_dt, A, B, C, disc, mask))

    @staticmethod
    def ssm_conv_fwd(u, v, x, D, save_uf, keep_kf=True):
        return tuple(_backend.compiled().ssm_conv_fwd_cpu(u, v, x, D, save_uf, keep_kf))

    @staticmethod
    def ssm_conv_bwd(g, u, uf, kf, v, x, D, mask):
        return tuple(_backend.compiled().ssm_conv_bwd_cpu(g, u, uf, kf, v, x, D, mask))


def _cdt(u):
    return torch.float64 if u.dtype == torch.float64 else torch.float32


class _Reference:
    """The op contract above, evaluated with geoops.reference.ssm (autograd for the backward)."""

    @staticmethod
    def vandermonde_fwd(v, x, L, out64):
        from ..reference import ssm as ref

        cd = torch.complex128  # the oracle
        with torch.no_grad():
            return ref.vandermonde(v.to(cd), x.to(cd), L).to(torch.float64 if out64 else torch.float32).contiguous()

    @staticmethod
    def vandermonde_bwd(g, v, x, mask):
        from ..reference import ssm as ref

        with _library.reference_autograd():
            vv = v.detach().to(torch.complex128).requires_grad_(True)
            xx = x.detach().to(torch.complex128).requires_grad_(True)
            K = ref.vandermonde(vv, xx, g.shape[-1])
            dv, dx = torch.autograd.grad(K, (vv, xx), g.to(torch.float64))
        return masked_grads(mask, (dv, dx), (v, x))

    @staticmethod
    def _y(u, k, D):
        from ..reference import ssm as ref

        cdt = _cdt(u)
        bid = k.shape[1] == 2
        kk = k.to(cdt) if bid else k[:, 0].to(cdt)
        return ref.fftconv(u.to(cdt), kk, None if D is None else D.to(cdt), bid)

    @classmethod
    def fftconv_fwd(cls, u, k, D, save_uf):
        from ..reference import ssm as ref

        with torch.no_grad():
            y = cls._y(u, k, D).to(u.dtype).contiguous()
            n = ref.fft_size(u.shape[-1])
            uf = torch.fft.rfft(u.to(_cdt(u)), n=n) if save_uf else u.new_empty(0, dtype=_complex_of(u))
        return y, uf

    @classmethod
    def fftconv_bwd(cls, g, u, uf, k, D, mask):
        with _library.reference_autograd():
            uu = u.detach().requires_grad_(True)
            kk = k.detach().requires_grad_(True)
            DD = None if D is None else D.detach().requires_grad_(True)
            y = cls._y(uu, kk, DD)
            ins = [uu, kk] + ([DD] if DD is not None else [])
            grads = torch.autograd.grad(y, ins, g.to(y.dtype), allow_unused=True)
        return masked_grads(mask, grads, (u, k, D), optional=1)


    @staticmethod
    def ssm_discretize_fwd(log_dt, A, B, C, disc):
        from ..reference import ssm as ref

        with torch.no_grad():
            return ref.discretize_log(log_dt, A, B, C, disc)

    @staticmethod
    def ssm_discretize_bwd(gv, gx, log_dt, A, B, C, disc, mask):
        from ..reference import ssm as ref

        with _library.reference_autograd():
            ins = [t.detach().requires_grad_(True) for t in (log_dt, A, B, C)]
            v, x = ref.discretize_log(*ins, disc)
            outs, grads = [], []
            for o, g in ((v, gv), (x, gx)):
                if g.numel():
                    outs.append(o)
                    grads.append(g.to(o.dtype))
            res = torch.autograd.grad(outs, ins, grads, allow_unused=True) if outs else [None] * 4
        return masked_grads(mask, res, (log_dt, A, B, C))

    @staticmethod
    def _kernels(v, x, L, cdt):
        from ..reference import ssm as ref

        C, S, H, N = v.shape
        K = ref.vandermonde(v.reshape(C * S, H, N).to(torch.complex128), x.to(torch.complex128), L)
        return K.reshape(C, S, H, L).to(cdt)

    @classmethod
    def ssm_conv_fwd(cls, u, v, x, D, save_uf, keep_kf=True):
        from ..reference import ssm as ref

        L = u.shape[-1]
        n = ref.fft_size(L)
        cdt = _cdt(u)
        with torch.no_grad():
            k = cls._kernels(v, x, L, cdt)
            y = cls._y(u, k, D).to(u.dtype).contiguous()
            circ = torch.zeros(k.shape[0], k.shape[2], n, dtype=cdt, device=u.device)
            circ[..., :L] = k[:, 0]
            if k.shape[1] == 2 and L > 1:
                circ[..., n - L + 1:] = k[:, 1, :, :L - 1].flip(-1)
            kf = torch.fft.rfft(circ, n=n, norm="forward")
            uf = torch.fft.rfft(u.to(cdt), n=n) if save_uf else u.new_empty(0, dtype=_complex_of(u))
        return y, (kf if keep_kf else u.new_empty(0, dtype=_complex_of(u))), uf

    @classmethod
    def ssm_conv_bwd(cls, g, u, uf, kf, v, x, D, mask):
        with _library.reference_autograd():
            uu = u.detach().requires_grad_(True)
            vv = v.detach().requires_grad_(True)
            xx = x.detach().requires_grad_(True)
            DD = None if D is None else D.detach().requires_grad_(True)
            y = cls._y(uu, cls._kernels(vv, xx, u.shape[-1], _cdt(u)), DD)
            ins = [uu, vv, xx] + ([DD] if DD is not None else [])
            grads = torch.autograd.grad(y, ins, g.to(y.dtype), allow_unused=True)
        return masked_grads(mask, grads, (u, v, x, D), optional=1)


def _complex_of(u):
    return torch.complex128 if u.dtype == torch.float64 else torch.complex64


kernels = _library.family_kernels(FAMILY, cpp=_Cpp, reference=_Reference)


# ---------------------------------------------------------------- registration
def _plain(*ts):
    """The kernels read raw memory: lazy conjugate / negative views (``C.conj()``, ``z.conj().imag``) are
    materialised first (no-ops for ordinary tensors; the C++ kernels used to read them unconjugated)."""
    return [t.resolve_conj().resolve_neg() if t is not None else None for t in ts]


def _vfwd(v: torch.Tensor, x: torch.Tensor, L: int, out64: bool) -> torch.Tensor:
    return kernels(x.device).vandermonde_fwd(*_plain(v, x), L, out64)


def _vfwd_fake(v, x, L, out64):
    return v.new_empty((v.shape[0], v.shape[1], L), dtype=torch.float64 if out64 else torch.float32)


def _vbwd(g, v, x, mask: int):
    return tuple(kernels(x.device).vandermonde_bwd(*_plain(g, v, x), mask))


def _vbwd_fake(g, v, x, mask):
    return masked_empty(mask, v, x)


def _ffwd(u, k, D: Optional[torch.Tensor], save_uf: bool):
    return tuple(kernels(u.device).fftconv_fwd(*_plain(u, k, D), save_uf))


def _nfreq(L):
    """n // 2 + 1 for the FFT size n = fft_size(L) of a spectrum output.  fft_size (the next 2-3-5 size) has no
    symbolic form, so int(L) specialises a symbolic L (torch.export / torch.compile with a dynamic length): the
    fakes ask for it only when the op returns a spectrum (session 36)."""
    from torch.fx.experimental.symbolic_shapes import is_concrete_int

    from ..reference import ssm as ref

    if isinstance(L, torch.SymInt) and not is_concrete_int(L):
        return torch.library.get_ctx().new_dynamic_size()
    return ref.fft_size(int(L)) // 2 + 1


def _uf_shape(u, C: int, save_uf: bool, F=None):
    """The shape of the uf output: (B, H, n//2+1) when the forward returns rfft(u); (B, H, 0) when asked for but
    the backend never forms it (the Triton tensor-core convolution; ``fftconv_saves_uf``: the backward then
    recomputes it); (0,) when not asked for.  Where the backend's answer depends on a symbolic L (it returns None),
    the length is a new unbacked size (n//2+1 or 0): asking it would specialise L (session 36).  F: n//2+1 when the
    caller has it already (one size for both spectra of ssm_conv_fwd)."""
    if not save_uf:
        return (0,)
    B, H, L = u.shape
    saves = getattr(kernels(u.device), "fftconv_saves_uf", None)
    keeps = True if saves is None else saves(u, C)
    if keeps is None:
        return (B, H, torch.library.get_ctx().new_dynamic_size())
    return (B, H, (_nfreq(L) if F is None else F) if keeps else 0)


def _ffwd_fake(u, k, D, save_uf):
    B, H, L = u.shape
    y = u.new_empty((B, k.shape[0], H, L))
    uf = u.new_empty(_uf_shape(u, k.shape[0], save_uf), dtype=_complex_of(u))
    return y, uf


def _fbwd(g, u, uf, k, D: Optional[torch.Tensor], mask: int):
    return tuple(kernels(u.device).fftconv_bwd(*_plain(g, u, uf, k, D), mask))


def _fbwd_fake(g, u, uf, k, D, mask):
    return masked_empty(mask, u, k, D, optional=1)


def _dfwd(log_dt, A, B, C, disc: str):
    return tuple(kernels(A.device).ssm_discretize_fwd(*_plain(log_dt, A, B, C), disc))


def _dfwd_fake(log_dt, A, B, C, disc):
    return C.new_empty(C.shape, dtype=torch.complex128), A.new_empty(A.shape, dtype=torch.complex128)


def _dbwd(gv, gx, log_dt, A, B, C, disc: str, mask: int):
    return tuple(kernels(A.device).ssm_discretize_bwd(*_plain(gv, gx, log_dt, A, B, C), disc, mask))


def _dbwd_fake(gv, gx, log_dt, A, B, C, disc, mask):
    return masked_empty(mask, log_dt, A, B, C)


def _sfwd(u, v, x, D: Optional[torch.Tensor], save_uf: bool, keep_kf: bool = True):
    return tuple(kernels(u.device).ssm_conv_fwd(*_plain(u, v, x, D), save_uf, keep_kf))


def _sfwd_fake(u, v, x, D, save_uf, keep_kf=True):
    B, H, L = u.shape
    F = _nfreq(L) if keep_kf else None  # (no spectrum asked for: L stays unconstrained)
    y = u.new_empty((B, v.shape[0], H, L))
    kf = u.new_empty((v.shape[0], H, F) if keep_kf else (0,), dtype=_complex_of(u))
    uf = u.new_empty(_uf_shape(u, v.shape[0], save_uf, F), dtype=_complex_of(u))
    return y, kf, uf


def _sbwd(g, u, uf, kf, v, x, D: Optional[torch.Tensor], mask: int):
    return tuple(kernels(u.device).ssm_conv_bwd(*_plain(g, u, uf, kf, v, x, D), mask))


def _sbwd_fake(g, u, uf, kf, v, x, D, mask):
    return masked_empty(mask, u, v, x, D, optional=1)


# (callers: on the eager fast path plain tensors call the kernels directly, everything else dispatches the custom op)
vandermonde_fwd, vandermonde_bwd = _library.define_pair(
    "geoops::vandermonde", "(Tensor v, Tensor x, int L, bool out64) -> Tensor", _vfwd, _vfwd_fake,
    "(Tensor grad, Tensor v, Tensor x, int mask) -> (Tensor, Tensor)", _vbwd, _vbwd_fake)
fftconv_fwd, fftconv_bwd = _library.define_pair(
    "geoops::fftconv", "(Tensor u, Tensor k, Tensor? D, bool save_uf) -> (Tensor, Tensor)", _ffwd, _ffwd_fake,
    "(Tensor grad, Tensor u, Tensor uf, Tensor k, Tensor? D, int mask) -> (Tensor, Tensor, Tensor)", _fbwd, _fbwd_fake)
ssm_discretize_fwd, ssm_discretize_bwd = _library.define_pair(
    "geoops::ssm_discretize", "(Tensor log_dt, Tensor A, Tensor B, Tensor C, str disc) -> (Tensor, Tensor)",
    _dfwd, _dfwd_fake,
    "(Tensor gv, Tensor gx, Tensor log_dt, Tensor A, Tensor B, Tensor C, str disc, int mask) "
    "-> (Tensor, Tensor, Tensor, Tensor)", _dbwd, _dbwd_fake)
ssm_conv_fwd, ssm_conv_bwd = _library.define_pair(
    "geoops::ssm_conv", "(Tensor u, Tensor v, Tensor x, Tensor? D, bool save_uf, bool keep_kf=True) "
    "-> (Tensor, Tensor, Tensor)", _sfwd, _sfwd_fake,
    "(Tensor grad, Tensor u, Tensor uf, Tensor kf, Tensor v, Tensor x, Tensor? D, int mask) "
    "-> (Tensor, Tensor, Tensor, Tensor)", _sbwd, _sbwd_fake)
