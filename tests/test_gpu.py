"""The GPU paths, on a CUDA device: skipped without one (`make test-gpu` runs them where there is one).

What differs on a GPU: mHC's Sinkhorn runs the PyTorch loop (the C++ kernel is the CPU's), the thin coefficient
products keep `a @ b`, the fused C++ connections fall back to the PyTorch form, bf16 autocast is the trainer's
precision (configs/trainer/gpu.yaml), inductor generates Triton kernels, and checkpoints carry the CUDA generator
state. Each test compares the device with a float64 CPU reference or with the device's own eager result.

`LIT_HC_TEST_DEVICE=cpu make test-gpu` runs the same checks on the CPU (a dry run of this file on a machine without a
GPU: the comparisons then hold trivially, the code paths do not).
"""
import dataclasses
import os

import pytest
import torch

from helpers import CONFIGS, assert_compiles_like_eager, lm_args, run_dir, scalars, write_toy_corpus
from lit_hc import GPT, GPTConfig, HCConfig
from lit_hc.hyper_connections import sinkhorn_knopp

DEVICE = os.environ.get("LIT_HC_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    DEVICE == "cuda" and not torch.cuda.is_available(),
    reason="needs a CUDA GPU (LIT_HC_TEST_DEVICE=cpu runs these checks on the CPU)")]

VARIANTS = ["residual", "shc4", "dhc4", "dhc4-notanh", "mhc4"]


@pytest.fixture(autouse=True)
def _exact_float32():
    """Full float32 matmuls on the GPU (no TF32), so a float32 run can be held to a float64 reference."""
    if DEVICE != "cuda":
        yield
        return
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def _model(name: str, **hc) -> GPT:
    """A 2-block GPT of the variant with random non-init parameters (HC's init computes the baseline, which would
    leave its streams untested), made on the CPU so every device starts from the same weights."""
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=256, block_size=32, n_layer=2, n_head=4, n_embd=64,
                       hc=dataclasses.replace(HCConfig.from_name(name), **hc))
    model = GPT(config)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return model


def _loss_and_grads(model: GPT, idx: torch.Tensor, autocast: bool = False):
    with torch.autocast(idx.device.type, dtype=torch.bfloat16, enabled=autocast):
        logits = model(idx)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 logits to float32, float64 stays
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), idx[:, 1:].flatten())
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return loss, grads


OPTIONS = {"plain": {}, "recompute": {"recompute": True}, "fused": {"fused": True}}


@pytest.mark.parametrize("name,options", [(v, o) for v in VARIANTS for o in OPTIONS if v != "residual" or o == "plain"])
def test_float32_on_the_device_matches_a_float64_cpu_reference(name, options):
    """Loss and every parameter's gradient of a float32 model on the device against the same model in float64 on
    the CPU; `fused` asks for the C++ connections, which a GPU does not have (the PyTorch form runs instead)."""
    hc = OPTIONS[options]
    model = _model(name, **hc)
    idx = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(2))
    ref_loss, ref_grads = _loss_and_grads(_model(name, **hc).double(), idx)
    loss, grads = _loss_and_grads(model.to(DEVICE), idx.to(DEVICE))
    torch.testing.assert_close(loss.double().cpu(), ref_loss, rtol=1e-5, atol=1e-5)
    names = [n for n, _ in model.named_parameters()]
    for pname, g, ref in zip(names, grads, ref_grads):
        assert torch.isfinite(g).all() and g.abs().sum() > 0, f"{pname}: no gradient on {DEVICE}"
        torch.testing.assert_close(g.double().cpu(), ref, rtol=1e-3, atol=2e-5, msg=lambda m, p=pname: f"{p}: {m}")


@pytest.mark.parametrize("name", ["dhc4", "mhc4"])
def test_bf16_autocast_trains_every_parameter(name):
    """The GPU trainer's precision: under bf16 autocast the loss stays within bf16's rounding of the float32 loss,
    and every parameter, the HC coefficients included, gets a finite, non-zero gradient."""
    idx = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(2)).to(DEVICE)
    model = _model(name).to(DEVICE)
    loss32, _ = _loss_and_grads(model, idx)
    loss16, grads = _loss_and_grads(model, idx, autocast=True)
    assert abs(loss16.item() - loss32.item()) < 0.05 * loss32.item()
    for (pname, p), g in zip(model.named_parameters(), grads):
        assert g.dtype == p.dtype and torch.isfinite(g).all() and g.abs().sum() > 0, pname


def test_sinkhorn_on_the_device_matches_the_cpu():
    """mHC's Sinkhorn-Knopp: the PyTorch loop on the device against the CPU's (its C++ kernel where built), values
    and gradients, on logits around mHC's init (diagonal 0, off-diagonal -2) with noise."""
    generator = torch.Generator().manual_seed(3)
    logits = torch.full((512, 4, 4), -2.0) + 2.0 * torch.eye(4) + 0.5 * torch.randn(512, 4, 4, generator=generator)
    weight = torch.randn(512, 4, 4, generator=generator)
    results = []
    for device in ("cpu", DEVICE):
        x = logits.to(device).requires_grad_()
        P = sinkhorn_knopp(x, 20)
        (grad,) = torch.autograd.grad((P * weight.to(device)).sum(), x)
        results.append((P.cpu(), grad.cpu()))
    (P_cpu, g_cpu), (P_dev, g_dev) = results
    torch.testing.assert_close(P_dev, P_cpu, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_dev, g_cpu, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(P_dev.sum(-1), torch.ones(512, 4), atol=1e-3, rtol=0)  # rows sum to 1


@pytest.mark.parametrize("name", ["dhc4", "mhc4"])
def test_a_block_compiles_whole_on_the_device(name):
    """torch.compile(fullgraph=True) of one block on the device (inductor's Triton kernels on a GPU) equals eager,
    forward and gradients."""
    if DEVICE == "cuda":
        pytest.importorskip("triton")
    from lit_hc.layers import Block

    torch.manual_seed(0)
    torch._dynamo.reset()
    block = Block(64, 4, index=1, hc=HCConfig.from_name(name), causal=True, mlp_ratio=2.0).to(DEVICE)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.05 * torch.randn_like(p))
    n = block.hc_attn.expansion_rate
    H = torch.randn(2, 16, n, 64, device=DEVICE, requires_grad=True)
    assert_compiles_like_eager(block, H)


def test_fit_on_the_gpu_trainer_config(tmp_path, monkeypatch):
    """A real `lit-hc fit` of DHC x4 with configs/trainer/gpu.yaml (one GPU, bf16-mixed): it learns, and its
    checkpoint carries the CUDA generator state that an exact resume restores."""
    from lit_hc.cli import cli_main

    monkeypatch.setenv("LIT_HC_DATA", str(tmp_path / "data"))
    corpus = write_toy_corpus(tmp_path / "corpus")
    trainer = (["--config", str(CONFIGS / "trainer/gpu.yaml")] if DEVICE == "cuda" else
               ["--trainer.accelerator", "cpu", "--trainer.precision", "bf16-mixed"])
    cli_main(lm_args(tmp_path, corpus, 30, "--config", str(CONFIGS / "hc/dhc4.yaml"), *trainer,
                     "--trainer.log_every_n_steps", "1"))
    run = run_dir(tmp_path / "lm", "dhc4")
    losses = [v for _, v in sorted(scalars(run)["train/loss"])]
    assert len(losses) == 30 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ("cuda" in checkpoint["rng_states"]) == (DEVICE == "cuda")
