"""The fp32 short-row forward's env switches (GEOOPS_STEREO_F32_ROWS, _F32_MOB; read once per call at the entry point,
csrc/cpu/stereographic_rows_f32_reg.h: f32rows::switches) still take effect call by call, in either order, and leave
nothing behind: default, switch, default again give the default's bits."""
from __future__ import annotations

import pytest
import torch

import geoops.stereographic as gs
from _stereo_rows import short_layout

AVX512 = short_layout()["isa"] == "AVX512"  # what the build compiled (not the machine: a portable build has no AVX-512)


def _rows(d: int, n: int = 301, seed: int = 0):
    """x within 1e-6 .. 1e-2 (relative) of the unit ball's boundary, y in random directions inside it."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, d, generator=g, dtype=torch.float64)
    frac = 1 - torch.logspace(-6, -2, n, dtype=torch.float64).reshape(-1, 1)
    x = v / v.norm(dim=-1, keepdim=True) * frac
    y = torch.randn(n, d, generator=g, dtype=torch.float64) * 0.4 / d ** 0.5
    return x.float(), y.float()


@pytest.mark.parametrize("d", (2, 10))
@pytest.mark.parametrize("op", ("mobius_add", "expmap", "logmap"))
def test_f32_switches_read_per_call(op, d, monkeypatch):
    x, y = _rows(d, seed=d)
    k = torch.tensor(-1.0)
    f = getattr(gs, op)
    monkeypatch.delenv("GEOOPS_STEREO_F32_ROWS", raising=False)
    monkeypatch.delenv("GEOOPS_STEREO_F32_MOB", raising=False)
    a = f(x, y, k=k)
    monkeypatch.setenv("GEOOPS_STEREO_F32_ROWS", "0")  # the double path
    c = f(x, y, k=k)
    monkeypatch.delenv("GEOOPS_STEREO_F32_ROWS")
    a2 = f(x, y, k=k)
    monkeypatch.setenv("GEOOPS_STEREO_F32_MOB", "0")  # the double Mobius terms
    b = f(x, y, k=k)
    monkeypatch.delenv("GEOOPS_STEREO_F32_MOB")
    a3 = f(x, y, k=k)
    assert torch.equal(a, a2) and torch.equal(a, a3)
    if AVX512 or op != "mobius_add" or d <= 8:  # (AVX2 builds: mobius_add's fp32 rows at D = 10 run the double path)
        assert not torch.equal(a, c)
    if AVX512:
        assert not torch.equal(a, b)
    assert torch.allclose(a, c, rtol=1e-5, atol=1e-6) and torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_f32_reg_switch_read_per_call(monkeypatch):
    """GEOOPS_STEREO_F32_REG's values 0 and 2 (session 40) read per call: at a D where the register pass declines
    mobius_add by default (the layout's register_pass_declined_d), default, =2 (the register pass there: other bits
    than the default's eight-loop blocks), default, =0, default: every default equal to =0's bits, =2 not, and =2 again
    the same as the first =2.  Skipped where the build declines mobius_add at no D."""
    ds = short_layout()["register_pass_declined_d"].get("mobius_add", ())
    if not ds:
        pytest.skip("the register pass declines mobius_add at no D on this build")
    x, y = _rows(ds[0], seed=40)
    k = torch.tensor(-1.0)
    monkeypatch.delenv("GEOOPS_STEREO_F32_ROWS", raising=False)
    out = {}
    for i, v in enumerate((None, "2", None, "0", None, "2")):
        if v is None:
            monkeypatch.delenv("GEOOPS_STEREO_F32_REG", raising=False)
        else:
            monkeypatch.setenv("GEOOPS_STEREO_F32_REG", v)
        out[i] = gs.mobius_add(x, y, k=k)
    assert all(torch.equal(out[i], out[3]) for i in (0, 2, 4))
    assert torch.equal(out[1], out[5]) and not torch.equal(out[1], out[0])
    assert torch.allclose(out[1], out[0], rtol=1e-5, atol=1e-6)
