"""Triton kernels of geoops, one module per op family (installed as ``geoops.kernels``).

``kernels/<family>.py`` holds the family's ``@triton.jit`` kernels and their launchers (``_<op>_fwd_kernel``
/ ``_<op>_fwd`` naming); ``geoops._backend`` imports it for CUDA tensors and, under ``TRITON_INTERPRET=1``,
for CPU tensors.  Import numpy only where the interpreter needs it (a GPU machine may not have numpy).

Compile check hook (every family must provide it)
-------------------------------------------------
CI compiles every launchable Triton variant of every family for sm_80 and sm_90 on a CPU machine
(``bash .ci/triton_compile_check.sh``: a stand-in driver reports a CUDA target; kernels are compiled, never
launched), with the Triton CI installs and Triton 3.6 (the GPU machines'), and writes
``kernels/COMPILE_REPORT.md`` (registers, spills, shared memory, approximate instructions per variant).
It discovers ``kernels/*.py`` and calls the module-level hook::

    def compile_variants() -> list[dict]:
        return [
            {"label": "myop/float32/one-tile fwd",   # unique within the family; shown in the table
             "launch": lambda: _myop_fwd(torch.zeros(4096, 64), ...),   # small CPU tensors
             "expect": {"index64": True,           # optional; these are the defaults, except ieee_div
                        "max_spill_bytes": 0,
                        "ieee_div": True}},        # True: no div.full/div.approx f32 may appear
            ...
        ]

``launch`` calls the family's real launcher on CPU tensors of the right dtype and shape: the check
patches Triton's JIT so that ``kernel[grid](...)`` compiles for the target instead of launching, so
the compiled variant is exactly what the launcher would launch (constexprs, block heuristics,
argument specialisation).  A launcher may not touch CUDA-only APIs before the launch (use a guard
such as ``torch.cuda.device(x.device)`` only for CUDA tensors).  ``triton.autotune`` kernels compile
every config.  List one entry per variant the op table can launch: ops x dtypes x paths (one-tile /
chunked, ...) x forward / backward, plus the shapes whose block configurations differ (register
pressure).  The check fails on a compile error, on a ``@triton.jit`` ``*_kernel`` of the module that no entry
launches (``python .ci/triton_compile_check.py --coverage`` checks only that, in seconds), on spills above
``max_spill_bytes``, on a program id
used in 32-bit arithmetic (``index64``: widen it first, ``tl.program_id(0).to(tl.int64)``), and on
approximate float32 division where ``ieee_div`` is set.  A module-level string ``COMPILE_NOTES`` is printed
above the family's table (explain there any spill an expectation tolerates).  See ``kernels/stereographic.py``.
"""

import os

import torch

_SM_COUNTS: dict = {}


def sm_count(device: torch.device):
    """The multiprocessor count of a CUDA device (read once per device index), or None for any other device
    (the interpreter's and the compile check's CPU tensors).  The families' "split a small grid" rules size their
    grids from it, each with its own rule where it is None."""
    if device.type != "cuda":
        return None
    idx = device.index if device.index is not None else torch.cuda.current_device()
    n = _SM_COUNTS.get(idx)
    if n is None:
        n = _SM_COUNTS[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return n


def with_env(name: str, value: str, fn, *args):
    """fn(*args) with the environment variable `name` set to `value`, restored afterwards: the compile check
    hooks launch a knob's path this way (the knobs are read per call)."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        return fn(*args)
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old
