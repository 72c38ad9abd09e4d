"""Setup of the Triton backend tests (run on their own: ``python -m pytest tests/triton``).

Without a GPU the kernels run in the Triton interpreter, which Triton decides
when the kernels are defined: TRITON_INTERPRET must be set before triton or
geoops is imported, hence before any other import here.  Run with
TRITON_INTERPRET=0 on a CUDA machine to test the compiled kernels instead.
Under the interpreter two patches below save time and change no result (each docstring says why):
GEOOPS_INTERPRETER_REPATCH=1 and GEOOPS_INTERPRETER_OVERFLOW_CHECKS=1 leave Triton as it is.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# Interpreted kernels run on CPU tensors; compiled ones need CUDA.
DEVICE = "cpu" if INTERPRET else ("cuda" if torch.cuda.is_available() else None)


def _patch_lang_once_per_launch():
    """Under the interpreter, skip Triton's repeated patching of triton.language inside one kernel launch.

    The interpreter patches triton.language (its builtins become interpreted ones) when a launch starts
    (GridExecutor.__call__, undone when it ends) and again at every call of a @triton.jit device function
    (InterpretedFunction.__call__: _patch_lang(fn), never undone), for every program of the grid.  Inside one
    launch nothing undoes a patch, so a second patch of the same module globals sets the same attributes to
    equivalent stateless wrappers again: it changes nothing, and its inspect.getmembers scans were ~35 % of the
    interpreter tests' time.  Here the first patch of each module's globals within a launch runs; the repeats are
    skipped.  The launch's own patch (whose scope the launch restores) always runs."""
    try:
        from triton.runtime import interpreter as interp

        patch_lang, grid_call = interp._patch_lang, interp.GridExecutor.__call__
    except (ImportError, AttributeError):  # another Triton: leave it as it is
        return
    done = set()  # id of the globals of every function patched since the current launch began

    def launch(self, *args, **kwargs):
        done.clear()
        try:
            return grid_call(self, *args, **kwargs)
        finally:
            done.clear()

    def patch(fn):
        key = id(fn.__globals__)
        if key in done:
            return None  # a device function's call: its caller ignores the result
        scope = patch_lang(fn)
        done.add(key)
        return scope

    interp.GridExecutor.__call__ = launch
    interp._patch_lang = patch


def _skip_unasserted_overflow_checks():
    """Under the interpreter, leave out the integer-overflow checks whose assert never runs.

    Triton's semantic layer follows every 32-bit integer add / sub / mul (index arithmetic) with an overflow check
    when its builder's options ask for one (sanitize_overflow, True in the interpreter's options): the operands cast
    to int64, the operation again, two comparisons and an and, handed to device_assert, which drops the condition
    unless options.debug is set (never in the interpreter's options).  So without debug the checks compute a value
    nobody reads: ~25 % of an attention fix-up launch's time here.  With debug set they stay."""
    try:
        import dataclasses

        from triton.runtime import interpreter as interp

        opts = interp.interpreter_builder.options
        if opts.sanitize_overflow and not opts.debug:
            interp.interpreter_builder.options = dataclasses.replace(opts, sanitize_overflow=False)
    except (ImportError, AttributeError, TypeError):  # another Triton: leave it as it is
        return


if INTERPRET and os.environ.get("GEOOPS_INTERPRETER_REPATCH", "0") != "1":
    _patch_lang_once_per_launch()
if INTERPRET and os.environ.get("GEOOPS_INTERPRETER_OVERFLOW_CHECKS", "0") != "1":
    _skip_unasserted_overflow_checks()


def pytest_collection_modifyitems(config, items):
    if DEVICE is not None:
        return
    skip = pytest.mark.skip(reason="Triton tests need TRITON_INTERPRET=1 or a CUDA device")
    for item in items:
        item.add_marker(skip)


@pytest.fixture(autouse=True)
def triton_backend():
    """Force the triton backend for every test (restored afterwards)."""
    import geoops

    old = geoops.get_backend()
    geoops.set_backend("triton")
    try:
        yield
    finally:
        geoops.set_backend(old)


@pytest.fixture
def device():
    return DEVICE



class HostWork:
    """What one call costs the host besides its kernels: the torch ops it runs (``ops``: aten op names, each
    counted where Python or a custom op's implementation called it, not the ops that op calls in turn) and the
    Triton kernels it launches (``launches``).  Under the interpreter the kernels run on the CPU, so times say
    nothing about a GPU; these counts do (on a GPU each op or launch costs ~5-20 us of host time)."""

    def __init__(self):
        self.ops = []
        self.launches = []

    def __repr__(self):
        from collections import Counter
        return (f"HostWork({len(self.ops)} torch ops {dict(Counter(self.ops).most_common(10))}, "
                f"{len(self.launches)} launches {dict(Counter(self.launches))})")


@pytest.fixture
def host_work():
    """``with host_work() as w: ...`` counts the torch ops and Triton launches of the block (see HostWork)."""
    import contextlib

    import triton
    from torch.profiler import ProfilerActivity, profile

    classes = [triton.runtime.jit.JITFunction]
    try:
        from triton.runtime.interpreter import InterpretedFunction
        classes.append(InterpretedFunction)
    except ImportError:  # pragma: no cover - every Triton with an interpreter has it
        pass

    @contextlib.contextmanager
    def count():
        work = HostWork()
        saved = [(c, c.run) for c in classes]

        def counted(orig):
            def run(self, *args, **kwargs):
                work.launches.append(getattr(self, "__name__", None) or getattr(self.fn, "__name__", "?"))
                with torch.profiler.record_function("triton_launch"):  # ops inside a launch are its own
                    return orig(self, *args, **kwargs)
            return run

        for c, orig in saved:
            c.run = counted(orig)
        try:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                yield work
        finally:
            for c, orig in saved:
                c.run = orig
        for ev in prof.events():
            if not ev.name.startswith("aten::"):
                continue
            parent, outer = ev.cpu_parent, False
            while parent is not None:  # skip ops called by another aten op or by a (interpreted) launch
                if parent.name.startswith("aten::") or parent.name == "triton_launch":
                    outer = True
                    break
                parent = parent.cpu_parent
            if not outer:
                work.ops.append(ev.name[6:])

    return count


@pytest.fixture
def tf32_dots(monkeypatch):
    """The interpreter's tl.dot with TF32 operand rounding where the kernel asks for input_precision="tf32" (as the
    GPU's tensor cores read float32 operands: round to nearest at 10 explicit mantissa bits); its own dot is exact
    float32, which would hide the TF32 error of the tensor-core kernels (the ssm fftconv's monarch path)."""
    import numpy as np
    import triton.runtime.interpreter as interp
    from triton._C.libtriton import ir

    real = interp.InterpreterBuilder.create_dot

    def tf32(h):
        if h.data.dtype != np.float32:
            return h
        i = h.data.view(np.int32)
        return interp.TensorHandle(((i + np.int32(0x1000)) & np.int32(~0x1FFF)).view(np.float32), h.dtype)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if input_precision == ir.INPUT_PRECISION.TF32:
            a, b = tf32(a), tf32(b)
        return real(self, a, b, d, input_precision, max_num_imprecise_acc)

    monkeypatch.setattr(interp.InterpreterBuilder, "create_dot", create_dot)
