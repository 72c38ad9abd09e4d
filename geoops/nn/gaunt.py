"""``GauntTensorProduct``: an e3nn-compatible module computing the Gaunt tensor product with geoops' fused routes.

e3nn is an optional dependency: it is imported only when the module is constructed.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import gaunt as _gaunt

__all__ = ["GauntTensorProduct"]


def _o3():
    try:
        from e3nn import o3
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "geoops.nn.GauntTensorProduct needs e3nn (pip install e3nn) for its Irreps arguments; "
            "the functional API geoops.gaunt.gaunt_tensor_product works without it") from e
    return o3


def _parse(o3, irreps, name: str):
    """(mul, {l: offset in the flat e3nn layout}, L) of a natural-parity irreps with one multiplicity."""
    irreps = o3.Irreps(irreps)
    muls = {mul for mul, _ in irreps}
    if len(muls) > 1:
        raise ValueError(f"GauntTensorProduct: {name} = {irreps} must use one multiplicity for every irrep "
                         f"(e.g. 16x0e+16x1o+16x2e), got multiplicities {sorted(muls)}")
    if not len(irreps):
        raise ValueError(f"GauntTensorProduct: {name} is empty")
    offsets, off = {}, 0
    for mul, ir in irreps:
        if ir.p != (-1) ** ir.l:
            raise ValueError(
                f"GauntTensorProduct: {name} = {irreps} contains {ir}, which does not have natural parity "
                f"(p = (-1)^l: 0e, 1o, 2e, 3o, ...). The Gaunt product of spherical functions only produces "
                f"natural-parity irreps; paths with odd l1 + l2 + l3 (e.g. the cross product 1o x 1o -> 1e) "
                f"and mixed parity cannot be expressed; use e3nn.o3.TensorProduct for them")
        if ir.l in offsets:
            raise ValueError(f"GauntTensorProduct: {name} = {irreps} lists degree {ir.l} twice; "
                             f"use one block per degree (simplify the irreps)")
        offsets[ir.l] = off
        off += mul * ir.dim
    return irreps, muls.pop(), offsets, max(offsets)


class GauntTensorProduct(torch.nn.Module):
    r"""Gaunt tensor product of two e3nn feature tensors, channel by channel ("uuu").

    out[c, l3 m3] = w_out[c, l3] sum G(l1 m1, l2 m2, l3 m3) w1[c, l1] x1[c, l1 m1] w2[c, l2] x2[c, l2 m2]

    Args:
        irreps_in1, irreps_in2, irreps_out: e3nn ``Irreps`` (or strings) in e3nn's ``mul x ir`` layout, one
            multiplicity C per irreps (every irrep of an irreps has it), natural parity only (0e, 1o, 2e, ...).
            irreps_out has C channels; an input has C or 1: a multiplicity-1 input (the edge spherical harmonics
            ``1x0e+1x1o+1x2e`` of a message) is broadcast over the C channels.  Degrees may be missing (they count
            as zeros in the inputs and are not produced in the output).
        internal_weights: learnable per-channel, per-degree weights ``weight1`` [C, L1+1], ``weight2``
            [C, L2+1], ``weight_out`` [C, Lout+1] (initialised to 1); False: no weights.
        route: geoops.gaunt route ("auto", "grid", "grid_gemm", "direct", "fft").

    With weights at 1 this equals e3nn's ``TensorProduct(irreps_in1, irreps_in2, irreps_out, [(i1, i2, io,
    "uuu", False, G_path^2) ...], irrep_normalization="none", path_normalization="none")`` over the paths with
    even l1 + l2 + l3 ("uvu" when irreps_in2 has multiplicity 1, "uvv" when irreps_in1 has).  The weights are
    per channel of the output ([C, L+1]) also for a broadcast input.  Raises ValueError for what the Gaunt
    product cannot express (non-natural parity, so odd-sum paths such as 1o x 1o -> 1e; multiplicities other
    than C or 1).

    ``forward(x1, x2, weight1=None, weight2=None, weight_out=None)``: optional per-sample weights
    [..., C, L+1] (e.g. per-edge radial weights of a message, [E, C, Lout+1]; leading dims broadcast with the
    inputs'), multiplied with the internal ones (or used alone without internal weights).
    """

    def __init__(self, irreps_in1, irreps_in2, irreps_out, *, internal_weights: bool = True,
                 route: str = "auto"):
        super().__init__()
        o3 = _o3()
        self.irreps_in1, c1, self._off1, self.L1 = _parse(o3, irreps_in1, "irreps_in1")
        self.irreps_in2, c2, self._off2, self.L2 = _parse(o3, irreps_in2, "irreps_in2")
        self.irreps_out, co, self._offo, self.Lout = _parse(o3, irreps_out, "irreps_out")
        if c1 not in (co, 1) or c2 not in (co, 1):
            raise ValueError(f"GauntTensorProduct: irreps_in1 and irreps_in2 must have the multiplicity of "
                             f"irreps_out (its channels) or 1 (broadcast over the channels, e.g. edge spherical "
                             f"harmonics), got {c1}, {c2} and irreps_out {co}")
        if route not in _gaunt.ROUTES:
            raise ValueError(f"GauntTensorProduct: route must be one of {_gaunt.ROUTES}, got {route!r}")
        self.mul, self.route = co, route
        self._mul1, self._mul2 = c1, c2
        if internal_weights:
            self.weight1 = torch.nn.Parameter(torch.ones(co, self.L1 + 1))
            self.weight2 = torch.nn.Parameter(torch.ones(co, self.L2 + 1))
            self.weight_out = torch.nn.Parameter(torch.ones(co, self.Lout + 1))
        else:
            self.weight1 = self.weight2 = self.weight_out = None

    def reset_parameters(self) -> None:
        """Set the internal weights back to 1 (the plain Gaunt product)."""
        with torch.no_grad():
            for w in (self.weight1, self.weight2, self.weight_out):
                if w is not None:
                    w.fill_(1.0)

    def _to_coeffs(self, x: torch.Tensor, offsets: dict, L: int, name: str, C: int) -> torch.Tensor:
        dim = sum(C * (2 * l + 1) for l in offsets)
        if x.shape[-1] != dim:
            raise ValueError(f"GauntTensorProduct: {name} must have last dimension {dim} (its irreps' dim), "
                             f"got shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        if len(offsets) == L + 1:  # every degree present: concatenation of the (C, 2l+1) blocks
            blocks = [x[..., offsets[l]: offsets[l] + C * (2 * l + 1)].reshape(*lead, C, 2 * l + 1)
                      for l in range(L + 1)]
            return torch.cat(blocks, -1)
        out = x.new_zeros((*lead, C, (L + 1) ** 2))
        for l, off in offsets.items():
            out[..., l * l:(l + 1) ** 2] = x[..., off: off + C * (2 * l + 1)].reshape(*lead, C, 2 * l + 1)
        return out

    def _weight(self, own: Optional[torch.Tensor], ext: Optional[torch.Tensor], L: int,
                name: str) -> Optional[torch.Tensor]:
        if ext is None:
            return own
        if not isinstance(ext, torch.Tensor) or ext.dim() < 2 or ext.shape[-1] != L + 1 \
                or ext.shape[-2] not in (self.mul, 1):
            raise ValueError(f"GauntTensorProduct: {name} must be a tensor [..., C, L+1] = [..., {self.mul}, "
                             f"{L + 1}] (per-sample, per-channel, per-degree weights), got "
                             f"{tuple(ext.shape) if isinstance(ext, torch.Tensor) else type(ext).__name__}")
        return ext if own is None else own * ext

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, weight1: Optional[torch.Tensor] = None,
                weight2: Optional[torch.Tensor] = None, weight_out: Optional[torch.Tensor] = None) -> torch.Tensor:
        # a multiplicity-1 input is [..., 1, n]: gaunt_tensor_product broadcasts it over the C channels
        a = self._to_coeffs(x1, self._off1, self.L1, "x1", getattr(self, "_mul1", self.mul))
        b = self._to_coeffs(x2, self._off2, self.L2, "x2", getattr(self, "_mul2", self.mul))
        out = _gaunt.gaunt_tensor_product(a, b, self.Lout,
                                          weight1=self._weight(self.weight1, weight1, self.L1, "weight1"),
                                          weight2=self._weight(self.weight2, weight2, self.L2, "weight2"),
                                          weight_out=self._weight(self.weight_out, weight_out, self.Lout,
                                                                  "weight_out"),
                                          route=self.route)
        lead = out.shape[:-2]
        blocks = [out[..., l * l:(l + 1) ** 2].reshape(*lead, self.mul * (2 * l + 1))
                  for l in sorted(self._offo, key=self._offo.get)]
        return torch.cat(blocks, -1)

    def extra_repr(self) -> str:
        return f"{self.irreps_in1} x {self.irreps_in2} -> {self.irreps_out}, route={self.route!r}"
