"""HC and mHC at init compute exactly the Pre-Norm residual network (HC paper Eq. 14; the mHC paper's init)."""
import pytest
import torch

from lit_hc import GPT, GPTConfig, HCConfig, ViT, ViTConfig

HC_AT_INIT = [
    pytest.param(dict(kind=kind, expansion_rate=n, dynamic=dyn), id=f"{kind}{'-dyn' if dyn else ''}{n}")
    for n in (1, 2, 4, 8)
    for kind, dyn in (("hc", False), ("hc", True), ("mhc", True))
]


def _load_baseline(model, baseline):
    result = model.load_state_dict(baseline.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert all(".hc_" in k for k in result.missing_keys), result.missing_keys
    return result


def _tolerance(hc: HCConfig) -> float:
    # HC at init is exact in float64; mHC's Sinkhorn runs in float32, so H_res is doubly stochastic to ~1e-7.
    return 1e-10 if hc.kind == "hc" else 1e-5


@pytest.mark.parametrize("hc_kwargs", HC_AT_INIT)
@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
def test_gpt_at_init_equals_residual_baseline(hc_kwargs, pos_emb):
    hc = HCConfig(**hc_kwargs)
    cfg = dict(vocab_size=64, block_size=16, n_layer=3, n_head=2, n_embd=32, pos_emb=pos_emb, mlp="swiglu")
    baseline = GPT(GPTConfig(**cfg)).double()
    model = GPT(GPTConfig(**cfg, hc=hc)).double()
    missing = _load_baseline(model, baseline).missing_keys
    assert len(missing) == len([k for k in model.state_dict() if ".hc_" in k])
    idx = torch.randint(0, 64, (2, 16))
    torch.testing.assert_close(model(idx), baseline(idx), rtol=_tolerance(hc), atol=_tolerance(hc))


@pytest.mark.parametrize("hc_kwargs", HC_AT_INIT)
def test_vit_at_init_equals_residual_baseline(hc_kwargs):
    hc = HCConfig(**hc_kwargs)
    cfg = dict(image_size=16, patch_size=4, num_classes=5, dim=32, depth=3, heads=2)
    baseline = ViT(ViTConfig(**cfg)).double()
    model = ViT(ViTConfig(**cfg, hc=hc)).double()
    _load_baseline(model, baseline)
    images = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(model(images), baseline(images), rtol=_tolerance(hc), atol=_tolerance(hc))


def test_equivalence_breaks_when_hc_is_not_at_init():
    """Guard for the tests above: they can fail. Moving B off its init changes the function."""
    cfg = dict(vocab_size=64, block_size=8, n_layer=2, n_head=2, n_embd=32)
    baseline = GPT(GPTConfig(**cfg)).double()
    model = GPT(GPTConfig(**cfg, hc=HCConfig(kind="hc", expansion_rate=2))).double()
    _load_baseline(model, baseline)
    with torch.no_grad():
        model.blocks[0].hc_attn.static_beta[1] = 0.5
    idx = torch.randint(0, 64, (2, 8))
    assert not torch.allclose(model(idx), baseline(idx), atol=1e-4)


@pytest.mark.parametrize("k", range(5))
def test_static_init_is_eq14(k):
    from lit_hc import HyperConnection

    n = 3
    module = HyperConnection(8, n, layer_idx=k)
    expected_alpha = torch.zeros(n, n + 1)
    expected_alpha[k % n, 0] = 1.0
    expected_alpha[:, 1:] = torch.eye(n)
    assert torch.equal(module.static_alpha.data, expected_alpha)
    assert torch.equal(module.static_beta.data, torch.ones(n))
    assert torch.equal(module.dynamic_alpha_fn.data, torch.zeros(8, n + 1))
    assert module.dynamic_alpha_scale.item() == pytest.approx(0.01)
