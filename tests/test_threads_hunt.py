"""Session 37 concurrency hunt: geoops ops called from several Python threads at once.

Serving and data-loading code (a ThreadPoolExecutor of requests, a threaded DataLoader, a model server) calls the ops
from many threads.  What must hold:

* results: each family's ops from 8 threads at once, with different shapes / dtypes / degrees / lengths per thread
  (the lazily built tables: Gaunt's route constants, ...) give the same bits as the same calls made serially;
* the GIL: the compiled kernels run with it released (as torch's own ops do), so two threads' kernels overlap;
* the backend switch is process-wide (README: ``set_backend`` forces "every op"): a switch from one thread while
  others compute changes which kernels later calls run, never crashes nor gives a wrong answer (a forward under one
  backend and its backward under another give the same gradients); ``use_backend`` blocks opened and closed
  interleaved in several threads leave the backend as it was before the first opened;
* ``torch.inference_mode()`` in one thread and grad mode in another: the shared caches never hand an inference
  tensor to a call that records a graph.
"""
from __future__ import annotations

import sys
import threading
import time

import pytest
import torch

import geoops
from geoops import _backend
from geoops import attention as ga
from geoops import gaunt as gg
from geoops import poincare as gp
from geoops import ssm as gs
from geoops import stereographic as st

NTHREADS = 8


def _mk(seed, *shape, dtype=torch.float64, scale=1.0, complex_=False):
    g = torch.Generator().manual_seed(seed)
    if complex_:
        return torch.complex(torch.randn(*shape, generator=g, dtype=dtype),
                             torch.randn(*shape, generator=g, dtype=dtype)) * scale
    return torch.randn(*shape, generator=g, dtype=dtype) * scale


def _outs_and_grads(outs, ins):
    """The outputs and the gradients of a fixed weighting of them; under torch.inference_mode() (thread-local) the
    outputs only."""
    if torch.is_inference_mode_enabled():
        return [o.clone() for o in outs]
    w = [torch.linspace(0.5, 1.5, o.numel(), dtype=torch.float64).reshape(o.shape) for o in outs]
    loss = sum((o.double() * wi).sum() for o, wi in zip(outs, w))
    return [o.detach().clone() for o in outs] + list(torch.autograd.grad(loss, ins, allow_unused=True))


# one small case per (family, i): i picks the dtype, the shapes, the degrees / lengths, so 8 threads fill the caches
# with different keys at once
def _stereo(i):
    dt = (torch.float32, torch.float64)[i % 2]
    D, N = 3 + 5 * i, 7 + 5 * i
    x = _mk(i, N, D, dtype=dt, scale=0.3 / D ** 0.5).requires_grad_()
    y = _mk(100 + i, N, D, dtype=dt, scale=0.3 / D ** 0.5).requires_grad_()
    k = torch.tensor(-0.5 - 0.1 * i, dtype=dt, requires_grad=True)
    outs = [st.mobius_add(x, y, k=k), st.expmap0(y, k=k), st.dist(x, y, k=k), st.cdist(x, y, k=k)]
    kd, ki = st.knn(x.detach(), y.detach(), 3, k=k.detach())
    return _outs_and_grads(outs, [x, y, k]) + [kd, ki]


def _poincare(i):
    dt = (torch.float32, torch.float64)[i % 2]
    D, N, M = 4 + 3 * i, 6 + 3 * i, 5 + 2 * i
    x = _mk(i, N, D, dtype=dt, scale=0.2 / D ** 0.5).requires_grad_()
    z = _mk(200 + i, D, M, dtype=dt, scale=0.5).requires_grad_()
    b = _mk(300 + i, M, dtype=dt, scale=0.1).requires_grad_()
    c = torch.tensor(0.7 + 0.1 * i, dtype=dt)
    y = gp.poincare_fc(x, z, b, c=c)
    r = gp.poincare_relu(y, c=c)
    bn = gp.batch_norm(r, _mk(400 + i, M, dtype=dt, scale=0.05), torch.tensor(1.0, dtype=dt), c=c)
    return _outs_and_grads([y, r, bn, gp.mlr(x, z, b, c=c)], [x, z, b])


_GAUNT_ROUTES = ("auto", "grid", "direct", "fft", "grid_gemm", "auto", "grid", "direct")


def _gaunt(i):
    dt = (torch.float32, torch.float64)[i % 2]
    L1, L2, route = 1 + i % 4, 1 + (i * 3) % 5, _GAUNT_ROUTES[i]
    x1 = _mk(i, 3, (L1 + 1) ** 2, dtype=dt).requires_grad_()
    x2 = _mk(50 + i, 3, (L2 + 1) ** 2, dtype=dt).requires_grad_()
    w = _mk(60 + i, L1 + 1, dtype=dt).requires_grad_()
    o1 = gg.gaunt_tensor_product(x1, x2, weight1=w, route=route)
    o2 = gg.gaunt_power(x1, 3, lmax_out=L1 + 2, route="grid" if route == "direct" else route)
    return _outs_and_grads([o1, o2], [x1, x2, w])


def _attention(i):
    dt = (torch.float32, torch.float64)[i % 2]
    N, D = 3 + 2 * i, 4 + 2 * (i % 3)
    q = _mk(i, 1, 2, N, D, dtype=dt).requires_grad_()
    k1, v1 = (_mk(s + i, 1, 2, N + 1, D, dtype=dt).requires_grad_() for s in (10, 30))
    k2, v2 = (_mk(s + i, 1, 2, N + 2, D, dtype=dt).requires_grad_() for s in (20, 40))
    return _outs_and_grads([ga.triple_attention(q, k1, k2, v1, v2, causal=bool(i % 2))], [q, k1, k2, v1, v2])


_SSM_LENGTHS = (16, 100, 257, 600, 64, 513, 33, 1024)


def _ssm(i):
    dt = (torch.float32, torch.float64)[i % 2]
    L, H, N = _SSM_LENGTHS[i], 2 + i % 3, 4
    log_dt = (_mk(i, H, dtype=dt) * 0.1 - 3).requires_grad_()
    A = torch.complex(-0.5 * torch.ones(H, N, dtype=dt),
                      torch.arange(N, dtype=dt).expand(H, N) * 3.14).requires_grad_()
    B = _mk(70 + i, H, N, dtype=dt, complex_=True).requires_grad_()
    C = _mk(80 + i, H, N, dtype=dt, complex_=True).requires_grad_()
    u = _mk(90 + i, 2, H, L, dtype=dt).requires_grad_()
    D = _mk(95 + i, H, dtype=dt).requires_grad_()
    K = gs.s4d_kernel(log_dt, A, B, C, L)
    return _outs_and_grads([K, gs.fftconv(u, K, D), gs.ssm_conv(u, log_dt, A, B, C, D)], [log_dt, A, B, C, u, D])


FAMILIES = {"stereographic": _stereo, "poincare": _poincare, "gaunt": _gaunt, "attention": _attention, "ssm": _ssm}


def _clear_caches():
    """Empty the lazily built tables that the calls above fill (Gaunt's per-(degrees, dtype) constants)."""
    from geoops._ops import gaunt as og
    from geoops.reference import gaunt as rg

    for mod in (og, rg):
        for v in vars(mod).values():
            if callable(v) and callable(getattr(v, "cache_clear", None)):
                v.cache_clear()


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(torch.nan_to_num(a), torch.nan_to_num(b)) \
        if (a.is_floating_point() or a.is_complex()) else torch.equal(a, b)


def _in_threads(fn, n=NTHREADS):
    """fn(j) in n threads started together; their results (an exception is re-raised here)."""
    barrier = threading.Barrier(n)
    out, errs = [None] * n, []

    def run(j):
        try:
            barrier.wait()
            out[j] = fn(j)
        except BaseException as e:  # noqa: BLE001 (reported in the main thread)
            errs.append(e)

    ts = [threading.Thread(target=run, args=(j,)) for j in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errs:
        raise errs[0]
    return out


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_eight_threads_same_bits_as_serial(family):
    """Thread j runs case j, then case (j + 1) % 8 (so two threads fill each cache key at once), forward and
    backward; every result equals the serial call's bits."""
    fn = FAMILIES[family]
    _clear_caches()
    got = _in_threads(lambda j: (fn(j), fn((j + 1) % NTHREADS)))
    for j, (a, b) in enumerate(got):
        for i, res in ((j, a), ((j + 1) % NTHREADS, b)):
            ref = fn(i)
            for n, (x, y) in enumerate(zip(res, ref)):
                assert _same(x, y), f"{family} case {i} (thread {j}) output {n} differs from the serial call"


def test_inference_mode_thread_and_grad_thread():
    """Half the threads under torch.inference_mode() (forward only), half in grad mode (forward and backward),
    caches empty at the start: no inference tensor reaches a graph, and the grad threads' results equal the serial
    ones."""
    _clear_caches()
    fams = sorted(FAMILIES)

    def run(j):
        if j % 2:
            with torch.inference_mode():
                return {f: FAMILIES[f](j) for f in fams}
        return {f: FAMILIES[f](j) for f in fams}

    got = _in_threads(run)
    for j in range(NTHREADS):
        for f in fams:
            if j % 2:
                with torch.inference_mode():
                    ref = FAMILIES[f](j)
            else:
                ref = FAMILIES[f](j)
            for n, (x, y) in enumerate(zip(got[j][f], ref)):
                assert _same(x, y), f"{f} case {j} output {n}"


# ---------------------------------------------------------------- the backend switch
def test_backend_switch_from_another_thread():
    """set_backend is process-wide: one thread flips it between cpp and reference (and set_checks on and off) while
    others compute; nothing
    raises, and every result (whichever backend ran its forward and its backward) matches the serial cpp one."""
    fams = ("stereographic", "poincare", "ssm")
    expected = {(f, i): FAMILIES[f](i) for f in fams for i in range(3)}
    stop = threading.Event()
    old, old_checks = geoops.get_backend(), geoops.checks_enabled()

    def work(j):
        if j == 0:
            n = 0
            while not stop.is_set() and n < 2000:
                geoops.set_backend(("reference", "cpp", "auto")[n % 3])
                geoops.set_checks(n % 2 == 0)  # (the debug checks: valid inputs pass them, same results)
                n += 1
                time.sleep(0.0005)
            return None
        try:
            return [(f, i, FAMILIES[f](i)) for _ in range(2) for f in fams for i in range(3) if (i + j) % 2 or f == "ssm"]
        finally:
            if j == 1:
                stop.set()

    try:
        got = _in_threads(work, 4)
    finally:
        stop.set()
        geoops.set_backend(old)
        geoops.set_checks(old_checks)
    for res in got[1:]:
        for f, i, outs in res:
            for n, (x, y) in enumerate(zip(outs, expected[(f, i)])):
                if x.is_floating_point() or x.is_complex():
                    tol = 2e-4 if x.dtype in (torch.float32, torch.complex64) else 1e-9
                    torch.testing.assert_close(x, y, rtol=tol, atol=tol, msg=f"{f} case {i} output {n}")
                else:
                    assert torch.equal(x, y), f"{f} case {i} output {n}"


def test_use_backend_blocks_interleaved_in_two_threads_restore_the_backend():
    """Thread A enters use_backend("reference"), then thread B enters use_backend("cpp"), then A leaves, then B.
    The switch is process-wide, so in between B's choice is in force for both; once both blocks are closed the
    backend must be the one before A's (was: A's "reference", restored by B's exit, stuck for the whole process)."""
    old = geoops.get_backend()
    geoops.set_backend("auto")
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with geoops.use_backend("reference"):
            a_in.set()
            b_in.wait(10)
            seen["a_after_b"] = geoops.get_backend()
        a_out.set()

    def b():
        a_in.wait(10)
        with geoops.use_backend("cpp"):
            b_in.set()
            a_out.wait(10)
            seen["b_after_a"] = geoops.get_backend()

    try:
        ts = [threading.Thread(target=a), threading.Thread(target=b)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert seen == {"a_after_b": "cpp", "b_after_a": "cpp"}
        assert geoops.get_backend() == "auto"
    finally:
        geoops.set_backend(old)


def test_use_backend_nested_and_set_backend_inside():
    """The single-thread behaviour stays: nested blocks restore in order; a set_backend inside a block lasts until
    the block closes (the block restores what was in force when it opened)."""
    old = geoops.get_backend()
    try:
        geoops.set_backend("auto")
        with geoops.use_backend("cpp"):
            with geoops.use_backend("reference"):
                assert geoops.get_backend() == "reference"
            assert geoops.get_backend() == "cpp"
            geoops.set_backend("reference")
            assert geoops.get_backend() == "reference"
        assert geoops.get_backend() == "auto"
        with pytest.raises(ValueError, match="backend must be one of"):
            with geoops.use_backend("nope"):
                pass
        assert geoops.get_backend() == "auto"
    finally:
        geoops.set_backend(old)


# ---------------------------------------------------------------- the GIL
def _gil_free_during(kernel: str, call) -> bool:
    """Whether another Python thread runs while geoops._C.<kernel> runs inside `call()`.

    The main thread wraps the kernel: it sets an event just before the C++ call and reads the clock just after; a
    probe thread waiting on the event reads the clock as soon as it gets the GIL.  With a switch interval of 2 s the
    main thread never hands the GIL over between the two points on its own, so the probe's time comes before the
    main thread's only if the kernel released the GIL."""
    C = _backend.compiled()
    orig = getattr(C, kernel)
    go, t = threading.Event(), {}

    def wrapped(*args):
        go.set()
        try:
            return orig(*args)
        finally:
            t.setdefault("end", time.perf_counter())

    def probe():
        go.wait(20)
        t["probe"] = time.perf_counter()

    th = threading.Thread(target=probe)
    th.start()
    old = sys.getswitchinterval()
    setattr(C, kernel, wrapped)
    try:
        time.sleep(0.05)  # the probe is waiting on the event
        sys.setswitchinterval(2.0)
        call()
    finally:
        sys.setswitchinterval(old)
        setattr(C, kernel, orig)
        go.set()
        th.join()
    assert "end" in t, f"geoops._C.{kernel} was not called"
    return t["probe"] < t["end"]


def _gil_case(kernel, n=1):
    """A call of a public op whose C++ kernel `kernel` runs for ~10-20 ms times `n` here (inputs made here, outside
    the probe): the batch grows with `n`, so a retry on a loaded machine gives the probe a longer window."""
    f64 = dict(dtype=torch.float64)
    k, c = torch.tensor(-1.0, **f64), torch.tensor(1.0, **f64)
    if kernel == "stereo_fwd_cpu":
        x, y = _mk(1, 180000 * n, 32, scale=0.02), _mk(2, 180000 * n, 32, scale=0.02)
        return lambda: st.mobius_add(x, y, k=k)
    if kernel == "cdist_fwd_cpu":
        x, y = _mk(1, 1500 * n, 32, scale=0.02), _mk(2, 1500, 32, scale=0.02)
        return lambda: st.cdist(x, y, k=k)
    if kernel == "poincare_fc_fwd_cpu":
        x, z = _mk(1, 20000 * n, 32, scale=0.02), _mk(3, 32, 64)
        return lambda: gp.poincare_fc(x, z, c=c)
    if kernel == "gaunt_direct_fwd_cpu":
        x1, x2 = _mk(4, 80000 * n, 16), _mk(5, 80000 * n, 16)
        return lambda: gg.gaunt_tensor_product(x1, x2, route="direct")
    if kernel == "triple_attention_fwd_cpu":
        qkv = [_mk(6 + s, 40 * n, 1, 48, 16) for s in range(5)]
        return lambda: ga.triple_attention(*qkv)
    if kernel == "fftconv_fwd_cpu":
        u, K = _mk(7, 16 * n, 32, 4096), _mk(8, 32, 4096)
        return lambda: gs.fftconv(u, K)
    raise KeyError(kernel)


_GIL_KERNELS = ("stereo_fwd_cpu", "cdist_fwd_cpu", "poincare_fc_fwd_cpu", "gaunt_direct_fwd_cpu",
                "triple_attention_fwd_cpu", "fftconv_fwd_cpu")


@pytest.mark.parametrize("kernel", _GIL_KERNELS)
def test_kernels_release_the_gil(kernel):
    """A compiled kernel runs without the GIL (pybind11 call_guard<gil_scoped_release>): was held, so threads
    calling geoops ops ran one after another (2 threads x 1 OpenMP thread: 1.6x the serial time, torch.cdist 0.95x).
    A probe that fails to get in on five tries is a held GIL: a released one lets it in on the first, unless the
    machine is too loaded to wake the probe within the call, so each retry runs a longer call (1x .. 5x the batch;
    the 5 ms calls of session 49 missed all five under CI's load).  A held GIL cannot pass however long the call:
    the wrapper reads the clock before it hands the GIL back."""
    with torch.no_grad():
        assert any(_gil_free_during(kernel, _gil_case(kernel, n)) for n in range(1, 6)), \
            f"geoops._C.{kernel} holds the GIL while it runs"


# ---------------------------------------------------------------- geoopt / HypLL patch scopes
def _interleave(scope, probe):
    """Thread A opens scope(), then B opens scope(), A closes, then B reads probe() inside its block; returns
    (B's reading, probe() after both closed)."""
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with scope():
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def b():
        a_in.wait(10)
        with scope():
            b_in.set()
            a_out.wait(10)
            seen["b"] = probe()

    ts = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return seen.get("b"), probe()


@pytest.mark.parametrize("peer", ["geoopt", "hypll"])
def test_patch_blocks_interleaved_in_two_threads(peer):
    """patched_geoopt() (patched_hypll()) in two threads, A's block closing first: B's block must keep the patch
    until it closes (was: A's exit unpatched the peer under B's open block), and the peer is unpatched once both
    are closed."""
    pytest.importorskip(peer)
    from geoops import compat

    scope, is_on, off = {"geoopt": (compat.patched_geoopt, compat.is_patched, compat.unpatch_geoopt),
                         "hypll": (compat.patched_hypll, compat.is_hypll_patched, compat.unpatch_hypll)}[peer]
    assert not is_on()
    try:
        assert _interleave(scope, is_on) == (True, False)
    finally:
        off()


def test_patched_geoopt_nested_in_one_thread():
    pytest.importorskip("geoopt")
    from geoops import compat

    try:
        with compat.patched_geoopt():
            with compat.patched_geoopt():
                assert compat.is_patched()
            assert compat.is_patched()
        assert not compat.is_patched()
        compat.patch_geoopt()
        with compat.patched_geoopt():
            pass
        assert compat.is_patched()  # patched before the block: the block leaves it so
    finally:
        compat.unpatch_geoopt()


def test_reference_gaunt_tables_built_under_inference_mode_serve_a_grad_thread():
    """geoops.reference.gaunt's cached tables (Gaunt coefficients, grid harmonics, Fourier matrices): first built by
    a thread under torch.inference_mode() (a serving thread), then read by a training thread.  Were inference
    tensors, so the training thread's reference product raised "Inference tensors cannot be saved for backward"
    for the rest of the process; now built as normal tensors whatever the caller's mode."""
    from geoops.reference import gaunt as rg

    _clear_caches()
    x = _mk(1, 2, 9)

    def serve():
        with torch.inference_mode():
            rg.gaunt_tensor_product(x, x)
            rg.gaunt_power(x, 3)
            rg.fourier_matrix(2), rg.fourier_projection(4, 2), rg.separable_grid_tables((2, 2), 4)

    t = threading.Thread(target=serve)
    t.start()
    t.join()
    xr = x.clone().requires_grad_()
    (rg.gaunt_tensor_product(xr, xr).sum() + rg.gaunt_power(xr, 3).sum()).backward()
    for f, args in ((rg.gaunt_coefficients, (2, 2, 4)), (rg.grid_sh, (2, 8)), (rg.fourier_matrix, (2,)),
                    (rg.fourier_projection, (4, 2))):
        assert not f(*args).is_inference(), f.__name__
    want = _mk(1, 2, 9).requires_grad_()
    _clear_caches()
    (rg.gaunt_tensor_product(want, want).sum() + rg.gaunt_power(want, 3).sum()).backward()
    assert torch.equal(xr.grad, want.grad)


def test_every_kernel_binding_releases_the_gil():
    """Every kernel bound in csrc/bind/*.cpp (an ``m.def`` of a ``geoops::<ns>::`` function) carries GEOOPS_NOGIL, so
    a kernel added later cannot silently hold the GIL (the probes above run one kernel per family)."""
    import pathlib
    import re

    bind = pathlib.Path(__file__).resolve().parent.parent / "csrc" / "bind"
    if not bind.is_dir():
        pytest.skip("no source checkout")
    defs = re.findall(r'm\.def\(\s*"(\w+)",\s*&geoops::\w+::\w+,([^;]*?)\);',
                      " ".join(p.read_text() for p in sorted(bind.glob("*.cpp"))), flags=re.S)
    assert len(defs) >= 60
    held = [name for name, rest in defs if "GEOOPS_NOGIL" not in rest]
    assert not held, f"bound without GEOOPS_NOGIL: {held}"
