"""Bit-for-bit check of the stereographic row kernels of two builds of geoops._C (e.g. before / after a
refactor of csrc/cpu/stereographic_lanes*.cpp that must not change the generated code).

    python .ci/stereo_bits.py save BUILD.so OUT.pt     # outputs and gradients of every row op of that build
    python .ci/stereo_bits.py compare A.pt B.pt         # exit 1 unless every tensor matches bit for bit

Each `save` runs in its own process (two builds of geoops._C cannot share one).  Cases: every op of
STEREO_OPS, fp32 / fp64 (and a few fp16 / bf16), D in {1, 2, 3, 5, 8, 9, 10, 16, 17, 64, 100}, k < 0 / 0 / > 0
and per-row k of mixed sign, contiguous and strided rows, rows near the ball's boundary (the fallback
blocks), the backward with every gradient and with dx or dy alone; the default paths and, again, with every
GEOOPS_STEREO_* switch at 0 (the fallback paths, read per call).
"""
import importlib.util
import itertools
import os
import zlib
import sys

import torch

OPS = {  # name: (code, has_y, has_r, scalar_out), as geoops/_ops/stereographic.py's STEREO_OPS
    "mobius_add": (0, True, False, False), "mobius_sub": (1, True, False, False), "project": (2, False, False, False),
    "lambda_x": (3, False, False, True), "mobius_scalar_mul": (4, False, True, False), "expmap": (5, True, False, False),
    "expmap0": (6, False, False, False), "logmap": (7, True, False, False), "logmap0": (8, False, False, False),
    "dist": (9, True, False, True), "dist0": (10, False, False, True),
}
SWITCHES = ["GEOOPS_STEREO_F32_BWD", "GEOOPS_STEREO_F32_MOB", "GEOOPS_STEREO_F32_REG", "GEOOPS_STEREO_F32_ROWS",
            "GEOOPS_STEREO_F32_SUMS", "GEOOPS_STEREO_FLOAT_CALL", "GEOOPS_STEREO_FLOAT_STAGE",
            "GEOOPS_STEREO_LOGMAP_RCP", "GEOOPS_STEREO_LONG_SUMS"]
DIMS = [1, 2, 3, 5, 8, 9, 10, 16, 17, 64, 100]


def _load(path):
    spec = importlib.util.spec_from_file_location("geoops._C", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _points(g, n, d, k, dtype, strided):
    """n rows in the domain of curvature k (|x| < 1/sqrt(-k) for k < 0), a few near its boundary."""
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True) * torch.rand(n, 1, generator=g, dtype=torch.float64)
    kk = k if k.numel() == 1 else k.view(-1, 1)
    rad = torch.where(kk < 0, 1 / kk.abs().clamp_min(1e-30).sqrt(), torch.full_like(kk, 2.0))
    rad = rad.expand(n, 1)
    x = x * rad
    x[::7] = x[::7] / x[::7].norm(dim=1, keepdim=True).clamp_min(1e-30) * (0.999 * rad[::7])
    x = x.to(dtype)
    if strided:  # rows of stride d + 3
        w = torch.zeros(n, d + 3, dtype=dtype)
        w[:, :d] = x
        x = w[:, :d]
    return x


def _cases():
    for dtype, d, kname, strided in itertools.product(
            [torch.float32, torch.float64, torch.float16, torch.bfloat16], DIMS, ["neg", "zero", "pos", "rows"],
            [False, True]):
        if dtype in (torch.float16, torch.bfloat16) and (strided or d not in (3, 17) or kname == "rows"):
            continue
        yield dtype, d, kname, strided


def save(so, out):
    C = _load(so)
    torch.set_num_threads(2)
    res = {}
    for env in ("default", "switches-off"):
        for s in SWITCHES:
            if env == "default":
                os.environ.pop(s, None)
            else:
                os.environ[s] = "0"
        for dtype, d, kname, strided in _cases():
            n = 301
            g = torch.Generator().manual_seed(zlib.crc32(f"{dtype}{d}{kname}{strided}".encode()))
            k = {"neg": torch.tensor([-1.3], dtype=torch.float64), "zero": torch.tensor([0.0], dtype=torch.float64),
                 "pos": torch.tensor([0.7], dtype=torch.float64),
                 "rows": torch.randn(n, generator=g, dtype=torch.float64)}[kname]
            x = _points(g, n, d, k, dtype, strided)
            y = _points(g, n, d, k, dtype, strided)
            r = torch.tensor([0.8], dtype=torch.float64) if kname != "rows" else torch.randn(n, generator=g,
                                                                                            dtype=torch.float64)
            for name, (code, has_y, has_r, scalar_out) in OPS.items():
                param = 1e-5 if name == "project" else 0.0
                yy = y if has_y else None
                rr = r if has_r else None
                key = f"{env}/{name}/{str(dtype)[6:]}/D{d}/k{kname}/{'strided' if strided else 'contig'}"
                res[key + "/out"] = C.stereo_fwd_cpu(code, x, yy, k, rr, param)
                gout = torch.randn(n if scalar_out else (n, d), generator=g, dtype=torch.float64).to(dtype)
                masks = [15, 1, 2] if has_y else [15, 1]
                for mask in masks:
                    dx, dy, dk, dr = C.stereo_bwd_cpu(code, gout, x, yy, k, rr, param, mask)
                    for nm, t in (("dx", dx), ("dy", dy), ("dk", dk), ("dr", dr)):
                        res[f"{key}/bwd{mask}/{nm}"] = t
    torch.save(res, out)
    print(f"saved {len(res)} tensors of {so} to {out}")


def _bits(t):
    t = t.contiguous()
    return t.view({8: torch.int64, 4: torch.int32, 2: torch.int16}[t.element_size()]) if t.numel() else t


def compare(a, b):
    A, B = torch.load(a), torch.load(b)
    bad = [k for k in A if k not in B or A[k].shape != B[k].shape or A[k].dtype != B[k].dtype
           or not torch.equal(_bits(A[k]), _bits(B[k]))]
    bad += [k for k in B if k not in A]
    for k in bad[:30]:
        print("DIFFER", k)
    print(f"{len(A)} tensors compared: {len(bad)} differ" + ("" if bad else " (all bit-identical)"))
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "save":
        save(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    else:
        sys.exit(__doc__)
