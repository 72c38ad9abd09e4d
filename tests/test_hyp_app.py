"""Application-level trial of the hyperbolic side (session 36, helper "hypapp"): whole programs a
hyperbolic-learning user writes (an HGCN on a random graph, Poincaré embeddings of WordNet mammals, a HypLL
Poincaré CNN, save / load / deepcopy / pickle, DataLoader workers, torch.compile, curvature handling), with plain
geoopt / HypLL (and geoops' reference backend) as the oracles."""
from __future__ import annotations

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
