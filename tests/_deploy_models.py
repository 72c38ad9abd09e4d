"""Tiny models of each geoops family for the deployment tests (tests/test_deploy_hunt.py).

The tests import it as ``_deploy_models`` (tests/ on the path, as pytest puts it), and so does their fresh process
(tests/ on its PYTHONPATH), so that a pickled whole module (``torch.save(model)``) finds its classes there.
"""
from __future__ import annotations

import torch

import geoops
import geoops.nn as gnn
from geoops import stereographic as st


class HypCNN(torch.nn.Module):
    """Poincaré CNN block + MobiusLinear + MLR head (channels are the ball's points)."""

    def __init__(self):
        super().__init__()
        ball = gnn.PoincareBall(1.0)
        self.ball = ball
        self.conv = gnn.PoincareConv2d(3, 4, 3, ball, padding=1)
        self.bn = gnn.PoincareBatchNorm2d(4, ball)
        self.relu = gnn.PoincareReLU(ball)
        self.flat = gnn.PoincareFlatten(ball)
        self.lin = gnn.MobiusLinear(4 * 4 * 4, 8, ball)
        self.head = gnn.PoincareMLR(8, 3, ball)

    def forward(self, x):
        return self.head(self.lin(self.flat(self.relu(self.bn(self.conv(x))))))


class SSMNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.s4d = gnn.S4D(4, d_state=8)

    def forward(self, u):
        return self.s4d(u)[0]


class GauntNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.tp = gnn.GauntTensorProduct("2x0e+2x1o", "1x0e+1x1o+1x2e", "2x0e+2x1o+2x2e")

    def forward(self, x1, x2):
        return self.tp(x1, x2)


class AttnNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = gnn.TripleAttention(8, 2)

    def forward(self, x):
        return self.attn(x)


class DistNet(torch.nn.Module):
    """A plain function model: learnable anchors, cdist to them and the 2 nearest."""

    def __init__(self):
        super().__init__()
        self.anchors = torch.nn.Parameter(0.1 * torch.randn(5, 3))

    def forward(self, x):
        d = st.cdist(x, self.anchors, k=-1.0)
        dk, ik = st.knn(x, self.anchors, 2, k=-1.0)
        return d, dk, ik


def build(name: str):
    """(model in eval mode, example inputs, dynamic_shapes for torch.export) for a family's tiny model."""
    from torch.export import Dim

    torch.manual_seed(0)
    batch = Dim("batch", min=2, max=64)
    if name == "poincare":
        m = HypCNN()
        x = st.expmap0(0.1 * torch.randn(3, 4, 4, 3), k=-1.0).permute(0, 3, 1, 2).contiguous()
        args, dyn = (x,), ({0: batch},)
        m.train()
        with torch.no_grad():  # running statistics that are not the identity
            m(x)
    elif name == "ssm":
        m = SSMNet()
        args, dyn = (torch.randn(2, 4, 16),), ({0: batch, 2: Dim("L", min=2, max=256)},)
    elif name == "gaunt":
        m = GauntNet()
        with torch.no_grad():
            for p in m.parameters():
                p.uniform_(0.5, 1.5)
        args = (torch.randn(3, 8), torch.randn(3, 9))
        dyn = ({0: batch}, {0: batch})
    elif name == "attention":
        m = AttnNet()
        args, dyn = (torch.randn(2, 5, 8),), ({0: batch},)
    elif name == "dist":
        m = DistNet()
        args, dyn = (0.2 * torch.randn(4, 3),), ({0: batch},)
    else:
        raise KeyError(name)
    return m.eval(), args, dyn


FAMILIES = ("poincare", "ssm", "gaunt", "attention", "dist")
