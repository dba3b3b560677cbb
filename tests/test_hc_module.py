"""The connection modules match the papers' equations written out directly (static and dynamic HC; mHC's H_pre,
H_post and H_res), forward and backward."""
import pytest
import torch
import torch.nn.functional as F

from helpers import assert_compiles_like_eager
from lit_hc import HyperConnection, ManifoldHyperConnection, Residual, sinkhorn_knopp

D, N = 6, 3


def _branch(weight):
    return lambda x: torch.tanh(x @ weight)  # any differentiable sub-layer (..., d) -> (..., d)


def _randomize(module, scale=0.3):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


def reference_hc(m: HyperConnection, H, branch, dynamic: bool, use_tanh: bool):
    """Static and dynamic HC (Zhu et al. 2025) with explicit loops over tokens and streams; H (t, n, d)."""
    act = torch.tanh if use_tanh else (lambda z: z)
    out = []
    for h in H:  # one token: (n, d)
        alpha, beta = m.static_alpha, m.static_beta
        if dynamic:
            hn = torch.stack([F.layer_norm(h[i], (D,), m.norm.weight, m.norm.bias) for i in range(N)])
            alpha = alpha + m.dynamic_alpha_scale * act(hn @ m.dynamic_alpha_fn)
            beta = beta + m.dynamic_beta_scale * act(hn @ m.dynamic_beta_fn)
        x = sum(alpha[i, 0] * h[i] for i in range(N))
        y = branch(x)
        rows = [beta[j] * y + sum(alpha[i, 1 + j] * h[i] for i in range(N)) for j in range(N)]
        out.append(torch.stack(rows))
    return torch.stack(out)


def reference_mhc(m: ManifoldHyperConnection, H, branch):
    """mHC (DeepSeek-AI 2025) with explicit loops; Sinkhorn written out separately from the library's."""
    out = []
    for h in H:
        v = h.reshape(-1)
        v = v / torch.sqrt(v.pow(2).mean() + torch.finfo(v.dtype).eps)
        phi_pre, phi_post, phi_res = m.phi[:, :N], m.phi[:, N : 2 * N], m.phi[:, 2 * N :]
        pre = torch.sigmoid(m.a_pre * (v @ phi_pre) + m.b_pre)
        post = 2 * torch.sigmoid(m.a_post * (v @ phi_post) + m.b_post)
        M = torch.exp((m.a_res * (v @ phi_res).reshape(N, N) + m.b_res).to(torch.promote_types(h.dtype, torch.float32)))
        for _ in range(m.sinkhorn_iters):
            M = M / M.sum(1, keepdim=True)
            M = M / M.sum(0, keepdim=True)
        res = M.to(h.dtype)
        y = branch(sum(pre[i] * h[i] for i in range(N)))
        out.append(torch.stack([sum(res[j, i] * h[i] for i in range(N)) + post[j] * y for j in range(N)]))
    return torch.stack(out)


@pytest.mark.parametrize("dynamic,use_tanh", [(False, True), (True, True), (True, False)], ids=["shc", "dhc", "dhc-notanh"])
def test_hc_matches_reference_forward_and_grad(dynamic, use_tanh):
    m = HyperConnection(D, N, layer_idx=1, dynamic=dynamic, use_tanh=use_tanh).double()
    _randomize(m)
    w = torch.randn(D, D, dtype=torch.float64, requires_grad=True)
    H = torch.randn(5, N, D, dtype=torch.float64, requires_grad=True)
    ours = m(H, _branch(w))
    ref = reference_hc(m, H, _branch(w), dynamic, use_tanh)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ours)
    params = [H, w, *m.parameters()]
    grads_ours = torch.autograd.grad(ours, params, g)
    grads_ref = torch.autograd.grad(ref, params, g)
    for a, b in zip(grads_ours, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_mhc_matches_reference_forward_and_grad():
    m = ManifoldHyperConnection(D, N, layer_idx=0).double()
    _randomize(m, scale=0.1)
    w = torch.randn(D, D, dtype=torch.float64, requires_grad=True)
    H = torch.randn(5, N, D, dtype=torch.float64, requires_grad=True)
    ours, ref = m(H, _branch(w)), reference_mhc(m, H, _branch(w))
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)  # float64 throughout, Sinkhorn included
    g = torch.randn_like(ours)
    params = [H, w, *m.parameters()]
    for a, b in zip(torch.autograd.grad(ours, params, g), torch.autograd.grad(ref, params, g)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["shc", "dhc", "dhc-notanh"])
def test_hc_gradcheck(kind):
    m = HyperConnection(4, 2, layer_idx=0, dynamic=kind != "shc", use_tanh=kind != "dhc-notanh").double()
    _randomize(m)
    w = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    params = list(m.parameters())

    def f(H, w, *ps):
        with torch.no_grad():
            for p, v in zip(params, ps):
                p.copy_(v)
        return torch.func.functional_call(m, dict(zip([n for n, _ in m.named_parameters()], ps)), (H, _branch(w)))

    H = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    inputs = (H, w, *[p.detach().clone().requires_grad_() for p in params])
    assert torch.autograd.gradcheck(f, inputs)


def test_residual_is_h_plus_branch():
    h = torch.randn(4, 1, D)
    w = torch.randn(D, D)
    torch.testing.assert_close(Residual()(h, _branch(w)), h + _branch(w)(h))


def test_mhc_res_doubly_stochastic_and_pre_nonnegative():
    m = ManifoldHyperConnection(16, 4, layer_idx=3)
    with torch.no_grad():
        m.phi.normal_(std=0.05)  # with a_res = 0.25: logit noise of std ~0.1 around b_res
        m.a_res.fill_(0.25)
    H = torch.randn(64, 4, 16) * 3
    pre, post, res = m.coefficients(H)
    torch.testing.assert_close(res.sum(-1), torch.ones(64, 4), rtol=0, atol=1e-5)
    torch.testing.assert_close(res.sum(-2), torch.ones(64, 4), rtol=0, atol=1e-5)
    assert (res >= 0).all() and (pre >= 0).all() and (post >= 0).all() and (post <= 2).all()
    assert torch.isfinite(m(H, torch.sin)).all()


def test_sinkhorn_function_equals_the_unrolled_loop():
    """The graph-free Sinkhorn (forward without a graph, backward by recomputation) against autograd through the
    plain loop: equal forward and gradients in float64 for per-token and single matrices; gradcheck; and an
    input in bfloat16 gets its gradient in bfloat16 (the iterations run in float32)."""
    from lit_hc.hyper_connections import _sinkhorn_reference

    for shape in [(2, 5, 4, 4), (3, 3)]:
        x = (2 * torch.randn(shape, dtype=torch.float64)).requires_grad_()
        ours, ref = sinkhorn_knopp(x, 20), _sinkhorn_reference(x, 20)
        torch.testing.assert_close(ours, ref, rtol=1e-14, atol=1e-14)
        g = torch.randn_like(ours)
        torch.testing.assert_close(torch.autograd.grad(ours, x, g)[0], torch.autograd.grad(ref, x, g)[0],
                                   rtol=1e-10, atol=1e-13)
    assert torch.autograd.gradcheck(lambda t: sinkhorn_knopp(t, 5), (torch.randn(2, 3, 3, dtype=torch.float64,
                                                                                  requires_grad=True),))
    x = torch.randn(4, 4, 4, dtype=torch.bfloat16, requires_grad=True)
    sinkhorn_knopp(x).float().pow(2).sum().backward()
    assert x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad.float()).all() and x.grad.abs().sum() > 0


def test_sinkhorn_is_stable_for_large_logits_and_keeps_dtype():
    M = sinkhorn_knopp(torch.full((3, 3), 80.0, dtype=torch.bfloat16).fill_diagonal_(100.0))
    assert M.dtype == torch.bfloat16 and torch.isfinite(M.float()).all()
    torch.testing.assert_close(M.float().sum(-2), torch.ones(3), rtol=0, atol=1e-2)


def test_frozen_ablations_get_no_gradient():
    m = HyperConnection(D, N, layer_idx=0, freeze_width=True, freeze_beta=True)
    frozen = {n for n, p in m.named_parameters() if not p.requires_grad}
    assert frozen == {"static_alpha", "dynamic_alpha_fn", "static_beta", "dynamic_beta_fn"}


def _b_post_grad_spread(symmetric: bool) -> float:
    from lit_hc import GPT, GPTConfig, HCConfig

    model = GPT(GPTConfig(vocab_size=32, block_size=8, n_layer=2, n_head=2, n_embd=16, hc=HCConfig("mhc", 4)))
    if symmetric:
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, ManifoldHyperConnection):
                    m.b_pre.fill_(-torch.log(torch.tensor(3.0)))  # uniform 1/n
    idx = torch.randint(0, 32, (4, 8))
    F.cross_entropy(model(idx).flatten(0, 1), idx.flatten()).backward()
    g = model.blocks[0].hc_mlp.b_post.grad
    return ((g.max() - g.min()) / g.abs().max()).item()


def test_mhc_init_breaks_stream_symmetry():
    """Streams only diverge if their coefficients get different gradients; a uniform H_pre would make every
    stream's gradient identical forever (the control below), so mHC would train as n copies of one stream."""
    assert _b_post_grad_spread(symmetric=False) > 1e-2
    assert _b_post_grad_spread(symmetric=True) < 1e-5


# The fast path: hand-written backward for the stream mixing and the depth connection, and the
# broadcast-and-reduce form used under torch.compile, against the plain formulas.

def _plain_mix(H, alpha):
    mix = alpha.transpose(-1, -2) @ H
    return mix[..., 0, :], mix[..., 1:, :]


def _plain_add(y, R, beta):
    return R + beta.unsqueeze(-1) * y.unsqueeze(-2)


@pytest.mark.parametrize("per_token", [False, True], ids=["static", "per-token"])
def test_stream_functions_gradcheck(per_token):
    from lit_hc.hyper_connections import stream_add, stream_mix

    g = torch.Generator().manual_seed(0)
    n, d = 3, 5
    H = torch.randn(2, 4, n, d, dtype=torch.float64, generator=g, requires_grad=True)
    alpha = torch.randn(*((2, 4) if per_token else ()), n, n + 1, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.randn(2, 4, d, dtype=torch.float64, generator=g, requires_grad=True)
    R = torch.randn(2, 4, n, d, dtype=torch.float64, generator=g, requires_grad=True)
    beta = torch.randn(*((2, 4) if per_token else ()), n, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda H, a: stream_mix(H, a), (H, alpha))
    assert torch.autograd.gradcheck(lambda y, R, b: stream_add(y, R, b), (y, R, beta))
    # Only one of the two mix outputs used: the other's gradient is None and must count as zero.
    assert torch.autograd.gradcheck(lambda H, a: stream_mix(H, a)[1], (H, alpha))
    # Equal to the plain formulas, forward and gradients, and so is the form used under torch.compile.
    for fast_mix, fast_add in ((stream_mix, stream_add), (_compiled_form(stream_mix), _compiled_form(stream_add))):
        for fast, plain, inputs in ((fast_mix, _plain_mix, (H, alpha)), (fast_add, _plain_add, (y, R, beta))):
            outs, refs = fast(*inputs), plain(*inputs)
            outs, refs = (outs, refs) if isinstance(outs, tuple) else ((outs,), (refs,))
            weights = [torch.randn_like(o) for o in outs]
            grads = torch.autograd.grad(sum((w * o).sum() for w, o in zip(weights, outs)), inputs)
            expected = torch.autograd.grad(sum((w * o).sum() for w, o in zip(weights, refs)), inputs)
            for o, r in zip(outs + grads, refs + expected):
                torch.testing.assert_close(o, r, rtol=1e-12, atol=1e-12)


def _compiled_form(fn):
    """fn with torch.compiler.is_compiling() == True, i.e. the code path dynamo traces, run eagerly."""
    from unittest import mock

    def run(*args):
        with mock.patch.object(torch.compiler, "is_compiling", return_value=True):
            return fn(*args)
    return run


def test_first_block_gradient_through_expanded_streams():
    """The embedding enters as a stride-0 expand over streams; its gradient is the sum over streams."""
    from lit_hc.hyper_connections import expand_streams, stream_mix

    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    alpha = torch.randn(3, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: stream_mix(expand_streams(x, 3), alpha)[1], (x,))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["residual", "shc4", "dhc4", "mhc4"])
def test_block_compiles_without_graph_breaks(name):
    """One Transformer block of every variant under torch.compile(fullgraph=True): dynamo traces it whole (a graph
    break is an error), and the compiled block equals the eager one, forward and gradients."""
    from lit_hc import HCConfig
    from lit_hc.layers import Block

    torch.manual_seed(0)
    torch._dynamo.reset()
    block = Block(16, 2, index=1, hc=HCConfig.from_name(name), causal=True, mlp_ratio=2.0)
    _randomize(block, scale=0.05)
    n = block.hc_attn.expansion_rate
    H = torch.randn(2, 8, n, 16, requires_grad=True)
    assert_compiles_like_eager(block, H)


def _recompute_pair(name: str, task: str, n_layer: int):
    """The same model (float64, random non-init parameters) without and with HCConfig.recompute, and an input."""
    import dataclasses

    from lit_hc import GPT, GPTConfig, HCConfig, ViT, ViTConfig

    models = []
    for recompute in (False, True):
        torch.manual_seed(0)
        hc = dataclasses.replace(HCConfig.from_name(name), recompute=recompute)
        models.append((GPT(GPTConfig(vocab_size=32, block_size=8, n_layer=n_layer, n_head=2, n_embd=16, hc=hc))
                       if task == "lm" else ViT(ViTConfig(image_size=8, patch_size=4, dim=16, depth=n_layer, heads=2,
                                                          num_classes=5, hc=hc))).double())
    _randomize(models[0], scale=0.05)
    models[1].load_state_dict(models[0].state_dict())
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 32, (3, 8), generator=g) if task == "lm" else torch.randn(3, 3, 8, 8, generator=g).double()
    return models, x


@pytest.mark.parametrize("task", ["lm", "vit"])
@pytest.mark.parametrize("name", ["dhc4", "shc4", "mhc4"])
def test_recompute_gives_the_same_values_and_keeps_one_stream_state_per_segment(name, task):
    """HCConfig.recompute: the same loss and gradients, bit for bit (the recomputation repeats the forward's
    operations); and of the 2L stream states H that the width connections save, only the first of every segment
    is kept (the mHC paper's recomputation, Sec. 4.3): exactly (2L - segments) states fewer bytes (and, for DHC's
    fused width connection, its per-token coefficients, which its backward recomputes from H)."""
    from lit_hc.analysis import saved_activation_bytes
    from lit_hc.hyper_connections import recompute_segment

    n_layer = 8
    models, x = _recompute_pair(name, task, n_layer)
    results = []
    for model in models:
        out = model(x)
        loss = out.flatten(0, -2).logsumexp(-1).mean() + out.pow(2).mean()
        results.append((loss.detach(), torch.autograd.grad(loss, list(model.parameters()))))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=0)
    for a, b in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    segment = recompute_segment(models[1].config.hc, n_layer)
    assert segment == 2  # round(sqrt(4 * 16 / 6) / 2) blocks: the states of 3 of every 4 sub-layers are dropped
    tokens = x.shape[0] * (8 if task == "lm" else 1 + (8 // 4) ** 2)
    state_bytes = tokens * 4 * 16 * 8  # (tokens, n = 4, d = 16) in float64
    dropped = (2 * n_layer - n_layer // segment) * state_bytes
    if name == "dhc4":  # the fused width connection, lean: also its statistics, coefficients and gained weight
        n, d = 4, 16
        dropped += 2 * n_layer * (tokens * (2 * n + n * (n + 2) + n * (n + 1)) + d * (n + 2)) * 8
    kept, full = saved_activation_bytes(models[1], x), saved_activation_bytes(models[0], x)
    if name != "mhc4":  # mHC: test_mhc_recompute_keeps_only_its_mixing_matrix_beyond_dhc
        assert full - kept == dropped


@pytest.mark.parametrize("task", ["lm", "vit"])
def test_mhc_recompute_keeps_only_its_mixing_matrix_beyond_dhc(task):
    """With recompute, mHC's coefficients (RMSNorm of vec(H), projection, sigmoids, Sinkhorn) are recomputed from H
    in backward, like DHC's in its fused Function: what mHC x4 then keeps beyond DHC x4 is exactly the per-token
    mixing matrix [H_pre^T | H_res^T] (n, n+1) its mix saves, less DHC's (d, n+2) gained weight, per sub-layer."""
    from lit_hc.analysis import saved_activation_bytes

    n_layer, n, d = 8, 4, 16
    (_, mhc), x = _recompute_pair("mhc4", task, n_layer)
    (_, dhc), _ = _recompute_pair("dhc4", task, n_layer)
    tokens = x.shape[0] * (8 if task == "lm" else 1 + (8 // 4) ** 2)
    extra = 2 * n_layer * (tokens * n * (n + 1) - d * (n + 2)) * 8  # float64
    assert saved_activation_bytes(mhc, x) - saved_activation_bytes(dhc, x) == extra


def test_recompute_in_bfloat16_recomputes_the_plain_path_coefficients():
    """A bf16 model (H in 16 bits) runs DHC's width connection as plain ops, not the fused Function; with recompute
    its coefficients are recomputed from H in backward, as mHC's are. The same loss and gradients bit for bit; and
    DHC x4 then keeps exactly the bytes mHC x4 keeps (each: per sub-layer, its (n, n+1) mixing matrix and n depth
    weights; without the recomputation of the coefficients DHC keeps its norm's output and statistics besides)."""
    from lit_hc.analysis import saved_activation_bytes

    kept = {}
    for name in ("dhc4", "mhc4"):
        models, x = _recompute_pair(name, "lm", 8)
        results = []
        for model in models:
            model.bfloat16()
            loss = model(x).float().logsumexp(-1).mean()
            results.append((loss.detach(), torch.autograd.grad(loss, list(model.parameters()))))
        torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=0)
        for a, b in zip(results[1][1], results[0][1]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        kept[name] = saved_activation_bytes(models[1], x)
    assert kept["dhc4"] == kept["mhc4"]


def test_recompute_under_autocast_recomputes_in_the_forwards_precision():
    """Under bf16 autocast the states are recomputed in autocast too, so the gradients equal those without
    recomputation (a recomputation in float32 would give other values)."""
    models, x = _recompute_pair("dhc4", "lm", 4)
    grads = []
    for model in models:
        model.float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(x).float().pow(2).mean()
        grads.append(torch.autograd.grad(loss, list(model.parameters())))
    for a, b in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_recompute_segments_stay_inside_a_wrapped_block():
    """Blocks wrapped by another module (FSDP's unit) get one block per segment: a segment's backward must not need
    another wrapper's parameters. Unwrapped, the mHC paper's sqrt rule in whole blocks."""
    import dataclasses

    from lit_hc import GPT, GPTConfig, HCConfig
    from lit_hc.hyper_connections import StreamRecompute, stream_recompute

    hc = dataclasses.replace(HCConfig.from_name("dhc4"), recompute=True)
    model = GPT(GPTConfig(vocab_size=32, block_size=8, n_layer=32, n_head=2, n_embd=16, hc=hc))
    context = stream_recompute(hc, model.blocks)
    assert isinstance(context, StreamRecompute) and context.segment == 2 * 3  # round(sqrt(4 * 64 / 6) / 2) = 3 blocks

    class Wrapper(torch.nn.Module):
        def __init__(self, block):
            super().__init__()
            self.block = block

    wrapped = torch.nn.ModuleList(Wrapper(b) for b in model.blocks)
    assert stream_recompute(hc, wrapped).segment == 2
    with torch.no_grad():
        assert not isinstance(stream_recompute(hc, model.blocks), StreamRecompute)  # nothing to keep without a graph
    assert not isinstance(stream_recompute(dataclasses.replace(hc, recompute=False), model.blocks), StreamRecompute)


@pytest.mark.parametrize("affine,bias", [(True, True), (True, False), (False, False)],
                         ids=["layernorm", "layernorm-nobias", "olmo-nonparametric"])
def test_fused_dhc_width_connection_equals_the_plain_ops(affine, bias):
    """Eager DHC with a LayerNorm runs its width connection as one Function that folds the norm into the
    projection; it equals the plain ops (norm, projection, tanh, mix: the form torch.compile traces and other norms
    use), forward and gradients, for every LayerNorm the models build."""
    from functools import partial

    from contextlib import nullcontext

    from lit_hc.hyper_connections import StreamRecompute

    norm_layer = partial(torch.nn.LayerNorm, elementwise_affine=affine, bias=bias)
    for use_tanh, lean in ((True, False), (False, False), (True, True)):
        m = HyperConnection(D, N, layer_idx=2, use_tanh=use_tanh, norm_layer=norm_layer).double()
        m.recompute = lean  # under a model's StreamRecompute: saves only H, recomputes the coefficients in backward
        _randomize(m)
        H = torch.randn(2, 5, N, D, dtype=torch.float64, requires_grad=True)
        with StreamRecompute(2) if lean else nullcontext():
            fused = m.width_connection(H)
        assert type(fused[1].grad_fn).__name__ == "_DynamicWidthBackward"  # the fused path ran
        assert fused[1].grad_fn.lean is lean and len(fused[1].grad_fn.saved_tensors) == (8 if lean else 11)
        plain = _compiled_form(m.width_connection)(H)
        weights = [torch.randn_like(o) for o in fused]
        inputs = [H, *(p for p in m.parameters() if p.requires_grad)]
        grads = torch.autograd.grad(sum((w * o).sum() for w, o in zip(weights, fused)), inputs)
        expected = torch.autograd.grad(sum((w * o).sum() for w, o in zip(weights, plain)), inputs)
        for a, b in zip((*fused, *grads), (*plain, *expected)):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["residual", "shc4", "dhc4", "dhc4-notanh", "mhc4"])
def test_block_trains_under_bf16_autocast(name):
    """bf16-mixed training (the GPU trainer config's precision) runs forward and backward through every variant,
    and its gradients agree with float32's to bf16 precision: the hand-written backwards run under the autocast
    state of their forward, so their matmuls never meet a float32 and a bfloat16 operand."""
    from lit_hc import HCConfig
    from lit_hc.layers import Block

    torch.manual_seed(0)
    block = Block(16, 2, index=1, hc=HCConfig.from_name(name), causal=True, mlp_ratio=2.0)
    _randomize(block, scale=0.05)
    H = torch.randn(2, 8, block.hc_attn.expansion_rate, 16, requires_grad=True)
    params = [H, *block.parameters()]
    g = torch.randn(H.shape)
    expected = torch.autograd.grad(block(H), params, g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(H)
    grads = torch.autograd.grad(out.float(), params, g)
    for a, b in zip(grads, expected):
        assert a.dtype == b.dtype and torch.isfinite(a).all()
        assert F.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.99


def test_fused_dhc_width_connection_float32_rows_with_a_large_mean():
    """The fused path takes LayerNorm's variance as E[h^2] - mean^2; in float32 it stays within 1e-3 of the plain
    ops for rows whose mean is 30x their spread."""
    torch.manual_seed(0)
    m = HyperConnection(64, 4, layer_idx=0)
    _randomize(m, scale=0.1)
    H = 30 + torch.randn(3, 7, 4, 64)
    for a, b in zip(m.width_connection(H), _compiled_form(m.width_connection)(H)):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
