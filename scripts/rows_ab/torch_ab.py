"""The harness's loop structures (scripts/rows_ab/harness.cpp built as a library) on torch's tensors: the bench's
fp32 2^18 x 64 mobius_add inputs, a fresh torch output per call (so torch's allocator and, with
THP_MEM_ALLOC_ENABLE=1, its huge pages), interleaved with the limit op (x + y) and geoops' mobius_add; 1 thread,
thread CPU time, medians.

usage: g++ -O3 -march=native -fopenmp -shared -fPIC -DROWS_HARNESS_LIB -o /tmp/rows_harness.so scripts/rows_ab/harness.cpp
       THP_MEM_ALLOC_ENABLE=1 python scripts/rows_ab/torch_ab.py ROUNDS [LIB]
"""
import ctypes
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ab import timed_rounds  # noqa: E402
from bench import stereographic as bs  # noqa: E402

VARIANTS = ("add", "ind", "row1_nt", "blk16_nt", "blocked16_nt", "blocked16_nt_pf8")


def main():
    rounds = int(sys.argv[1])
    lib = ctypes.CDLL(sys.argv[2] if len(sys.argv) > 2 else "/tmp/rows_harness.so")
    torch.set_num_threads(1)
    inp = bs.make_inputs("mobius_add", 1 << 18, 64, torch.float32, "cpu")
    x, y = inp["x"], inp["y"]
    assert x.is_contiguous() and y.is_contiguous() and x.data_ptr() % 64 == 0 and y.data_ptr() % 64 == 0

    def harness(name):
        def call(_):
            o = torch.empty_like(x)
            rc = lib.run_variant(name.encode(), ctypes.c_void_p(x.data_ptr()), ctypes.c_void_p(y.data_ptr()),
                                 ctypes.c_void_p(o.data_ptr()), ctypes.c_long(x.shape[0]))
            assert rc == 0, name
            return o
        return call

    calls = {"limit": lambda _: x + y, "geoops": bs.op_call(bs.geoops_fn("mobius_add"), "mobius_add")}
    calls.update({v: harness(v) for v in VARIANTS})
    med = {k: statistics.median(v) for k, v in timed_rounds(calls, inp, rounds, 3, time.thread_time).items()}
    head = (f"mobius_add 2^18 x 64 fp32, 1 thread, THP={os.environ.get('THP_MEM_ALLOC_ENABLE', '0')}, "
            f"rounds={rounds}, load={os.getloadavg()[0]:.2f}")
    print("\n".join([head] + [f"  {k:18s} {m:8.3f} ms  x limit {m / med['limit']:.3f}" for k, m in med.items()]))


if __name__ == "__main__":
    main()
