"""Poincaré embeddings (Nickel & Kiela, NeurIPS 2017) of a WordNet noun hierarchy, trained with geoopt.

The end-to-end benchmark of the stereographic family: the paper's training loop written as a geoopt
user writes it (a ``geoopt.ManifoldParameter`` on ``geoopt.PoincareBall``, ``geoopt.optim.RiemannianSGD``,
the paper's loss: a softmax over one positive and ``n_neg`` sampled negatives of each pair), run once on
plain geoopt and once after ``geoops.compat.patch_geoopt()``, with the same data, the same initial
embedding and the same negatives.  Negatives are sampled before the clock starts (the paper's sampler:
uniform over the nodes that are neither u nor one of u's closure neighbours).

    python -m geoops.bench.wordnet                      # mammals, 20 epochs, both runs, table
    python -m geoops.bench.wordnet --epochs 100         # more epochs
    python -m geoops.bench.wordnet --nouns PATH/noun_closure.tsv.gz   # + the noun-scale metric (heavy)

The mammal closure (WordNet 3.0, 1,182 nouns) ships with geoops in ``bench/data/wordnet/`` with
WordNet's license; the noun closure (82,115 nouns) is taken as a path.  The ``wordnet`` row of
``python -m geoops.bench --families stereographic`` times one epoch of each with this module.
"""
from __future__ import annotations

import argparse
import gzip
import resource
import time
from pathlib import Path
from typing import List, Tuple

import torch

DATA_DIR = Path(__file__).resolve().parent / "data" / "wordnet"
MAMMALS = DATA_DIR / "mammal_closure.tsv.gz"
ROW_THREADS = 1  # torch threads of every contender of the runner's wordnet row, whatever --threads says


# ---------------------------------------------------------------- data
def load_closure(path) -> Tuple[List[str], torch.Tensor]:
    """(node names, edges [P, 2] int64) of a closure TSV (header ``id1 id2``), self pairs dropped."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    ids = {}
    pairs = []
    with opener(path, "rt") as f:
        header = f.readline().split()
        if header[:2] != ["id1", "id2"]:
            raise ValueError(f"{path}: expected a header 'id1<TAB>id2', got {header}")
        for line in f:
            a, b = line.split()
            ia = ids.setdefault(a, len(ids))
            ib = ids.setdefault(b, len(ids))
            if ia != ib:
                pairs.append((ia, ib))
    names = [None] * len(ids)
    for name, i in ids.items():
        names[i] = name
    return names, torch.tensor(pairs, dtype=torch.int64).reshape(-1, 2)


def _pair_keys(edges: torch.Tensor, n: int) -> torch.Tensor:
    """Sorted keys u * n + v of the pairs that are not negatives of u: u's closure neighbours and u."""
    self_pairs = torch.arange(n, dtype=torch.int64)
    keys = torch.cat([edges[:, 0] * n + edges[:, 1], self_pairs * n + self_pairs])
    return torch.unique(keys)


def sample_negatives(u: torch.Tensor, n: int, n_neg: int, keys: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """[P, n_neg] nodes w drawn uniformly with w != u and (u, w) not in the closure (rejection sampling)."""
    neg = torch.randint(0, n, (u.numel(), n_neg), generator=gen)
    uu = u[:, None].expand_as(neg)
    for _ in range(100):
        k = uu * n + neg
        pos = torch.searchsorted(keys, k).clamp(max=keys.numel() - 1)
        bad = keys[pos] == k
        if not bool(bad.any()):
            return neg
        neg[bad] = torch.randint(0, n, (int(bad.sum()),), generator=gen)
    raise RuntimeError("could not sample negatives (a node is adjacent to almost every other node)")


def epoch_batches(edges: torch.Tensor, n: int, n_neg: int, batch: int, keys: torch.Tensor,
                  gen: torch.Generator) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """One epoch: shuffled pairs in batches of (u [B], candidates [B, 1 + n_neg]) (the positive first)."""
    perm = torch.randperm(edges.shape[0], generator=gen)
    e = edges[perm]
    neg = sample_negatives(e[:, 0], n, n_neg, keys, gen)
    cand = torch.cat([e[:, 1:], neg], dim=1)
    return [(e[i:i + batch, 0].contiguous(), cand[i:i + batch].contiguous()) for i in range(0, e.shape[0], batch)]


# ---------------------------------------------------------------- training (plain geoopt user code)
def make_model(n: int, dim: int, lr: float, seed: int = 0, dtype: torch.dtype = torch.float32):
    """(embedding ManifoldParameter on the unit Poincaré ball, RiemannianSGD), the paper's init U(-1e-3, 1e-3)
    (drawn in float32 whatever `dtype`, so that a float64 model starts from the float32 one's values)."""
    import geoopt

    gen = torch.Generator().manual_seed(seed)
    ball = geoopt.PoincareBall(c=1.0)
    init = ((torch.rand(n, dim, generator=gen, dtype=torch.float32) * 2 - 1) * 1e-3).to(dtype)
    emb = geoopt.ManifoldParameter(init, manifold=ball)
    opt = geoopt.optim.RiemannianSGD([emb], lr=lr)
    return emb, opt


def train_epoch(emb, opt, batches, lr: float) -> float:
    """One pass over the batches: softmax over (positive, negatives) of -distance, one RiemannianSGD step each."""
    ball = emb.manifold
    total = 0.0
    for g in opt.param_groups:
        g["lr"] = lr
    for u, cand in batches:
        opt.zero_grad()
        d = ball.dist(emb[u].unsqueeze(1), emb[cand])  # [B, 1 + n_neg]
        loss = torch.nn.functional.cross_entropy(-d, torch.zeros(u.numel(), dtype=torch.int64))
        loss.backward()
        opt.step()
        total += float(loss.detach())
    return total / len(batches)


def _epoch(emb, opt, batches, lr, patched):
    """One timed epoch (wall and process CPU seconds), plain geoopt or under patch_geoopt()."""
    import geoops.compat as compat

    (compat.patch_geoopt if patched else compat.unpatch_geoopt)()
    t0, c0 = time.perf_counter(), time.process_time()
    loss = train_epoch(emb, opt, batches, lr)
    return time.perf_counter() - t0, time.process_time() - c0, loss


def train_both(edges, n, *, dim=10, n_neg=10, batch=64, epochs=20, lr=10.0, burn_in=3, seed=0, threads=1,
               dtype=torch.float32):
    """Train two identical models, one on plain geoopt and one under patch_geoopt(), epoch by epoch in turn
    (so that both see the same load), on the same batches and negatives (drawn before the clocks start).

    The paper's burn-in: the first ``burn_in`` epochs run at lr / 10.  Returns {name: (embedding, wall
    seconds per epoch, CPU seconds per epoch, losses)}.  ``threads``: torch's intra-op threads while
    training (default 1: at batch 64 every op is a few microseconds of work, and a parallel region costs
    more than it saves; both runs use the same setting).  ``dtype``: the embeddings' dtype (both runs).
    """
    import geoops.compat as compat

    keys = _pair_keys(edges, n)
    gen = torch.Generator().manual_seed(seed + 1)
    runs = {name: make_model(n, dim, lr, seed, dtype) for name in ("geoopt", "geoopt+patch_geoopt")}
    res = {name: ([], [], []) for name in runs}
    was, nthreads = compat.is_patched(), torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for ep in range(epochs):
            batches = epoch_batches(edges, n, n_neg, batch, keys, gen)  # before the clocks
            order = list(runs) if ep % 2 == 0 else list(runs)[::-1]
            for name in order:
                emb, opt = runs[name]
                wall, cpu, loss = _epoch(emb, opt, batches, lr / 10 if ep < burn_in else lr, name != "geoopt")
                for lst, v in zip(res[name], (wall, cpu, loss)):
                    lst.append(v)
    finally:
        torch.set_num_threads(nthreads)
        (compat.patch_geoopt if was else compat.unpatch_geoopt)()
    return {name: (runs[name][0].detach().as_subclass(torch.Tensor).clone(),) + res[name] for name in runs}


def metrics(emb: torch.Tensor, edges: torch.Tensor):
    """Reconstruction (mean rank, MAP) with geoops.stereographic.reconstruction_metrics (bounded memory)."""
    import geoops.stereographic as gs

    return gs.reconstruction_metrics(emb, edges, k=-1.0)


def _median(v):
    s = sorted(v)
    return s[len(s) // 2] if len(s) % 2 else 0.5 * (s[len(s) // 2 - 1] + s[len(s) // 2])


def compare(path=MAMMALS, *, epochs=20, dim=10, n_neg=10, batch=64, lr=10.0, burn_in=3, seed=0, threads=1,
            log=print) -> dict:
    """Train on plain geoopt and under patch_geoopt() with the same data; epoch times and metrics of both."""
    names, edges = load_closure(path)
    n = len(names)
    log(f"{Path(path).name}: {n} nodes, {edges.shape[0]} pairs; dim {dim}, batch {batch}, {n_neg} negatives, "
        f"{epochs} epochs (burn-in {burn_in} at lr/10), lr {lr}, {threads} thread(s); load average "
        f"{_loadavg()}")
    out = {"nodes": n, "pairs": int(edges.shape[0]), "dim": dim, "batch": batch, "n_neg": n_neg, "epochs": epochs,
           "threads": threads}
    runs = train_both(edges, n, dim=dim, n_neg=n_neg, batch=batch, epochs=epochs, lr=lr, burn_in=burn_in,
                      seed=seed, threads=threads)
    for name, (emb, wall, cpu, losses) in runs.items():
        t0 = time.perf_counter()
        mr, mean_ap = metrics(emb, edges)
        skip = wall[1:] or wall  # the first epoch warms up
        out[name] = {"s_per_epoch": _median(skip), "cpu_s_per_epoch": _median(cpu[1:] or cpu),
                     "first_epoch_s": wall[0], "final_loss": losses[-1], "mean_rank": mr, "map": mean_ap,
                     "metric_s": time.perf_counter() - t0}
        log(f"  {name:22s} {out[name]['s_per_epoch'] * 1e3:8.1f} ms/epoch wall, "
            f"{out[name]['cpu_s_per_epoch'] * 1e3:8.1f} ms CPU (medians)  loss {losses[-1]:.4f}  "
            f"mean rank {mr:.2f}  MAP {mean_ap:.4f}")
    a, b = out["geoopt"], out["geoopt+patch_geoopt"]
    out["speedup"] = a["s_per_epoch"] / b["s_per_epoch"]
    out["speedup_cpu"] = a["cpu_s_per_epoch"] / b["cpu_s_per_epoch"]
    out["map_diff"] = abs(a["map"] - b["map"])
    log(f"  speed-up per epoch with patch_geoopt(): {out['speedup']:.2f}x wall, {out['speedup_cpu']:.2f}x CPU; "
        f"|MAP difference| {out['map_diff']:.4f}")
    return out


def _loadavg():
    try:
        import os

        return "%.1f" % os.getloadavg()[0]
    except OSError:
        return "?"


def noun_metric(path, *, dim=10, seed=0, emb=None, log=print) -> dict:
    """Mean rank / MAP of the full noun closure (82,115 nouns) with reconstruction_metrics: time and peak RSS.

    Without a trained embedding (``emb=None``) it ranks a random one (the cost does not depend on the
    values): the point is that the metric runs at this scale in bounded memory.
    """
    names, edges = load_closure(path)
    n = len(names)
    if emb is None:
        gen = torch.Generator().manual_seed(seed)
        emb = (torch.rand(n, dim, generator=gen) * 2 - 1) * 0.5
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    mr, mean_ap = metrics(emb, edges)
    dt = time.perf_counter() - t0
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"nodes": n, "pairs": int(edges.shape[0]), "seconds": dt, "peak_rss_growth_mib": (rss1 - rss0) / 1024,
           "peak_rss_mib": rss1 / 1024, "mean_rank": mr, "map": mean_ap}
    log(f"{Path(path).name}: {n} nodes, {edges.shape[0]} pairs: metric in {dt:.1f} s, peak RSS {rss1 / 1024:.0f} MiB "
        f"(+{(rss1 - rss0) / 1024:.0f} MiB during the metric); mean rank {mr:.1f}, MAP {mean_ap:.4f}")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--closure", default=str(MAMMALS), help="closure TSV(.gz) to train on (default: the mammals)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--dim", type=int, default=10)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--negatives", type=int, default=10)
    p.add_argument("--lr", type=float, default=10.0)
    p.add_argument("--burn-in", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads while training (default 1)")
    p.add_argument("--nouns", default=None, help="noun_closure.tsv.gz: also time the noun-scale reconstruction metric")
    a = p.parse_args(argv)
    compare(a.closure, epochs=a.epochs, dim=a.dim, n_neg=a.negatives, batch=a.batch, lr=a.lr, burn_in=a.burn_in,
            seed=a.seed, threads=a.threads)
    if a.nouns:
        noun_metric(a.nouns, dim=a.dim, seed=a.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


# ---------------------------------------------------------------- the bench row (python -m geoops.bench)
def epoch_row_setup(path=MAMMALS, *, dim=10, n_neg=10, batch=64, lr=10.0, threads=ROW_THREADS, seed=0):
    """Row.setup of the ``wordnet`` row: one epoch (the same presampled batches every call) on plain geoopt
    ("peer"), under patch_geoopt() ("geoops"), and the same loop with the Euclidean squared distance and
    torch.optim.SGD ("limit": indexing, loss, autograd and optimizer bookkeeping without any hyperbolic math)."""
    import geoops.compat as compat

    names, edges = load_closure(path)
    n = len(names)
    batches = epoch_batches(edges, n, n_neg, batch, _pair_keys(edges, n), torch.Generator().manual_seed(seed + 1))
    plain, patched = make_model(n, dim, lr, seed), make_model(n, dim, lr, seed)
    flat = torch.nn.Parameter((torch.rand(n, dim, generator=torch.Generator().manual_seed(seed)) * 2 - 1) * 1e-3)
    sgd = torch.optim.SGD([flat], lr=lr)

    def euclid_epoch():
        for u, cand in batches:
            sgd.zero_grad()
            d = (flat[u].unsqueeze(1) - flat[cand]).square().sum(-1)
            loss = torch.nn.functional.cross_entropy(-d, torch.zeros(u.numel(), dtype=torch.int64))
            loss.backward()
            sgd.step()
            float(loss.detach())

    def run(fn, patch):
        def call():
            was, nth = compat.is_patched(), torch.get_num_threads()
            (compat.patch_geoopt if patch else compat.unpatch_geoopt)()
            torch.set_num_threads(threads)
            try:
                return fn()
            finally:
                torch.set_num_threads(nth)
                (compat.patch_geoopt if was else compat.unpatch_geoopt)()
        return call

    fns = {"geoops": run(lambda: train_epoch(*patched, batches, lr), True),
           "peer": run(lambda: train_epoch(*plain, batches, lr), False),
           "limit": run(euclid_epoch, False)}
    return fns, None, {"compiled": "n/a: a training loop (torch.compile of geoopt's optimizer step is not a user path)"}
