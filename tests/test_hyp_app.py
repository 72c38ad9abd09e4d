"""Application-level trial of the hyperbolic side (session 36, helper "hypapp"): whole programs a
hyperbolic-learning user writes (an HGCN on a random graph, Poincaré embeddings of WordNet mammals, a HypLL
Poincaré CNN, save / load / deepcopy / pickle, DataLoader workers, torch.compile, curvature handling), with plain
geoopt / HypLL (and geoops' reference backend) as the oracles."""
from __future__ import annotations

import contextlib
import copy
import io

import pytest
import torch

import geoops
import geoops.compat as compat
import geoops.poincare as gp
import geoops.stereographic as gs
from geoops.nn import poincare as P

geoopt = pytest.importorskip("geoopt")


@pytest.fixture(autouse=True)
def _unpatched():
    compat.unpatch_geoopt()
    if compat.is_hypll_patched():
        compat.unpatch_hypll()
    yield
    compat.unpatch_geoopt()
    if compat.is_hypll_patched():
        compat.unpatch_hypll()


# ---------------------------------------------------------------- HGCN on a random graph
N_NODES, N_FEAT, N_HID, N_CLS = 40, 8, 8, 3


def _graph(seed=0):
    g = torch.Generator().manual_seed(seed)
    a = (torch.rand(N_NODES, N_NODES, generator=g) < 0.15).float()
    a = ((a + a.T) > 0).float()
    a.fill_diagonal_(1)
    return a, torch.randn(N_NODES, N_FEAT, generator=g) * 0.3, torch.randint(0, N_CLS, (N_NODES,), generator=g)


class HGCN(torch.nn.Module):
    """Learnable-curvature geoopt ball (ManifoldParameters: node embeddings, the Möbius bias), geoops layers:
    Möbius linear, neighbourhood midpoint aggregation, Poincaré ReLU and logmap0/relu/expmap0, an MLR head, a
    Fermi-Dirac decoder over cdist (and over knn-sampled far negatives)."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.man = geoopt.PoincareBall(c=1.0, learnable=True)
        g = torch.Generator().manual_seed(1)
        self.emb = geoopt.ManifoldParameter(
            self.man.expmap0(torch.randn(N_NODES, N_FEAT, generator=g, dtype=dtype) * 0.1), manifold=self.man)
        self.w1 = torch.nn.Parameter(torch.randn(N_HID, N_FEAT, generator=g, dtype=dtype) * 0.3)
        self.b1 = geoopt.ManifoldParameter(torch.zeros(N_HID, dtype=dtype), manifold=self.man)
        self.zc = torch.nn.Parameter(torch.randn(N_HID, N_CLS, generator=g, dtype=dtype) * 0.3)
        self.rc = torch.nn.Parameter(torch.zeros(N_CLS, dtype=dtype))

    def forward(self, a, feat):
        k = self.man.k
        c = -k
        x = gs.mobius_add(self.emb, gp.expmap0(feat.to(self.emb.dtype) * 0.1, c=c), k=k)
        h = gp.mobius_linear(x, self.w1, self.b1, c=c)
        h = gs.weighted_midpoint(h.unsqueeze(0).expand(N_NODES, N_NODES, N_HID), a, k=k, reducedim=[1])
        h = gp.poincare_relu(h, c=c)
        h = gp.expmap0(torch.relu(gp.logmap0(h, c=c)), c=c)
        return gp.mlr(h, self.zc, self.rc, c=c), gs.cdist(h, h, k=k), h


def _hgcn_loss(model, a, feat, y, knn_neg=True):
    logits, d, h = model(a, feat)
    prob = torch.sigmoid(2.0 - d)  # Fermi-Dirac, r = 2, t = 1
    loss = -(a * torch.log(prob + 1e-7) + (1 - a) * torch.log(1 - prob + 1e-7)).mean()
    if knn_neg:
        dn, _ = gs.knn(h, h, 5, k=model.man.k, largest=True)
        loss = loss - torch.log(1 - torch.sigmoid(2.0 - dn) + 1e-7).mean()
    return torch.nn.functional.cross_entropy(logits, y) + loss


def _train_hgcn(patched, steps=5, dtype=torch.float32):
    a, feat, y = _graph()
    (compat.patch_geoopt if patched else compat.unpatch_geoopt)()
    try:
        with geoops.use_backend("cpp" if patched else "reference"):
            m = HGCN(dtype)
            opt = geoopt.optim.RiemannianAdam(m.parameters(), lr=1e-2)
            losses = []
            for _ in range(steps):
                opt.zero_grad()
                loss = _hgcn_loss(m, a, feat, y)
                loss.backward()
                opt.step()
                losses.append(loss.item())
    finally:
        compat.unpatch_geoopt()
    return losses, m


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hgcn_patched_same_losses_as_plain_geoopt_on_reference(dtype):
    la, ma = _train_hgcn(False, dtype=dtype)
    lb, mb = _train_hgcn(True, dtype=dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-11
    assert la[-1] < la[0]
    for u, v in zip(la, lb):
        assert abs(u - v) <= tol * abs(u), (la, lb)
    assert abs(ma.man.c.item() - mb.man.c.item()) <= tol  # the curvature learned the same way
    assert ma.man.c.item() != 1.0
    torch.testing.assert_close(ma.emb.detach(), mb.emb.detach(), atol=10 * tol, rtol=10 * tol)


# ---------------------------------------------------------------- save / load / deepcopy / pickle
def _small_net(learn, seed=0):
    torch.manual_seed(seed)
    ball = P.PoincareBall(0.5, requires_grad=learn)
    return torch.nn.Sequential(P.PoincareLinear(4, 6, ball), P.PoincareReLU(ball, dim=-1), P.MobiusLinear(6, 6, ball),
                               P.PoincareMLR(6, 3, ball))


@pytest.mark.parametrize("learn", [False, True])
def test_deepcopy_and_pickle_after_a_no_grad_evaluation(learn):
    """A learnable ball evaluated under torch.no_grad() (a validation pass) cached a curvature that carried
    softplus's graph (torch.inference_mode(False) turns grad mode back on): copy.deepcopy of the model then failed
    ("Only Tensors created explicitly by the user (graph leaves) support the deepcopy protocol")."""
    net = _small_net(learn)
    x = gp.expmap0(torch.randn(5, 4) * 0.5, c=1.0)
    with torch.no_grad():
        want = net(x)
    net2 = copy.deepcopy(net)
    with torch.no_grad():
        assert torch.equal(net2(x), want)
    buf = io.BytesIO()
    torch.save(net, buf)
    buf.seek(0)
    net3 = torch.load(buf, weights_only=False)
    with torch.no_grad():
        assert torch.equal(net3(x), want)
    out = net2(x)  # and it still trains (the curvature gets its gradient when learnable)
    out.sum().backward()
    assert (net2[0].ball.value.grad is not None) == learn


# ---------------------------------------------------------------- Poincaré embeddings of WordNet mammals
def _mammals():
    from geoops.bench import wordnet as wn

    names, edges = wn.load_closure(wn.MAMMALS)
    n = len(names)
    keys = wn._pair_keys(edges, n)
    gen = torch.Generator().manual_seed(3)
    return n, edges, wn.epoch_batches(edges, n, 10, 64, keys, gen)


def _train_mammals(patched, opt_name, n, batches, steps):
    (compat.patch_geoopt if patched else compat.unpatch_geoopt)()
    try:
        g = torch.Generator().manual_seed(0)
        ball = geoopt.PoincareBall(c=1.0)
        emb = geoopt.ManifoldParameter((torch.rand(n, 5, generator=g) * 2 - 1) * 1e-3, manifold=ball)
        opt = (geoopt.optim.RiemannianSGD([emb], lr=1.0) if opt_name == "sgd"
               else geoopt.optim.RiemannianAdam([emb], lr=0.05))
        for u, cand in batches[:steps]:
            opt.zero_grad()
            d = ball.dist(emb[u].unsqueeze(1), emb[cand])
            torch.nn.functional.cross_entropy(-d, torch.zeros(u.numel(), dtype=torch.int64)).backward()
            opt.step()
    finally:
        compat.unpatch_geoopt()
    return emb.detach().as_subclass(torch.Tensor).clone()


def _brute_map(x, edges):
    """Mean rank and MAP from the full float64 distance matrix (geoopt's dist): the oracle of
    reconstruction_metrics."""
    x = x.double()
    n = x.shape[0]
    d = geoopt.PoincareBall(c=1.0).dist(x[:, None, :], x[None, :, :])
    adj = torch.zeros(n, n, dtype=torch.bool)
    adj[edges[:, 0], edges[:, 1]] = True
    ranks, aps = [], []
    for u in range(n):
        nb = adj[u].nonzero().flatten()
        if nb.numel() == 0:
            continue
        non = ~adj[u]
        non[u] = False
        dn, dp = d[u][non], d[u][nb]
        closer_non = (dn[None, :] < dp[:, None]).sum(1)
        ranks.append(1 + closer_non)
        pos_le = (dp[None, :] <= dp[:, None]).sum(1)
        aps.append((pos_le / (pos_le + closer_non)).mean())
    return torch.cat(ranks).double().mean().item(), torch.stack(aps).mean().item()


@pytest.mark.parametrize("opt_name,steps", [("sgd", 120), ("adam", 100)])
def test_mammals_patched_same_embedding_and_map(opt_name, steps):
    n, edges, batches = _mammals()
    a = _train_mammals(False, opt_name, n, batches, steps)
    b = _train_mammals(True, opt_name, n, batches, steps)
    torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-4)
    assert a.norm(dim=-1).max() > 0.05  # it moved
    ra, ma = gs.reconstruction_metrics(a, edges, k=-1.0)
    rb, mb = gs.reconstruction_metrics(b, edges, k=-1.0)
    assert abs(ma - mb) <= 1e-3 and abs(ra - rb) <= 1e-3 * ra
    rr, mr = _brute_map(b, edges)
    assert abs(rb - rr) <= 1e-3 * rr and abs(mb - mr) <= 1e-3, ((rb, mb), (rr, mr))
    # knn: the nearest neighbours of each node are the oracle's
    dk, ik = gs.knn(b, b, 4, k=-1.0)
    dfull = geoopt.PoincareBall(c=1.0).dist(b.double()[:, None, :], b.double()[None, :, :])
    torch.testing.assert_close(dk.double(), dfull.topk(4, largest=False).values, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(dk.double(), dfull.gather(1, ik), atol=1e-4, rtol=1e-4)


def test_patched_learnable_ball_k_under_no_grad_is_graph_free():
    """patch_geoopt()'s cached k of a learnable PoincareBall was computed under ``no_grad(), inference_mode(False)``,
    which turns grad mode back on: under torch.no_grad() ``ball.k`` then came back requiring grad, carrying softplus's
    graph (``ball.k.numpy()`` in an evaluation loop raised, plain geoopt's does not)."""
    man = geoopt.PoincareBall(c=1.0, learnable=True)
    with compat.patched_geoopt():
        with torch.no_grad():
            k = man.k
            assert not k.requires_grad and k.grad_fn is None
            assert float(k.numpy()) == pytest.approx(-1.0)
        # and with grad on it still learns: the gradient reaches isp_c
        x = man.expmap0(torch.randn(4, 3) * 0.3)
        man.dist(x, x.flip(0)).sum().backward()
        assert man.isp_c.grad is not None and man.isp_c.grad != 0


# ---------------------------------------------------------------- HypLL Poincaré CNN under patch_hypll()
def _hypll_cnn(dtype):
    pytest.importorskip("hypll")
    import hypll.nn as hnn
    from hypll.manifolds.poincare_ball import Curvature, PoincareBall as HBall
    from hypll.tensors import TangentTensor

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.man = m = HBall(c=Curvature(0.7, requires_grad=True))
            self.conv1 = hnn.HConvolution2d(3, 6, 3, m, padding=1)
            self.bn1 = hnn.HBatchNorm2d(6, m, use_midpoint=True)
            self.relu = hnn.HReLU(m)
            self.pool = hnn.HMaxPool2d(2, m, stride=2)
            self.conv2 = hnn.HConvolution2d(6, 8, 3, m)
            self.apool = hnn.HAvgPool2d(2, m, use_midpoint=True)
            self.flat = hnn.HFlatten()
            self.fc1 = hnn.HLinear(8, 10, m)
            self.bn = hnn.HBatchNorm(10, m, use_midpoint=True)
            self.fc2 = hnn.HLinear(10, 4, m)

        def forward(self, x):
            h = self.man.expmap(TangentTensor(data=x, man_dim=1, manifold=self.man))
            h = self.pool(self.relu(self.bn1(self.conv1(h))))
            h = self.flat(self.apool(self.relu(self.conv2(h))))
            return self.fc2(self.relu(self.bn(self.fc1(h)))).tensor

    torch.manual_seed(0)
    return Net().to(dtype)


def _hypll_grads(net, x, patched):
    (compat.patch_hypll if patched else compat.unpatch_hypll)()
    try:
        net.zero_grad()
        y = net(x)
        y.square().sum().backward()
    finally:
        compat.unpatch_hypll()
    return y.detach().double(), {n: p.grad.clone().double() for n, p in net.named_parameters()}


def test_hypll_cnn_patched_same_outputs_and_gradients():
    """A HypLL CNN (conv, midpoint batch norm 2d and 1d, ReLU, max and midpoint pooling, flatten, linear; a learnable
    curvature): float64 patched = unpatched to ~1e-12; float32 both within 2x (+ floor) of the float64 model."""
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 0.5
    y64, g64 = _hypll_grads(_hypll_cnn(torch.float64), x.double(), False)
    y64p, g64p = _hypll_grads(_hypll_cnn(torch.float64), x.double(), True)
    torch.testing.assert_close(y64p, y64, rtol=1e-11, atol=1e-12)
    for n in g64:
        torch.testing.assert_close(g64p[n], g64[n], rtol=1e-10, atol=1e-11 * g64[n].abs().max().item())
    assert g64["man.c.value"].abs() > 0
    net = _hypll_cnn(torch.float32)
    y32, g32 = _hypll_grads(net, x, False)
    y32p, g32p = _hypll_grads(net, x, True)
    # (each gradient tensor's relative error in norm: fc1.bias's gradient loses ~1e-4 to cancellation in both
    # libraries, and its one worst element moved by 2.2x HypLL's on the portable build, 1.7x in norm)
    for n in g64:
        s = g64[n].norm()
        err_h, err_g = (g32[n] - g64[n]).norm() / s, (g32p[n] - g64[n]).norm() / s
        assert err_g <= 2 * err_h + 1e-5, (n, err_g.item(), err_h.item())
    assert (y32p - y64).abs().max() <= 2 * (y32 - y64).abs().max() + 1e-6


# ---------------------------------------------------------------- save / load (weights_only=True)
def _roundtrip(obj, weights_only=True):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=weights_only)


def test_geoops_modules_state_dict_weights_only():
    ball = P.PoincareBall(0.5, requires_grad=True)
    net = torch.nn.Sequential(P.PoincareLinear(4, 6, ball), P.PoincareBatchNorm(6, ball), P.PoincareReLU(ball, dim=-1),
                              P.MobiusLinear(6, 6, ball, blocks=2), P.PoincareMLR(6, 3, ball))
    x = gp.expmap0(torch.randn(8, 4) * 0.5, c=0.5)
    net(x).sum().backward()  # (running statistics move)
    net.eval()
    with torch.no_grad():
        want = net(x)
    sd = _roundtrip(net.state_dict())
    ball2 = P.PoincareBall(3.0, requires_grad=True)
    net2 = torch.nn.Sequential(P.PoincareLinear(4, 6, ball2), P.PoincareBatchNorm(6, ball2),
                               P.PoincareReLU(ball2, dim=-1), P.MobiusLinear(6, 6, ball2, blocks=2),
                               P.PoincareMLR(6, 3, ball2)).eval()
    with torch.no_grad():
        net2(x)  # (the ball's cached curvature at its old value: load_state_dict must replace it)
    net2.load_state_dict(sd)
    with torch.no_grad():
        assert torch.equal(net2(x), want)


class _GeooptModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.man = geoopt.PoincareBall(c=1.0, learnable=True)
        self.emb = geoopt.ManifoldParameter(self.man.expmap0(torch.randn(6, 3) * 0.3), manifold=self.man)
        self.w = torch.nn.Parameter(torch.randn(3, 3) * 0.5)

    def forward(self):
        y = self.man.mobius_matvec(self.w, self.emb)
        return self.man.dist(y, self.emb.flip(0)).sum() + self.man.dist0(y).sum()


def _steps(m, opt, n):
    for _ in range(n):
        opt.zero_grad()
        m().backward()
        opt.step()


@pytest.mark.parametrize("opt_name", ["adam", "sgd_momentum"])
def test_patched_geoopt_checkpoint_resume(opt_name):
    """Under patch_geoopt(): state dicts of a model with ManifoldParameters (learnable curvature) and of its
    Riemannian optimizer round-trip through torch.save / torch.load(weights_only=True); resuming gives the bits of
    the uninterrupted run (Adam: to rounding, as plain geoopt's)."""
    make = ((lambda p: geoopt.optim.RiemannianAdam(p, lr=1e-2)) if opt_name == "adam"
            else (lambda p: geoopt.optim.RiemannianSGD(p, lr=1e-2, momentum=0.9)))
    with compat.patched_geoopt():
        m = _GeooptModel()
        opt = make(m.parameters())
        _steps(m, opt, 3)
        msd, osd = _roundtrip(m.state_dict()), _roundtrip(opt.state_dict())
        _steps(m, opt, 2)
        m2 = _GeooptModel()
        opt2 = make(m2.parameters())
        m2.load_state_dict(msd)
        opt2.load_state_dict(osd)
        assert isinstance(m2.emb, geoopt.ManifoldParameter)
        _steps(m2, opt2, 2)
        for (n, a), b in zip(m.named_parameters(), m2.parameters()):
            if opt_name == "adam":  # (plain geoopt's Adam resumes within rounding too, not bit for bit)
                torch.testing.assert_close(b.detach(), a.detach(), rtol=1e-5, atol=1e-6)
            else:
                assert torch.equal(a, b), n


@pytest.mark.parametrize("first", ["patched", "plain"])
def test_pickled_model_across_patch_state(first):
    """A model (and its optimizer) pickled under patch_geoopt() loads and trains after unpatch_geoopt(), and vice
    versa, with the same losses as the model that was not pickled."""
    (compat.patch_geoopt if first == "patched" else compat.unpatch_geoopt)()
    m = _GeooptModel()
    opt = geoopt.optim.RiemannianAdam(m.parameters(), lr=1e-2)
    _steps(m, opt, 2)
    blob = _roundtrip({"model": m, "opt": opt}, weights_only=False)
    deep = copy.deepcopy(m)
    (compat.unpatch_geoopt if first == "patched" else compat.patch_geoopt)()
    m2, opt2 = blob["model"], blob["opt"]
    _steps(m, opt, 2)
    _steps(m2, opt2, 2)
    torch.testing.assert_close(m2.emb.detach(), m.emb.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(m2.man.c.detach(), m.man.c.detach(), rtol=1e-6, atol=1e-7)
    assert torch.equal(deep().detach(), deep().detach())


# ---------------------------------------------------------------- DataLoader workers, threads, torch.compile
class _PointsDataset(torch.utils.data.Dataset):
    def __len__(self):
        return 48

    def __getitem__(self, i):
        return torch.randn(4096, 5, generator=torch.Generator().manual_seed(i)) * 3


def _geo_collate(batch):
    x = torch.stack(batch)  # (8, 4096, 5): 32768 rows, enough for the kernels' parallel regions
    y = gs.project(gs.expmap0(x, k=-1.0), k=-1.0)
    return (y, gp.expmap0(x, c=0.5), gs.cdist(y[:, 0], y[:, 0], k=-1.0),
            gs.weighted_midpoint(y, k=-1.0, reducedim=[1]))


def _load_all(workers, ctx=None):
    dl = torch.utils.data.DataLoader(_PointsDataset(), batch_size=8, collate_fn=_geo_collate, num_workers=workers,
                                     multiprocessing_context=ctx, timeout=120 if workers else 0)
    return list(dl)


@pytest.mark.parametrize("ctx", ["fork", "spawn"])
def test_dataloader_workers_collate_with_geoops_ops(ctx):
    """collate_fn calling geoops ops in worker processes (2 forked after the parent ran parallel C++ kernels, and
    1 spawned): same batches as in the main process, no hang (the loader's timeout raises instead).  A spawned
    worker starts a fresh interpreter (its import of this module is most of the case's CPU); a second one would
    run the same import and code again (tests/test_repro_hunt.py's spawn child too)."""
    big = gs.expmap0(torch.randn(1 << 16, 16) * 0.1, k=-1.0)  # a parallel region in the parent before the fork
    gs.dist0(big, k=-1.0).sum()
    want = _load_all(0)
    got = _load_all(2 if ctx == "fork" else 1, ctx)
    assert len(got) == len(want) == 6
    for a, b in zip(want, got):
        for u, v in zip(a, b):
            assert torch.equal(u, v)


def _thread_run(dtype):
    torch.manual_seed(0)
    ball = P.PoincareBall(0.5, requires_grad=True)
    net = torch.nn.Sequential(P.PoincareLinear(32, 48, ball), P.PoincareBatchNorm(48, ball),
                              P.PoincareReLU(ball, dim=-1), P.PoincareLinear(48, 40, ball),
                              P.PoincareMLR(40, 10, ball)).to(dtype)
    x = gp.expmap0(torch.randn(3000, 32, dtype=dtype), c=0.5).requires_grad_()
    out = net(x)
    torch.nn.functional.cross_entropy(out, torch.randint(0, 10, (3000,))).backward()
    res = {"out": out.detach(), "x": x.grad, **{n: p.grad for n, p in net.named_parameters()}}
    xs = gs.expmap0(torch.randn(64, 300, 16, dtype=dtype) * 0.5, k=-1.0).requires_grad_()
    m = gs.weighted_midpoint(xs, torch.rand(64, 300, dtype=dtype), k=-1.0, reducedim=[1])
    gs.dist(m.unsqueeze(1), xs, k=-1.0).sum().backward()
    res.update(mid=m.detach(), mid_grad=xs.grad)
    g = torch.Generator().manual_seed(0)
    x = gs.expmap0(torch.randn(700, 24, generator=g, dtype=dtype) * 0.5, k=-1.0).requires_grad_()
    y = gs.expmap0(torch.randn(900, 24, generator=g, dtype=dtype) * 0.5, k=-1.0).requires_grad_()
    k = torch.tensor(-0.7, dtype=dtype, requires_grad=True)
    dd, idx = gs.knn(x, y, 5, k=k)
    cd = gs.cdist(x, y, k=k)
    grads = torch.autograd.grad(cd.sin().sum() + dd.sum(), (x, y, k))
    res.update(cdist=cd.detach(), knn=dd.detach(), knn_idx=idx, **{f"pair_grad{i}": t for i, t in enumerate(grads)})
    return res


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_and_two_threads_bit_identical(dtype):
    """What the docs promise: the Poincaré fc / batch norm / ReLU / MLR layers forward and backward (learnable
    curvature), the midpoint aggregation with row distances, cdist and knn (forward and backward) give the same bits
    at 1 and 2 threads."""
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = _thread_run(dtype)
        torch.set_num_threads(2)
        b = _thread_run(dtype)
    finally:
        torch.set_num_threads(n)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_compile_hgcn_forward_backward_patched():
    """torch.compile (fullgraph, aot_eager: the custom ops' fakes and autograd; Inductor checked by hand, ~50 s
    here) of the HGCN loss with patched geoopt inside: the eager loss and gradients, the learnable curvature's too."""
    hgcn_compiled_matches_eager(compat)


def hgcn_compiled_matches_eager(compat):
    """The trial above on the current backend, with geoops.compat module `compat` (tests/triton/test_app_triton.py
    runs it on Triton)."""
    a, feat, y = _graph()
    torch._dynamo.reset()
    with compat.patched_geoopt():
        m = HGCN()
        loss = _hgcn_loss(m, a, feat, y)
        loss.backward()
        want = {n: p.grad.clone() for n, p in m.named_parameters()}
        m.zero_grad()
        fn = torch.compile(lambda a, f, y: _hgcn_loss(m, a, f, y), fullgraph=True, backend="aot_eager")
        got = fn(a, feat, y)
        got.backward()
    torch.testing.assert_close(got, loss, rtol=1e-6, atol=1e-6)
    for n, p in m.named_parameters():
        torch.testing.assert_close(p.grad, want[n], rtol=1e-5, atol=1e-7)
    assert m.man.isp_c.grad != 0


# ---------------------------------------------------------------- in-place changes of op outputs
def _batched_ops(k=None):
    g = torch.Generator().manual_seed(0)
    leaves = []

    def pts(*s):
        leaves.append(gs.expmap0(torch.randn(*s, generator=g) * 0.3, k=-1.0).requires_grad_())
        return leaves[-1]

    x1, x3, y3 = pts(4, 3, 5), pts(4, 1, 5), pts(4, 3, 5)
    ops = {
        "mobius_add": lambda k: gs.mobius_add(x3, y3, k=k), "dist": lambda k: gs.dist(x3, y3, k=k),
        "dist_keepdim": lambda k: gs.dist(x1, y3, k=k, keepdim=True), "dist0": lambda k: gs.dist0(x1, k=k),
        "expmap0": lambda k: gs.expmap0(x1, k=k), "logmap0": lambda k: gs.logmap0(x1, k=k),
        "project": lambda k: gs.project(x1 * 4, k=k), "expmap": lambda k: gs.expmap(x1, y3, k=k),
        "logmap": lambda k: gs.logmap(x3, y3, k=k), "lambda_x": lambda k: gs.lambda_x(x1, k=k),
        "geodesic": lambda k: gs.geodesic(torch.tensor(0.3), x1, y3, k=k),
        "knn": lambda k: gs.knn(x1, y3, 2, k=k)[0],
        "gp.logmap0": lambda k: gp.logmap0(x1, c=-k), "gp.dist": lambda k: gp.dist(x1, y3, c=-k),
    }
    return ops, leaves


@pytest.mark.parametrize("kform", ["0-d", "(1,)", "learnable"])
@pytest.mark.parametrize("op", list(_batched_ops()[0]))
def test_inplace_change_of_batched_output(op, kform):
    """An output of a batched (3-d) op with a tensor curvature changed in place (``d.mul_(2)``), as plain torch code
    and geoopt allow: the eager C++ fast path returned a view made inside its autograd.Function, which autograd
    forbids to change in place ("Output 0 of DistFn is a view and is being modified inplace"); now the values and
    gradients of the reference composition."""
    res = []
    for backend in ("cpp", "reference"):
        k = {"0-d": torch.tensor(-1.0), "(1,)": torch.tensor([-1.0]),
             "learnable": torch.nn.Parameter(torch.tensor(-1.0))}[kform]
        ops, leaves = _batched_ops()
        with geoops.use_backend(backend):
            out = ops[op](k)
            out.mul_(2.0)
            wrt = leaves + ([k] if k.requires_grad else [])
            res.append([out.detach()] + list(torch.autograd.grad(out.sum(), wrt, allow_unused=True)))
    for a, b in zip(*res):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_patched_geoopt_batched_dist_changed_in_place():
    """The Poincaré embedding loss shape (B, 1, D) x (B, n, D) on patched geoopt, its distances squared in place."""
    ball = geoopt.PoincareBall()
    emb = geoopt.ManifoldParameter(ball.expmap0(torch.randn(10, 3, generator=torch.Generator().manual_seed(0)) * 0.3),
                                   manifold=ball)
    u, cand = torch.tensor([0, 1]), torch.tensor([[2, 3, 4], [5, 6, 7]])
    grads = []
    for patched in (False, True):
        with (compat.patched_geoopt() if patched else contextlib.nullcontext()):
            d = ball.dist(emb[u].unsqueeze(1), emb[cand])
            d.pow_(2)
            h = ball.mobius_add(emb[cand], emb[cand])
            h[..., 0] = 0
            grads.append(torch.autograd.grad(d.sum() + h.sum(), emb)[0])
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- curvature across the stack
def _nn_model(dtype, learn=True):
    torch.manual_seed(0)
    ball = P.PoincareBall(0.5, requires_grad=learn)
    m = torch.nn.ModuleDict(dict(
        ball=ball, conv=P.PoincareConv2d(3, 4, 3, ball, padding=1), bn=P.PoincareBatchNorm2d(4, ball),
        relu=P.PoincareReLU(ball), pool=P.PoincareAvgPool2d(2, ball), mpool=P.PoincareMaxPool2d(2, ball),
        flat=P.PoincareFlatten(ball), lin=P.PoincareLinear(16, 6, ball), mob=P.MobiusLinear(6, 6, ball),
        mobb=P.MobiusLinear(6, 6, ball, blocks=2), bn1=P.PoincareBatchNorm(6, ball), mlr=P.PoincareMLR(6, 3, ball),
        emb=P.PoincareEmbedding(10, 6, ball)))
    return m.to(dtype)


def _nn_forward(m, x, idx):
    """Every geoops.nn Poincaré layer in one network (the outputs of each stage, for per-layer checks)."""
    stages = []
    h = m["bn"](m["conv"](x))
    h = P.poincare_residual(m["relu"](h), h, m["ball"])
    stages.append(h)
    h = gp.mobius_add(m["pool"](h), m["mpool"](h), c=m["ball"](), dim=1)
    h = m["bn1"](m["mobb"](m["mob"](m["lin"](m["flat"](h)))))
    stages.append(h)
    h = P.poincare_residual(h, m["emb"](idx), m["ball"], dim=-1)
    stages.append(m["mlr"](h))
    return stages


def _nn_run(dtype, backend, sd):
    x = gp.expmap0(torch.randn(5, 3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.5,
                   c=0.97, dim=1).to(dtype)
    idx = torch.tensor([0, 3, 3, 9, 1])
    with geoops.use_backend(backend):
        m = _nn_model(dtype)
        m.load_state_dict(sd)
        stages = _nn_forward(m, x, idx)
        per_stage = [torch.autograd.grad(s.square().sum(), m["ball"].value, retain_graph=True)[0] for s in stages]
        stages[-1].sum().backward()
    return [stages[-1].detach()] + per_stage + [p.grad for p in m.parameters()]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_learnable_curvature_gradient_through_every_layer(dtype):
    """One learnable ball shared by every geoops.nn layer: the C++ backend's values and gradients (the curvature's
    included, and the curvature's gradient from each stage alone) equal the reference backend's with the same
    parameters: float64 to 1e-9, float32 within 2x the float32 reference's error against float64 (+ 2e-4)."""
    nn_layers_match_reference(dtype, "cpp")


def nn_layers_match_reference(dtype, backend):
    """The learnable-curvature trial of every geoops.nn layer on `backend` against the reference backend, with the
    same parameters (also run on the Triton backend by tests/triton/test_app_triton.py)."""
    sd = _nn_model(torch.float64).state_dict()
    ours, ref = _nn_run(dtype, backend, sd), _nn_run(dtype, "reference", sd)
    if dtype == torch.float64:
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    else:
        truth = _nn_run(torch.float64, "reference", sd)
        for i, (a, b, t) in enumerate(zip(ours, ref, truth)):
            s = t.abs().max()
            err, err_ref = (a.double() - t).abs().max() / s, (b.double() - t).abs().max() / s
            # (floor 2e-4: a whole network's rounding differences amplify through the later layers; the ops' own
            # float32 accuracy has its 2x tests per family)
            assert err <= 2 * err_ref + 2e-4, (i, err.item(), err_ref.item())
    for g in ours[1:4]:
        assert g != 0


@pytest.mark.parametrize("form", ["float", "0-d", "(1,)", "parameter", "float32 parameter"])
@pytest.mark.parametrize("c", [1.0, 1e-3, 1e-7])
def test_curvature_forms_and_small_c_float64(form, c):
    """c as a Python float, a 0-d or (1,) tensor, a (float64 or float32) Parameter, down to c -> 0: the fused
    layers equal the float64 reference composition; the gradient reaches a Parameter c."""
    g = torch.Generator().manual_seed(0)
    dt = torch.float64
    x = torch.randn(6, 4, generator=g, dtype=dt) * 0.2
    img = torch.randn(2, 3, 4, 4, generator=g, dtype=dt) * 0.2
    z, b = torch.randn(4, 5, generator=g, dtype=dt) * 0.5, torch.randn(5, generator=g, dtype=dt) * 0.1
    zc, w = torch.randn(27, 4, generator=g, dtype=dt) * 0.3, torch.randn(4, 4, generator=g, dtype=dt) * 0.5
    ops = [lambda c: gp.poincare_fc(gp.project(x, c=c), z, b, c=c),
           lambda c: gp.mlr(gp.project(x, c=c), z, b, c=c),
           lambda c: gp.poincare_relu(gp.project(x, c=c), c=c),
           lambda c: gp.mobius_linear(gp.project(x, c=c), w, None, c=c),
           lambda c: gp.poincare_conv2d(gp.project(img, c=c, dim=1), zc, None, c=c, kernel_size=3, padding=1),
           lambda c: gp.batch_norm2d(gp.project(img, c=c, dim=1), b[:3], torch.tensor(1.0, dtype=dt), c=c,
                                     training=True),
           lambda c: gp.flatten(gp.project(img, c=c, dim=1), c=c),
           lambda c: gs.weighted_midpoint(gp.project(x, c=c), k=-c, reducedim=[0]),
           lambda c: gs.cdist(gp.project(x, c=c), gp.project(x.flip(0), c=c), k=-c)]
    cv = float(torch.tensor(c, dtype=torch.float32)) if form == "float32 parameter" else c
    for i, f in enumerate(ops):
        with geoops.use_backend("reference"):
            cr = torch.tensor(cv, dtype=dt, requires_grad=True)
            want = f(cr)
            (gwant,) = torch.autograd.grad(want.sum(), cr)
        cc = {"float": c, "0-d": torch.tensor(c, dtype=dt), "(1,)": torch.tensor([c], dtype=dt),
              "parameter": torch.nn.Parameter(torch.tensor(c, dtype=dt)),
              "float32 parameter": torch.nn.Parameter(torch.tensor(c, dtype=torch.float32))}[form]
        got = f(cc)
        assert got.dtype == dt
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11, msg=lambda m: f"op {i}: {m}")
        if isinstance(cc, torch.nn.Parameter):
            (gc,) = torch.autograd.grad(got.sum(), cc)
            assert gc.dtype == cc.dtype
            torch.testing.assert_close(gc.double(), gwant, rtol=1e-6, atol=1e-8, msg=lambda m: f"op {i} dc: {m}")


@pytest.mark.parametrize("k0", [0.05, -0.05])
def test_learnable_stereographic_k_crossing_zero_patched(k0):
    """geoopt's Stereographic with a learnable k that crosses 0 (sphere <-> ball) while training with
    RiemannianAdam: patched = plain geoopt along the whole path."""
    def run(patched):
        with (compat.patched_geoopt() if patched else contextlib.nullcontext()):
            torch.manual_seed(0)
            man = geoopt.Stereographic(k=k0, learnable=True)
            x = geoopt.ManifoldParameter(man.expmap0(torch.randn(20, 3) * 0.2), manifold=man)
            w = torch.nn.Parameter(torch.randn(3, 3) * 0.5)
            opt, kopt = geoopt.optim.RiemannianAdam([x, w], lr=0.01), torch.optim.SGD(man.parameters(), lr=0.01)
            ks = []
            for _ in range(30):
                opt.zero_grad()
                kopt.zero_grad()
                y = man.mobius_matvec(w, x)
                loss = (man.dist(y, man.weighted_midpoint(y)).pow(2).mean() + man.dist0(x).mean()
                        + man.k * (k0 / abs(k0)))
                loss.backward()
                opt.step()
                kopt.step()
                ks.append(man.k.item())
        return ks, x.detach().as_subclass(torch.Tensor)
    (ka, xa), (kb, xb) = run(False), run(True)
    assert ka[0] * ka[-1] < 0  # it crossed
    for u, v in zip(ka, kb):
        assert abs(u - v) <= 1e-6
    torch.testing.assert_close(xb, xa, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("manifold", ["PoincareBall", "learnable PoincareBall", "SphereProjection", "Stereographic"])
def test_patched_curvature_changed_through_data(manifold):
    """A curvature changed through ``.data`` (``ball.isp_c.data.clamp_(...)`` / ``fill_``: no version count) was not
    seen under patch_geoopt(): its cache of k (and of float(k) for the fused RSGD step) kept the old value, so
    distances and steps silently used the old curvature; plain geoopt reads it on every call."""
    make = {"PoincareBall": lambda: geoopt.PoincareBall(c=1.0),
            "learnable PoincareBall": lambda: geoopt.PoincareBall(c=1.0, learnable=True),
            "SphereProjection": lambda: geoopt.SphereProjection(k=1.0),
            "Stereographic": lambda: geoopt.Stereographic(k=-1.0)}[manifold]
    src_name = {"PoincareBall": "isp_c", "SphereProjection": "isp_k", "Stereographic": "k"}[manifold.split()[-1]]
    new = -0.3 if manifold == "Stereographic" else 2.0
    res = []
    for patched in (False, True):
        with (compat.patched_geoopt() if patched else contextlib.nullcontext()):
            man = make()
            x = man.expmap0(torch.randn(4, 3, generator=torch.Generator().manual_seed(0)) * 0.3)
            p = geoopt.ManifoldParameter(x.clone(), manifold=man)
            opt = geoopt.optim.RiemannianSGD([p], lr=0.1)
            with torch.no_grad():
                man.k, man.dist0(x)  # (fills the caches)
            opt.zero_grad()
            man.dist0(p).sum().backward()
            opt.step()  # (the fused step's cache of float(k))
            getattr(man, src_name).data.fill_(new)
            with torch.no_grad():
                k, d = man.k.clone(), man.dist0(x)
            opt.zero_grad()
            man.dist0(p).sum().backward()
            opt.step()
            res.append((k, d, p.detach().as_subclass(torch.Tensor).clone()))
    for a, b in zip(*res):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- torch.jit.trace
def _trace_cases():
    torch.manual_seed(0)
    ball = P.PoincareBall(0.5)
    return {
        "PoincareConv2d": (P.PoincareConv2d(3, 4, 3, ball, padding=1), "img"),
        "PoincareBatchNorm2d.eval": (P.PoincareBatchNorm2d(3, ball).eval(), "img"),
        "PoincareReLU": (P.PoincareReLU(ball), "img"), "PoincareAvgPool2d": (P.PoincareAvgPool2d(2, ball), "img"),
        "PoincareMaxPool2d": (P.PoincareMaxPool2d(2, ball), "img"), "PoincareFlatten": (P.PoincareFlatten(ball), "img"),
        "PoincareLinear": (P.PoincareLinear(16, 6, ball), "vec"), "MobiusLinear": (P.MobiusLinear(16, 6, ball), "vec"),
        "PoincareMLR": (P.PoincareMLR(16, 3, ball), "vec"),
        "dist": (lambda a: gs.dist(a, a.flip(0), k=-1.0), "vec"),
        "expmap0": (lambda a: gs.expmap0(a, k=torch.tensor(-1.0)), "vec"),
        "cdist": (lambda a: gs.cdist(a, a, k=-1.0), "vec"),
        "knn": (lambda a: gs.knn(a, a, 2, k=-1.0)[0], "vec"),
        "weighted_midpoint": (lambda a: gs.weighted_midpoint(a, k=-1.0, reducedim=[0]), "vec"),
        "mobius_matvec": (lambda a: gs.mobius_matvec(torch.eye(16) * 0.5, a, k=-1.0), "vec"),
    }


@pytest.mark.parametrize("case", list(_trace_cases()))
def test_jit_trace_replays_the_ops(case):
    """torch.jit.trace of geoops layers and ops (a deployment path): the eager fast paths called the C++ kernels
    directly, which the tracer does not record, so the traced graph held an empty output buffer and a replay on new
    inputs returned uninitialised memory (silently: 1e38s and garbage).  Traced calls now dispatch the custom ops."""
    import warnings

    fn, kind = _trace_cases()[case]
    g = torch.Generator().manual_seed(1)

    def inp(seed):
        g.manual_seed(seed)
        if kind == "img":
            return gp.expmap0(torch.randn(4, 3, 4, 4, generator=g) * 0.5, c=0.97, dim=1)
        return gp.expmap0(torch.randn(5, 16, generator=g) * 0.5, c=0.97)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(fn, inp(0), check_trace=False)
    x = inp(1)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), fn(x), rtol=1e-5, atol=1e-6)
    # traced without autograd (inference), the graph holds only dispatched ops: torch.jit.save / load work (session
    # 37: the Poincaré layers too; with autograd as well: tests/test_jit_trace.py)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(fn, inp(0), check_trace=False)
        buf = io.BytesIO()
        torch.jit.save(traced, buf)
        buf.seek(0)
        torch.testing.assert_close(torch.jit.load(buf)(x), fn(x), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- activation checkpointing (session 37)
def _ckpt_layers():
    return {
        "PoincareFlatten": (lambda b: P.PoincareFlatten(b), True),
        "PoincareConv2d": (lambda b: P.PoincareConv2d(3, 4, 3, b, padding=1), True),
        "PoincareReLU": (lambda b: P.PoincareReLU(b), True),
        "PoincareBatchNorm2d": (lambda b: P.PoincareBatchNorm2d(3, b), True),
        "PoincareAvgPool2d": (lambda b: P.PoincareAvgPool2d(2, b), True),
        "PoincareMaxPool2d": (lambda b: P.PoincareMaxPool2d(2, b), True),
        "PoincareLinear": (lambda b: P.PoincareLinear(16, 6, b), False),
        "MobiusLinear": (lambda b: P.MobiusLinear(16, 6, b), False),
        "PoincareMLR": (lambda b: P.PoincareMLR(16, 3, b), False),
        "PoincareBatchNorm": (lambda b: P.PoincareBatchNorm(16, b), False),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("layer", list(_ckpt_layers()))
def test_checkpointing_is_bitwise_for_poincare_layers(layer, dtype):
    """Reentrant checkpointing runs the forward under no_grad and recomputes it with grad on: a route chosen by
    whether c requires grad gave a different forward (flatten's fused C++ pass for a fixed c, the row composition
    for a learnable one: float32 gradients ~4e-7 off, float64 ~8e-16).  Output and every gradient (x, the layer's
    parameters, the learnable ball) are now bit-identical without checkpointing, non-reentrant and reentrant."""
    from torch.utils.checkpoint import checkpoint

    make, img = _ckpt_layers()[layer]

    def run(mode):
        torch.manual_seed(0)
        ball = P.PoincareBall(0.7, requires_grad=True).to(dtype)
        m = make(ball).to(dtype)
        x = torch.randn(2, 3, 4, 4) if img else torch.randn(5, 16)
        x = gp.expmap0(x.to(dtype) * 0.5, c=0.7, dim=1 if img else -1).requires_grad_()
        y = m(x) if mode is None else checkpoint(m, x, use_reentrant=mode)
        # (a loss nonlinear in y: its gradient reads the forward's value, which reentrant takes from the no_grad pass)
        (y.pow(2) * torch.linspace(-1, 1, y.numel(), dtype=dtype).reshape(y.shape)).sum().backward()
        return [y.detach(), x.grad] + [p.grad for p in m.parameters()]

    base = run(None)
    assert base[-1] is not None  # (the ball's value is a parameter of the layer: it got a gradient)
    for mode in (False, True):
        for a, b in zip(run(mode), base):
            assert torch.equal(a, b), (mode, (a - b).abs().max())


def test_flatten_learnable_c_gradient_matches_reference():
    """flatten's fused CPU pass now also serves a curvature with gradient (dc from the row composition): its
    gradients equal the reference backend's (float64) and the fp64 values in float32 within 2x the reference's."""
    def grads(dtype, backend):
        torch.manual_seed(3)
        x = gp.expmap0(torch.randn(2, 3, 4, 5, dtype=torch.float64) * 0.7, c=0.4, dim=1).to(dtype).requires_grad_()
        c = torch.tensor(0.4, dtype=dtype, requires_grad=True)
        with geoops.use_backend(backend):
            y = gp.flatten(x, c=c)
        (y.pow(2) * torch.linspace(-1, 1, y.numel(), dtype=dtype).reshape(y.shape)).sum().backward()
        return y.detach().double(), x.grad.double(), c.grad.double()

    exact = grads(torch.float64, "reference")
    for a, b in zip(grads(torch.float64, "cpp"), exact):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
    ref32, ours32 = grads(torch.float32, "reference"), grads(torch.float32, "cpp")
    for o, r, e in zip(ours32, ref32, exact):
        assert (o - e).abs().max() <= 2 * (r - e).abs().max() + 1e-6 * e.abs().max()
