"""A small Poincaré CNN on scikit-learn's bundled handwritten digits (8x8, no download): HypLL vs geoops.

    python -m geoops.bench.poincare_digits [--epochs 3] [--channels 8] [--batch 64]

The same network twice, from the same initial weights: once with HypLL's layers (``hypll.nn``), once with
``geoops.nn.poincare``.  conv(1 -> C) -> midpoint BN -> ReLU -> residual block (conv -> BN -> ReLU -> conv -> BN,
Möbius addition, ReLU) -> beta-concatenating flatten -> hyperbolic MLR head (HNN++ hyperplane distances as
logits), cross-entropy, Adam (lr 3e-3; torch's fused Adam, ``fused=True``, on both sides: the default
single-tensor Adam cost ~0.6 ms of each step at these sizes, ``--optim adam-single`` runs it; ``--optim sgd`` for
plain SGD) on the (Euclidean) parameters, fixed curvature.  With these defaults the network learns (one epoch: ~0.9 test accuracy); plain SGD at lr 0.5 stays
at chance (loss ln 10: the MLR logits and the identity-initialised convolutions give tiny gradients).  Prints the loss of every step
of both runs, the test accuracy of both and the seconds per epoch side by side.  ``run()`` is what the test-suite
and the bench call.
"""
from __future__ import annotations

import argparse
import time

import torch

__all__ = ["load_digits", "build_geoops", "build_hypll", "copy_weights", "run"]


def load_digits(dtype=torch.float32):
    """(x_train, y_train, x_test, y_test): the 1797 digits, pixels scaled to [0, 0.8], split 1500 / 297."""
    from sklearn.datasets import load_digits as _ld

    d = _ld()
    x = torch.tensor(d.images, dtype=dtype).unsqueeze(1) / 16.0 * 0.8  # (N, 1, 8, 8), each pixel a 1-d point
    y = torch.tensor(d.target, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    x, y = x[perm], y[perm]
    return x[:1500], y[:1500], x[1500:], y[1500:]


class _GeoopsNet(torch.nn.Module):
    def __init__(self, C: int, value: float = 1.0):
        super().__init__()
        from geoops.nn import poincare as P

        self.ball = P.PoincareBall(value)
        b = self.ball
        self.conv0 = P.PoincareConv2d(1, C, 3, b, padding=1)
        self.bn0 = P.PoincareBatchNorm2d(C, b)
        self.conv1 = P.PoincareConv2d(C, C, 3, b, padding=1)
        self.bn1 = P.PoincareBatchNorm2d(C, b)
        self.conv2 = P.PoincareConv2d(C, C, 3, b, padding=1)
        self.bn2 = P.PoincareBatchNorm2d(C, b)
        self.relu = P.PoincareReLU(b)
        self.flatten = P.PoincareFlatten(b)
        self.head = P.PoincareMLR(C * 64, 10, b)

    def forward(self, img):
        import geoops.poincare as gp

        c = self.ball()
        x = gp.expmap0(img, c=c, dim=1)
        x = self.relu(self.bn0(self.conv0(x)))
        h = self.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        x = self.relu(gp.mobius_add(h, x, c=c, dim=1))
        return self.head(self.flatten(x))


class _HypllNet(torch.nn.Module):
    def __init__(self, C: int, value: float = 1.0):
        super().__init__()
        import hypll.nn as hnn
        from hypll.manifolds.poincare_ball import Curvature, PoincareBall

        self.manifold = m = PoincareBall(c=Curvature(value))
        self.conv0 = hnn.HConvolution2d(1, C, 3, m, padding=1)
        self.bn0 = hnn.HBatchNorm2d(C, m, use_midpoint=True)
        self.conv1 = hnn.HConvolution2d(C, C, 3, m, padding=1)
        self.bn1 = hnn.HBatchNorm2d(C, m, use_midpoint=True)
        self.conv2 = hnn.HConvolution2d(C, C, 3, m, padding=1)
        self.bn2 = hnn.HBatchNorm2d(C, m, use_midpoint=True)
        self.relu = hnn.HReLU(m)
        self.flatten = hnn.HFlatten()
        from hypll.manifolds.euclidean import Euclidean
        from hypll.tensors import ManifoldParameter

        self.z = ManifoldParameter(torch.empty(C * 64, 10), manifold=Euclidean(), man_dim=0)
        self.r = torch.nn.Parameter(torch.zeros(10))

    def forward(self, img):
        from hypll.tensors import ManifoldTensor, TangentTensor

        m = self.manifold
        x = m.expmap(TangentTensor(img, manifold=m, man_dim=1))
        x = self.relu(self.bn0(self.conv0(x)))
        h = self.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        x = self.relu(m.mobius_add(h, x))
        x = self.flatten(x)
        return m.hyperplane_dists(x, self.z, self.r)


def _params(model):
    """The trainable tensors in a fixed order (HypLL's ManifoldParameters by their .tensor); no curvature."""
    from hypll.tensors import ManifoldParameter  # noqa: F401 (HypLL present when called on its model)

    out = []
    for name, p in model.named_parameters():
        if name.endswith("value"):
            continue
        out.append(p.tensor if hasattr(p, "man_dim") and hasattr(p, "tensor") else p)
    return out


def _geoops_params(model):
    return [p for n, p in model.named_parameters() if not n.endswith("value")]


def build_hypll(C: int = 8, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = _HypllNet(C)
    with torch.no_grad():
        net.z.tensor.normal_(0, (2 * C * 64 * 10) ** -0.5)
    return net


def build_geoops(C: int = 8) -> torch.nn.Module:
    return _GeoopsNet(C)


def _hypll_name(ours_name: str) -> str:
    """The HypLL parameter that a geoops parameter of the digits network corresponds to."""
    if ours_name == "head.z":
        return "z"
    if ours_name == "head.bias":
        return "r"
    mod, leaf = ours_name.split(".")
    return f"{mod}.norm.{leaf}" if mod.startswith("bn") else ours_name


def copy_weights(hyp: torch.nn.Module, ours: torch.nn.Module) -> None:
    """Copy HypLL's parameters into the geoops network (same layouts; matched by name)."""
    src = {n: getattr(p, "tensor", p) for n, p in hyp.named_parameters()}
    with torch.no_grad():
        for n, d in ours.named_parameters():
            if not n.endswith("value"):
                d.copy_(src[_hypll_name(n)].reshape(d.shape))


def _epoch(model, opt, data, batch, losses):
    xtr, ytr = data[0], data[1]
    t0 = time.perf_counter()
    for i in range(0, len(ytr), batch):
        xb, yb = xtr[i:i + batch], ytr[i:i + batch]
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return time.perf_counter() - t0


def _accuracy(model, data):
    with torch.no_grad():
        return float((model(data[2]).argmax(-1) == data[3]).float().mean())


_OPTIMS = ("adam", "adam-single", "sgd")


def _optimizer(name: str, params, lr: float):
    """The same optimizer for both networks: "adam" is torch's fused Adam (``fused=True``: one kernel for all the
    parameters; the default single-tensor loop runs ~10 small ops per parameter, which at these sizes cost more
    than the update itself), "adam-single" torch's default Adam (the A/B of the two), "sgd" plain SGD."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, fused=True)
    if name == "adam-single":
        return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    raise ValueError(f"poincare_digits: optim must be one of {_OPTIMS}, got {name!r}")


def run(epochs: int = 2, C: int = 8, batch: int = 64, lr: float = 3e-3, n_train: int = 1500, which=("hypll", "geoops"),
        optim: str = "adam"):
    """Train both; returns {name: (losses per step, test accuracy, seconds per epoch)}.

    The two trainings alternate epoch by epoch (geoops, HypLL, geoops, ...), so that a machine shared with
    other work slows both alike; each keeps its own optimizer and state."""
    xtr, ytr, xte, yte = load_digits()
    data = (xtr[:n_train], ytr[:n_train], xte, yte)
    hyp = build_hypll(C)
    ours = build_geoops(C)
    copy_weights(hyp, ours)
    runs = {}
    if "geoops" in which:
        runs["geoops"] = (ours, _optimizer(optim, _geoops_params(ours), lr), [], [])
    if "hypll" in which:
        runs["hypll"] = (hyp, _optimizer(optim, _params(hyp), lr), [], [])
    for _ in range(epochs):
        for model, opt, losses, times in runs.values():
            times.append(_epoch(model, opt, data, batch, losses))
    return {name: (losses, _accuracy(model, data), times) for name, (model, opt, losses, times) in runs.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--channels", type=int, default=8)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--optim", choices=_OPTIMS, default="adam")
    p.add_argument("--n-train", type=int, default=1500)
    a = p.parse_args(argv)
    res = run(a.epochs, a.channels, a.batch, a.lr, n_train=a.n_train, optim=a.optim)
    (lh, ah, th), (lg, ag, tg) = res["hypll"], res["geoops"]
    print("step  loss(HypLL)  loss(geoops)")
    for i, (u, v) in enumerate(zip(lh, lg)):
        if i % 5 == 0 or i == len(lh) - 1:
            print(f"{i:4d}  {u:.6f}     {v:.6f}")
    print(f"max |loss difference| over {len(lh)} steps: {max(abs(u - v) for u, v in zip(lh, lg)):.2e}")
    print(f"test accuracy: HypLL {ah:.4f}, geoops {ag:.4f}")
    for e, (u, v) in enumerate(zip(th, tg)):
        print(f"epoch {e}: HypLL {u:.2f} s, geoops {v:.2f} s  ({u / v:.1f}x)")


if __name__ == "__main__":
    main()
