"""The pre-session-44 torch composition of the Poincaré batch norm's transport matrix (geoopt's closed form in the
rows [b; -m], which cancels for a bias point near the batch midpoint near the boundary): the "old" side of ab.py and
the defect put back by defect_check.py."""
import torch


def old_gram(b, m):
    AE = torch.stack((b, -m))
    return AE, AE @ AE.t()


def old_transport_matrix(AE, G, k, s):
    eye = torch.eye(AE.shape[1], dtype=AE.dtype)
    C1 = torch.tensor([[-1.0, 0.0], [2.0, -1.0]], dtype=AE.dtype)
    C2 = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=AE.dtype)
    a2, ae, _, e2 = G.reshape(4).unbind()
    k2 = k * k
    W = torch.flip(G, (0, 1)) * C1 * k2 + C2 * k
    d = (1 - 2 * k * ae + k2 * a2 * e2).clamp_min(1e-15)
    alpha = s * (1 + k * a2) / (1 + k * e2)
    return eye * alpha + AE.t() @ (W * (2 * alpha / d)) @ AE
