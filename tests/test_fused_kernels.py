"""HCConfig(fused=True): DHC's width connection, the stream mix of SHC and mHC, and the depth connection's backward
as one C++ pass per token on the CPU (lit_hc/csrc/hc_fused.cpp), against the PyTorch form they replace: the same
function to float rounding."""

import dataclasses
import shutil

import pytest
import torch

from lit_hc import GPT, GPTConfig, HCConfig, cpu_kernels
from lit_hc.hyper_connections import (_dhc_width_op, _fused_kernel, _FusedDynamicWidth, _FusedManifoldWidth,
                                      _mhc_width_op)

can_build = shutil.which("c++") is not None and shutil.which("ninja") is not None
F64 = dict(rtol=1e-10, atol=1e-11)


@pytest.fixture(scope="module")
def kernel():
    if not can_build:
        pytest.skip("no C++ compiler or ninja here: HCConfig(fused=True) runs the PyTorch form")
    built = cpu_kernels.hc_fused()
    assert built is not None, "a compiler and ninja are here, so the kernel must build"
    return built


def perturbed(module: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Random, non-init parameters (at init W = 0 and the dynamic part vanishes, which would test nothing)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def step(connection, H: torch.Tensor, g: torch.Tensor, scale: torch.Tensor):
    H = H.clone().requires_grad_()
    out = connection(H, lambda x: torch.sin(x) * scale)  # a branch with a non-constant Jacobian
    out.backward(g)
    return out.detach(), H.grad, {k: p.grad.clone() for k, p in connection.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("d", [24, 13])
@pytest.mark.parametrize("name", ["dhc4", "dhc4-notanh", "dhc1", "dhc2", "dhc3", "dhc8", "shc4", "mhc4", "mhc1",
                                  "mhc3"])
def test_fused_connection_is_the_pytorch_form_in_float64(kernel, name, d):
    """Forward, gradient of H and of every parameter, float64, random parameters; n = 3 is off the usual sizes.
    SHC uses the kernel's mix (static coefficients), mHC its own width connection (a block of 8 tokens at once: 111
    tokens leave 7 over) and both the depth connection. d = 13: channels
    left over after the kernel's 8- and 4-lane blocks (float64 is 4 lanes of AVX2); n = 1, 2, 3, 4, 8 leave
    0-3 rows after the kernel's 4-row groups of dot products and norm statistics."""
    n = HCConfig.from_name(name).expansion_rate
    plain = perturbed(HCConfig.from_name(name).build(d, 3).double())
    fused = perturbed(dataclasses.replace(HCConfig.from_name(name), fused=True).build(d, 3).double())
    H = 2 * torch.randn(3, 37, n, d, dtype=torch.float64) + 0.5  # token count off every block size
    g, scale = torch.randn(3, 37, n, d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)
    (o1, gh1, gp1), (o2, gh2, gp2) = step(plain, H, g, scale), step(fused, H, g, scale)
    torch.testing.assert_close(o2, o1, **F64)
    torch.testing.assert_close(gh2, gh1, **F64)
    assert gp1.keys() == gp2.keys() and len(gp1) == len(list(plain.parameters()))  # every parameter gets one
    for key in gp1:
        torch.testing.assert_close(gp2[key], gp1[key], **F64, msg=lambda m: f"{key}: {m}")


@pytest.mark.parametrize("d", [64, 29])
@pytest.mark.parametrize("name", ["dhc4", "mhc4"])
def test_fused_connection_in_float32_is_as_accurate_as_the_pytorch_form(kernel, name, d):
    """Float32 (DHC: the fast tanh, within 4e-7 of tanh, 8 lanes at a time), large pre-activations so that tanh
    and the sigmoids saturate: against the float64 result, the fused path's error is within a small multiple of the
    PyTorch form's own float32 error. d = 29: a 16-, an 8-lane block and 5 channels left over."""
    plain = perturbed(HCConfig.from_name(name).build(d, 5), scale=1.0)
    fused = perturbed(HCConfig.from_name(name).build(d, 5), scale=1.0)
    fused.fused = True
    exact = perturbed(HCConfig.from_name(name).build(d, 5).double(), scale=1.0)
    H, g, scale = 3 * torch.randn(8, 50, 4, d), torch.randn(8, 50, 4, d), torch.randn(d)
    (o1, gh1, gp1), (o2, gh2, gp2) = step(plain, H, g, scale), step(fused, H, g, scale)
    o0, gh0, gp0 = step(exact, H.double(), g.double(), scale.double())
    for key, ref, a, b in [("out", o0, o1, o2), ("H", gh0, gh1, gh2), *((k, gp0[k], gp1[k], gp2[k]) for k in gp0)]:
        plain_error, fused_error = ((t.double() - ref).abs().max().item() for t in (a, b))
        assert fused_error <= 4 * plain_error + 1e-6 * ref.abs().max().item(), (key, fused_error, plain_error)


def test_the_fused_width_function_passes_gradcheck(kernel):
    m = perturbed(HCConfig.from_name("dhc2").build(8, 1).double())
    H = torch.randn(2, 5, 2, 8, dtype=torch.float64, requires_grad=True)
    params = [m.norm.weight, m.norm.bias, m.dynamic_weight(), m.static_alpha, m.static_beta, m.dynamic_alpha_scale,
              m.dynamic_beta_scale]
    params = [p.detach().clone().requires_grad_() for p in params]
    for use_tanh in (True, False):
        assert torch.autograd.gradcheck(
            lambda h, *ps: _FusedDynamicWidth.apply(kernel, h, *ps, use_tanh, 1e-5), (H, *params))


def test_the_fused_mhc_width_function_passes_gradcheck(kernel):
    """Every input: H, phi, the three scales and three biases; 11 tokens (a block of 8 and 3 over), n = 3, a few
    Sinkhorn iterations (the reverse runs through each)."""
    m = perturbed(HCConfig.from_name("mhc3").build(4, 1).double(), scale=0.5)
    H = torch.randn(11, 3, 4, dtype=torch.float64, requires_grad=True)
    params = [p.detach().clone().requires_grad_() for p in
              (m.phi, m.a_pre, m.a_post, m.a_res, m.b_pre, m.b_post, m.b_res)]
    assert torch.autograd.gradcheck(lambda h, *ps: _FusedManifoldWidth.apply(kernel, h, *ps, 3), (H, *params))


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("name", ["dhc4", "mhc4"])
def test_the_fused_width_connections_keep_no_more_than_the_plain_path(kernel, name, recompute):
    """Saved for backward, the whole GPT: the fused path keeps at most what the PyTorch form keeps, plus its
    concatenated scalars (a few bytes per sub-layer). It once kept a contiguous copy of the first layer's H, the
    embedding expanded n times (a stride-0 view), i.e. n - 1 extra copies of the embedding output."""
    from lit_hc.analysis import saved_activation_bytes

    kept = {}
    for fused in (False, True):
        torch.manual_seed(0)
        hc = dataclasses.replace(HCConfig.from_name(name), fused=fused, recompute=recompute)
        model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=4, n_head=2, n_embd=32, hc=hc))
        kept[fused] = saved_activation_bytes(model, torch.randint(0, 64, (4, 16)))
    assert kept[True] <= kept[False] + 2 * 4 * 3 * 4  # 2 L sub-layers x at most 3 float32 scalars


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("name", ["dhc4", "shc4", "mhc4"])
def test_a_fused_gpt_trains_like_the_plain_one(kernel, name, recompute):
    """The whole model, float64: the loss and the gradient of every parameter, with and without recomputation."""
    def model(fused: bool):
        torch.manual_seed(0)
        hc = dataclasses.replace(HCConfig.from_name(name), fused=fused, recompute=recompute)
        return perturbed(GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=3, n_head=2, n_embd=16, hc=hc)).double(),
                         scale=0.1)

    idx = torch.randint(0, 64, (2, 16))
    grads = []
    for fused in (False, True):
        net = model(fused)
        loss = torch.nn.functional.cross_entropy(net(idx).flatten(0, 1), idx.flatten())
        loss.backward()
        grads.append((loss.detach(), {k: p.grad for k, p in net.named_parameters()}))
    (l1, g1), (l2, g2) = grads
    torch.testing.assert_close(l2, l1, **F64)
    assert all(g is not None for g in g2.values())
    for key in g1:
        torch.testing.assert_close(g2[key], g1[key], **F64, msg=lambda m: f"{key}: {m}")


@pytest.mark.parametrize("name", ["dhc4", "mhc4"])
def test_fused_results_do_not_depend_on_the_thread_count(kernel, name):
    """The parameter gradients are summed per fixed chunk of tokens and the chunks in order: 1 and 2 threads give the
    same bits."""
    m = perturbed(HCConfig.from_name(name).build(32, 2))
    m.fused = True
    H, g, scale = torch.randn(4, 300, 4, 32), torch.randn(4, 300, 4, 32), torch.randn(32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = step(m, H, g, scale)
        m.zero_grad()
        torch.set_num_threads(2)
        two = step(m, H, g, scale)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])
    assert all(torch.equal(one[2][k], two[2][k]) for k in one[2])


def test_fused_applies_only_where_the_kernel_does(kernel):
    """Off by default; on, only for float32/64 CPU tensors outside autocast (bf16 and the compiled path keep the
    PyTorch form, which the tests of those paths cover)."""
    m = HCConfig.from_name("dhc4").build(16, 0)
    x = torch.randn(2, 4, 16)
    assert _fused_kernel(m, x) is None  # fused defaults to False
    m.fused = True
    assert _fused_kernel(m, x) is kernel and _fused_kernel(m, x.double()) is kernel
    assert _fused_kernel(m, x.bfloat16()) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _fused_kernel(m, x) is None
    assert HCConfig.from_name("dhc4").fused is False
    assert dataclasses.replace(HCConfig.from_name("dhc4"), fused=True).name == "dhc4"  # not part of the name


def test_kernel_rejects_bad_input_in_one_line(kernel):
    z = torch.zeros
    with pytest.raises(RuntimeError, match="H must have 3 dims"):
        kernel.width_forward(z(4, 8), z(3, 8), z(3), z(1, 2), z(1), z(2), True, 1e-5)
    with pytest.raises(RuntimeError, match="at most 16 streams"):
        kernel.width_forward(z(2, 17, 8), z(19, 8), z(19), z(17, 18), z(17), z(2), True, 1e-5)
    with pytest.raises(RuntimeError, match=r"phi must be \(n d, 2n \+ n\^2\)"):
        kernel.mhc_width_forward(z(2, 4, 8), z(24, 32), z(3), z(4), z(4), z(4, 4), 20)


def test_without_the_kernel_fused_runs_the_pytorch_form_bit_for_bit(monkeypatch):
    """No compiler (or LIT_HC_CPU_KERNELS=0): `fused` changes nothing, not even the last bit."""
    monkeypatch.setattr(cpu_kernels, "hc_fused", lambda: None)
    for name in ("dhc4", "shc4", "mhc4"):
        plain = perturbed(HCConfig.from_name(name).build(16, 1))
        fused = perturbed(dataclasses.replace(HCConfig.from_name(name), fused=True).build(16, 1))
        H, g, scale = torch.randn(2, 9, 4, 16), torch.randn(2, 9, 4, 16), torch.randn(16)
        (o1, gh1, gp1), (o2, gh2, gp2) = step(plain, H, g, scale), step(fused, H, g, scale)
        assert torch.equal(o1, o2) and torch.equal(gh1, gh2) and all(torch.equal(gp1[k], gp2[k]) for k in gp1)


def _op_inputs(name: str, T: int = 11, n: int = 3, d: int = 8):
    """Inputs of the compiled path's library op for a random, non-init DHC or mHC connection, float64."""
    m = perturbed(HCConfig.from_name(f"{name}{n}").build(d, 1).double())
    H = (2 * torch.randn(T, n, d, dtype=torch.float64) + 0.5).requires_grad_()
    leaf = lambda t: t.detach().clone().requires_grad_()  # noqa: E731
    if name == "dhc":
        folded = _FusedDynamicWidth.folded(m.norm.weight, m.norm.bias, m.dynamic_weight())
        scales = torch.cat([m.dynamic_alpha_scale, m.dynamic_beta_scale])
        return _dhc_width_op, (H, *map(leaf, (*folded, m.static_alpha, m.static_beta, scales))), (True, m.norm.eps)
    scalars = torch.cat([m.a_pre, m.a_post, m.a_res])
    return _mhc_width_op, (H, *map(leaf, (m.phi, scalars, m.b_pre, m.b_post, m.b_res))), (7,)


@pytest.mark.parametrize("name", ["dhc", "mhc"])
def test_the_compiled_paths_ops_pass_opcheck_and_gradcheck(kernel, name):
    """The library ops a compiled model with `fused` calls: schema, fake implementation, autograd registration and
    dispatch (torch.library.opcheck), and their gradient is the function's (gradcheck, all six tensor inputs)."""
    op, tensors, options = _op_inputs(name)
    torch.library.opcheck(op, (*tensors, *options))
    torch.autograd.gradcheck(lambda *t: op(*t, *options), tensors)


@pytest.mark.parametrize("name", ["dhc4", "mhc4"])
def test_a_fused_block_compiles_whole_and_calls_the_kernel_in_its_graph(kernel, name):
    """Under torch.compile `fused` runs the C++ width connection as one library op per sub-layer inside the graph
    (fullgraph: no break), and the inductor-compiled block equals the eager PyTorch form, forward and gradients of
    the input and every parameter, to float32 rounding."""
    from lit_hc.layers import Block

    torch.manual_seed(0)
    plain = perturbed(Block(16, 2, index=1, hc=HCConfig.from_name(name), causal=True, mlp_ratio=2.0), scale=0.05)
    block = dataclasses.replace(HCConfig.from_name(name), fused=True)
    block = Block(16, 2, index=1, hc=block, causal=True, mlp_ratio=2.0)
    block.load_state_dict(plain.state_dict())
    targets: list = []

    def record(gm, example_inputs):
        targets.extend(node.target for node in gm.graph.nodes if node.op == "call_function")
        return gm.forward

    H = torch.randn(2, 8, 4, 16, requires_grad=True)
    torch._dynamo.reset()
    torch.compile(block, fullgraph=True, backend=record)(H)
    op = {"dhc4": torch.ops.lit_hc.dhc_width.default, "mhc4": torch.ops.lit_hc.mhc_width.default}[name]
    assert targets.count(op) == 2  # attention's and the MLP's width connections
    torch._dynamo.reset()
    out, ref = torch.compile(block, fullgraph=True, backend="inductor")(H), plain(H)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, [H, *block.parameters()], g)
    for a, b in zip(grads, torch.autograd.grad(ref, [H, *plain.parameters()], g), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


def test_compiled_without_the_kernel_fused_traces_the_pytorch_form(monkeypatch):
    """No kernel here: the compiled block with `fused` holds no library op of it (which would fail when called)."""
    from lit_hc.layers import Block

    monkeypatch.setattr(cpu_kernels, "hc_fused", lambda: None)
    targets: list = []

    def record(gm, example_inputs):
        targets.extend(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        return gm.forward

    for name in ("dhc4", "mhc4"):
        block = Block(16, 2, index=1, hc=dataclasses.replace(HCConfig.from_name(name), fused=True), causal=True)
        torch._dynamo.reset()
        torch.compile(block, fullgraph=True, backend=record)(torch.randn(2, 8, 4, 16))
    assert targets and not [t for t in targets if "dhc_width" in t or "mhc_width" in t]
