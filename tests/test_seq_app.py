"""Session 36 application-level user trial of the sequence families ("seqapp"): a small sequence model built
from geoops.nn.S4D (state-spaces' standalone layer) and geoops.nn.TripleAttention, trained next to an eager twin
(state-spaces' S4D written out from its published formulas, the attention on the reference backend), and put
through what training scripts do: AdamW groups from the ``_optim`` hints, checkpointing, gradient accumulation,
clipping, torch.compile, autocast, state-dict round trips, deepcopy, inference mode, odd / empty / long lengths,
and the op-level layouts such a model produces (non-contiguous inputs, expanded kernels, C_out > 1,
bidirectional)."""
from __future__ import annotations

import copy
import io
import math
import os

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import geoops
import geoops.ssm as gs
from geoops.nn import S4D, DropoutNd, TripleAttention
from geoops.reference import ssm as ref


# ---------------------------------------------------------------- the eager twin (state-spaces' layout)
class EagerS4DKernel(nn.Module):
    """state-spaces' standalone S4D kernel, from its published formulas and parameter layout: log_dt (H,),
    C = view_as_real of (H, N/2) complex, log_A_real, A_imag (H, N/2); K = 2 Re einsum(C (e^{dtA} - 1)/A, e^{dtA l})."""

    def __init__(self, H, N=64, dt_min=1e-3, dt_max=0.1, lr=None):
        super().__init__()
        log_dt = torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.C = nn.Parameter(torch.view_as_real(torch.randn(H, N // 2, dtype=torch.cfloat)))
        self._reg("log_dt", log_dt, lr)
        self._reg("log_A_real", torch.log(0.5 * torch.ones(H, N // 2)), lr)
        # as state-spaces' einops repeat: an expanded (stride-0) view
        self._reg("A_imag", math.pi * torch.arange(N // 2, dtype=torch.get_default_dtype()).expand(H, N // 2), lr)

    def _reg(self, name, t, lr):
        if lr == 0.0:
            self.register_buffer(name, t)
        else:
            self.register_parameter(name, nn.Parameter(t))
            hint = {"weight_decay": 0.0}
            if lr is not None:
                hint["lr"] = lr
            setattr(getattr(self, name), "_optim", hint)

    def forward(self, L):
        dt = torch.exp(self.log_dt)
        C = torch.view_as_complex(self.C)
        A = -torch.exp(self.log_A_real) + 1j * self.A_imag
        dtA = A * dt.unsqueeze(-1)
        K = dtA.unsqueeze(-1) * torch.arange(L, device=A.device)
        C = C * (torch.exp(dtA) - 1.0) / A
        return 2 * torch.einsum("hn,hnl->hl", C, torch.exp(K)).real


class EagerS4D(nn.Module):
    """state-spaces' standalone S4D layer: FFT conv of size 2L + D skip -> GELU -> DropoutNd -> Conv1d(H, 2H, 1) -> GLU."""

    def __init__(self, d_model, d_state=64, dropout=0.0, transposed=True, **kernel_args):
        super().__init__()
        self.h, self.n, self.transposed = d_model, d_state, transposed
        self.D = nn.Parameter(torch.randn(self.h))
        self.kernel = EagerS4DKernel(self.h, N=self.n, **kernel_args)
        self.activation = nn.GELU()
        self.dropout = DropoutNd(dropout) if dropout > 0.0 else nn.Identity()
        self.output_linear = nn.Sequential(nn.Conv1d(self.h, 2 * self.h, kernel_size=1), nn.GLU(dim=-2))

    def forward(self, u, **kwargs):
        if not self.transposed:
            u = u.transpose(-1, -2)
        L = u.size(-1)
        k = self.kernel(L=L)
        y = torch.fft.irfft(torch.fft.rfft(u, n=2 * L) * torch.fft.rfft(k, n=2 * L), n=2 * L)[..., :L]
        y = y + u * self.D.unsqueeze(-1)
        y = self.output_linear(self.dropout(self.activation(y)))
        if not self.transposed:
            y = y.transpose(-1, -2)
        return y, None


# ---------------------------------------------------------------- the application model
class Block(nn.Module):
    """Pre-norm residual block: x + S4D(LN x), then + TripleAttention(LN x).  x is (B, L, d)."""

    def __init__(self, d, n, heads, dropout, transposed, causal, ssm_cls, lr):
        super().__init__()
        self.transposed = transposed
        self.norm1 = nn.LayerNorm(d)
        self.ssm = ssm_cls(d, n, dropout=dropout, transposed=transposed, lr=lr)
        self.norm2 = nn.LayerNorm(d)
        self.attn = TripleAttention(d, heads, causal=causal)

    def forward(self, x):
        z = self.norm1(x)
        if self.transposed:
            z = z.transpose(-1, -2)  # (B, d, L): a non-contiguous view, as users write it
        z, _ = self.ssm(z)
        if self.transposed:
            z = z.transpose(-1, -2)
        x = x + z
        return x + self.attn(self.norm2(x))


class SeqModel(nn.Module):
    def __init__(self, vocab=11, d=8, n=8, heads=2, layers=2, classes=3, dropout=0.0, transposed=True,
                 causal=False, ssm_cls=S4D, lr=1e-3):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d, n, heads, dropout, transposed, causal, ssm_cls, lr)
                                    for _ in range(layers))
        self.head = nn.Linear(d, classes)

    def forward(self, tok, ckpt=None):
        x = self.emb(tok)
        for b in self.blocks:
            x = b(x) if ckpt is None else checkpoint(b, x, use_reentrant=ckpt)
        return self.head(x.mean(1))


def _twins(dtype=torch.float64, seed=0, **cfg):
    """(geoops model, eager twin) with the same weights (the twin loads the geoops state dict, strict)."""
    torch.manual_seed(seed)
    m = SeqModel(**cfg).to(dtype)
    e = SeqModel(ssm_cls=EagerS4D, **cfg).to(dtype)
    e.load_state_dict(m.state_dict(), strict=True)
    return m, e


def _data(B=4, L=21, seed=1, vocab=11, classes=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (B, L), generator=g), torch.randint(0, classes, (B,), generator=g)


def _param_groups(model, lr=1e-2, weight_decay=0.1):
    """state-spaces' example.py setup_optimizer: parameters without ``_optim`` in the default AdamW group, one
    group per distinct hint dict."""
    params = list(model.parameters())
    opt = torch.optim.AdamW([p for p in params if not hasattr(p, "_optim")], lr=lr, weight_decay=weight_decay)
    hps = [getattr(p, "_optim") for p in params if hasattr(p, "_optim")]
    hps = [dict(s) for s in sorted(list(dict.fromkeys(frozenset(hp.items()) for hp in hps)))]
    for hp in hps:
        opt.add_param_group({"params": [p for p in params if getattr(p, "_optim", None) == hp], **hp})
    return opt


def _loss(model, tok, lab, backend=None, **kw):
    with geoops.use_backend(backend or geoops.get_backend()):
        return nn.functional.cross_entropy(model(tok, **kw), lab)


def _backward(loss, backend=None):
    """loss.backward() under the backend the forward ran on: the backend is chosen per call, and a backward run
    outside ``use_backend`` takes the default's kernels (the twins' backwards compared one backend with itself)."""
    with geoops.use_backend(backend or geoops.get_backend()):
        loss.backward()


def _grads(model):
    return {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _max_rel(ga, gb):
    assert set(ga) == set(gb)
    return max(_rel(ga[k], gb[k]) for k in gb)


# ---------------------------------------------------------------- state-spaces drop-in
@pytest.mark.parametrize("transposed", [True, False])
def test_state_spaces_state_dict_loads_strict_and_gives_the_same_outputs(transposed):
    """A state dict of state-spaces' standalone S4D (its names and layout, A_imag an expanded view) loads into
    geoops.nn.S4D with strict=True, and back; outputs and gradients agree in float64."""
    torch.manual_seed(3)
    e = EagerS4D(6, 8, transposed=transposed, lr=1e-3).double()
    m = S4D(6, 8, transposed=transposed, lr=1e-3).double()
    assert set(e.state_dict()) == set(m.state_dict())
    m.load_state_dict(e.state_dict(), strict=True)
    EagerS4D(6, 8, transposed=transposed).double().load_state_dict(m.state_dict(), strict=True)
    u = torch.randn(3, 6, 37, dtype=torch.float64)
    if not transposed:
        u = u.transpose(1, 2).contiguous()
    u1, u2 = u.clone().requires_grad_(), u.clone().requires_grad_()
    y1, s1 = m(u1)
    y2, _ = e(u2)
    assert s1 is None and y1.shape == u.shape
    w = torch.randn_like(y2)
    (y1 * w).sum().backward()
    (y2 * w).sum().backward()
    assert _rel(y1, y2) < 1e-12
    assert _rel(u1.grad, u2.grad) < 1e-12
    for (n1, p1), (n2, p2) in zip(m.named_parameters(), e.named_parameters()):
        assert n1 == n2 and _rel(p1.grad, p2.grad) < 1e-11, n1


# ---------------------------------------------------------------- training next to the twin
def _train(model, opt, batches, backend, seed=5):
    losses = []
    for i, (tok, lab) in enumerate(batches):
        torch.manual_seed(seed + i)  # the same dropout masks for both twins
        opt.zero_grad()
        loss = _loss(model, tok, lab, backend)
        _backward(loss, backend)
        opt.step()
        losses.append(loss.item())
    return losses, _grads(model)


@pytest.mark.parametrize("transposed", [True, False])
@pytest.mark.parametrize("causal", [False, True])
def test_train_steps_match_the_eager_twin_fp64(transposed, causal):
    """Three AdamW steps (param groups from the ``_optim`` hints, dropout > 0 in train mode) give the same losses,
    gradients and weights as the eager twin, to float64 rounding; eval mode too."""
    m, e = _twins(torch.float64, transposed=transposed, causal=causal, dropout=0.25)
    batches = [_data(seed=s) for s in range(3)]
    lm, gm = _train(m, _param_groups(m), batches, "cpp")
    le, ge = _train(e, _param_groups(e), batches, "reference")
    assert max(abs(a - b) for a, b in zip(lm, le)) < 1e-12
    assert _max_rel(gm, ge) < 1e-10
    for (k, p), q in zip(m.named_parameters(), e.parameters()):
        assert _rel(p, q) < 1e-12, k
    m.eval(), e.eval()
    tok, lab = _data(seed=9)
    assert abs(_loss(m, tok, lab, "cpp").item() - _loss(e, tok, lab, "reference").item()) < 1e-12


def test_resume_a_state_spaces_checkpoint():
    """A checkpoint of the eager twin (model and AdamW state with the hint groups, through torch.save /
    torch.load(weights_only=True)) resumes in the geoops model: the next steps match the twin's."""
    m, e = _twins(torch.float64, dropout=0.1)
    batches = [_data(seed=s) for s in range(4)]
    oe = _param_groups(e)
    _train(e, oe, batches[:2], "reference")
    buf = io.BytesIO()
    torch.save({"model": e.state_dict(), "opt": oe.state_dict()}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    m.load_state_dict(ck["model"], strict=True)
    om = _param_groups(m)
    om.load_state_dict(ck["opt"])
    lm, _ = _train(m, om, batches[2:], "cpp", seed=20)
    le, _ = _train(e, oe, batches[2:], "reference", seed=20)
    assert max(abs(a - b) for a, b in zip(lm, le)) < 1e-12
    for (k, p), q in zip(m.named_parameters(), e.parameters()):
        assert _rel(p, q) < 1e-12, k


@pytest.mark.parametrize("transposed", [True, False])
def test_train_step_fp32_within_twice_the_eager_error(transposed):
    """float32: our loss and gradients are within 2x (+ a floor) of the float32 eager twin's distance to the float64
    run."""
    m, e = _twins(torch.float32, transposed=transposed, causal=True, dropout=0.1)
    m64 = copy.deepcopy(m).double()
    tok, lab = _data(L=50)
    out = {}
    for name, model, be in (("ours", m, "cpp"), ("eager", e, "reference"), ("64", m64, "reference")):
        torch.manual_seed(7)
        loss = _loss(model, tok, lab, be)
        _backward(loss, be)
        out[name] = (loss.item(), _grads(model))
    err = {n: abs(out[n][0] - out["64"][0]) for n in ("ours", "eager")}
    assert err["ours"] <= 2 * err["eager"] + 1e-6
    for k, g64 in out["64"][1].items():
        eo = (out["ours"][1][k].double() - g64).abs().max().item()
        ee = (out["eager"][1][k].double() - g64).abs().max().item()
        assert eo <= 2 * ee + 1e-6 * g64.abs().max().item(), (k, eo, ee)


def test_optim_hints_make_the_state_spaces_param_groups():
    """The example's setup_optimizer gives one default group (C, D, projections, ...) and one with the hint
    {lr, weight_decay 0} holding log_dt, log_A_real and A_imag of every layer; lr=0 makes them buffers."""
    m, _ = _twins()
    opt = _param_groups(m)
    assert len(opt.param_groups) == 2
    hinted = opt.param_groups[1]
    assert hinted["lr"] == 1e-3 and hinted["weight_decay"] == 0.0
    names = {id(p): n for n, p in m.named_parameters()}
    assert sorted(names[id(p)].split(".")[-1] for p in hinted["params"]) == ["A_imag"] * 2 + ["log_A_real"] * 2 + \
        ["log_dt"] * 2
    m0 = SeqModel(lr=0.0)
    assert {n.split(".")[-1] for n, _ in m0.named_buffers()} == {"log_dt", "log_A_real", "A_imag"}
    assert len(_param_groups(m0).param_groups) == 1


# ---------------------------------------------------------------- torch training machinery
@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpointed_blocks_give_the_same_gradients(reentrant):
    """torch.utils.checkpoint around each block (dropout > 0: the RNG state is replayed) gives the same gradients."""
    m, _ = _twins(torch.float64, dropout=0.25)
    tok, lab = _data()
    torch.manual_seed(11)
    _loss(m, tok, lab).backward()
    g0 = _grads(m)
    m.zero_grad()
    torch.manual_seed(11)
    _loss(m, tok, lab, ckpt=reentrant).backward()
    assert _max_rel(_grads(m), g0) < 1e-13


def test_gradient_accumulation_and_clipping():
    """Two micro-batches of 2 accumulate to the batch of 4's gradient; clip_grad_norm_ sees one finite norm."""
    m, _ = _twins(torch.float64)
    tok, lab = _data(B=4)
    _loss(m, tok, lab).backward()
    g0 = _grads(m)
    m.zero_grad()
    for i in range(2):
        (_loss(m, tok[2 * i:2 * i + 2], lab[2 * i:2 * i + 2]) / 2).backward()
    assert _max_rel(_grads(m), g0) < 1e-12
    norm = torch.nn.utils.clip_grad_norm_(m.parameters(), 1e-3)
    want = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in g0.values()]))
    assert torch.isfinite(norm) and abs(norm.item() - want.item()) < 1e-10 * want.item()
    assert torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in m.parameters()])).item() < 1.0001e-3


@pytest.mark.build_relative("compiled against eager in one build; the entry points it reads (ssm_conv_*, ssm_discretize_*, "
                            "ssm_direct_fft, triple_attention_*) are read by the eager tests of this file, "
                            "tests/test_ssm*.py and tests/test_attention.py, which the portable stage runs")
@pytest.mark.parametrize("mode", [pytest.param("default", marks=pytest.mark.slow), "fullgraph",
                                  pytest.param("dynamic", marks=pytest.mark.slow)])
def test_torch_compile_of_the_whole_model(mode):
    """torch.compile of the whole model (default, fullgraph, dynamic) gives the eager loss and gradients at two
    sequence lengths (fullgraph: one), one of them odd (default: the second length recompiles with a dynamic L;
    ~2 min each on 2 cores).  default on aot_eager: what it adds to fullgraph is dynamo's (its recompile at the
    second length falls back to compiling the block alone, a graph fullgraph never makes); Inductor's lowering of
    the same ops, static and at a symbolic L, is fullgraph's and dynamic's (an Inductor compile of the model per
    mode was the sink of the main pytest stage).  fullgraph at the odd length only: a second length recompiled it
    with a dynamic L, a second Inductor compile of the symbolic-L graph that dynamic makes (and checks at both
    lengths)."""
    torch._dynamo.reset()
    m, _ = _twins(torch.float32, causal=True, layers=1, dropout=0.1)
    m.eval()
    kw = {"default": dict(backend="aot_eager"), "fullgraph": dict(fullgraph=True),
          "dynamic": dict(fullgraph=True, dynamic=True)}[mode]
    cm = torch.compile(m, **kw)
    for L in (23,) if mode == "fullgraph" else (16, 23):
        tok, lab = _data(B=2, L=L)
        m.zero_grad()
        l0 = _loss(m, tok, lab)
        l0.backward()
        g0 = _grads(m)
        m.zero_grad()
        l1 = _loss(cm, tok, lab)
        l1.backward()
        assert abs(l1.item() - l0.item()) < 1e-5
        assert _max_rel(_grads(m), g0) < 1e-4


def test_autocast_bfloat16_model_and_half_inputs():
    """Under torch.autocast("cpu", bfloat16) the model runs and trains on both backends with the same result
    (float32 gradients); S4D on a bfloat16 input (fftconv of half u) keeps the low-precision rule: its error is
    within 2x the eager twin's in the same dtype."""
    m, e = _twins(torch.float32)
    tok, lab = _data()
    outs = []
    for model, be in ((m, "cpp"), (e, "reference")):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = _loss(model, tok, lab, be)
        _backward(loss, be)
        outs.append((loss.item(), _grads(model)))
        assert {p.grad.dtype for p in model.parameters()} == {torch.float32}
    assert abs(outs[0][0] - outs[1][0]) < 1e-2
    s4d_bfloat16_input_within_twice_the_eager_error(H=8, B=2)


def s4d_bfloat16_input_within_twice_the_eager_error(H, B, L=301):
    """S4D(H, H) on a bfloat16 input (B, H, L) under autocast on the current backend (tests/triton/test_app_triton.py
    runs it on Triton): its error against the float64 eager twin within 2x the eager twin's in bfloat16 (+ 1e-3)."""
    torch.manual_seed(2)
    s = S4D(H, H).float()
    t = EagerS4D(H, H).float()
    t.load_state_dict(s.state_dict())
    u64 = torch.randn(B, H, L, dtype=torch.float64)
    y64 = EagerS4D(H, H).double()
    y64.load_state_dict(s.state_dict())
    with torch.no_grad():
        want = y64(u64)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours = s(u64.bfloat16())[0]
            eager = t(u64.bfloat16())[0]
    assert ours.dtype == torch.bfloat16
    assert (ours.double() - want).abs().max() <= 2 * (eager.double() - want).abs().max() + 1e-3


def test_save_load_deepcopy_inference_mode_batch_one_and_length_one():
    m, _ = _twins(torch.float64, dropout=0.1)
    m.eval()
    tok, _ = _data()
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    m2 = SeqModel(dropout=0.1).double().eval()
    m2.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    m3 = copy.deepcopy(m)
    with torch.inference_mode():
        y = m(tok)
        assert torch.equal(m2(tok), y) and torch.equal(m3(tok), y)
        assert (m(tok[:1]) - y[:1]).abs().max() < 1e-13  # batch 1
        assert m(tok[:, :1]).shape == (4, 3)  # L = 1
    m.train()
    tok1, lab1 = _data(B=1, L=1)
    _loss(m, tok1, lab1).backward()
    assert all(torch.isfinite(g).all() for g in _grads(m).values())


def _replaced(m, how):
    if how == "deepcopy":
        return copy.deepcopy(m)
    if how == "assign":  # meta-device initialisation, then the weights assigned
        with torch.device("meta"):
            c = SeqModel()
        c.load_state_dict(m.state_dict(), assign=True)
        return c
    flag = {"overwrite": torch.__future__.set_overwrite_module_params_on_conversion,
            "swap": torch.__future__.set_swap_module_params_on_conversion}[how]
    flag(True)
    try:
        return SeqModel().double()
    finally:
        flag(False)


@pytest.mark.parametrize("how", ["deepcopy", "assign", "overwrite", "swap"])
def test_replaced_parameters_keep_the_optim_hints(how):
    """S4D's log_dt / A lost their ``_optim`` hints wherever torch replaces a Parameter object: copy.deepcopy(model)
    (EMA copies, one model per run; torch's Parameter.__deepcopy__ copies no attributes, pickle keeps them),
    load_state_dict(assign=True) (meta-device initialisation), .double() / .to() under torch.__future__'s overwrite
    or swap flags.  The example's setup_optimizer then silently put log_dt and A into the default group, with
    weight decay and the default learning rate."""
    m, _ = _twins(torch.float32)
    c = _replaced(m, how)
    assert len(_param_groups(c).param_groups) == 2
    for (n, p), q in zip(m.named_parameters(), c.parameters()):
        assert getattr(p, "_optim", None) == getattr(q, "_optim", None), n


# ---------------------------------------------------------------- lengths
@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize("transposed", [True, False])
def test_s4d_empty_sequence(backend, transposed):
    """L = 0: S4D failed inside torch's Conv1d ("Kernel size can't be greater than actual input size") on every
    backend; now an empty output of u's shape and zero-size input gradients (zero parameter gradients)."""
    torch.manual_seed(0)
    s = S4D(4, 8, transposed=transposed, dropout=0.1)
    u = torch.randn((2, 4, 0) if transposed else (2, 0, 4), requires_grad=True)
    with geoops.use_backend(backend):
        y, state = s(u)
        assert y.shape == u.shape and state is None
        y.sum().backward()
    assert u.grad.shape == u.shape
    for n, p in s.named_parameters():
        assert p.grad is not None and not p.grad.any(), n
    with geoops.use_backend(backend), torch.inference_mode():
        assert s.eval()(u.detach())[0].shape == u.shape


def test_block_with_empty_sequence():
    """The residual block (S4D + TripleAttention) on L = 0."""
    m, _ = _twins(torch.float32)
    x = torch.randn(2, 0, 8, requires_grad=True)
    y = m.blocks[0](x)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("transposed", [True, False])
def test_odd_length_16000_matches_the_eager_twin(transposed):
    torch.manual_seed(4)
    s = S4D(3, 8, transposed=transposed).double()
    e = EagerS4D(3, 8, transposed=transposed).double()
    e.load_state_dict(s.state_dict())
    u = torch.randn(2, 3, 16000, dtype=torch.float64)
    if not transposed:
        u = u.transpose(1, 2)  # (B, L, H), a non-contiguous view
    u1, u2 = u.clone().requires_grad_(), u.clone().requires_grad_()
    y1, y2 = s(u1)[0], e(u2)[0]
    w = torch.randn_like(y1)
    (y1 * w).sum().backward()
    (y2 * w).sum().backward()
    assert _rel(y1, y2) < 1e-12 and _rel(u1.grad, u2.grad) < 1e-12
    for (n, p), q in zip(s.named_parameters(), e.parameters()):
        assert _rel(p.grad, q.grad) < 1e-10, n


def _vm_hwm_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc peak-RSS reset")
def test_long_sequence_memory():
    """L = 65536, batch 1, H = 4, d_state 64: S4D forward + backward grows the peak RSS by a few tensors of
    (1, 4, L) (1 MiB each), far below the eager recipe's (H, N/2, L) complex Vandermonde tensor and its autograd
    copies; the output matches the eager twin in float32."""
    torch.manual_seed(6)
    s = S4D(4, 64)
    s(torch.randn(1, 4, 1024, requires_grad=True))[0].sum().backward()  # warm-up: MKL descriptors, thread buffers
    u = torch.randn(1, 4, 65536, requires_grad=True)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pytest.skip("cannot reset VmHWM")
    base = _vm_hwm_kib()
    y, _ = s(u)
    y.sum().backward()
    grew = (_vm_hwm_kib() - base) / 1024
    vandermonde_mib = 4 * 32 * 65536 * 8 / 2 ** 20  # one complex64 (H, N/2, L) tensor: 64 MiB
    assert grew < vandermonde_mib / 2, f"peak grew {grew:.1f} MiB"
    e = EagerS4D(4, 64)
    e.load_state_dict(s.state_dict())
    with torch.no_grad():
        assert _rel(y, e(u)[0]) < 1e-5


# ---------------------------------------------------------------- op layouts
def _count_copies(fn, numel):
    """aten copies (copy_ / clone) of tensors with `numel` elements made by fn() (forward and backward)."""
    from torch.profiler import profile

    with profile(record_shapes=True) as p:
        fn()
    return sum(1 for ev in p.events() if ev.name in ("aten::copy_",) and ev.input_shapes and ev.input_shapes[0]
               and math.prod(ev.input_shapes[0]) == numel)


@pytest.mark.parametrize("op", ["ssm_conv", "fftconv"])
def test_non_contiguous_input_is_copied_once(op):
    """S4D(transposed=False) hands the kernels a transposed (B, H, L) view of its (B, L, H) input: the kernels made
    it contiguous in the forward and again in the backward (the view was saved).  Now one copy, kept for the
    backward; values unchanged."""
    strided_input_copied_once(op, _count_copies, H=5, L=301)


def strided_input_copied_once(op, count_copies, H, L, dtype=torch.float32):
    """The trial above with H channels, length L and `dtype` on the current backend (tests/triton/test_app_triton.py
    runs it on Triton): the same values from a transposed view as from a contiguous u, and `count_copies(fn,
    numel)` (copies of u's size made by fn, forward and backward) at most one."""
    torch.manual_seed(8)
    B, N = 2, 4
    x = torch.randn(B, L, H).to(dtype).requires_grad_()
    log_dt = torch.randn(H).mul(0.3).sub(3)
    A = torch.complex(-0.5 * torch.ones(H, N), math.pi * torch.arange(N).float().expand(H, N))
    Bm = torch.ones(H, N, dtype=torch.cfloat)
    C = torch.randn(H, N, dtype=torch.cfloat, requires_grad=True)
    D = torch.randn(H, requires_grad=True)
    k = gs.s4d_kernel(log_dt, A, Bm, C, L).detach().to(dtype).requires_grad_()
    g = torch.randn(B, H, L).to(dtype)

    def run(u):
        y = gs.ssm_conv(u, log_dt, A, Bm, C, D) if op == "ssm_conv" else gs.fftconv(u, k, D)
        y.backward(g)
        return y.detach()

    y0 = run(x.detach().transpose(1, 2).contiguous())
    y1 = run(x.transpose(1, 2))
    assert torch.equal(y0, y1)
    assert count_copies(lambda: run(x.transpose(1, 2)), B * H * L) <= 1


@pytest.mark.parametrize("bidirectional", [False, True])
def test_expanded_kernels_c_out_and_bidirectional_match_the_reference(bidirectional):
    """fftconv / ssm_conv with an expanded (stride-0) kernel over C_out > 1 and a broadcast (H,) D, causal and
    bidirectional, on the model's non-contiguous u: values and gradients equal the float64 reference backend's."""
    torch.manual_seed(9)
    B, H, L, N, Cn = 2, 3, 37, 4, 3
    u = torch.randn(B, L, H, dtype=torch.float64).transpose(1, 2)
    S = (2,) if bidirectional else ()
    k0 = torch.randn(*S, H, L, dtype=torch.float64, requires_grad=True)
    D = torch.randn(H, dtype=torch.float64, requires_grad=True)
    log_dt = torch.randn(H, dtype=torch.float64).mul(0.3).sub(2)
    A = torch.complex(-torch.rand(H, N, dtype=torch.float64) - 0.1, torch.randn(H, N, dtype=torch.float64))
    Bm = torch.randn(H, N, dtype=torch.complex128)
    C0 = torch.randn(*S, H, N, dtype=torch.complex128, requires_grad=True)
    g = torch.randn(B, Cn, H, L, dtype=torch.float64)
    res = {}
    for be in ("cpp", "reference"):
        with geoops.use_backend(be):
            uu = u.detach().requires_grad_()
            y1 = gs.fftconv(uu, k0.expand(Cn, *k0.shape), D, bidirectional=bidirectional)
            y2 = gs.ssm_conv(uu, log_dt, A, Bm, C0.expand(Cn, *C0.shape), D, bidirectional=bidirectional)
            assert y1.shape == y2.shape == (B, Cn, H, L)
            grads = torch.autograd.grad((y1 * g).sum() + (y2 * g).sum(), (uu, k0, D, C0))
            res[be] = (y1, y2) + grads
    for a, b in zip(res["cpp"], res["reference"]):
        assert _rel(a, b) < 1e-12


# ---------------------------------------------------------------- export / dynamic sequence length
def _export_dynamic_L(what, grad):
    from torch.export import Dim, export

    torch.manual_seed(12)
    if what == "s4d":
        mod, x, x2 = S4D(8, 8, transposed=False).eval(), torch.randn(2, 21, 8), torch.randn(3, 37, 8)
    else:
        mod, x, x2 = SeqModel(causal=True).eval(), _data(B=2, L=21)[0], _data(B=3, L=37)[0]
    with torch.set_grad_enabled(grad):
        ep = export(mod, (x,), dynamic_shapes=({0: Dim("b", min=1, max=64), 1: Dim("L", min=2, max=1 << 16)},))
    with torch.no_grad():
        got, want = ep.module()(x2), mod(x2)
    if what == "s4d":
        got, want = got[0], want[0]
    assert _rel(got, want) < 1e-6


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("what", ["s4d", "model"])
def test_export_with_a_dynamic_sequence_length(what, grad):
    """torch.export with a dynamic L (variable-length inference) specialised L: "Constraints violated (L)! ... your
    code specialized it to be a constant (21)".  The fakes of fftconv_fwd / ssm_conv_fwd computed the FFT size
    fft_size(int(L)) (the next 2-3-5 size: no symbolic form) for their spectrum outputs, even when they return none
    (no_grad).  Now only when they return one, and then, for a symbolic L, as a new unbacked size; the
    autograd.Functions return the spectra among their outputs so that torch.compile binds that size."""
    _export_dynamic_L(what, grad=grad)


def ssm_compile_params(H, N):
    """Seeded S4D parameters (log_dt, A, B, C, D; gradients to log_dt, C, D) of the compile graph-count tests (this
    file's and tests/triton/test_app_triton.py's)."""
    torch.manual_seed(13)
    log_dt = torch.randn(H).mul(0.3).sub(3).requires_grad_()
    A = torch.complex(-0.5 * torch.ones(H, N), math.pi * torch.arange(N).float().expand(H, N))
    Bm = torch.ones(H, N, dtype=torch.cfloat)
    C = torch.randn(H, N, dtype=torch.cfloat, requires_grad=True)
    D = torch.randn(H, requires_grad=True)
    return log_dt, A, Bm, C, D


def test_compile_dynamic_training_does_not_recompile_per_length():
    """torch.compile(dynamic=True) of fftconv + ssm_conv with gradients compiled a new graph for every sequence length
    of a training run (the spectrum's fft_size(L) specialised L; past dynamo's cache limit, 8 by default, it falls
    back to eager), and a graph traced before the first eager call was recompiled once after it (a guard on the
    cached CPU path probe).  Now one graph, with the eager gradients.  (A whole S4D layer still recompiles: torch's own
    Conv1d fake and its inductor backward lowering guard on the sizes.)"""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    H = 3
    log_dt, A, Bm, C, D = ssm_compile_params(H, 4)

    def f(u, k):
        return gs.fftconv(u, k, D).square().sum() + gs.ssm_conv(u, log_dt, A, Bm, C, D).square().sum()

    gs._DIRECT_FFT.clear()  # the CPU path probe, asked at the first call: here inside the compiled graph
    cf = torch.compile(f, dynamic=True, fullgraph=True)
    for L in (16, 23, 40):
        u = torch.randn(2, H, L, requires_grad=True)
        k = torch.randn(H, L, requires_grad=True)
        ins = (u, k, log_dt, C, D)
        got = torch.autograd.grad(cf(u, k), ins)
        want = torch.autograd.grad(f(u, k), ins)
        for x, y in zip(got, want):
            assert _rel(x, y) < 1e-5
    assert counters["stats"]["unique_graphs"] == 1


def test_attention_masks_are_refused_clearly():
    """Padding / attention masks are not supported (docs: dense, causal, windows): a mask keyword is a TypeError,
    never silently ignored; a (B, N) padding mask passed positionally is refused as a bad ``context``."""
    import geoops.attention as ga

    a = TripleAttention(8, 2)
    x = torch.randn(2, 5, 8)
    pad = torch.zeros(2, 5, dtype=torch.bool)
    for kw in ("key_padding_mask", "attn_mask", "mask"):
        with pytest.raises(TypeError, match=kw):
            a(x, **{kw: pad})
        q = torch.randn(2, 2, 5, 4)
        with pytest.raises(TypeError, match=kw):
            ga.triple_attention(q, q, q, q, q, **{kw: pad})
    with pytest.raises(ValueError, match="context"):
        a(x, pad)


def _copies_under(fn, name):
    """aten::copy_ calls made by fn() under a profiler frame called `name` (at any depth)."""
    from torch.profiler import profile

    with profile() as p:
        fn()
    n = 0
    for ev in p.events():
        if ev.name != "aten::copy_":
            continue
        par = ev.cpu_parent
        while par is not None and par.name != name:
            par = par.cpu_parent
        n += par is not None
    return n


def test_triple_attention_layer_copies_its_strided_inputs_once():
    """TripleAttention hands the op q, k1, k2, v1, v2 as strided views of its projections: the kernels made each
    contiguous in the forward and again in the backward (the views were saved).  Now once, in the forward; the
    backward copies only its incoming gradient (a transposed view); values unchanged."""
    attention_layer_copies_strided_inputs_once(lambda run: _copies_under(run, "TripleAttentionFnBackward"))


def attention_layer_copies_strided_inputs_once(backward_copies):
    """The trial above on the current backend (tests/triton/test_app_triton.py runs it on Triton): the layer's
    forward + backward, `backward_copies(run)` (the copies its backward makes) at most one, repeatable, and the
    reference backend's input gradient."""
    torch.manual_seed(14)
    a = TripleAttention(16, 2, num_kv_heads=1)
    x = torch.randn(2, 11, 16, requires_grad=True)
    g = torch.randn(2, 11, 16)

    def run():
        x.grad = None
        a(x).backward(g)

    run()
    gx = x.grad.clone()
    assert backward_copies(run) <= 1
    assert torch.equal(x.grad, gx)
    with geoops.use_backend("reference"):
        run()
    assert _rel(gx, x.grad) < 1e-5


@pytest.mark.parametrize("bidirectional", [False, True])
def test_kernels_and_inputs_broadcast_over_batch_and_channels(bidirectional):
    """One kernel shared by every channel (a (1, L) kernel expanded to (H, L); C expanded over H), a u expanded
    over the batch, a scalar D expanded to (H,): values and gradients (summed over the broadcast) equal the
    float64 reference backend's."""
    torch.manual_seed(15)
    B, H, L, N, d = 3, 4, 29, 3, torch.float64
    u0 = torch.randn(1, H, L, dtype=d, requires_grad=True)
    k0 = torch.randn(1, L, dtype=d, requires_grad=True)
    D0 = torch.randn(1, dtype=d, requires_grad=True)
    C0 = torch.randn(1, N, dtype=torch.complex128, requires_grad=True)
    log_dt = torch.randn(H, dtype=d).mul(0.3).sub(2)
    A = torch.complex(-torch.rand(H, N, dtype=d) - 0.1, torch.randn(H, N, dtype=d))
    Bm = torch.randn(H, N, dtype=torch.complex128)
    g = torch.randn(B, H, L, dtype=d)
    res = {}
    for be in ("cpp", "reference"):
        with geoops.use_backend(be):
            kk = torch.stack([k0.expand(H, L), k0.flip(-1).expand(H, L)]) if bidirectional else k0.expand(H, L)
            Cc = C0.expand(2, H, N) if bidirectional else C0.expand(H, N)
            y1 = gs.fftconv(u0.expand(B, H, L), kk, D0.expand(H), bidirectional=bidirectional)
            y2 = gs.ssm_conv(u0.expand(B, H, L), log_dt, A, Bm, Cc, D0.expand(H), bidirectional=bidirectional)
            res[be] = (y1, y2) + torch.autograd.grad((y1 * g).sum() + (y2 * g).sum(), (u0, k0, D0, C0))
    for a, b in zip(res["cpp"], res["reference"]):
        assert _rel(a, b) < 1e-12
