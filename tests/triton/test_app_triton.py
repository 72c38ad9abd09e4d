"""Session 36 application programs on the Triton path (helper "tritonapp"): small versions of the three CPU
application trials (tests/test_gaunt_app.py: an interatomic potential trained on energies and forces;
tests/test_seq_app.py: an S4D + triple attention sequence model; tests/test_hyp_app.py: HGCN, Poincaré layers,
a HypLL CNN) run on the triton backend (what CUDA users get; here the Triton interpreter on CPU tensors) and
compared with the C++ backend or the eager reference / twin: losses, gradients, optimiser steps, forces (double
backward), torch.compile.  Tiny shapes: the interpreter is slow."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import math  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import geoops  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # the CPU application trials' helpers

F64 = torch.float64


def _use(name):
    return geoops.use_backend(name)


@pytest.fixture(autouse=True)
def triton_launches(monkeypatch):
    """Every program here must reach the Triton kernels (names of the kernels launched; checked at teardown), not
    only the torch routes some ops take on the triton backend."""
    import triton

    launched = []
    classes = [triton.runtime.jit.JITFunction]
    try:
        from triton.runtime.interpreter import InterpretedFunction
        classes.append(InterpretedFunction)
    except ImportError:  # pragma: no cover
        pass
    for c in classes:
        def run(self, *a, _orig=c.run, **kw):
            launched.append(getattr(self, "__name__", None) or getattr(getattr(self, "fn", None), "__name__", "?"))
            with torch.profiler.record_function("triton_launch"):  # (the interpreter's own copies are inside)
                return _orig(self, *a, **kw)
        monkeypatch.setattr(c, "run", run)
    yield launched
    assert launched, "no Triton kernel ran"


# ================================================================ Gaunt: an interatomic potential
@pytest.fixture(scope="module")
def gapp():
    pytest.importorskip("e3nn")
    import test_gaunt_app as m
    return m


G_SIZES = (4, 3)


def _gmake(gapp, route, dtype=F64):
    return gapp.make(route, dtype=dtype, C=2, L=2)


@pytest.mark.parametrize("route", ["grid", "direct", "auto"])
def test_gaunt_potential_energy_force_gradients_match_cpp(gapp, route):
    """loss = energies + forces (autograd.grad(create_graph=True)), backward: double backward through every Gaunt
    op (binary with a channel broadcast, power, 3-factor product, the nn module) on Triton = C++ in float64.  (The
    fft route and the products of 3+ factors run the torch routes on this backend, as documented.)"""
    mol = gapp.molecules(G_SIZES)
    Er, Fr = gapp.targets(mol)
    l, g = gapp.grads(_gmake(gapp, route), mol, Er, Fr)
    with _use("cpp"):
        l0, g0 = gapp.grads(_gmake(gapp, route), mol, Er, Fr)
    assert all(g[n].abs().max() > 0 for n in g)
    assert abs(l.item() - l0.item()) <= 1e-12 * abs(l0.item())
    assert gapp._rel(g, g0) < 1e-10


def test_gaunt_potential_fp32_within_the_low_precision_rule(gapp):
    mol = gapp.molecules(G_SIZES)
    Er, Fr = gapp.targets(mol)
    mol32 = tuple(t.float() if torch.is_tensor(t) and t.is_floating_point() else t for t in mol)
    with _use("reference"):
        l64, g64 = gapp.grads(_gmake(gapp, "auto"), mol, Er, Fr)
        lr, gr = gapp.grads(_gmake(gapp, "auto", torch.float32), mol32, Er.float(), Fr.float())
    l32, g32 = gapp.grads(_gmake(gapp, "auto", torch.float32), mol32, Er.float(), Fr.float())
    assert g32["w_sh1"].dtype == torch.float32
    assert abs(l32.item() - l64.item()) <= 2 * abs(lr.item() - l64.item()) + 1e-6 * abs(l64.item())
    assert gapp._rel(g32, g64) <= 2 * gapp._rel(gr, g64) + 1e-5


def test_gaunt_potential_adam_steps_follow_cpp(gapp):
    mol = gapp.molecules(G_SIZES)
    Er, Fr = gapp.targets(mol)
    runs = []
    for be in ("triton", "cpp"):
        with _use(be):
            m = _gmake(gapp, "auto")
            opt = torch.optim.Adam(m.parameters(), lr=1e-2)
            losses = []
            for _ in range(2):
                opt.zero_grad()
                loss = gapp.loss_fn(m, mol, Er, Fr)
                loss.backward()
                opt.step()
                losses.append(loss.item())
            runs.append((m, losses))
    (m, l), (m0, l0) = runs
    torch.testing.assert_close(torch.tensor(l), torch.tensor(l0), rtol=1e-11, atol=0)
    for (n, p), p0 in zip(m.named_parameters(), m0.parameters()):
        torch.testing.assert_close(p, p0, rtol=0, atol=1e-10, msg=n)


def test_gaunt_potential_rotation_equivariance(gapp):
    o3 = gapp.o3
    mol = gapp.molecules(G_SIZES)
    m = _gmake(gapp, "auto")
    E, F = gapp.energy_forces(m, mol)
    with gapp.f64_default():
        a, b, c = torch.rand(3, generator=torch.Generator().manual_seed(3), dtype=F64) * 2 * math.pi
        Rm = o3.angles_to_matrix(a, b, c)
    E2, F2 = gapp.energy_forces(m, (mol[0] @ Rm.T,) + mol[1:])
    torch.testing.assert_close(E2, E, rtol=0, atol=1e-12)
    torch.testing.assert_close(F2, F @ Rm.T, rtol=0, atol=1e-12)


def test_gaunt_potential_vmap_jacrev_forces_and_hessian(gapp):
    """torch.func over the Triton ops: vmap over conformers (energies, forces, per-sample parameter gradients),
    jacrev forces and a Hessian row, against autograd through the force graph."""
    m = _gmake(gapp, "auto")
    mol = gapp.molecules((5,))
    g = torch.Generator().manual_seed(4)
    P = mol[0][None] + 0.05 * torch.randn((3,) + mol[0].shape, generator=g, dtype=F64)
    rest = mol[1:]
    gapp.vmap_over_conformers_matches_the_loop(m, P, rest)
    pos = mol[0]
    H = torch.func.jacrev(torch.func.jacrev(lambda p: m(p, *rest).sum()))(pos)
    p = pos.clone().requires_grad_()
    (gr,) = torch.autograd.grad(m(p, *rest).sum(), p, create_graph=True)
    (h,) = torch.autograd.grad(gr[0, 0], p)
    torch.testing.assert_close(H[0, 0], h, rtol=0, atol=1e-13)


def test_gaunt_potential_autocast_bfloat16_keeps_float32(gapp):
    """Under torch.autocast(bfloat16) the Gaunt ops compute in float32 on Triton too: the products of 3+ factors
    (gaunt_power / gaunt_product: the torch grid route on this backend) ran their GEMMs in bfloat16 (autocast was
    on inside the kernel set, whose torch compositions the eager fast path calls directly), and the force training
    step then failed ("expected m1 and m2 to have the same dtype")."""
    from geoops import gaunt as ga
    x = torch.randn(5, 4, 9, generator=torch.Generator().manual_seed(2))
    want = [ga.gaunt_power(x, 3, 2), ga.gaunt_product([x, x, x], 2), ga.gaunt_tensor_product(x, x, 2)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = [ga.gaunt_power(x, 3, 2), ga.gaunt_product([x, x, x], 2), ga.gaunt_tensor_product(x, x, 2)]
    for a, b in zip(got, want):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    m = _gmake(gapp, "auto", torch.float32)
    mol = tuple(t.float() if torch.is_tensor(t) and t.is_floating_point() else t for t in gapp.molecules(G_SIZES))
    E0, F0 = gapp.energy_forces(m, mol)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        E, F = gapp.energy_forces(m, mol)
    (E.square().sum() + F.square().sum()).backward()
    assert F.dtype == torch.float32 and all(torch.isfinite(p.grad).all() for p in m.parameters())
    assert (F - F0).abs().max() <= 0.02 * F0.abs().max()
    assert (E - E0).abs().max() <= 0.02 * E0.abs().max() + 1e-3


def test_gaunt_potential_compiled_energies_and_forces(gapp):
    """torch.compile of the model on the Triton path (the custom ops stay opaque: the interpreter runs them), two
    batches of different sizes in one dynamic graph; forces by autograd.grad through the compiled graph.  aot_eager
    (the fakes and the autograd of the ops): Inductor's CPU code for the torch parts around them is the CPU trial's
    (minutes here).  Only dynamic=True: the automatic-dynamic recompile (dynamic=None) is dynamo's, over the same
    model code on either backend, and is tests/test_gaunt_app.py's [None] case; here it cost ~75 s of CPU, nearly
    all of it dynamo tracing the model (the gaunt ops' autograd.Function graph-breaks on a repeated input)."""
    torch._dynamo.reset()
    m = gapp.make("auto", C=2, L=1)
    cm = torch.compile(m, dynamic=True, backend="aot_eager")
    for mol in (gapp.molecules((4, 3)), gapp.molecules((3, 5), seed=5)):
        pos = mol[0].clone().requires_grad_()
        E = cm(pos, *mol[1:])
        (F,) = torch.autograd.grad(-E.sum(), pos)
        E0, F0 = gapp.energy_forces(m, mol)
        torch.testing.assert_close(E, E0.detach(), rtol=0, atol=1e-13)
        torch.testing.assert_close(F, F0.detach(), rtol=0, atol=1e-13)


# ================================================================ sequences: S4D + triple attention
@pytest.fixture(scope="module")
def sapp():
    import test_seq_app as m
    return m


S_CFG = dict(d=4, n=4, heads=2, layers=1)


@pytest.mark.parametrize("transposed,causal", [(True, False), (False, True)])
def test_seq_model_train_steps_match_the_eager_twin_fp64(sapp, transposed, causal):
    """An AdamW step (the ``_optim`` hint groups, dropout in train mode) on Triton = the eager twin (reference
    backend) to float64 rounding: loss, every gradient (all nonzero at the first step), the stepped weights; eval
    mode too.  One step (B = 2: the batch index): a second step ran the same programs on the stepped weights, and
    the weights after one step already differ with a wrong hint group (each parameter's lr and weight decay); the
    second step was ~3.5 s of the interpreter stage's CPU per case."""
    m, e = sapp._twins(torch.float64, transposed=transposed, causal=causal, dropout=0.25, **S_CFG)
    batches = [sapp._data(B=2, L=11, seed=0)]
    lm, gm = sapp._train(m, sapp._param_groups(m), batches, "triton")  # (the backward under its backend too)
    le, ge = sapp._train(e, sapp._param_groups(e), batches, "reference")
    assert max(abs(a - b) for a, b in zip(lm, le)) < 1e-12
    assert sapp._max_rel(gm, ge) < 1e-10
    for (k, p), q in zip(m.named_parameters(), e.parameters()):
        assert sapp._rel(p, q) < 1e-12, k
    m.eval(), e.eval()
    tok, lab = sapp._data(B=2, L=9, seed=9)
    assert abs(sapp._loss(m, tok, lab, "triton").item() - sapp._loss(e, tok, lab, "reference").item()) < 1e-12


def test_seq_model_fp32_within_twice_the_eager_error(sapp, tf32_dots):
    """float32 (the tensor-core paths' TF32 operands emulated): loss and gradients within 2x (+ a floor) of the
    float32 eager twin's distance to the float64 run.  One layout (S4D's default, transposed): with
    transposed=False S4D, not the block, transposes its (B, L, H) input, so the kernels get the same strided
    (B, H, L) view and do the same float32 arithmetic; both layouts are checked to float64 rounding above (the
    transposed=False case was ~16 s of the interpreter stage's CPU).  One sequence (B = 1): the kernels do the same
    float32 arithmetic per batch row (no batch-1 route), and the batch index is checked at B = 2 above; L = 24 still
    spans two 16-row tiles of the interpreter's attention blocks (a full and a masked one)."""
    import copy
    m, e = sapp._twins(torch.float32, transposed=True, causal=True, dropout=0.1, **S_CFG)
    m64 = copy.deepcopy(m).double()
    tok, lab = sapp._data(B=1, L=24)
    out = {}
    for name, model, be in (("ours", m, "triton"), ("eager", e, "reference"), ("64", m64, "reference")):
        torch.manual_seed(7)
        loss = sapp._loss(model, tok, lab, be)
        sapp._backward(loss, be)
        out[name] = (loss.item(), sapp._grads(model))
    err = {n: abs(out[n][0] - out["64"][0]) for n in ("ours", "eager")}
    assert err["ours"] <= 2 * err["eager"] + 1e-6
    for k, g64 in out["64"][1].items():
        eo = (out["ours"][1][k].double() - g64).abs().max().item()
        ee = (out["eager"][1][k].double() - g64).abs().max().item()
        assert eo <= 2 * ee + 1e-6 * g64.abs().max().item(), (k, eo, ee)


def test_seq_model_autocast_bfloat16_trains_like_cpp(sapp):
    """Under torch.autocast("cpu", bfloat16) the model trains on Triton with the C++ backend's loss (bf16 rounding
    apart).  One sequence (B = 1): the kernels' bfloat16 paths have no batch-1 route, the batch index is the fp64
    test's (B = 2); B = 2 here was ~4 s of the interpreter stage's CPU."""
    out = []
    for be in ("triton", "cpp"):
        m, _ = sapp._twins(torch.float32, causal=True, **S_CFG)
        tok, lab = sapp._data(B=1, L=16)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = sapp._loss(m, tok, lab, be)
        sapp._backward(loss, be)
        out.append((loss.item(), sapp._grads(m)))
    (l, g), (l0, g0) = out
    assert math.isfinite(l) and abs(l - l0) <= 2e-2 * abs(l0)
    assert sapp._max_rel(g, g0) < 0.1


def test_ssm_ops_autocast_keep_float32():
    """Under torch.autocast(bfloat16) fftconv / ssm_conv of float32 inputs compute in float32 on Triton (the
    kernel module's torch GEMMs and FFTs ran under autocast), values and gradients."""
    import geoops.ssm as gs
    torch.manual_seed(3)
    H, N, L = 2, 4, 19
    log_dt = torch.randn(H).mul(0.3).sub(3).requires_grad_()
    A = torch.complex(-0.5 * torch.ones(H, N), math.pi * torch.arange(N).float().expand(H, N))
    Bm = torch.ones(H, N, dtype=torch.cfloat)
    C = torch.randn(H, N, dtype=torch.cfloat, requires_grad=True)
    D = torch.randn(H, requires_grad=True)
    u = torch.randn(2, H, L, requires_grad=True)
    k = torch.randn(H, L, requires_grad=True)

    def f():
        y = gs.fftconv(u, k, D) + gs.ssm_conv(u, log_dt, A, Bm, C, D)
        return y, torch.autograd.grad(y.square().sum(), (u, k, log_dt, C, D))

    want = f()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = f()
    assert got[0].dtype == torch.float32
    torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-6)
    for a, b in zip(got[1], want[1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_s4d_bfloat16_input_low_precision_rule(sapp, tf32_dots):
    """S4D on a bfloat16 input (the tensor-core convolution of half u on Triton): its error within 2x the eager
    twin's in the same dtype (+ 1e-3, as the CPU trial)."""
    sapp.s4d_bfloat16_input_within_twice_the_eager_error(H=4, B=1)


@pytest.mark.parametrize("dynamic", [True])
def test_seq_model_torch_compile(sapp, dynamic):
    """torch.compile (fullgraph; aot_eager: the custom ops run in the interpreter; Inductor's CPU code for the rest
    is the CPU trial's, minutes here) of the whole model gives the eager loss and gradients at two sequence lengths,
    one of them odd.  Only dynamic=True (one symbolic-L graph for both), as the Gaunt potential's above:
    dynamic=False compiled a static graph at the first length and recompiled at the second into a symbolic-L graph
    like this one; the static graph and the recompile are the compiler's, over the same model code on either backend
    (tests/test_seq_app.py's fullgraph and default cases), and cost ~28 s of the interpreter stage's CPU.  One
    sequence (B = 1): the interpreter's model runs, not the trace, were ~2/3 of this test's CPU; the kernels have no
    batch-1 route, the batch index is the fp64 test's (B = 2), and the fakes' symbolic batch (the same fakes on
    every backend) is the CPU trial's dynamic compile."""
    torch._dynamo.reset()
    m, _ = sapp._twins(torch.float32, causal=True, dropout=0.1, **S_CFG)
    m.eval()
    cm = torch.compile(m, fullgraph=True, dynamic=dynamic, backend="aot_eager")
    for L in (8, 13):
        tok, lab = sapp._data(B=1, L=L)
        m.zero_grad()
        l0 = sapp._loss(m, tok, lab)
        l0.backward()
        g0 = sapp._grads(m)
        m.zero_grad()
        l1 = sapp._loss(cm, tok, lab)
        l1.backward()
        assert abs(l1.item() - l0.item()) < 1e-5
        assert sapp._max_rel(sapp._grads(m), g0) < 1e-4


def _host_copies(fn, numel=None, under=None):
    """aten::copy_ calls of fn() outside the Triton launches (the interpreter copies arguments; a GPU does not):
    those of tensors with `numel` elements made by ``.contiguous()`` (not the dtype casts and FFT paddings of the
    Triton path's torch parts), or those under a profiler frame called `under`."""
    from torch.profiler import profile

    with profile(record_shapes=True) as p:
        fn()
    n = 0
    for ev in p.events():
        if ev.name != "aten::copy_":
            continue
        par, inside, found, chain = ev.cpu_parent, False, under is None, []
        while par is not None:
            inside |= par.name == "triton_launch"
            found |= par.name == under
            chain.append(par.name)
            par = par.cpu_parent
        if inside or not found:
            continue
        if numel is None or (chain[:2] == ["aten::clone", "aten::contiguous"] and ev.input_shapes
                             and ev.input_shapes[0] and math.prod(ev.input_shapes[0]) == numel):
            n += 1
    return n


@pytest.mark.parametrize("op", ["ssm_conv", "fftconv"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_contiguous_input_is_copied_once(sapp, op, dtype):
    """S4D(transposed=False) hands the kernels a transposed (B, H, L) view: one copy of it in forward + backward on
    the Triton path too (float32: the cuFFT path; bfloat16: the tensor-core path), values unchanged."""
    sapp.strided_input_copied_once(op, _host_copies, H=3, L=37, dtype=dtype)


def test_triple_attention_layer_copies_its_strided_inputs_once(sapp):
    """TripleAttention's strided q, k1, k2, v1, v2 views: made contiguous once, in the forward; the backward copies
    only its incoming gradient, on the Triton path too; the reference backend's gradient."""
    sapp.attention_layer_copies_strided_inputs_once(lambda run: _host_copies(run, under="TripleAttentionFnBackward"))


def _count_graphs_over_lengths(dtype, lengths=(16, 23, 40), backend="aot_eager"):
    import geoops.ssm as gs
    from torch._dynamo.utils import counters

    from test_seq_app import ssm_compile_params

    torch._dynamo.reset()
    counters.clear()
    H = 2
    log_dt, A, Bm, C, D = ssm_compile_params(H, 4)

    def f(u, k):
        return (gs.fftconv(u, k, D).float().square().sum()
                + gs.ssm_conv(u, log_dt, A, Bm, C, D).float().square().sum())

    cf = torch.compile(f, dynamic=True, fullgraph=True, backend=backend)
    for L in lengths:
        u = torch.randn(1, H, L).to(dtype).requires_grad_()
        k = torch.randn(H, L).to(dtype).requires_grad_()
        ins = (u, k, log_dt, C, D)
        got = torch.autograd.grad(cf(u, k), ins)
        want = torch.autograd.grad(f(u, k), ins)
        for x, y in zip(got, want):
            assert torch.equal(x, y)
    return counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("dtype,backend", [(torch.float32, "aot_eager"), (torch.bfloat16, "aot_eager"),
                                           (torch.float16, "aot_eager"), (torch.bfloat16, "inductor")])
def test_ssm_compile_dynamic_training_one_graph_over_lengths(dtype, backend):
    """torch.compile(dynamic=True) of fftconv + ssm_conv with gradients on the Triton path: one graph over three
    sequence lengths, the eager gradients (half inputs included: their fakes asked the tensor-core size choice of
    L, which specialised it).  (Inductor once: its CPU code around the opaque ops, ~20 s here.)"""
    assert _count_graphs_over_lengths(dtype, backend=backend) == 1


# ================================================================ hyperbolic: HGCN, Poincaré layers, HypLL CNN
@pytest.fixture(scope="module")
def happ():
    pytest.importorskip("geoopt")
    import test_hyp_app as m
    return m


@pytest.fixture
def unpatched():
    import geoops.compat as compat
    compat.unpatch_geoopt()
    if compat.is_hypll_patched():
        compat.unpatch_hypll()
    yield compat
    compat.unpatch_geoopt()
    if compat.is_hypll_patched():
        compat.unpatch_hypll()


def _train_hgcn(happ, compat, backend, dtype, steps=2):
    geoopt = happ.geoopt
    a, feat, y = happ._graph()
    with compat.patched_geoopt() if backend != "plain" else _nullctx():
        with _use("reference" if backend == "plain" else backend):
            m = happ.HGCN(dtype)
            opt = geoopt.optim.RiemannianAdam(m.parameters(), lr=1e-2)
            losses = []
            for _ in range(steps):
                opt.zero_grad()
                loss = happ._hgcn_loss(m, a, feat, y)
                loss.backward()
                opt.step()
                losses.append(loss.item())
    return losses, m


def _nullctx():
    import contextlib
    return contextlib.nullcontext()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hgcn_patched_on_triton_same_losses_as_plain_geoopt(happ, unpatched, dtype):
    la, ma = _train_hgcn(happ, unpatched, "plain", dtype)
    lb, mb = _train_hgcn(happ, unpatched, "triton", dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-11
    for u, v in zip(la, lb):
        assert abs(u - v) <= tol * abs(u), (la, lb)
    assert abs(ma.man.c.item() - mb.man.c.item()) <= tol
    torch.testing.assert_close(ma.emb.detach(), mb.emb.detach(), atol=10 * tol, rtol=10 * tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_poincare_layers_learnable_curvature_match_reference(happ, dtype):
    """Every geoops.nn Poincaré layer with one learnable ball: values and gradients (the curvature's, from each
    stage) on Triton = the reference backend's (float64 to 1e-9; float32 within 2x of the float32 reference's
    error, + 2e-4 as the CPU trial)."""
    happ.nn_layers_match_reference(dtype, "triton")


def test_hypll_cnn_patched_on_triton_same_outputs_and_gradients(happ, unpatched):
    pytest.importorskip("hypll")
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 0.5
    y64, g64 = happ._hypll_grads(happ._hypll_cnn(torch.float64), x.double(), False)
    y64p, g64p = happ._hypll_grads(happ._hypll_cnn(torch.float64), x.double(), True)
    torch.testing.assert_close(y64p, y64, rtol=1e-11, atol=1e-12)
    for n in g64:
        torch.testing.assert_close(g64p[n], g64[n], rtol=1e-10, atol=1e-11 * g64[n].abs().max().item())
    net = happ._hypll_cnn(torch.float32)
    y32, g32 = happ._hypll_grads(net, x, False)
    y32p, g32p = happ._hypll_grads(net, x, True)
    for n in g64:
        s = g64[n].abs().max()
        err_h, err_g = (g32[n] - g64[n]).abs().max() / s, (g32p[n] - g64[n]).abs().max() / s
        assert err_g <= 2 * err_h + 1e-5, (n, err_g.item(), err_h.item())


def test_hgcn_compiled_forward_backward_patched(happ, unpatched):
    """torch.compile (fullgraph, aot_eager) of the HGCN loss with patched geoopt on the Triton path: the eager loss
    and gradients, the learnable curvature's too."""
    happ.hgcn_compiled_matches_eager(unpatched)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ssm_export_with_a_dynamic_length_half_inputs(dtype):
    """torch.export with a dynamic L of fftconv + ssm_conv (with gradients: the spectra are asked for) on the
    Triton path: bfloat16 inputs specialised L ("your code specialized it to be a constant") where float32 did not;
    the exported program gives the eager outputs at another length."""
    import geoops.ssm as gs
    from torch.export import Dim, export

    torch.manual_seed(14)
    H, N = 2, 4

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.log_dt = torch.nn.Parameter(torch.randn(H).mul(0.3).sub(3))
            self.C = torch.nn.Parameter(torch.randn(H, N, dtype=torch.cfloat))
            self.D = torch.nn.Parameter(torch.randn(H))
            self.k = torch.nn.Parameter(torch.randn(H, 64))
            self.register_buffer("A", torch.complex(-0.5 * torch.ones(H, N),
                                                    math.pi * torch.arange(N).float().expand(H, N)))
            self.register_buffer("Bm", torch.ones(H, N, dtype=torch.cfloat))

        def forward(self, u):
            L = u.shape[-1]
            k = self.k[:, :L].to(u.dtype)
            return gs.fftconv(u, k, self.D) + gs.ssm_conv(u, self.log_dt, self.A, self.Bm, self.C, self.D)

    m = M()
    x, x2 = torch.randn(1, H, 21).to(dtype), torch.randn(1, H, 37).to(dtype)
    ep = export(m, (x,), dynamic_shapes=({2: Dim("L", min=2, max=63)},))
    with torch.no_grad():
        got, want = ep.module()(x2), m(x2)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


# ================================================================ autocast over every family's ops on Triton
def _autocast_cases():
    import test_func_hunt2 as h

    cases = dict(h._AC)
    g = torch.Generator().manual_seed(8)
    x = torch.randn(3, 2, 9, generator=g)
    from geoops import gaunt as gg
    cases["gaunt_power"] = (lambda a: gg.gaunt_power(a, 3, 2), (x,))
    cases["gaunt_product"] = (lambda a, b: gg.gaunt_product([a, b, a], 2), (x, x.flip(0)))
    cases["gaunt_fft"] = (lambda a, b: gg.gaunt_tensor_product(a, b, 2, route="fft"), (x, x.flip(0)))
    return cases, h._run_modes


@pytest.mark.parametrize("mode", ["eager", "vmap"])
@pytest.mark.parametrize("name", ["mobius_matvec", "mobius_blockdiag_matvec", "mobius_add", "cdist", "poincare_fc",
                                  "mlr", "mobius_linear", "poincare_conv2d", "poincare_conv2d_wide", "batch_norm",
                                  "batch_norm2d", "avg_pool2d", "ssm_conv", "gaunt", "attention", "gaunt_power",
                                  "gaunt_product", "gaunt_fft"])
def test_autocast_leaves_the_triton_ops_in_their_inputs_dtype(name, mode, triton_launches):
    """tests/test_func_hunt2.py's autocast trial on the triton backend: float32 inputs under
    torch.autocast("cpu", bfloat16) give the float32 result.  The Triton kernel modules' torch compositions (the
    Gaunt torch routes of 3+ factors and fft) ran their GEMMs in bfloat16."""
    triton_launches.append("(not checked)")  # (some paths run torch routes on this backend: vmap, fft, mlr)
    cases, run_modes = _autocast_cases()
    f, args = cases[name]
    if mode == "vmap" and name in ("batch_norm", "batch_norm2d", "avg_pool2d", "ssm_conv", "attention"):
        pytest.skip("batch-reducing / 4-D ops: vmap of the public op is tested elsewhere")
    want = run_modes(f, args, mode)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = run_modes(f, args, mode)
    assert got.dtype == want.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["mlr", "poincare_fc", "gaunt_power", "gaunt_fft"])
def test_autocast_under_torch_compile_on_triton(name, triton_launches):
    """The same under torch.compile(fullgraph=True, aot_eager): the ops' implementations run with autocast off."""
    triton_launches.append("(not checked)")
    cases, _ = _autocast_cases()
    f, args = cases[name]
    want = f(*args)
    torch._dynamo.reset()
    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = cf(*args)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_mammals_embedding_patched_on_triton(happ, unpatched, opt_name):
    """Poincaré embeddings of WordNet mammals (patched geoopt's dist + Riemannian SGD / Adam steps) on Triton = plain
    geoopt; reconstruction_metrics and knn of the result on Triton = the brute-force oracle's."""
    n, edges, batches = happ._mammals()
    steps = 6
    a = happ._train_mammals(False, opt_name, n, batches, steps)
    b = happ._train_mammals(True, opt_name, n, batches, steps)
    torch.testing.assert_close(b, a, atol=2e-6, rtol=1e-5)
    assert a.norm(dim=-1).max() > 0.01  # it moved
    import geoops.stereographic as gs
    x = b[:60] * (0.8 / b[:60].norm(dim=-1).max())  # (spread out in the ball: after a few steps it is near 0)
    sub = edges[(edges < 60).all(1)]
    rb, mb = gs.reconstruction_metrics(x, sub, k=-1.0)
    rr, mr = happ._brute_map(x, sub)
    assert abs(rb - rr) <= 1e-3 * rr and abs(mb - mr) <= 1e-3, ((rb, mb), (rr, mr))
    dk, ik = gs.knn(x, x, 4, k=-1.0)
    dfull = happ.geoopt.PoincareBall(c=1.0).dist(x.double()[:, None, :], x.double()[None, :, :])
    torch.testing.assert_close(dk.double(), dfull.topk(4, largest=False).values, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(dk.double(), dfull.gather(1, ik), atol=1e-4, rtol=1e-4)


# the CPU trial's curvature programs, run as they are on the triton backend (the conftest forces it)
@pytest.mark.parametrize("form", ["float", "0-d", "(1,)", "parameter", "float32 parameter"])
@pytest.mark.parametrize("c", [1.0, 1e-3, 1e-7])
def test_curvature_forms_and_small_c_float64(happ, form, c):
    """c as a float, 0-d / (1,) tensor, float64 / float32 Parameter, down to 1e-7: the Poincaré layers, midpoint
    and cdist on Triton equal the float64 reference composition (values 1e-9, dc 1e-6)."""
    happ.test_curvature_forms_and_small_c_float64(form, c)


@pytest.mark.parametrize("k0", [0.05, -0.05])
def test_learnable_stereographic_k_crossing_zero_patched(happ, unpatched, k0):
    """geoopt's Stereographic with a learnable k crossing 0 (sphere <-> ball) under patch_geoopt() on Triton = plain
    geoopt along the whole path (30 RiemannianAdam steps)."""
    happ.test_learnable_stereographic_k_crossing_zero_patched(k0)


@pytest.mark.parametrize("manifold", ["PoincareBall", "learnable PoincareBall", "SphereProjection", "Stereographic"])
def test_patched_curvature_changed_through_data(happ, unpatched, manifold):
    happ.test_patched_curvature_changed_through_data(manifold)
