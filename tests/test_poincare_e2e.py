"""End-to-end: the digits Poincaré CNN trained with HypLL and with geoops from the same weights gives the same
loss curve; the geoops model under torch.distributed DDP (gloo, 2 processes) gives the single-process gradients."""
from __future__ import annotations

import datetime
import os
import socket
import tempfile
import time

import pytest
import torch

pytest.importorskip("hypll")
pytest.importorskip("sklearn")

from geoops.bench import poincare_digits as pdg  # noqa: E402


def test_digits_same_loss_curve_as_hypll():
    res = pdg.run(epochs=1, C=4, batch=64, n_train=256)  # Adam, lr 3e-3
    (lh, ah, _), (lg, ag, _) = res["hypll"], res["geoops"]
    assert len(lh) == len(lg) == 4
    for u, v in zip(lh, lg):
        assert abs(u - v) <= 2e-4 * max(1.0, abs(u)), (lh, lg)
    assert lg[-1] < lg[0]  # it learns
    assert abs(ah - ag) <= 0.01


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shards():
    xtr, ytr, _, _ = pdg.load_digits()
    x, y = xtr[:64], ytr[:64]
    return [(x[:32], y[:32]), (x[32:], y[32:])]


def _grads(model, x, y):
    model.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    return [p.grad.detach().clone() for n, p in model.named_parameters() if not n.endswith("value")]


def _ddp_worker(rank, world, port, out_dir):
    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))
    try:
        model = pdg.build_geoops(4)
        pdg.copy_weights(pdg.build_hypll(4), model)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        x, y = _shards()[rank]
        ddp.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(ddp(x), y).backward()
        grads = [p.grad.detach().clone() for n, p in model.named_parameters() if not n.endswith("value")]
        path = os.path.join(out_dir, f"rank{rank}.pt")
        torch.save(grads, path + ".tmp")
        os.replace(path + ".tmp", path)  # whole files only: the parent polls for them
        dist.barrier()  # both ranks past their collectives before either tears the group down
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
@pytest.mark.build_relative("two DDP child processes against this process's eager gradients of the same model in one "
                            "build; the entry points it reads (poincare conv2d / bn_train / fc_rows / mlr / relu / "
                            "residual / flatten, stereo_fwd_cpu) are read by test_digits_same_loss_curve_as_hypll, "
                            "which the portable stage runs")
def test_ddp_gloo_two_processes_same_gradients():
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as d:
        files = [os.path.join(d, f"rank{r}.pt") for r in range(2)]
        ctx = mp.spawn(_ddp_worker, args=(2, _free_port(), d), nprocs=2, join=False)
        # Never wait forever: session 33's CI rehearsal hung here once, both ranks' results written and one
        # process blocked in gloo's teardown (destroy_process_group after its peer, the store's host, had
        # exited).  A worker that raises still fails the test (join re-raises); one that has written its result
        # gets 30 s to exit before it is stopped; nothing after 300 s is a failure.
        deadline, done_at = time.monotonic() + 300.0, None
        while not ctx.join(timeout=1.0):
            now = time.monotonic()
            if done_at is None and all(os.path.exists(f) for f in files):
                done_at = now
            if (done_at is not None and now - done_at > 30.0) or now > deadline:
                for p in ctx.processes:
                    if p.is_alive():
                        p.terminate()
                for p in ctx.processes:
                    p.join(10.0)
                break
        assert all(os.path.exists(f) for f in files), "the DDP workers wrote no result within 300 s"
        got = [torch.load(f) for f in files]
    model = pdg.build_geoops(4)
    pdg.copy_weights(pdg.build_hypll(4), model)
    per_shard = [_grads(model, x, y) for x, y in _shards()]
    want = [(a + b) / 2 for a, b in zip(*per_shard)]
    for r in range(2):
        for g, w in zip(got[r], want):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_digits_optimizer_choice():
    """The bench's Adam is torch's fused Adam on both sides; "adam-single" the default loop; unknown names raise."""
    p = [torch.nn.Parameter(torch.zeros(3))]
    assert pdg._optimizer("adam", p, 1e-3).defaults["fused"] is True
    assert not pdg._optimizer("adam-single", p, 1e-3).defaults["fused"]
    with pytest.raises(ValueError):
        pdg._optimizer("adamw", p, 1e-3)
