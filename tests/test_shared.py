"""The shared parts know no family (docs/contributing.md): the registration helpers, backend switch, parity and bench
runners, package glue and the C++ module init name no family, peer or family-specific file; each family registers
itself (FAMILIES, csrc/bind/<family>.cpp, bench/<family>.py's PEER_MODULES).  Also the family-neutral helpers a
new op uses (geoops._library)."""
import io
import pathlib
import re
import tokenize
import types

import pytest
import torch

from geoops import FAMILIES, _backend, _library

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Shared files (docs/contributing.md, "What is shared"): none may name a family, a peer or a family's data.
SHARED_PY = ["geoops/__init__.py", "geoops/_library.py", "geoops/_backend.py", "geoops/parity/__init__.py",
             "geoops/nn/__init__.py", "geoops/reference/__init__.py", "geoops/_ops/__init__.py", "bench/__init__.py",
             "bench/__main__.py", "bench/_runner.py", "bench/_timing.py", "kernels/__init__.py", "setup.py"]
SHARED_CPP = ["csrc/ops.cpp", "csrc/include/geoops/bind.h"]
_PEERS = ("geoopt", "e3nn", "hypll", "scipy")
_WORDS = re.compile(r"(?i)\b(?:%s)" % "|".join(
    [re.escape(f) for f in FAMILIES] + ["stereo", "mobius", "cdist", "wordnet", "triple_attention", "s4d", "fftconv",
                                        "vandermonde"] + list(_PEERS)))


def _code_tokens(path: pathlib.Path):
    """(line, text) of the names and strings of a Python file, without comments and docstrings (prose may name a
    family as an example; code may not)."""
    toks = list(tokenize.generate_tokens(io.StringIO(path.read_text()).readline))
    skip = {tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.NL, tokenize.ENCODING}
    prev = tokenize.NEWLINE
    fstring_middle = getattr(tokenize, "FSTRING_MIDDLE", None)
    for i, t in enumerate(toks):
        if t.type == tokenize.STRING:
            nxt = toks[i + 1].type if i + 1 < len(toks) else tokenize.ENDMARKER
            if not (prev in skip and nxt in (tokenize.NEWLINE, tokenize.ENDMARKER)):  # not a bare string statement
                yield t.start[0], t.string
        elif t.type == tokenize.NAME or (fstring_middle is not None and t.type == fstring_middle):
            yield t.start[0], t.string
        if t.type not in (tokenize.COMMENT, tokenize.NL):
            prev = t.type


def test_scan_sees_family_names():
    # the scan must be able to fail: a family-specific line is flagged, a docstring naming one is not
    src = ROOT / "geoops" / "_families.py"
    assert any(_WORDS.search(s) for _, s in _code_tokens(src))
    assert _WORDS.search("x = ('geoopt', 'e3nn')") and not _WORDS.search("cpp_kernels")


@pytest.mark.parametrize("rel", SHARED_PY)
def test_shared_python_names_no_family(rel):
    path = ROOT / rel
    if not path.exists():
        pytest.skip(f"{rel} is not in this checkout")
    hits = [f"{rel}:{line}: {text[:60]}" for line, text in _code_tokens(path) if _WORDS.search(text)]
    assert not hits, "family-specific code in a shared file (move it to the family's files): " + "; ".join(hits)


@pytest.mark.parametrize("rel", SHARED_CPP)
def test_shared_cpp_names_no_family(rel):
    text = (ROOT / rel).read_text()
    code = re.sub(r"//[^\n]*", "", re.sub(r"/\*.*?\*/", "", text, flags=re.S))
    hits = sorted({m.group(0) for m in _WORDS.finditer(code)})
    assert not hits, f"{rel} names {hits}: bind a family's kernels in csrc/bind/<family>.cpp (GEOOPS_BINDINGS)"


def test_every_bind_file_is_bound():
    C = _backend.compiled()
    if C is None:
        pytest.skip("needs the compiled extension")
    files = sorted(p.stem for p in (ROOT / "csrc" / "bind").glob("*.cpp"))
    assert files, "csrc/bind/ has no family binding files"
    assert set(files) <= set(FAMILIES), f"csrc/bind/ has files of unknown families: {set(files) - set(FAMILIES)}"
    assert hasattr(C, "bound_families"), "geoops._C was built before csrc/bind/ existed: rebuild it"
    assert tuple(C.bound_families) == tuple(files)
    # each family's kernels are there (a few names per family, from each bind file)
    for fam in files:
        text = (ROOT / "csrc" / "bind" / f"{fam}.cpp").read_text()
        if not getattr(C, "with_cuda", False):  # a CPU build: the CUDA kernels' bindings are compiled out
            text = re.sub(r"#ifdef GEOOPS_WITH_CUDA.*?#endif", "", text, flags=re.S)
        names = re.findall(r'm\.def\(\s*"(\w+)"', text)
        assert names and all(hasattr(C, n) for n in names), fam


# ---------------------------------------------------------------- kernel_set: auto falls back per family
class _Ns:
    @staticmethod
    def op_fwd(x):
        return x


def _fake_cuda_build(monkeypatch):
    """An extension built with CUDA (its CUDA kernels are some other family's) and no Triton."""
    monkeypatch.setattr(_backend, "compiled", lambda: types.SimpleNamespace(with_cuda=True))
    monkeypatch.setattr(_backend, "triton_kernels", lambda family: None)


def test_kernel_set_auto_falls_back_to_reference_when_the_family_has_no_such_kernels(monkeypatch):
    _fake_cuda_build(monkeypatch)
    cuda = torch.device("cuda")
    with _backend.use_backend("auto"):
        assert _backend.resolve(cuda, "toyfamily") == "cuda"
        # the family has no CUDA C++ kernels: auto runs its reference instead of raising
        assert _library.kernel_set("toyfamily", cuda, cpp=_Ns, reference=_Ns) is _Ns
        assert _library.kernel_set("toyfamily", cuda, cpp=_Ns, cuda=None, reference=_Ns) is _Ns


def test_kernel_set_family_without_cpp_kernels_runs_its_reference_on_cpu():
    # a new family with only a reference (docs/contributing.md: C++ kernels optional) on a machine with geoops._C
    if _backend.compiled() is None:
        pytest.skip("needs the compiled extension")
    with _backend.use_backend("auto"):
        assert _backend.resolve(torch.device("cpu"), "toyfamily") == "cpp"
        assert _library.kernel_set("toyfamily", torch.device("cpu"), reference=_Ns) is _Ns
    with _backend.use_backend("cpp"), pytest.raises(RuntimeError, match="no 'cpp' kernels"):
        _library.kernel_set("toyfamily", torch.device("cpu"), reference=_Ns)


def test_kernel_set_forced_backend_without_kernels_still_raises(monkeypatch):
    _fake_cuda_build(monkeypatch)
    with _backend.use_backend("cuda"):
        with pytest.raises(RuntimeError, match="geoops.toyfamily: no 'cuda' kernels"):
            _library.kernel_set("toyfamily", torch.device("cuda"), cpp=_Ns, reference=_Ns)


# ---------------------------------------------------------------- bench: peers' versions come from the families
def test_bench_versions_come_from_the_families_peer_modules():
    from geoops.bench import _runner

    fam = types.SimpleNamespace(PEER_MODULES=("json", "no_such_module_xyz"))
    v = _runner.versions({"toy": fam})
    assert v["json"] is not None and v["no_such_module_xyz"] is None
    assert {"python", "torch", "triton", "geoops"} <= set(v)
    # every family's bench module names its peers; together they are the columns the JSON always had
    mods = {f: _runner._family_module(f) for f in FAMILIES}
    allv = _runner.versions(mods)
    for f, m in mods.items():
        assert isinstance(getattr(m, "PEER_MODULES", None), tuple), f"bench/{f}.py: PEER_MODULES missing"
        assert set(m.PEER_MODULES) <= set(allv)
    assert {"geoopt", "e3nn", "scipy"} <= set(allv)


# ---------------------------------------------------------------- helpers a new op uses
def test_grad_mask():
    assert _library.grad_mask((True, False, True)) == 5
    assert _library.grad_mask((False, False)) == 0
    assert _library.grad_mask((True, True, True, True), n=2) == 3


def test_check_tensors_names_the_argument():
    x = torch.zeros(2, 3)
    _library.check_tensors("geoops.toy.op", {"x": x, "y": x, "w": None})
    with pytest.raises(TypeError, match=r"geoops.toy.op: y must be a torch.Tensor, got list"):
        _library.check_tensors("geoops.toy.op", {"x": x, "y": [1.0]})
    with pytest.raises(TypeError, match=r"geoops.toy.op: y must be float16, bfloat16, float32 or float64, got "
                                        r"torch.int64"):
        _library.check_tensors("geoops.toy.op", {"x": x, "y": torch.zeros(2, dtype=torch.long)})
    with pytest.raises(TypeError, match=r"geoops.toy.op: y has dtype torch.float64 but x has torch.float32"):
        _library.check_tensors("geoops.toy.op", {"x": x, "y": x.double()}, same_dtype=True)
    _library.check_tensors("geoops.toy.op", {"x": x, "y": x.double()})  # mixed dtypes allowed unless asked
    with pytest.raises(TypeError, match=r"geoops.toy.op: w must be a torch.Tensor or None, got list"):
        _library.check_tensors("geoops.toy.op", {"x": x, "w": [1.0]}, optional=("w",))  # an optional argument
    _library.check_tensors("geoops.toy.op", {"x": x, "y": torch.zeros(2, dtype=torch.long)}, dtypes=None)  # (devices)
    with pytest.raises(ValueError, match=r"geoops.toy.op: y is on meta but x is on cpu; all tensors must be on one "
                                         r"device"):
        _library.check_tensors("geoops.toy.op", {"x": x, "y": torch.zeros(2, device="meta")})


def test_define_pair_registers_both_ops_and_their_callers():
    calls = []

    def fwd(x):
        calls.append("fwd")
        return x * 2

    def bwd(g, x, mask: int):
        calls.append("bwd")
        return (g * 2 if mask & 1 else x.new_empty(0),)

    FWD, BWD = _library.define_pair(
        "geoops::_shared_test_double", "(Tensor x) -> Tensor", fwd, lambda x: torch.empty_like(x),
        "(Tensor g, Tensor x, int mask) -> Tensor[]", bwd, lambda g, x, mask: _library.masked_empty(mask, x))
    x = torch.arange(3.0)
    assert torch.equal(FWD(x), x * 2) and calls == ["fwd"]  # eager fast path
    assert torch.equal(torch.ops.geoops._shared_test_double_fwd(x), x * 2)
    assert torch.equal(BWD(x, x, 1)[0], x * 2)
    assert torch.ops.geoops._shared_test_double_bwd(x, x, 0)[0].numel() == 0
    torch.library.opcheck(torch.ops.geoops._shared_test_double_fwd.default, (x,))


# ---------------------------------------------------------------- a family registers the backends it has kernels for
def test_family_kernels_registers_the_backends_a_family_has(monkeypatch):
    # a new family with only a reference: auto runs it, the backend switch and the parity run know it has no C++
    # kernels (before: `available("cpp", ...)` said yes for every family, so `python -m geoops.parity` forced cpp on
    # it and crashed with "no 'cpp' kernels", and backend_info / the bench's backend column said cpp)
    monkeypatch.setattr(_backend, "_PROVIDES", dict(_backend._PROVIDES))
    kernels = _library.family_kernels("toyfamily", reference=_Ns)
    cpu = torch.device("cpu")
    with _backend.use_backend("auto"):
        assert kernels(cpu) is _Ns
        assert _backend.resolve(cpu, "toyfamily") == "reference"
    assert not _backend.available("cpp", cpu, "toyfamily")
    with _backend.use_backend("cpp"), pytest.raises(RuntimeError, match="geoops.toyfamily has no cpp kernels"):
        kernels(cpu)
    from geoops import parity

    assert "has no cpp kernels" in parity._unavailable_reason("cpp", "cpu", "toyfamily")
    # a family that registers its C++ kernels keeps them
    both = _library.family_kernels("toyfamily2", cpp=_Ns, reference=_Ns)
    if _backend.compiled() is not None:
        with _backend.use_backend("auto"):
            assert _backend.resolve(cpu, "toyfamily2") == "cpp" and both(cpu) is _Ns


def test_family_kernels_fallback_runs_under_auto_only(monkeypatch):
    # a family whose auto path without compiled kernels is a faster torch composition than its oracle (gaunt's torch
    # routes) passes it as `fallback`: auto runs it, a forced reference still runs the reference
    monkeypatch.setattr(_backend, "_PROVIDES", dict(_backend._PROVIDES))

    class _Fast:
        pass

    kernels = _library.family_kernels("toyfamily3", reference=_Ns, fallback=_Fast)
    cpu = torch.device("cpu")
    with _backend.use_backend("auto"):
        assert kernels(cpu) is _Fast
    with _backend.use_backend("reference"):
        assert kernels(cpu) is _Ns


# ---------------------------------------------------------------- the guide's steps, as written, on a toy op
class _Call(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def test_toy_op_written_as_the_guide_says(monkeypatch):
    """docs/contributing.md, "Adding an op to a family" steps 1 and 4-6 and "Adding a family" (a reference-only
    family), followed line by line for a toy product x * y: if the guide's helpers or their use change, this fails
    (autograd, torch.func, vmap, opcheck, the documented errors)."""
    monkeypatch.setattr(_backend, "_PROVIDES", dict(_backend._PROVIDES))

    def reference_mul(x, y):  # step 1: the eager reference (float64, differentiable by autograd)
        return x * y

    class _Reference:  # step 4: the kernel namespace(s), one method per kernel
        @staticmethod
        def toy_mul_fwd(x, y):
            return reference_mul(x, y)

        @staticmethod
        def toy_mul_bwd(g, x, y, mask):
            with _library.reference_autograd():
                leaves = [t.detach().requires_grad_(True) for t in (x, y)]
                grads = torch.autograd.grad(reference_mul(*leaves), leaves, g)
            return _library.masked_grads(mask, grads, (x, y))

    kernels = _library.family_kernels("toyguide", reference=_Reference)

    def _fwd(x, y):
        return kernels(x.device).toy_mul_fwd(x, y)

    def _fwd_fake(x, y):
        return torch.empty_like(x)

    def _bwd(g, x, y, mask: int):
        return tuple(kernels(x.device).toy_mul_bwd(g, x, y, mask))

    def _bwd_fake(g, x, y, mask):
        return _library.masked_empty(mask, x, y)

    FWD, BWD = _library.define_pair("geoops::_toyguide_mul", "(Tensor x, Tensor y) -> Tensor", _fwd, _fwd_fake,
                                    "(Tensor g, Tensor x, Tensor y, int mask) -> (Tensor, Tensor)", _bwd, _bwd_fake)

    @_library.with_func_twin
    class ToyMulFn(torch.autograd.Function):  # step 5
        @staticmethod
        def forward(ctx, x, y):
            out = FWD(x, y)
            ToyMulFn.op_context(ctx, (x, y), out)
            return out

        @staticmethod
        def op_context(ctx, inputs, output):
            ctx.save_for_backward(*inputs)

        @staticmethod
        @_library.first_order_only
        def backward(ctx, g):
            x, y = ctx.saved_tensors
            mask = _library.grad_mask(ctx.needs_input_grad)
            gx, gy = BWD(g.contiguous(), x, y, mask)
            return (gx if mask & 1 else None), (gy if mask & 2 else None)

    _library.op_autograd("geoops::_toyguide_mul_fwd", ToyMulFn)  # step 5: the op differentiated on its own

    def toy_mul(x, y):  # step 6
        _library.check_tensors("geoops.toyguide.toy_mul", {"x": x, "y": y}, same_dtype=True)
        _library.check_finite("geoops.toyguide.toy_mul", {"x": x, "y": y})
        return _library.apply(ToyMulFn, x, y)

    x = torch.rand(3, 4, dtype=torch.float64, requires_grad=True)
    y = torch.rand(3, 4, dtype=torch.float64, requires_grad=True)
    with _backend.use_backend("auto"):
        assert _backend.resolve(x.device, "toyguide") == "reference"
        assert torch.equal(toy_mul(x, y), x * y)
        assert torch.autograd.gradcheck(toy_mul, (x, y))
        gx = torch.func.grad(lambda a: toy_mul(a, y.detach()).sum())(x.detach())
        assert torch.equal(gx, y.detach())
        assert torch.equal(torch.vmap(toy_mul)(x.detach(), y.detach()), (x * y).detach())
        g, = torch.autograd.grad(toy_mul(x, y).sum(), x, create_graph=True)
        with pytest.raises(RuntimeError, match="second derivatives through ToyMulFn"):
            g.sum().backward()
        # an exported program keeps the op, not the Function: the op's own autograd (op_autograd) differentiates it
        ep = torch.export.export(_Call(toy_mul), (x.detach(), y.detach()))
        assert "_toyguide_mul_fwd" in str(ep.graph)
        gx, gy = torch.autograd.grad(ep.module()(x, y).sin().sum(), (x, y))
        assert torch.equal(gx, torch.autograd.grad(toy_mul(x, y).sin().sum(), x)[0]) and gy is not None
        torch.library.opcheck(torch.ops.geoops._toyguide_mul_fwd.default, (x.detach(), y.detach()))
        torch.library.opcheck(torch.ops.geoops._toyguide_mul_fwd.default, (x, y))  # (its autograd too)
        torch.library.opcheck(torch.ops.geoops._toyguide_mul_bwd.default, (x.detach(), x.detach(), y.detach(), 2))
    with pytest.raises(TypeError, match="geoops.toyguide.toy_mul: y has dtype torch.float32 but x has torch.float64"):
        toy_mul(x, y.float())
    with pytest.raises(ValueError, match="geoops.toyguide.toy_mul: y is on meta but x is on cpu"):
        toy_mul(x, y.to("meta"))
    with _backend.use_backend("cpp"), pytest.raises(RuntimeError, match="geoops.toyguide has no cpp kernels"):
        toy_mul(x, y)


def test_direct_call_not_ok_under_a_forward_ad_dual_level():
    """A kernel called directly drops forward_ad tangents (a silent zero derivative: session 37 found it in the
    stereographic row ops with a tensor k); while a dual level is open the ops must dispatch."""
    import torch.autograd.forward_ad as fwAD

    x = torch.randn(3)
    assert _library.direct_call_ok(x)
    with fwAD.dual_level():
        assert not _library.direct_call_ok(x)
        assert not _library.direct_call_ok(fwAD.make_dual(x, torch.ones(3)))
    assert _library.direct_call_ok(x)
