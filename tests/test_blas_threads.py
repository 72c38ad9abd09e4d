"""BLAS calls inside a kernel's own threads run on one MKL thread (session 44, helper probe44).

Gaunt's grid_gemm (a GEMM per row tile), ssm_conv's Vandermonde GEMMs (per channel) and triple attention's tile
GEMMs call MKL from inside their own parallel regions.  A team of one (one row tile, a region under its size
threshold, a lone attention worker) is no active OpenMP region, so MKL gave each of those small GEMMs its own team
of torch.get_num_threads() threads: a wake-up per call that, on a busy machine, waits for descheduled threads (a
Gaunt gradcheck of three rows took 209 s of wall at load 15 instead of 0.4 s).  MKL's verbose mode reports the
team size of every call (NThr:n): each GEMM of these kernels must report one thread.
"""
import re

import pytest
import torch

import geoops.attention as ga
import geoops.gaunt as gg
import geoops.ssm as gs
from geoops.stereographic import cdist

pytestmark = pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="MKL's verbose mode reports teams")


@pytest.fixture
def two_threads():
    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(prev)


def _gemm_teams(capfd, fn):
    fn()  # warm: one-time set-up (tables, plans) out of the record
    capfd.readouterr()
    with torch.backends.mkl.verbose(torch.backends.mkl.VERBOSE_ON):
        fn()
    out = capfd.readouterr().out
    # the calls that compute (not SGEMM_PACK_GET_SIZE, a size query that reports the global team)
    calls = [m for m in (_RECORD.match(ln) for ln in out.splitlines()) if m]
    if not calls:
        pytest.skip("this MKL prints no verbose records")
    return [(m.group(1), int(m.group(2))) for m in calls]


_RECORD = re.compile(r"MKL_VERBOSE ([SD]GEMM(?:_PACK|_COMPUTE)?)\(.*NThr:(\d+)")


def _gaunt(dtype):
    def run():
        x1 = torch.randn(3, 4, dtype=dtype, requires_grad=True)
        x2 = torch.randn(3, 9, dtype=dtype, requires_grad=True)
        gg.gaunt_tensor_product(x1, x2, route="grid_gemm").sum().backward()
        gg.gaunt_power(x1.detach(), 3, 2, route="grid_gemm")
    return run


def _ssm_conv(dtype):
    def run():
        cdt = torch.complex128 if dtype == torch.float64 else torch.complex64
        H, N, L = 2, 4, 16
        u = torch.randn(1, H, L, dtype=dtype, requires_grad=True)
        log_dt = torch.full((H,), -2.0, dtype=dtype)
        A = torch.complex(-0.5 * torch.ones(H, N, dtype=dtype), torch.arange(N, dtype=dtype).expand(H, N))
        B = torch.ones(H, N, dtype=cdt)
        C = torch.randn(H, N, dtype=cdt, requires_grad=True)
        gs.ssm_conv(u, log_dt, A, B, C).sum().backward()
    return run


def _attention(dtype):
    def run():
        q, k1, k2, v1, v2 = (torch.randn(1, 1, 5, 8, dtype=dtype, requires_grad=True) for _ in range(5))
        ga.triple_attention(q, k1, k2, v1, v2).sum().backward()
        ga.triple_attention(q, k1, k2, v1, v2, window=2).sum().backward()
    return run


def _cdist(dtype):  # the shared guard's older users (stereographic's row blocks): still one thread
    def run():
        x = (0.3 * torch.randn(1, 7, 5, dtype=dtype)).requires_grad_()
        y = (0.3 * torch.randn(1, 6, 5, dtype=dtype)).requires_grad_()
        cdist(x, y, k=-1.0).sum().backward()
    return run


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", [_gaunt, _ssm_conv, _attention, _cdist], ids=["gaunt", "ssm_conv", "attention", "cdist"])
def test_small_gemms_inside_kernels_run_on_one_mkl_thread(capfd, two_threads, case, dtype):
    torch.manual_seed(0)
    teams = _gemm_teams(capfd, case(dtype))
    assert all(n == 1 for _, n in teams), f"MKL teams of the kernel's GEMMs: {teams}"


def _mkl_set_num_threads_local():
    import ctypes
    import os
    lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"),
                      mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    return getattr(lib, "MKL_Set_Num_Threads_Local", None)


@pytest.mark.parametrize("case", [_gaunt, _ssm_conv, _attention, _cdist], ids=["gaunt", "ssm_conv", "attention", "cdist"])
def test_user_gemm_after_kernels_keeps_its_team(capfd, two_threads, case, request):
    """Session 45 (review44): the guard restores the calling thread's MKL setting (the kernels' lone workers and
    teams of one run on the caller's thread): the user's own GEMM afterwards gets MKL's team of two again, and a
    thread-local setting of the user's own (3) survives the kernels too."""
    torch.manual_seed(0)
    a = torch.randn(384, 384)
    case(torch.float32)()
    teams = _gemm_teams(capfd, lambda: torch.mm(a, a))
    assert teams and all(n == 2 for _, n in teams), teams
    set_local = _mkl_set_num_threads_local()
    if set_local is None:
        return
    prev = set_local(3)
    try:
        case(torch.float32)()
        teams = _gemm_teams(capfd, lambda: torch.mm(a, a))
    finally:
        set_local(prev)
    assert teams and all(n == 3 for _, n in teams), teams
