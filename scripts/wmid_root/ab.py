"""A/B of weighted_midpoint (float32, weights, k = -1) between two trees (code and build), one worker process per
tree (scripts/short_rows/ab_procs.py: 1 thread, thread CPU time, interleaved rounds).

usage: ab.py TREE_A TREE_B ROUNDS [CASES]   (e.g. /work/main /work/wt/wmidk 21)
Cases: the bench's two layouts (2^16 x 64 over dim 0, 4096 x 32 x 64 over dim 1), points well inside the ball
(|x| ~ 0.4), fwd and fwd+bwd; and 256 x 32 x 16 near the boundary (1 + k|x|^2 ~ 1e-4), where main's C++ path
re-ran every group on the sums path.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "short_rows"))
import ab_procs  # noqa: E402

_SETUP = """
import geoops.stereographic as gs
g = torch.Generator().manual_seed(0)
shape, red, near = {shape!r}, {red!r}, {near!r}
x = torch.randn(*shape, generator=g) * 0.05
if near:  # one direction per group, the points within ~1e-5 of it, 1 - |x|^2 ~ 1e-4
    u = torch.randn(shape[0], 1, shape[-1], generator=g)
    x = (u / u.norm(dim=-1, keepdim=True) * (1 - 5e-5)).expand(shape) + torch.randn(*shape, generator=g) * 1e-6
w = torch.rand(*shape[:-1], generator=g) + 0.1
k = torch.tensor(-1.0)
if {bwd!r}:
    x.requires_grad_(); w.requires_grad_()
    go = torch.randn(*[s for i, s in enumerate(shape) if i not in red], generator=g)
    def f():
        gs.weighted_midpoint(x, w, k=k, reducedim=red).backward(go)
else:
    f = lambda: gs.weighted_midpoint(x, w, k=k, reducedim=red)
"""

for name, shape, red, near in (("65536x64_dim0", (65536, 64), [0], False), ("4096x32x64_dim1", (4096, 32, 64), [1], False),
                               ("near_256x32x16_dim1", (256, 32, 16), [1], True)):
    for bwd in (False, True):
        ab_procs.CASES[f"wmid_{name}_{'fwdbwd' if bwd else 'fwd'}"] = (
            _SETUP.format(shape=shape, red=red, near=near, bwd=bwd), None)

if __name__ == "__main__":
    if len(sys.argv) < 5:
        sys.argv.append(",".join(n for n in ab_procs.CASES if n.startswith("wmid_")))
    ab_procs.main()
