"""Session 36 application-level user trial (helper "e3app"): a small MACE / NequIP-style interatomic potential
built on geoops.gaunt and geoops.nn.GauntTensorProduct, trained on energies and forces (double backward through
every Gaunt op), compared across routes, backends (C++ vs the eager reference) and e3nn's TensorProduct, rotated,
compiled, transformed and serialised as users do."""
from __future__ import annotations

import contextlib
import copy
import io
import math

import pytest
import torch

import geoops
from geoops import gaunt as ga
from geoops.reference import gaunt as R

o3 = pytest.importorskip("e3nn.o3")

F64 = torch.float64
ROUTES = ("fft", "grid", "direct", "auto")


@contextlib.contextmanager
def backend(name):
    old = geoops._backend.get_backend()
    geoops.set_backend(name)
    try:
        yield
    finally:
        geoops.set_backend(old)


@contextlib.contextmanager
def f64_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


# ---------------------------------------------------------------- molecules
def molecules(sizes, seed=0, dtype=F64, cutoff=2.5):
    """Random molecules batched with an index vector: pos [N, 3], species [N], batch [N], edges (src, dst) within
    the cutoff (both directions, no self edges)."""
    g = torch.Generator().manual_seed(seed)
    pos, spec, bat, src, dst, off = [], [], [], [], [], 0
    for b, n in enumerate(sizes):
        p = torch.randn(n, 3, generator=g, dtype=dtype) * (0.6 * n ** (1 / 3))
        pos.append(p)
        spec.append(torch.randint(0, 3, (n,), generator=g))
        bat.append(torch.full((n,), b, dtype=torch.long))
        d = (p[:, None] - p[None]).norm(dim=-1)
        i, j = torch.nonzero((d < cutoff) & ~torch.eye(n, dtype=torch.bool), as_tuple=True)
        src.append(i + off)
        dst.append(j + off)
        off += n
    return (torch.cat(pos), torch.cat(spec), torch.cat(bat), torch.cat(src), torch.cat(dst), len(sizes))


def irreps(C, L):
    return o3.Irreps([(C, (l, (-1) ** l)) for l in range(L + 1)])


def to_flat(x):
    """[..., C, (L+1)^2] -> e3nn's flat mul x ir layout [..., C*(L+1)^2] (blocks (C, 2l+1) per degree)."""
    L = R.lmax_of(x.shape[-1])
    return torch.cat([x[..., l * l:(l + 1) ** 2].reshape(*x.shape[:-2], -1) for l in range(L + 1)], -1)


def from_flat(x, C, L):
    lead = x.shape[:-1]
    blocks, off = [], 0
    for l in range(L + 1):
        blocks.append(x[..., off:off + C * (2 * l + 1)].reshape(*lead, C, 2 * l + 1))
        off += C * (2 * l + 1)
    return torch.cat(blocks, -1)


# ---------------------------------------------------------------- the model
class GauntTP(torch.nn.Module):
    """What the model calls for a binary product: geoops' functional op (swappable for e3nn's)."""

    def __init__(self, route):
        super().__init__()
        self.route = route

    def forward(self, x1, x2, lmax_out, w1=None, w2=None, wo=None):
        return ga.gaunt_tensor_product(x1, x2, lmax_out, weight1=w1, weight2=w2, weight_out=wo, route=self.route)


class Potential(torch.nn.Module):
    """Two interaction layers (Gaunt message of sender features x edge SH, radial MLP, scatter-sum), a
    gaunt_power / gaunt_product body-order term, a GauntTensorProduct self-interaction, energy readout of 0e."""

    def __init__(self, C=4, L=2, route="auto", n_species=3, cutoff=2.5, nu=3, tp=None):
        super().__init__()
        self.C, self.L, self.route, self.cutoff, self.nu = C, L, route, cutoff, nu
        from geoops.nn import GauntTensorProduct
        g = torch.Generator().manual_seed(123)
        self.embed = torch.nn.Parameter(torch.randn(n_species, C, generator=g))
        nb = 6
        self.nb = nb
        self.rad1 = torch.nn.Linear(nb, C)
        self.rad2 = torch.nn.Linear(nb, C)
        with torch.no_grad():
            for lin in (self.rad1, self.rad2):
                lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) / math.sqrt(nb))
                lin.bias.copy_(torch.randn(lin.bias.shape, generator=g) * 0.1)
        r = lambda *s: torch.nn.Parameter(1 + 0.3 * torch.randn(*s, generator=g))  # noqa: E731
        self.w_sh1, self.wo1 = r(1, L + 1), r(C, L + 1)
        self.w_node2, self.w_sh2, self.wo2 = r(C, L + 1), r(1, L + 1), r(C, L + 1)
        self.w_body = r(C, L + 1)
        self.self_tp = GauntTensorProduct(irreps(C, L), irreps(C, L), irreps(C, L), route=route)
        with torch.no_grad():
            for p in self.self_tp.parameters():
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
        self.readout = torch.nn.Linear(3 * C, 1)
        with torch.no_grad():
            self.readout.weight.copy_(torch.randn(self.readout.weight.shape, generator=g) / math.sqrt(3 * C))
            self.readout.bias.zero_()
        self.tp = tp if tp is not None else GauntTP(route)
        self.chain = tp is not None

    def radial(self, r):
        n = torch.arange(1, self.nb + 1, dtype=r.dtype, device=r.device)
        rc = self.cutoff
        env = 0.5 * (torch.cos(math.pi * r / rc) + 1) * (r < rc).to(r.dtype)
        return torch.sin(n * math.pi * r[:, None] / rc) / r[:, None] * env[:, None]

    def forward(self, pos, species, batch, src, dst, n_graphs: int):
        C, L = self.C, self.L
        N = pos.shape[0]
        vec = pos[dst] - pos[src]
        r = vec.norm(dim=-1)
        Y = o3.spherical_harmonics(list(range(L + 1)), vec, normalize=True, normalization="integral")  # [E, n]
        Y = Y[:, None, :]  # [E, 1, n]: broadcast over channels
        B = self.radial(r)
        h0 = self.embed[species]  # [N, C]
        # layer 1: scalars x SH -> degrees 0..L
        m1 = self.tp(h0[src][:, :, None], Y, L, None, self.w_sh1, self.wo1) * self.rad1(B)[:, :, None]
        A1 = pos.new_zeros((N, C, (L + 1) ** 2)).index_add(0, dst, m1)
        # layer 2: (L x L -> L): L1 = L2 = L, lmax_out < L1 + L2
        m2 = self.tp(A1[src], Y, L, self.w_node2, self.w_sh2, self.wo2) * self.rad2(B)[:, :, None]
        A2 = pos.new_zeros((N, C, (L + 1) ** 2)).index_add(0, dst, m2) + A1
        # body order: nu-th power and a 3-factor product, and the module's self-interaction
        if self.chain:  # the same products as chains of exact binary products (an e3nn oracle)
            P = A2
            for k in range(1, self.nu):
                P = self.tp(P, A2, (k + 1) * L if k + 1 < self.nu else L)
            Q = self.tp(self.tp(A2, A1, 2 * L), A2, L, None, None, self.w_body)
            st = self.self_tp
            S = self.tp(A2, A1, L, st.weight1, st.weight2, st.weight_out)
        else:
            P = ga.gaunt_power(A2, self.nu, L, route=self.route)
            Q = ga.gaunt_product([A2, A1, A2], L, weight_out=self.w_body, route=self.route)
            S = from_flat(self.self_tp(to_flat(A2), to_flat(A1)), C, L)
        feats = torch.cat([P[..., 0], Q[..., 0], S[..., 0] + A2[..., 0]], -1)  # 0e parts [N, 3C]
        e_node = self.readout(feats)[:, 0]
        return pos.new_zeros(n_graphs).index_add(0, batch, e_node.to(pos.dtype))  # (autocast: bf16 readout)


class E3nnTP(torch.nn.Module):
    """e3nn's o3.TensorProduct restricted to the Gaunt paths ("uuu", one channel per leading row, path weight
    G_path^2 under e3nn's square root), per-degree weights applied outside: the oracle of GauntTP."""

    def __init__(self):
        super().__init__()
        self._tps = {}

    def _tp(self, L1, L2, L3):
        key = (L1, L2, L3)
        if key not in self._tps:
            instr = []
            for l1 in range(L1 + 1):
                for l2 in range(L2 + 1):
                    for l3 in range(abs(l1 - l2), min(l1 + l2, L3) + 1):
                        if (l1 + l2 + l3) % 2 == 0:
                            g = _gaunt_path_norm(l1, l2, l3)
                            instr.append((l1, l2, l3, "uuu", False, g * g))
            with f64_default():
                self._tps[key] = o3.TensorProduct(irreps(1, L1), irreps(1, L2), irreps(1, L3), instr,
                                                  irrep_normalization="none", path_normalization="none").double()
        return self._tps[key]

    def forward(self, x1, x2, lmax_out, w1=None, w2=None, wo=None):
        L1, L2 = R.lmax_of(x1.shape[-1]), R.lmax_of(x2.shape[-1])
        if w1 is not None:
            x1 = x1 * w1[..., R.degree_of_index(L1)]
        if w2 is not None:
            x2 = x2 * w2[..., R.degree_of_index(L2)]
        lead = torch.broadcast_shapes(x1.shape[:-1], x2.shape[:-1])
        out = self._tp(L1, L2, lmax_out)(x1.expand(*lead, x1.shape[-1]), x2.expand(*lead, x2.shape[-1]))
        if wo is not None:
            out = out * wo[..., R.degree_of_index(lmax_out)]
        return out


_PATH_NORM = {}


def _gaunt_path_norm(l1, l2, l3):
    """||G restricted to the path|| from a quadrature of e3nn's harmonics (independent of geoops' tables)."""
    key = (l1, l2, l3)
    if key not in _PATH_NORM:
        import numpy as np
        T = l1 + l2 + l3
        x, w = np.polynomial.legendre.leggauss(T // 2 + 2)
        na = T + 3
        beta = torch.from_numpy(np.arccos(x))
        alpha = torch.arange(na, dtype=F64) * (2 * math.pi / na)
        Bt, At = torch.meshgrid(beta, alpha, indexing="ij")
        W = (torch.from_numpy(w)[:, None].expand_as(Bt) * (2 * math.pi / na)).reshape(-1)
        xyz = torch.stack([Bt.sin() * At.sin(), Bt.cos(), Bt.sin() * At.cos()], -1).reshape(-1, 3)
        Y = [o3.spherical_harmonics(l, xyz, normalize=True, normalization="integral") for l in (l1, l2, l3)]
        _PATH_NORM[key] = torch.einsum("p,pi,pj,pk->ijk", W, *Y).norm().item()
    return _PATH_NORM[key]


def energy_forces(model, mol):
    pos, spec, bat, src, dst, ng = mol
    pos = pos.detach().requires_grad_()
    E = model(pos, spec, bat, src, dst, ng)
    (F,) = torch.autograd.grad(-E.sum(), pos, create_graph=True)
    return E, F


def loss_fn(model, mol, E_ref, F_ref):
    E, F = energy_forces(model, mol)
    return (E - E_ref).square().mean() + (F - F_ref).square().mean()


def targets(mol, seed=1):
    g = torch.Generator().manual_seed(seed)
    pos = mol[0]
    return torch.randn(mol[5], generator=g, dtype=pos.dtype), torch.randn(pos.shape, generator=g, dtype=pos.dtype)


def grads(model, mol, E_ref, F_ref):
    model.zero_grad()
    loss = loss_fn(model, mol, E_ref, F_ref)
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def make(route="auto", dtype=F64, **kw):
    return Potential(route=route, **kw).to(dtype)


MOL_SIZES = (5, 3, 7)


def _rel(g, g0):
    return max((g[n].double() - g0[n]).abs().max().item() / max(g0[n].abs().max().item(), 1e-300) for n in g0)


@pytest.fixture(scope="module")
def oracle64():
    """The fp64 loss and gradients of the model built on e3nn's TensorProduct (chains of binary products)."""
    mol = molecules(MOL_SIZES)
    Er, Fr = targets(mol)
    return mol, Er, Fr, grads(make("grid", tp=E3nnTP()), mol, Er, Fr)


# ---------------------------------------------------------------- training: routes, backends, e3nn
@pytest.mark.parametrize("route", ROUTES)
def test_energy_force_training_matches_reference_and_e3nn(route, oracle64):
    """loss = energies + forces (forces by autograd.grad(create_graph=True)), loss.backward(): double backward
    through every Gaunt op (binary with a channel broadcast, power, 3-factor product, the nn module)."""
    mol, Er, Fr, (l_e3, g_e3) = oracle64
    l, g = grads(make(route), mol, Er, Fr)
    with backend("reference"):
        l_ref, g_ref = grads(make(route), mol, Er, Fr)
    assert set(g) == set(g_e3) and all(g[n].abs().max() > 0 for n in g)  # every parameter is reached
    for other_l, other_g in ((l_ref, g_ref), (l_e3, g_e3)):
        assert abs(l.item() - other_l.item()) <= 1e-12 * abs(other_l.item())
        assert _rel(g, other_g) < 1e-10


@pytest.mark.parametrize("route", ROUTES)
def test_fp32_training_within_the_low_precision_rule(route):
    mol = molecules(MOL_SIZES)
    Er, Fr = targets(mol)
    mol32 = tuple(t.float() if torch.is_tensor(t) and t.is_floating_point() else t for t in mol)
    with backend("reference"):
        l64, g64 = grads(make(route), mol, Er, Fr)
        lr, gr = grads(make(route, dtype=torch.float32), mol32, Er.float(), Fr.float())
    l32, g32 = grads(make(route, dtype=torch.float32), mol32, Er.float(), Fr.float())
    assert g32["w_sh1"].dtype == torch.float32
    assert abs(l32.item() - l64.item()) <= 2 * abs(lr.item() - l64.item()) + 1e-6 * abs(l64.item())
    assert _rel(g32, g64) <= 2 * _rel(gr, g64) + 1e-6


def test_adam_steps_follow_the_reference():
    mol = molecules(MOL_SIZES)
    Er, Fr = targets(mol)
    models = []
    for be in ("cpp", "reference"):
        with backend(be):
            m = make("auto")
            opt = torch.optim.Adam(m.parameters(), lr=1e-2)
            losses = []
            for _ in range(3):
                opt.zero_grad()
                loss = loss_fn(m, mol, Er, Fr)
                loss.backward()
                opt.step()
                losses.append(loss.item())
            models.append((m, losses))
    (m, l), (m0, l0) = models
    assert l[-1] < l[0]
    torch.testing.assert_close(torch.tensor(l), torch.tensor(l0), rtol=1e-11, atol=0)
    for (n, p), p0 in zip(m.named_parameters(), m0.parameters()):
        torch.testing.assert_close(p, p0, rtol=0, atol=1e-10, msg=n)


# ---------------------------------------------------------------- symmetry
@pytest.mark.parametrize("route", ROUTES)
def test_energies_invariant_forces_equivariant(route):
    """Rotate and invert the molecules (e3nn's random rotation; the SH layer of each degree transforms by
    e3nn's Wigner D with parity): energies invariant, forces rotate with the molecule."""
    mol = molecules(MOL_SIZES)
    m = make(route)
    E, F = energy_forces(m, mol)
    with f64_default():
        a, b, c = torch.rand(3, generator=torch.Generator().manual_seed(3), dtype=F64) * 2 * math.pi
        Rm = o3.angles_to_matrix(a, b, c)
        D = irreps(1, 2).D_from_matrix(Rm)
    for Q in (Rm, -Rm):
        E2, F2 = energy_forces(m, (mol[0] @ Q.T,) + mol[1:])
        torch.testing.assert_close(E2, E, rtol=0, atol=1e-12)
        torch.testing.assert_close(F2, F @ Q.T, rtol=0, atol=1e-12)
    # the layer features themselves are equivariant (e3nn's Wigner D of the SH irreps)
    x = torch.randn(4, 9, dtype=F64)
    y = o3.spherical_harmonics([0, 1, 2], torch.randn(4, 3, dtype=F64), True, normalization="integral")
    out = ga.gaunt_tensor_product(x @ D.T, y @ D.T, 2, route=route)
    torch.testing.assert_close(out, ga.gaunt_tensor_product(x, y, 2, route=route) @ D.T, rtol=0, atol=1e-12)


def test_sh_normalisation_conventions():
    """geoops expects e3nn's "integral" SH.  "component" SH are sqrt(4 pi) times those in every degree (a global
    scale of the message); "norm" SH differ per degree: sqrt(4 pi / (2l+1)) (a per-degree weight undoes it)."""
    v = torch.randn(6, 3, dtype=F64)
    sh = {n: o3.spherical_harmonics([0, 1, 2], v, True, normalization=n) for n in ("integral", "component", "norm")}
    torch.testing.assert_close(sh["component"], math.sqrt(4 * math.pi) * sh["integral"])
    deg = R.degree_of_index(2)
    scale = torch.sqrt(4 * math.pi / (2 * torch.arange(3, dtype=F64) + 1))
    torch.testing.assert_close(sh["norm"], sh["integral"] * scale[deg])
    x = torch.randn(6, 9, dtype=F64)
    torch.testing.assert_close(ga.gaunt_tensor_product(x, sh["norm"], 2, weight2=1 / scale),
                               ga.gaunt_tensor_product(x, sh["integral"], 2))


# ---------------------------------------------------------------- inference, serialisation, edge cases
def test_eval_no_grad_and_inference_mode_energies():
    mol = molecules(MOL_SIZES)
    m = make("auto")
    E, _ = energy_forces(m, mol)
    m.eval()
    with torch.no_grad():
        E1 = m(*mol)
    with torch.inference_mode():
        E2 = m(*mol)
    torch.testing.assert_close(E1, E.detach(), rtol=0, atol=1e-14)
    torch.testing.assert_close(E2, E.detach(), rtol=0, atol=1e-14)


def test_state_dict_deepcopy_and_torch_save():
    from e3nn.o3 import _irreps
    from geoops.nn import GauntTensorProduct

    mol = molecules(MOL_SIZES)
    m = make("auto")
    E, F = energy_forces(m, mol)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    m2 = make("grid", C=4)
    with torch.no_grad():
        for p in m2.parameters():
            p.zero_()
    m2.load_state_dict(torch.load(buf, weights_only=True))
    for mm in (m2, copy.deepcopy(m)):
        E2, F2 = energy_forces(mm, mol)
        torch.testing.assert_close(E2, E, rtol=0, atol=1e-13)
        torch.testing.assert_close(F2, F, rtol=0, atol=1e-13)
    # the whole module: torch 2.13's weights_only=True default refuses its classes (torch's rule for any module)
    # until they are allowed; then it loads and computes the same
    tp = GauntTensorProduct(irreps(2, 1), irreps(2, 1), irreps(2, 2), route="direct")
    buf = io.BytesIO()
    torch.save(tp, buf)
    buf.seek(0)
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(buf)
    buf.seek(0)
    with torch.serialization.safe_globals([GauntTensorProduct, _irreps.Irreps, _irreps.Irrep, _irreps._MulIr]):
        tp2 = torch.load(buf, weights_only=True)
    x, y = torch.randn(3, 8), torch.randn(3, 8)
    torch.testing.assert_close(tp2(x, y), tp(x, y), rtol=0, atol=0)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("sizes,L,C", [((1, 5, 1), 2, 4),  # isolated atoms (no edges) beside a molecule
                                       ((1, 1), 2, 4),  # no edge at all: every Gaunt op on zero rows
                                       ((4, 3), 0, 4),  # lmax 0
                                       ((4, 3), 1, 1)])  # one channel, lmax 1
def test_edge_cases_match_reference(route, sizes, L, C):
    mol = molecules(sizes)
    Er, Fr = targets(mol)
    l, g = grads(make(route, L=L, C=C), mol, Er, Fr)
    with backend("reference"):
        l0, g0 = grads(make(route, L=L, C=C), mol, Er, Fr)
    assert all(torch.isfinite(t).all() for t in g.values())
    assert abs(l.item() - l0.item()) <= 1e-12 * abs(l0.item())
    assert max((g[n] - g0[n]).abs().max().item() for n in g) < 1e-12


# ---------------------------------------------------------------- torch.func and autocast
def _one_molecule_conformers():
    mol = molecules((5,), seed=3)
    P = mol[0][None] + 0.05 * torch.randn(3, *mol[0].shape, generator=torch.Generator().manual_seed(9), dtype=F64)
    return mol, P



def vmap_over_conformers_matches_the_loop(m, P, rest):
    """torch.func.vmap over the conformers P of one molecule (energies, forces, per-sample parameter gradients) =
    the loop over them (also run on the Triton backend by tests/triton/test_app_triton.py)."""
    Ev = torch.func.vmap(lambda p: m(p, *rest))(P)
    torch.testing.assert_close(Ev, torch.stack([m(p, *rest) for p in P]).detach(), rtol=0, atol=1e-14)
    Fv = torch.func.vmap(torch.func.grad(lambda p: -m(p, *rest).sum()))(P)
    Fe = torch.stack([energy_forces(m, (p,) + rest)[1] for p in P])
    torch.testing.assert_close(Fv, Fe.detach(), rtol=0, atol=1e-14)
    params = {k: v.detach() for k, v in m.named_parameters()}
    G = torch.func.vmap(torch.func.grad(lambda prm, p: torch.func.functional_call(m, prm, (p, *rest)).sum()),
                        in_dims=(None, 0))(params, P)
    m.zero_grad()
    m(P[1], *rest).sum().backward()
    for k, p in m.named_parameters():
        torch.testing.assert_close(G[k][1], p.grad, rtol=0, atol=1e-13, msg=k)

def test_vmap_over_conformers_and_per_sample_gradients():
    m = make("auto")
    mol, P = _one_molecule_conformers()
    rest = mol[1:]
    vmap_over_conformers_matches_the_loop(m, P, rest)


def test_jacrev_forces_and_hessian():
    m = make("auto")
    mol, _ = _one_molecule_conformers()
    pos, rest = mol[0], mol[1:]
    J = torch.func.jacrev(lambda p: m(p, *rest))(pos)
    F = energy_forces(m, mol)[1]
    torch.testing.assert_close(J[0], -F.detach(), rtol=0, atol=1e-14)
    H = torch.func.jacrev(torch.func.jacrev(lambda p: m(p, *rest).sum()))(pos)
    # the Hessian row of atom 0, x: the derivative of -forces, by autograd through the force graph
    p = pos.clone().requires_grad_()
    E = m(p, *rest).sum()
    (g,) = torch.autograd.grad(E, p, create_graph=True)
    (h,) = torch.autograd.grad(g[0, 0], p)
    torch.testing.assert_close(H[0, 0], h, rtol=0, atol=1e-13)


def test_autocast_bfloat16_forward_keeps_the_gaunt_ops_in_float32():
    m = make("auto", dtype=torch.float32)
    mol = tuple(t.float() if torch.is_tensor(t) and t.is_floating_point() else t for t in molecules((5, 4)))
    E0, F0 = energy_forces(m, mol)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        E, F = energy_forces(m, mol)
        x = torch.randn(5, 4, 9)
        assert ga.gaunt_tensor_product(x, x, 2).dtype == torch.float32
    (E.square().sum() + F.square().sum()).backward()
    assert F.dtype == torch.float32 and all(torch.isfinite(p.grad).all() for p in m.parameters())
    # only the bf16 linears (radial, readout) round: a few bf16 ulps of the scale
    assert (F - F0).abs().max() <= 0.02 * F0.abs().max()
    assert (E - E0).abs().max() <= 0.02 * E0.abs().max() + 1e-3


# ---------------------------------------------------------------- torch.compile
def _small(route="auto"):
    return make(route, C=2, L=1)


@pytest.mark.slow
@pytest.mark.build_relative("compiled against the eager model in one build; the gaunt entry points it reads "
                            "are read by the eager tests of this file and tests/test_gaunt.py, which the portable stage runs")
@pytest.mark.parametrize("dynamic", [None, True])
def test_compiled_model_energies_and_forces(dynamic):
    """torch.compile of the model, two batches of different sizes (a recompile or a dynamic graph); forces by
    autograd.grad through the compiled graph (inference / MD: no create_graph).  The recompile (None) on
    aot_eager: automatic dynamic shapes are dynamo's; Inductor's lowering of the model is dynamic=True's (symbolic
    sizes) and, static, test_compiled_force_training_through_func_grad's (an Inductor compile
    per case was the main pytest stage's largest sink)."""
    torch._dynamo.reset()
    m = _small()
    cm = torch.compile(m, dynamic=dynamic, **({} if dynamic else dict(backend="aot_eager")))
    for mol in (molecules(MOL_SIZES), molecules((4, 6), seed=5)):
        pos = mol[0].clone().requires_grad_()
        E = cm(pos, *mol[1:])
        (F,) = torch.autograd.grad(-E.sum(), pos)
        E0, F0 = energy_forces(m, mol)
        torch.testing.assert_close(E, E0.detach(), rtol=0, atol=1e-13)
        torch.testing.assert_close(F, F0.detach(), rtol=0, atol=1e-13)


@pytest.mark.slow
@pytest.mark.build_relative("compiled against the eager model in one build; the gaunt entry points it reads "
                            "are read by the eager tests of this file and tests/test_gaunt.py, which the portable stage runs")
def test_compiled_force_training_through_func_grad():
    """Force training under torch.compile: autograd.grad(create_graph=True) through a compiled forward is torch's
    own limitation ("torch.compile with aot_autograd does not currently support double backward", raised, not
    silent); forces by torch.func.grad inside the compiled function train correctly.  One batch, Inductor's static
    lowering of the func.grad graph: a second batch size only recompiled it with a dynamic batch (a second Inductor
    compile: 137.6 -> 81.4 s of CPU with a cold Inductor cache, 45.7 -> 28.6 warm), a symbolic-size lowering that
    test_compiled_model_energies_and_forces[True] makes of the model; the recompile itself is dynamo's ([None])."""
    torch._dynamo.reset()
    m = _small()
    mol = molecules(MOL_SIZES)
    Er, Fr = targets(mol)
    # the double-backward refusal is AOTAutograd's: Inductor would only add a compile of the whole model (one graph
    # since session 44, ~4 s of CPU) that nothing here checks; ef below is Inductor's
    cm = torch.compile(m, backend="aot_eager")
    with pytest.raises(RuntimeError, match="double backward|donated buffers"):
        grads(cm, mol, Er, Fr)

    def ef(pos, *rest):
        return m(pos, *rest), -torch.func.grad(lambda p: m(p, *rest).sum())(pos)

    cef = torch.compile(ef)
    m.zero_grad()
    E, F = cef(*mol)
    ((E - Er).square().mean() + (F - Fr).square().mean()).backward()
    gc = {n: p.grad.clone() for n, p in m.named_parameters()}
    l0, g0 = grads(m, mol, Er, Fr)
    assert _rel(gc, g0) < 1e-12


@pytest.mark.slow
def test_compiled_func_grad_forces_fullgraph():
    """torch.func.grad of a Gaunt op inside torch.compile(fullgraph=True) traces without a graph break (it broke in
    geoops._library.apply, whose dict of torch.func twins keyed by the Function class dynamo cannot hash: recompile-
    limit warnings and an eager fallback); each family's case: tests/test_func_compile.py.  Forces for inference / MD
    (torch.no_grad() outside): with autograd recording outside, force training, the call runs eagerly on purpose
    (torch 2.13's traced autograd.Function drops the forces' dependence on the parameters: test above)."""
    x = torch.randn(5, 3, 9, dtype=F64)
    y = torch.randn(5, 1, 9, dtype=F64)
    w = torch.ones(3, 3, dtype=F64, requires_grad=True)

    def f(x):
        return torch.func.grad(lambda a: ga.gaunt_tensor_product(a, y, 2, weight_out=w).square().sum())(x)

    want = f(x)
    torch._dynamo.reset()
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(f, fullgraph=True)(x), want)


# ---------------------------------------------------------------- the nn module with edge SH of multiplicity 1
@pytest.mark.parametrize("route", ROUTES)
def test_module_takes_sh_of_multiplicity_one(route):
    """MACE / NequIP write the message as TP(node features C x (0e+1o+2e), edge SH 1 x (0e+1o+2e)): the module
    refused it ('must share one multiplicity') although the functional op broadcasts a [E, 1, n] SH over the
    channels.  A multiplicity-1 input is now broadcast over the C channels; it equals e3nn's TensorProduct with
    "uvu" ("uuu" for in1 of multiplicity 1: "uvv") paths and Gaunt path weights, gradients included."""
    from geoops.nn import GauntTensorProduct

    C, E = 3, 5
    i_node, i_sh, i_out = irreps(C, 2), irreps(1, 2), irreps(C, 3)
    for flip in (False, True):
        i1, i2 = (i_sh, i_node) if flip else (i_node, i_sh)
        mod = GauntTensorProduct(i1, i2, i_out, route=route).double()
        instr = []
        for a, (_, r1) in enumerate(i1):
            for b, (_, r2) in enumerate(i2):
                for c, (_, r3) in enumerate(i_out):
                    l1, l2, l3 = r1.l, r2.l, r3.l
                    if abs(l1 - l2) <= l3 <= l1 + l2 and (l1 + l2 + l3) % 2 == 0:
                        g = _gaunt_path_norm(l1, l2, l3)
                        instr.append((a, b, c, "uvv" if flip else "uvu", False, g * g))
        with f64_default():
            tp = o3.TensorProduct(i1, i2, i_out, instr, irrep_normalization="none",
                                  path_normalization="none").double()
        g = torch.Generator().manual_seed(7)
        x1 = torch.randn(E, i1.dim, generator=g, dtype=F64, requires_grad=True)
        x2 = torch.randn(E, i2.dim, generator=g, dtype=F64, requires_grad=True)
        out = mod(x1, x2)
        ref = tp(x1, x2)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
        w = torch.randn(ref.shape, generator=g, dtype=F64)
        ga1 = torch.autograd.grad((out * w).sum(), (x1, x2))
        gr = torch.autograd.grad((ref * w).sum(), (x1, x2))
        for a, b in zip(ga1, gr):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
        assert mod.weight1.shape == (C, 3) and mod.weight2.shape == (C, 3) and mod.weight_out.shape == (C, 4)
        gc = torch.autograd.gradcheck(lambda a, b, w1, w2, wo: torch.func.functional_call(
            mod, {"weight1": w1, "weight2": w2, "weight_out": wo}, (a, b)),
            (x1[:2], x2[:2], *[(1 + 0.1 * torch.randn(p.shape, generator=g, dtype=F64)).requires_grad_()
                               for p in (mod.weight1, mod.weight2, mod.weight_out)]))
        assert gc
    with pytest.raises(ValueError, match="multiplicity"):
        GauntTensorProduct(i_node, i_sh, irreps(1, 2))  # the output carries the channels
    with pytest.raises(ValueError, match="multiplicity"):
        GauntTensorProduct(irreps(2, 1), irreps(3, 1), irreps(3, 1))


# ---------------------------------------------------------------- memory of the channel broadcast
def _saved_bytes(fn):
    """Bytes autograd saves for backward in fn() (tensors that share storage counted once)."""
    seen = {}

    def pack(t):
        seen[(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


@pytest.mark.parametrize("route", ["grid", "direct"])
def test_weight_with_unit_leading_dims_is_one_row(route):
    """A per-degree weight shared by every row given as (1, L+1) (or (1, 1, L+1)) was expanded to N rows and
    saved at that size (N x (L+1) values), where the same weight as (L+1,) is one row; now every weight whose
    leading dims are all 1 is one row: the same numbers and gradients, nothing of size N saved for it."""
    E, C, L = 64, 8, 2
    g = torch.Generator().manual_seed(1)
    x1 = torch.randn(E, C, 9, generator=g, dtype=F64, requires_grad=True)
    y = torch.randn(E, 1, 9, generator=g, dtype=F64, requires_grad=True)
    w = (1 + 0.2 * torch.randn(L + 1, generator=g, dtype=F64)).requires_grad_()
    rows = E * C * 8
    base = _saved_bytes(lambda: ga.gaunt_tensor_product(x1, y, L, weight2=w, route=route))
    for shaped in (w[None], w[None, None]):
        got = _saved_bytes(lambda: ga.gaunt_tensor_product(x1, y, L, weight2=shaped, route=route))
        assert got <= base, (got, base, rows)
        out = ga.gaunt_tensor_product(x1, y, L, weight1=shaped.expand(C, L + 1) if shaped.dim() == 2 else None,
                                      weight2=shaped, weight_out=shaped, route=route)
        out1 = ga.gaunt_tensor_product(x1, y, L, weight1=w.expand(C, L + 1) if shaped.dim() == 2 else None,
                                       weight2=w, weight_out=w, route=route)
        torch.testing.assert_close(out, out1, rtol=0, atol=1e-14)
        gr = torch.autograd.grad(out.square().sum(), (x1, y, w), create_graph=True)
        gr1 = torch.autograd.grad(out1.square().sum(), (x1, y, w), create_graph=True)
        for a, b in zip(gr, gr1):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        (h,) = torch.autograd.grad(gr[2].sum(), w)
        (h1,) = torch.autograd.grad(gr1[2].sum(), w)
        torch.testing.assert_close(h, h1, rtol=1e-12, atol=1e-12)


def test_broadcast_factor_is_not_saved_at_channel_size():
    """A factor broadcast over channels ([E, 1, n] edge SH against [E, C, n] features) was copied to E*C rows in the
    forward and that copy saved for the backward (C x the SH's size per layer until then).  GauntFn now saves the
    expanded view and makes the kernels' rows again in the backward (session 36, lead)."""
    E, C = 256, 16
    x1 = torch.randn(E, C, 16, dtype=F64, requires_grad=True)
    y = torch.randn(E, 1, 16, dtype=F64, requires_grad=True)
    saved = _saved_bytes(lambda: ga.gaunt_tensor_product(x1, y, 3, route="direct"))
    assert saved <= x1.numel() * 8 + 4 * y.numel() * 8


# ---------------------------------------------------------------- TorchScript tracing (deployment, e.g. LAMMPS)
@pytest.mark.parametrize("route", ["grid", "direct", "fft"])
def test_jit_trace_refuses_the_gaunt_op_instead_of_returning_garbage(route):
    """torch.jit.trace (deprecated in torch 2.13, still what LAMMPS-style deployment uses): the eager fast path
    called the C++ kernel directly, invisible to the tracer, so the trace kept only the output's allocation and
    the traced function returned uninitialised memory (1e38s) without an error, for every geoops op.  Under
    tracing the dispatched custom ops run now (recorded, as under torch.compile); the Gaunt op's schema has a
    Tensor?[] list, which the tracer cannot record, so it raises a clear error naming torch.export instead."""
    import warnings

    from geoops.nn import GauntTensorProduct

    x, y = torch.randn(10, 4, 9), torch.randn(10, 1, 9)
    mod = GauntTensorProduct(irreps(4, 2), irreps(1, 2), irreps(4, 2), route=route)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match="torch.jit.trace cannot record the Gaunt op.*torch.export"):
            torch.jit.trace(lambda a, b: ga.gaunt_tensor_product(a, b, 2, route=route), (x, y), check_trace=False)
        with pytest.raises(RuntimeError, match="torch.jit.trace cannot record"):
            torch.jit.trace(mod, (torch.randn(10, 36), torch.randn(10, 9)))
    # torch.export (the supported deployment path) of the module
    a, b = torch.randn(10, 36), torch.randn(10, 9)
    ep = torch.export.export(mod, (a, b), dynamic_shapes=({0: torch.export.Dim("n")}, {0: torch.export.Dim("n")}))
    a, b = torch.randn(7, 36), torch.randn(7, 9)
    torch.testing.assert_close(ep.module()(a, b), mod(a, b), rtol=0, atol=0)


def test_jit_trace_of_other_families_records_their_ops():
    """The same shared fast-path rule (geoops._library.direct_call_ok): a traced stereographic op returned
    wrong numbers (0.2-0.6 off), a traced ssm.fftconv uninitialised memory (1e34), without an error; their
    custom ops are recorded and replayed now."""
    import warnings

    from geoops import ssm
    from geoops import stereographic as st

    g = torch.Generator().manual_seed(4)
    x = 0.1 * torch.randn(6, 5, generator=g)
    k = torch.tensor(-1.0)
    fns = [lambda a: st.expmap0(a, k=k), lambda a: st.mobius_add(a, a.flip(0), k=k),
           lambda a: st.dist(a, a.flip(0), k=k), lambda a: ssm.fftconv(a.reshape(2, 3, 5), kk)]
    kk = torch.randn(3, 5, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for f in fns:
            t = torch.jit.trace(f, (x,), check_trace=False)
            x2 = 0.1 * torch.randn(6, 5, generator=g)
            torch.testing.assert_close(t(x), f(x), rtol=0, atol=0)
            torch.testing.assert_close(t(x2), f(x2), rtol=0, atol=0)


@pytest.mark.parametrize("internal", [True, False])
def test_module_takes_per_edge_weights(internal):
    """MACE feeds per-edge radial weights to the message tensor product; the module took none (only its own
    [C, L+1] parameters).  forward(x1, x2, weight1=, weight2=, weight_out=) now takes per-sample weights
    [..., C, L+1], multiplied with the internal ones: the same as the functional op with the product weight."""
    from geoops.nn import GauntTensorProduct

    C, E = 3, 6
    mod = GauntTensorProduct(irreps(C, 2), irreps(1, 2), irreps(C, 2), internal_weights=internal).double()
    g = torch.Generator().manual_seed(8)
    if internal:
        with torch.no_grad():
            for p in mod.parameters():
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g, dtype=F64))
    x1 = torch.randn(E, irreps(C, 2).dim, generator=g, dtype=F64, requires_grad=True)
    x2 = torch.randn(E, 9, generator=g, dtype=F64, requires_grad=True)
    R = torch.randn(E, C, 3, generator=g, dtype=F64, requires_grad=True)
    S = torch.randn(E, 1, 3, generator=g, dtype=F64, requires_grad=True)
    out = mod(x1, x2, weight2=S, weight_out=R)
    a, b = from_flat(x1, C, 2), x2[:, None, :]
    w2 = S if not internal else mod.weight2 * S
    wo = R if not internal else mod.weight_out * R
    want = ga.gaunt_tensor_product(a, b, 2, weight1=mod.weight1 if internal else None, weight2=w2, weight_out=wo)
    torch.testing.assert_close(from_flat(out, C, 2), want, rtol=0, atol=1e-13)
    assert torch.autograd.gradcheck(lambda *t: mod(*t[:2], weight2=t[2], weight_out=t[3]),
                                    (x1[:2], x2[:2], S[:2], R[:2]))
    with pytest.raises(ValueError, match=r"weight_out must be a tensor \[\.\.\., C, L\+1\]"):
        mod(x1, x2, weight_out=torch.ones(E, 3))


# ---------------------------------------------------------------- reentrant checkpointing and route="auto" (session 37)
def test_reentrant_checkpoint_is_bitwise_with_auto_route(monkeypatch):
    """route='auto' picks by requires_grad, not by grad mode: reentrant checkpointing's no-grad forward and its
    recompute run one route (on a class whose two rankings differ: x86_64-amd-avx2 binary lmax 5, fft vs grid)."""
    from torch.utils.checkpoint import checkpoint

    from geoops import _backend

    monkeypatch.setitem(_backend._cache, "cpu_class", "x86_64-amd-avx2")  # (a class whose rankings differ)

    def run(mode):
        g = torch.Generator().manual_seed(0)
        x1 = torch.randn(8, 4, 36, generator=g).requires_grad_()
        y = torch.randn(8, 1, 36, generator=g).requires_grad_()

        def f(a, b):
            return ga.gaunt_tensor_product(a, b, 5)
        out = f(x1, y) if mode is None else checkpoint(f, x1, y, use_reentrant=mode)
        out.pow(2).sum().backward()
        return out.detach(), x1.grad, y.grad

    base = run(None)
    for mode in (False, True):
        for a, b in zip(run(mode), base):
            assert torch.equal(a, b)
