"""Gaunt tensor products: the equivariant product of spherical-harmonic features, fused.

For real spherical harmonics Y in e3nn's basis, order and axes with orthonormal ("integral") normalisation
(see ``geoops.reference.gaunt``), the Gaunt tensor product of two coefficient vectors is

    out_k = sum_ij G_ijk x1_i x2_j,    G_ijk = integral over S^2 of Y_i Y_j Y_k,

i.e. the coefficients of the product of the two spherical functions f1 = sum x1_i Y_i and f2 = sum x2_j Y_j,
projected onto degrees <= lmax_out.  G vanishes unless l1 + l2 + l3 is even and |l1 - l2| <= l3 <= l1 + l2; on
the allowed paths it is e3nn's ``wigner_3j`` times sqrt((2l1+1)(2l2+1)(2l3+1)/(4 pi)) |(l1 l2 l3; 0 0 0)|.

Routes (all exact to round-off; ``route="auto"`` picks the fastest from the table measured on this machine's CPU class (or the GPU's compute capability) by ``python -m bench.gaunt --write-routes``,
see ``route_table``: ranked by forward + backward time when an
input or weight requires grad (whatever the grad mode, so that no_grad evaluation and checkpoint recomputes run
the training route: ``needs_backward``), else by forward time):

* ``"grid"``   evaluate on an exact Gauss-Legendre x uniform sphere grid, multiply, project back; on CPU
                separably (per m a small Legendre block over l, then the azimuthal sums over m with the
                quarter-period symmetries), fused per tile of rows held in SIMD lanes;
* ``"grid_gemm"`` the same grid as dense GEMMs per row tile (one (L+1)^2 x grid matrix per factor; on CPU the
                BLAS form, faster at small degrees; elsewhere the same as "grid");
* ``"direct"`` fused sparse contraction over the nonzero Gaunt coefficients (binary products);
* ``"fft"``    Luo et al.: SH -> 2D Fourier coefficients (sparse, generated in closed form), 2D convolution by
                the convolution theorem on the torus, Fourier -> SH restricted to the output frequencies; on CPU
                the per-m blocks of the change of basis composed with the polar DFT, the torus mirror folded
                (same separable kernel as "grid"); on CUDA torch's rfft2/irfft2.

Per-degree weights ``weight1``, ``weight2``, ``weight_out`` ([..., L+1], broadcasting with the leading dims)
scale degree l of the inputs before the product and of the output after it: these are the weights the Gaunt
form admits (per-path weights are not expressible: a product of two functions has no notion of path).

Gradients: to every input and every weight, and double backward: the gradient of x1 is itself a Gaunt product,
grad_x1 = w1 * P_{<=L1}[ f(w2 x2) f(w_out g) ] (G is symmetric in its three indices), so the backward is written
with the same fused op and is differentiable again; nothing O(L^6) is ever formed.  A first-order backward of the
grid and direct routes on CPU runs these products as one fused kernel (the same sums; direct adds them in
another order).  Reverse mode only: forward
mode (torch.func.jvp, jacfwd, hessian, forward_ad dual tensors) raises NotImplementedError (use
jacrev(jacrev(f)) for a Hessian).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from . import _args, _backend, _gaunt_routes, _library
from ._ops import gaunt as _impl
from .reference import gaunt as _ref

__all__ = ["gaunt_tensor_product", "gaunt_product", "gaunt_power", "GauntFn", "ROUTES", "choose_route", "route_table",
           "needs_backward"]

ROUTES = ("auto", "grid", "grid_gemm", "direct", "fft")


# ---------------------------------------------------------------- autograd
def _deg(L: int, device) -> torch.Tensor:
    """Degree of each coefficient (cached in eager; built inline while torch.compile traces)."""
    if torch.compiler.is_compiling():
        return _ref.degree_of_index(L).to(device)
    return _impl._deg_index(L, device)


def _segsum(t: torch.Tensor, L: int) -> torch.Tensor:
    """(N, (L+1)^2) -> (N, L+1): sum over each degree's coefficients."""
    return t.new_zeros((t.shape[0], L + 1)).index_add(1, _deg(L, t.device), t)


def _reduce_rows(g: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return _library.fixed_sum(g, 0, keepdim=True) if like.shape[0] == 1 and g.shape[0] != 1 else g


def _reached(ctx, need, args) -> List[bool]:
    """needs_input_grad pruned to the inputs the running graph task reaches.  needs_input_grad only says which
    inputs require grad: under autograd.grad(E, x1, create_graph=True) (forces) it still asks for x2's and the
    weights' gradients, which cost a Gaunt product each (w_out's the raw product); the engine knows which next
    nodes it will run (torch._C._will_engine_execute_node; a leaf that autograd.grad captures raises: kept)."""
    out = list(need)
    if not any(out) or torch.compiler.is_compiling() or _library.functorch_active():
        return out
    edges = iter(ctx.next_functions)  # one per tensor input, in order (None inputs have none)
    for i, a in enumerate(args):
        if a is None:
            continue
        node = next(edges)[0]
        if out[i] and node is not None:
            try:
                out[i] = bool(torch._C._will_engine_execute_node(node))
            except (RuntimeError, AttributeError):  # a captured leaf; or a torch without this private call
                pass
    return out


@_library.with_func_twin
class GauntFn(torch.autograd.Function):
    """autograd.Function of the nu-ary Gaunt product on rows: torch.ops.geoops.gaunt_fwd.

    apply(lmax_out, route, nu, x_1..x_nu, w_1..w_nu, w_out): tensors [*b, n] whose leading dims broadcast to one
    batch (N rows; (N, n) rows and (1, n) weights are the plain case); returns the (N, n_out) rows.  A factor
    broadcast over channels ([E, 1, n] against [E, C, n]) comes unexpanded: the kernels' rows of it are made per
    chunk of the batch's first dim (:data:`CHUNK_ROWS`) in the forward and the first-order backward, and its
    gradient is summed over the broadcast dims chunk by chunk, so no tensor of the broadcast size lives whole
    (session 38).  The backward is expressed with GauntFn itself
    (grad of x_i = w_i * P_{<=L_i}[prod_{j != i} f_j * f(w_out g)]), so it is differentiable to any order.  When it
    need not be (no create_graph, no torch.func transform) the grid and direct routes on CPU compute the same products
    in one fused kernel (geoops::gaunt_bwd: every factor and w_out g evaluated on the shared grid once, or moved
    into SIMD lanes once for the sparse contractions): bit for bit for grid, for direct the same sums in another
    order (within a few ulps of the gradient's scale).  Its store step also weights grad x_i by w_i and forms the
    per-degree weight-gradient sums per row (session 23), the same bits as the torch passes of the loop.
    """

    differentiable_backward = True  # its torch.func twin allows nested derivative transforms

    @staticmethod
    def forward(ctx, lmax_out, route, nu, *args):
        # the inputs as given (a factor broadcast over channels stays unexpanded: no N-row copy of it is saved)
        ctx.save_for_backward(*args)
        ctx.lmax_out, ctx.route, ctx.nu = lmax_out, route, nu
        return _product(args, nu, lmax_out, route)

    @staticmethod
    def backward(ctx, g):
        saved = ctx.saved_tensors
        need = _reached(ctx, ctx.needs_input_grad[3:], saved)
        batch = _batch(saved)
        g = g.contiguous()
        chunks = _chunk_plan(saved[:ctx.nu], batch) if _first_order() else None
        if chunks is not None:
            return (None, None, None, *GauntFn._chunked_backward(ctx, g, saved, need, batch, chunks))
        grads = GauntFn._backward(ctx, g, saved, need, batch)
        # (rows gradients back to the inputs' shapes: [*batch, n] views; a broadcast input's summed to its shape)
        return (None, None, None, *[_shaped(d, t, batch) for d, t in zip(grads[3:], saved)])

    @staticmethod
    def _backward(ctx, g, saved, need, batch):
        """The gradients as rows: (N, n) per factor and per-row weight, (1, n) per one-row weight."""
        nu = ctx.nu
        xs, ws, wout = _rows_of(saved, nu, batch)
        if _first_order() and _impl.has_fused_bwd(g.device, ctx.route, nu):
            return GauntFn._fused_backward(ctx, xs, ws, wout, g, need)
        return _row_grads(*GauntFn._loop_rows(ctx, xs, ws, wout, g, need), ws, wout)

    @staticmethod
    def _loop_rows(ctx, xs, ws, wout, g, need):
        """The backward as further Gaunt products on rows: (grad x_i, per-row weight sums, per-row w_out sums)."""
        nu, lmax_out, route = ctx.nu, ctx.lmax_out, ctx.route
        gx, gw = [None] * nu, [None] * nu
        for i in range(nu):
            if not (need[i] or need[nu + i]):
                continue
            L = _ref.lmax_of(xs[i].shape[1])
            others = [xs[j] for j in range(nu) if j != i] + [g]
            ows = [ws[j] for j in range(nu) if j != i] + [wout]
            if ws[i] is None or not need[nu + i]:
                gx[i] = _core(others, ows, ws[i], L, route)
            else:
                h = _core(others, ows, None, L, route)
                if need[i]:
                    gx[i] = h * ws[i].index_select(1, _deg(L, h.device))
                gw[i] = _segsum(h * xs[i], L)
        gwo = None
        if wout is not None and need[2 * nu]:
            raw = _core(xs, ws, None, lmax_out, route)
            gwo = _segsum(g * raw, lmax_out)
        return [gx[i] if need[i] else None for i in range(nu)], gw, gwo

    @staticmethod
    def _fused_rows(ctx, xs, ws, wout, g, need):
        """The fused kernel's (grad x_i, per-row weight sums, per-row w_out sums)."""
        nu, lmax_out = ctx.nu, ctx.lmax_out
        # need codes of gaunt_bwd: 2 = grad x_k (times w_k when given), + 4 = w_k's per-row sums
        mode = [(2 if need[i] else 0) + (4 if ws[i] is not None and need[nu + i] else 0) for i in range(nu)]
        want_wo = wout is not None and need[2 * nu]
        outs = iter(_impl.bwd_call(xs, ws, g, wout, mode + [4 if want_wo else 0], lmax_out, ctx.route))
        gx, gw = [None] * nu, [None] * nu
        for i in range(nu):
            if mode[i] & 2:
                gx[i] = next(outs)
            if mode[i] & 4:
                gw[i] = next(outs)
        return gx, gw, next(outs) if want_wo else None

    @staticmethod
    def _fused_backward(ctx, xs, ws, wout, g, need):
        """First-order backward through the fused kernel (geoops::gaunt_bwd, routes grid and direct): the same
        products as the loop above, the factors and wout * g evaluated on the shared grid (or put in lanes) once.
        The kernel's store step also applies w_k to grad x_k and forms the weight gradients' per-row per-degree
        sums (sum_m h_k x_k, and sum_m g raw for wout: [rows, L+1], summed as the loop's index_add); only the sum
        over rows of a broadcast weight (_reduce_rows) stays in torch.  Used only when the backward need not be
        differentiable (no create_graph, no torch.func transform); same numbers as the loop."""
        return _row_grads(*GauntFn._fused_rows(ctx, xs, ws, wout, g, need), ws, wout)

    @staticmethod
    def _chunked_backward(ctx, g, saved, need, batch, chunks):
        """First-order backward with a broadcast factor, chunk by chunk of the batch's first dim: each chunk's
        rows of every input (the broadcast factor's expanded there), its gradients as rows (the fused kernel or the
        loop), written into the gradients' place; a broadcast factor's summed over its broadcast dims per chunk
        (the same sum as autograd's expand backward when the factor has the batch's first dim, so bit for bit;
        else the chunks' sums added: the same to float rounding).  Weights' per-row sums (N x (L+1), small) are
        kept whole and reduced once, as without chunks."""
        nu, N = ctx.nu, g.shape[0]
        rows = GauntFn._fused_rows if _impl.has_fused_bwd(g.device, ctx.route, nu) else GauntFn._loop_rows
        out = [None] * len(saved)
        for a, b, r0, r1 in chunks:
            xs, ws, wout = _rows_of(saved, nu, batch, a, b)
            gx, gw, gwo = rows(ctx, xs, ws, wout, g[r0:r1], need)
            cb = (b - a, *batch[1:])
            for k, d in enumerate((*gx, *gw, gwo)):
                if d is None:
                    continue
                t, n = saved[k], d.shape[1]
                if k >= nu or _lead(t) == N:  # a weight's per-row sums, a factor's rows: in their rows' place
                    if out[k] is None:
                        out[k] = d.new_empty(N, n)
                    out[k][r0:r1] = d
                elif _splits(t, batch):  # a factor broadcast over later dims: its part of the chunk, summed
                    if out[k] is None:
                        out[k] = d.new_empty(t.shape)
                    out[k][a:b] = d.view(*cb, n).sum_to_size((b - a, *t.shape[1:]))
                else:  # a factor broadcast over the first dim too: the chunks' sums added
                    s = d.view(*cb, n).sum_to_size(t.shape)
                    out[k] = s if out[k] is None else out[k].add_(s)
            del xs, ws, wout, gx, gw, gwo, d  # (this chunk's rows freed before the next chunk's are made)
        for k, t in enumerate(saved):
            if out[k] is not None and (k >= nu or _lead(t) == N):
                # (a one-row weight's sums over all rows at once: _reduce_rows, as without chunks)
                out[k] = _shaped(_library.fixed_sum(out[k], 0, keepdim=True) if _lead(t) == 1 else out[k], t, batch)
        return out


def _row_grads(gx, gw, gwo, ws, wout) -> tuple:
    """GauntFn's gradients from the rows' (grad x_i, per-row weight sums, per-row w_out sums): a one-row weight's
    sums over the rows (_reduce_rows), after the three non-tensor arguments' Nones."""
    return (None, None, None, *gx, *[_reduce_rows(d, w) if d is not None else None for d, w in zip(gw, ws)],
            _reduce_rows(gwo, wout) if gwo is not None else None)


def _product(args, nu, lmax_out, route):
    """The (N, n_out) rows of the product of the inputs [*b, n] (broadcasting to one batch): one kernel call, or
    one per chunk (_chunk_plan) written into the output's rows."""
    batch = _batch(args)
    chunks = _chunk_plan(args[:nu], batch)
    if chunks is None:
        return _fwd_rows(*_rows_of(args, nu, batch), lmax_out, route)
    out = None
    for a, b, r0, r1 in chunks:
        o = _fwd_rows(*_rows_of(args, nu, batch, a, b), lmax_out, route)
        if out is None:
            out = o.new_empty(chunks[-1][3], o.shape[1])
        out[r0:r1] = o
        del o
    return out


def _fwd_rows(xs, ws, wout, lmax_out, route):
    """geoops::gaunt_fwd on rows, its weights as the dispatched op must get them (_op_weights)."""
    return _impl.fwd_call(xs, _op_weights(xs, ws), wout, lmax_out, route)


def _first_order() -> bool:
    """Whether a backward need not be differentiable (no create_graph, no torch.func transform)."""
    return not torch.is_grad_enabled() and not _library.functorch_active()


# rows per chunk of a product with a broadcast factor (forward and first-order backward): bounds the kernels' rows
# of the broadcast factor and its rows-sized gradient to a chunk (2 MiB per tensor at 16 fp32 coefficients)
CHUNK_ROWS = 1 << 15


def _lead(t: torch.Tensor) -> int:
    """Number of rows of t's leading dims."""
    n = 1
    for s in t.shape[:-1]:
        n *= s
    return n


def _batch(ts) -> tuple:
    """The broadcast of the inputs' leading dims (the product's batch)."""
    return tuple(_args.broadcast_shapes(*[t.shape[:-1] for t in ts if t is not None]))


def _splits(t: torch.Tensor, batch) -> bool:
    """Whether t has the batch's first dim (a chunk of it takes t's part) rather than broadcasting over it."""
    return t.dim() - 1 == len(batch) and len(batch) > 0 and t.shape[0] == batch[0] and batch[0] != 1


def _rows_of(ts, nu, batch, a=None, b=None):
    """(xs, ws, wout) as the kernels' rows: every factor and per-row weight (N, n) contiguous (a broadcast one
    expanded and copied), a weight whose leading dims hold one row (1, n).  With a, b: the chunk batch[0][a:b]."""
    if a is not None:
        ts = [t[a:b] if t is not None and _splits(t, batch) else t for t in ts]
        batch = (b - a, *batch[1:])
    rows = []
    for k, t in enumerate(ts):
        if t is None:
            rows.append(None)
        elif k >= nu and _lead(t) == 1:
            rows.append(t.reshape(1, t.shape[-1]).contiguous())
        else:
            rows.append(_flat1(t.expand(*batch, t.shape[-1])))
    return rows[:nu], rows[nu:2 * nu], rows[2 * nu]


def _chunk_plan(xs, batch):
    """[(a, b, r0, r1)]: chunks of the batch's first dim (and their rows) when a factor is broadcast (fewer rows
    than the batch) and the batch has more than CHUNK_ROWS rows; None otherwise (and while torch.compile traces,
    inside torch.func transforms, or for symbolic sizes: one call)."""
    if not batch or torch.compiler.is_compiling() or _library.functorch_active():
        return None
    N = 1
    for s in batch:
        N *= s
    if not isinstance(N, int) or N <= CHUNK_ROWS or all(_lead(x) == N for x in xs):
        return None
    R = N // batch[0]
    per = max(1, CHUNK_ROWS // max(R, 1))
    if per >= batch[0]:
        return None
    return [(a, min(a + per, batch[0]), a * R, min(a + per, batch[0]) * R) for a in range(0, batch[0], per)]


def _shaped(d: Optional[torch.Tensor], t: torch.Tensor, batch) -> Optional[torch.Tensor]:
    """A rows gradient back to its input's shape: a view, or for a broadcast input its sum over the broadcast
    dims (what autograd's expand backward did when the input came expanded)."""
    if d is None:
        return None
    if d.shape[0] == _lead(t):
        return d.reshape(t.shape)
    return d.reshape(*batch, d.shape[-1]).sum_to_size(t.shape)


def _op_context(ctx, inputs, output):
    """GauntFn's forward saving for the op geoops::gaunt_fwd(xs, ws, wout, lmax_out, route) differentiated on its own
    (an exported program, _library.op_autograd): the same saved rows and attributes."""
    xs, ws, wout, lmax_out, route = inputs
    ctx.save_for_backward(*xs, *ws, wout)
    ctx.lmax_out, ctx.route, ctx.nu = lmax_out, route, len(xs)


def _op_backward(ctx, g):
    """GauntFn's backward for the bare op: ([grad xs], [grad ws], grad wout); differentiable (create_graph) as the
    Function's, the fused first-order kernel otherwise."""
    nu = ctx.nu
    need_x, need_w, need_wo = ctx.needs_input_grad[:3]  # (lists for the list arguments)
    # (a ws with None entries is no list of tensors to torch.library's autograd: one False for it, no gradient
    # slots; _op_weights keeps a weight that has a gradient out of such a list)
    tracked_w = isinstance(need_w, (list, tuple))
    ctx.needs_input_grad = (False,) * 3 + (*need_x, *(need_w if tracked_w else [False] * nu), need_wo)
    saved = ctx.saved_tensors  # (rows: the op's inputs are the kernels' rows)
    # (_reached pairs each tensor input with its edge: an untracked ws list has none, so its weights count as None)
    edged = saved if tracked_w else (*saved[:nu], *([None] * nu), saved[2 * nu])
    need = _reached(ctx, ctx.needs_input_grad[3:], edged)
    grads = GauntFn._backward(ctx, g.contiguous(), saved, need, _batch(saved))[3:]
    return list(grads[:nu]), (list(grads[nu:2 * nu]) if tracked_w else None), grads[2 * nu]


def _op_weights(xs, ws) -> list:
    """The weights as the dispatched op gaunt_fwd gets them.  torch.library's autograd takes a ``Tensor?[]`` list
    with None entries for a plain object, not a list of tensors: a weight beside a None would get no gradient edge
    (a silently missing gradient in an exported program).  Such a list's None entries become ones of shape (1, L+1)
    (x * 1 is exact: the same values and gradients).  The eager fast path, where the op's autograd never runs, and
    a list with no tensor or no None keep theirs."""
    if None not in ws or all(w is None for w in ws) or _library.direct_call_ok(*xs, *ws):
        return ws
    like = next(w for w in ws if w is not None)
    return [w if w is not None else like.new_ones((1, _ref.lmax_of(x.shape[-1]) + 1)) for x, w in zip(xs, ws)]


_library.op_autograd("geoops::gaunt_fwd", setup_context=_op_context, backward=_op_backward)


def _core(xs, ws, wout, lmax_out, route):
    """Rows-level nu-ary product: the Function when anything needs a gradient, the kernel otherwise.

    The Function also whenever forward-mode AD may carry tangents (the bare custom op dropped them: jvp returned
    zeros; GauntFn refuses them) and inside any torch.func transform (a requires_grad seen through a vmap
    wrapper is not the outer grad level's: jacrev(jacrev(f)) reached the bare op)."""
    if _library.functorch_active() or _library.autograd_wanted(*xs, *ws, wout):
        return _library.apply(GauntFn, lmax_out, route, len(xs), *xs, *ws, wout, op="geoops.gaunt")
    return _product((*xs, *ws, wout), len(xs), lmax_out, route)


def _flat1(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """[*batch, n] (a broadcast view too) -> contiguous (N, n) rows, the kernels' layout; a copy only where the
    rows are not already back to back.  None stays None."""
    return None if t is None else t.reshape(-1, t.shape[-1]).contiguous()


# ---------------------------------------------------------------- route choice
def route_table(nu: int, device: torch.device, cpu: Optional[str] = None, backward: bool = False) -> dict:
    """{lmax: route} that 'auto' reads for nu factors on `device` (geoops/_gaunt_routes.py).

    CPU: the table measured on this machine's CPU class (geoops._backend.cpu_class(), or `cpu`); for a class
    nobody measured, a table of the same architecture and vendor (the BLAS and vector units behave alike),
    else the default class's (the Intel Xeon table, what every machine used before session 21).  CUDA: the table
    of the device's compute capability (geoops._backend.device_class(): "cuda-sm90", ...; `cpu` names another
    class), else one measured on the nearest capability (the same major version first), else none.  Other devices, or no table: {} ('auto' runs
    grid).

    backward=False: the ranking by forward time ("binary" / "many"); backward=True: the ranking by forward +
    backward time ("binary_fwd_bwd" / "many_fwd_bwd"), which 'auto' reads when the call will need a backward; a
    class measured without that ranking falls back to its forward ranking."""
    return _route_table(_int_arg("route_table", "nu", nu, 1, "a positive int"), device, cpu, backward)


def _route_table(nu: int, device: torch.device, cpu: Optional[str], backward: bool) -> dict:
    """route_table on a checked nu."""
    tables = _gaunt_routes.TABLES
    if device.type == "cuda":
        cls = cpu or _backend.device_class(device)
        if cls not in tables:
            cuda = sorted(k for k in tables if k.startswith("cuda-sm") and k[7:].isdigit())
            if not cuda:
                return {}
            own = int(cls[7:]) if cls[7:].isdigit() else 0  # major * 10 + minor
            cls = min(cuda, key=lambda k: (abs(int(k[7:]) // 10 - own // 10), abs(int(k[7:]) - own), -int(k[7:])))
    elif device.type != "cpu":
        return {}
    else:
        cls = cpu or _backend.cpu_class()
        if cls not in tables:
            vendor = "-".join(cls.split("-")[:2])
            cls = next((k for k in tables if "-".join(k.split("-")[:2]) == vendor),
                       _gaunt_routes.DEFAULT_CLASS)
    kind = "binary" if nu == 2 else "many"
    table = tables[cls].get(kind + "_fwd_bwd") if backward else None
    return table or tables[cls].get(kind, {})


def needs_backward(*tensors) -> bool:
    """Whether 'auto' picks from the forward + backward ranking for a call on these tensors (None entries
    skipped): one of them requires grad, whatever the grad mode.  Not the grad mode: the same inputs then run the
    same route (same bits) under torch.no_grad / inference_mode as in training, and reentrant checkpointing's
    no-grad forward and its recompute agree.  Under torch.compile dynamo guards on requires_grad."""
    return any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


def choose_route(Ls: Sequence[int], lmax_out: int, rows: int, device: torch.device, backward: bool = False) -> str:
    """The route 'auto' runs: the fastest in the measured table for this machine (route_table; the forward +
    backward ranking when `backward`, i.e. when the call will need a backward: see needs_backward) at the largest
    degree (nearest measured lmax; grid where nothing was measured)."""
    if not isinstance(Ls, (tuple, list)):
        _fail("choose_route", f"Ls must be a list of ints (the inputs' degrees), got {type(Ls).__name__}", TypeError)
    Ls = [_int_arg("choose_route", "Ls", L, 0, "a list of non-negative ints") for L in Ls]
    lmax_out = _int_arg("choose_route", "lmax_out", lmax_out, 0, "a non-negative int")
    rows = _int_arg("choose_route", "rows", rows, 0, "a non-negative int")
    nu = _int_arg("route_table", "nu", len(Ls), 1, "a positive int")  # (route_table's check: one degree or more)
    return _auto_route(nu, max(max(Ls), lmax_out), device, backward)


def _auto_route(nu: int, L: int, device: torch.device, backward: bool) -> str:
    """choose_route for nu factors of largest degree L (checked ints: _run's per-call path, without
    choose_route's argument checks)."""
    table = _route_table(nu, device, None, backward)
    if not table:
        return "grid"
    route = table.get(L)  # (a measured degree: the nearest is itself)
    if route is None:
        route = table[min(table, key=lambda k: (abs(k - L), k))]
    if route == "direct" and nu != 2:
        route = "grid"
    return route


# ---------------------------------------------------------------- argument handling
def _fail(fn: str, msg: str, exc=ValueError):
    raise exc(f"geoops.gaunt.{fn}: {msg}")


def _int_arg(fn: str, name: str, v, lo=None, what: str = "") -> int:
    """An integer argument (any integer operator.index takes, not a bool) as a Python int (geoops._args); the
    TypeError says ``what`` too (e.g. "nu must be a positive int, got float")."""
    return _args.int_arg(f"geoops.gaunt.{fn}", name, v, lo=lo, what=what, type_what=what)


def _check_x(fn: str, name: str, x) -> int:
    if x.dim() == 0:
        _fail(fn, f"{name} must have at least one dimension (the (L+1)^2 coefficients), got a 0-d tensor")
    L = _ref.lmax_of(x.shape[-1])
    if L is None:
        _fail(fn, f"{name} must have a last dimension (L+1)^2 = 1, 4, 9, 16, ... (coefficients of degrees 0..L), "
                  f"got {x.shape[-1]} (shape {tuple(x.shape)})")
    return L


def _check_w(fn: str, name: str, w, L: int) -> None:
    if w is not None and (w.dim() == 0 or w.shape[-1] != L + 1):
        _fail(fn, f"{name} must have last dimension L+1 = {L + 1} (one weight per degree 0..{L}), "
                  f"got shape {tuple(w.shape)}")


def _run(fn: str, xs, names, lmax_out, weights, weight_out, route):
    if torch.jit.is_tracing():  # (before: the direct kernel call was invisible to it: uninitialised outputs)
        _fail(fn, "torch.jit.trace cannot record the Gaunt op (TorchScript's tracer has no Tensor?[] argument "
                  "lists); use torch.export.export or torch.compile", RuntimeError)
    wnames = [f"weight{i + 1}" if fn == "gaunt_tensor_product" else f"weights[{i}]" for i in range(len(xs))]
    named = dict(zip(names, xs))  # gaunt_power: one "x"
    named.update(zip(wnames, weights))
    named["weight_out"] = weight_out
    _library.check_tensors(f"geoops.gaunt.{fn}", named, optional=(*wnames, "weight_out"))
    Ls = [_check_x(fn, n, x) for n, x in zip(names, xs)]
    device = xs[0].device
    if lmax_out is None:
        lmax_out = sum(Ls)
    lmax_out = _args.int_arg(f"geoops.gaunt.{fn}", "lmax_out", lmax_out, lo=0, what="a non-negative int or None",
                             none_ok=True, type_what="a non-negative int or None")
    if not isinstance(route, str) or route not in ROUTES:
        _fail(fn, f"route must be one of {', '.join(map(repr, ROUTES))}, got {route!r}")
    for n, w, L in zip(wnames, weights, Ls):
        _check_w(fn, n, w, L)
    _check_w(fn, "weight_out", weight_out, lmax_out)
    _library.check_finite(f"geoops.gaunt.{fn}", named)

    every = [t for t in (*xs, *weights, weight_out) if t is not None]
    dtype = every[0].dtype
    for t in every[1:]:
        dtype = _args.promote_types(dtype, t.dtype)
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    try:
        batch = _args.broadcast_shapes(*[x.shape[:-1] for x in xs],
                                       *[w.shape[:-1] for w in (*weights, weight_out) if w is not None])
    except RuntimeError:
        shapes = ", ".join(f"{n} {tuple(t.shape)}" for n, t in zip(list(names) + wnames + ["weight_out"],
                                                                   list(xs) + list(weights) + [weight_out])
                           if t is not None)
        _fail(fn, f"the leading dimensions do not broadcast: {shapes}")
    N = 1
    for s in batch:
        N *= s

    def rows(t, n):
        t = t.to(cdt)
        # (ranks first: comparing (C,) with (B, C) element by element guards B != C under torch.export / compile)
        if t.dim() - 1 != len(batch) or tuple(t.shape[:-1]) != tuple(batch):
            # a broadcast factor ([E, 1, n] edge SH against [E, C, n] features) goes to GauntFn unexpanded: it makes
            # the kernels' rows of it per chunk and sums its gradient there (sessions 36, 38); nothing N-row saved
            return t
        return t.contiguous()

    def wrows(w, L):
        if w is None:
            return None
        w = w.to(cdt)
        # leading dims all 1 ((L+1,), (1, L+1), ...): one row the kernels broadcast (not N copies)
        if all(s == 1 for s in w.shape[:-1]):
            return w.reshape(1, L + 1).contiguous()
        return rows(w, L + 1)

    rx = [rows(x, (L + 1) ** 2) for x, L in zip(xs, Ls)]
    rw = [wrows(w, L) for w, L in zip(weights, Ls)]
    rwo = wrows(weight_out, lmax_out)
    # degrees above sum(L_i) are exact zeros: not computed (the quadrature left fp32 round-off, ~1e-7, there)
    lo = min(lmax_out, sum(Ls))
    if rwo is not None and lo < lmax_out:
        rwo = rwo[..., :lo + 1]
    if route == "auto":
        route = _auto_route(len(Ls), max(max(Ls), lo), device, needs_backward(*xs, *weights, weight_out))
    if route == "direct" and len(xs) != 2:
        route = "grid"
    out = _core(rx, rw, rwo, lo, route)
    if lo < lmax_out:
        out = torch.nn.functional.pad(out, (0, (lmax_out + 1) ** 2 - (lo + 1) ** 2))
    return out.reshape(*batch, (lmax_out + 1) ** 2).to(dtype)


# ---------------------------------------------------------------- public API
def gaunt_tensor_product(x1: torch.Tensor, x2: torch.Tensor, lmax_out: Optional[int] = None, *,
                         weight1: Optional[torch.Tensor] = None, weight2: Optional[torch.Tensor] = None,
                         weight_out: Optional[torch.Tensor] = None, route: str = "auto") -> torch.Tensor:
    """Gaunt tensor product of two spherical-harmonic coefficient vectors.

    out[..., k] = w_out[..., l(k)] * sum_ij G_ijk (w1[..., l(i)] x1[..., i]) (w2[..., l(j)] x2[..., j])

    with G_ijk = integral of Y_i Y_j Y_k over the unit sphere (real harmonics, e3nn basis/order/axes,
    orthonormal "integral" normalisation; index i = l*l + l + m).

    Args:
        x1: [..., (L1+1)^2] coefficients of degrees 0..L1 (L1 is read from the last dim).
        x2: [..., (L2+1)^2]; the leading dims of x1, x2 and the weights broadcast (channels are leading dims).
        lmax_out: highest output degree (default L1 + L2; degrees above L1 + L2 come out as exact zeros).
        weight1, weight2, weight_out: optional per-degree weights [..., L+1] (L = L1, L2, lmax_out), fused into
            the conversions.
        route: "auto" (fastest by the measured table: the forward + backward ranking when an input or weight
            requires grad, whatever the grad mode (see ``needs_backward``); else the forward ranking),
            "grid", "grid_gemm", "direct" or "fft"; all give the same numbers to round-off.

    Returns:
        [..., (lmax_out+1)^2] in the promoted dtype of the inputs.  float16/bfloat16 are computed in float32.

    Gradients flow to x1, x2 and every weight, to any order (double backward for force training): the backward
    is itself a Gaunt product through the same fused kernels.  Numerics: exact quadrature (fp64 round-off in
    float64; relative error ~1e-6 of the output scale in float32).  Compared with e3nn: e3nn's
    ``TensorProduct`` with "uuu" paths and path weights G^2 (under its square root) gives the same numbers on
    the allowed (even l1+l2+l3) paths; per-path weights have no Gaunt equivalent.
    """
    return _run("gaunt_tensor_product", [x1, x2], ("x1", "x2"), lmax_out, [weight1, weight2], weight_out, route)


def gaunt_product(xs: Sequence[torch.Tensor], lmax_out: Optional[int] = None, *,
                  weights: Optional[Sequence[Optional[torch.Tensor]]] = None,
                  weight_out: Optional[torch.Tensor] = None, route: str = "auto") -> torch.Tensor:
    """Many-body Gaunt product: coefficients of f_1 * f_2 * ... * f_nu projected onto degrees <= lmax_out.

    xs: a list of nu >= 1 tensors [..., (L_i+1)^2] (leading dims broadcast).  The product is formed in the grid
    (or Fourier) domain in one pass: each factor is converted once, the nu grid functions are multiplied and one
    projection comes back, so no intermediate degree is truncated (equal to the chain of exact binary products
    with full intermediate degrees).  lmax_out defaults to sum(L_i).  weights: optional list of per-degree
    weights [..., L_i+1] (or None entries); weight_out: [..., lmax_out+1].  route: "auto", "grid", "grid_gemm" or "fft"
    ("direct" runs as "grid" for nu != 2).  Gradients to every factor and weight, to any order.
    """
    if isinstance(xs, torch.Tensor) or not isinstance(xs, (list, tuple)):
        _fail("gaunt_product", f"xs must be a list or tuple of tensors, got {type(xs).__name__}", TypeError)
    if len(xs) == 0:
        _fail("gaunt_product", "xs must hold at least one tensor, got an empty list")
    if weights is None:
        weights = [None] * len(xs)
    weights = list(weights)
    if len(weights) != len(xs):
        _fail("gaunt_product", f"weights must have one entry per factor ({len(xs)}), got {len(weights)}")
    names = tuple(f"xs[{i}]" for i in range(len(xs)))
    return _run("gaunt_product", list(xs), names, lmax_out, weights, weight_out, route)


def gaunt_power(x: torch.Tensor, nu: int, lmax_out: Optional[int] = None, *, route: str = "auto") -> torch.Tensor:
    """The nu-th Gaunt power of x: coefficients of f^nu projected onto degrees <= lmax_out (default nu * L).

    Same as ``gaunt_product([x] * nu, lmax_out)`` (one conversion per factor, one projection).
    """
    nu = _int_arg("gaunt_power", "nu", nu, 1, "a positive int")
    return _run("gaunt_power", [x] * nu, ("x",) * nu, lmax_out, [None] * nu, None, route)
