"""The C++ Sinkhorn kernel (lit_hc/csrc/sinkhorn.cpp) against the PyTorch loop it replaces on the CPU."""

import shutil

import pytest
import torch

from lit_hc import cpu_kernels
from lit_hc.hyper_connections import _sinkhorn_iterate_op, _sinkhorn_loop, _sinkhorn_reverse_op, sinkhorn_knopp

can_build = shutil.which("c++") is not None and shutil.which("ninja") is not None


@pytest.fixture(scope="module")
def kernel():
    if not can_build:
        pytest.skip("no C++ compiler or ninja here: mHC runs its PyTorch loop")
    built = cpu_kernels.sinkhorn()
    assert built is not None, "a compiler and ninja are here, so the kernel must build"
    return built


def loop(M0: torch.Tensor, g: torch.Tensor, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    steps: list = []
    M = _sinkhorn_loop(M0, iters, row=0, col=1, steps=steps)
    for P, divisor, dim in reversed(steps):
        g = (g - (g * P).sum(dim, keepdim=True)) / divisor
    return M, g


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_is_the_loop_bit_for_bit_up_to_four_streams(kernel, dtype):
    # token counts off the kernel's block of 32 and off torch's vector width: the tails are where orders could differ
    for n in (1, 2, 3, 4):
        for tokens in (1, 31, 1000, 2048):
            x = 3 * torch.randn(n, n, tokens, dtype=dtype)
            M0, g = torch.exp(x - x.amax(dim=(0, 1), keepdim=True)), torch.randn(n, n, tokens, dtype=dtype)
            M, grad = loop(M0, g, 20)
            assert torch.equal(kernel.forward(M0, 20), M), (n, tokens)
            assert torch.equal(kernel.backward(M0, g, 20), grad), (n, tokens)


def test_kernel_matches_the_loop_to_rounding_beyond_four_streams(kernel):
    # torch sums more than four entries in another order on the tokens past its vector blocks, so these agree to
    # rounding only
    x = 2 * torch.randn(8, 8, 1000, dtype=torch.float64)
    M0, g = torch.exp(x - x.amax(dim=(0, 1), keepdim=True)), torch.randn(8, 8, 1000, dtype=torch.float64)
    M, grad = loop(M0, g, 20)
    torch.testing.assert_close(kernel.forward(M0, 20), M, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(kernel.backward(M0, g, 20), grad, rtol=1e-10, atol=1e-12)


def test_sinkhorn_knopp_gives_the_same_bits_with_and_without_the_kernel(kernel, monkeypatch):
    x = torch.randn(2, 64, 4, 4, requires_grad=True)  # mHC x4's per-token logits, float32 as in training
    g = torch.randn(2, 64, 4, 4)
    with_kernel = sinkhorn_knopp(x, 20)
    grad_kernel = torch.autograd.grad(with_kernel, x, g)[0]
    monkeypatch.setattr(cpu_kernels, "sinkhorn", lambda: None)
    without = sinkhorn_knopp(x, 20)
    assert torch.equal(with_kernel, without) and torch.equal(grad_kernel, torch.autograd.grad(without, x, g)[0])


def test_kernel_rejects_bad_layouts_in_one_line(kernel):
    with pytest.raises(RuntimeError, match=r"must be \(n, n, tokens\)"):
        kernel.forward(torch.ones(4, 3, 8), 20)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        kernel.forward(torch.ones(4, 4, 8, dtype=torch.bfloat16), 20)


def test_a_kernel_that_cannot_build_warns_once_and_leaves_the_loop(monkeypatch):
    import torch.utils.cpp_extension

    def fail(*args, **kwargs):
        raise RuntimeError("Error building extension 'lit_hc_sinkhorn'\nc++: command not found")

    cpu_kernels.sinkhorn.cache_clear()
    monkeypatch.setattr(torch.utils.cpp_extension, "load", fail)
    try:
        with pytest.warns(UserWarning, match="did not build .c\\+\\+: command not found.*PyTorch loop"):
            assert cpu_kernels.sinkhorn() is None
        x = torch.randn(3, 4, 4, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t: sinkhorn_knopp(t, 5), (x,))  # the loop still trains
        monkeypatch.setenv(cpu_kernels.ENV, "0")
        cpu_kernels.sinkhorn.cache_clear()
        assert cpu_kernels.sinkhorn() is None  # switched off: no build is tried
    finally:
        cpu_kernels.sinkhorn.cache_clear()


def test_the_custom_ops_pass_torch_library_opcheck(kernel):
    """Schema, fake (meta) implementation, autograd registration and dispatch of the ops torch.compile calls."""
    x = 2 * torch.randn(4, 4, 37, dtype=torch.float64)
    M0 = torch.exp(x - x.amax(dim=(0, 1), keepdim=True)).requires_grad_()
    torch.library.opcheck(_sinkhorn_iterate_op, (M0, 20))
    torch.library.opcheck(_sinkhorn_reverse_op, (M0.detach(), torch.randn(4, 4, 37, dtype=torch.float64), 20))


def test_the_iterate_op_has_the_unrolled_gradient(kernel):
    x = 2 * torch.randn(3, 3, 29, dtype=torch.float64)
    M0 = torch.exp(x - x.amax(dim=(0, 1), keepdim=True)).requires_grad_()
    torch.autograd.gradcheck(lambda m: _sinkhorn_iterate_op(m, 8), (M0,))


def test_compiled_sinkhorn_calls_the_kernel_inside_one_graph(kernel):
    """Under torch.compile on the CPU the iterations are one op in the graph (dynamo does not break it, the 40
    divisions are not traced), and the compiled forward and gradient equal the eager ones to float32 rounding."""
    targets: list = []

    def record(gm, example_inputs):
        targets.extend(node.target for node in gm.graph.nodes if node.op == "call_function")
        return gm.forward

    x = torch.randn(2, 64, 4, 4, requires_grad=True)
    torch.compile(sinkhorn_knopp, backend=record, fullgraph=True)(x, 20)
    assert torch.ops.lit_hc.sinkhorn_iterate.default in targets
    assert sum(t in (torch.div, torch.Tensor.div, torch.ops.aten.div.Tensor) or getattr(t, "__name__", "") in
               ("truediv", "div") for t in targets) == 0  # no traced divisions: the loop is not in the graph
    g = torch.randn(2, 64, 4, 4)
    eager = sinkhorn_knopp(x, 20)
    compiled = torch.compile(sinkhorn_knopp, backend="inductor", fullgraph=True)(x, 20)
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(torch.autograd.grad(compiled, x, g)[0], torch.autograd.grad(eager, x, g)[0],
                               rtol=1e-5, atol=1e-6)
