"""The representation-collapse probe: the cosine similarity of adjacent sub-layers' inputs."""
import pytest
import torch

from experiments.probes import collapse, sublayer_input_similarity
from lit_hc import GPT, GPTConfig, HCConfig


def _gpt(name: str, n_layer: int = 3) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=n_layer, n_head=2, n_embd=32,
                         hc=HCConfig.from_name(name))).double()


def test_similarity_of_the_baseline_equals_the_pre_norm_recurrence_written_out():
    """For the Pre-Norm baseline the inputs are h_0 = embedding, then h + Attn(LN(h)), h + MLP(LN(h)), ..."""
    model = _gpt("residual")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))  # off the init, so every pair differs
    idx = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        h = model.wte(idx) + model.wpe.weight[:16]
        inputs = []
        for block in model.blocks:
            inputs.append(h)
            h = h + block.attn(block.norm1(h))
            inputs.append(h)
            h = h + block.mlp(block.norm2(h))
    expected = torch.stack([torch.nn.functional.cosine_similarity(a, b, dim=-1).flatten()
                            for a, b in zip(inputs, inputs[1:])])
    readings = sublayer_input_similarity(model, idx)
    got = readings["branch_input"]
    assert got.shape == (5, 32)  # 2 x 3 sub-layers give 5 adjacent pairs, over 2 x 16 tokens
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert got.min() < 0.99  # not the trivial case below
    torch.testing.assert_close(readings["stream_sum"], got, rtol=0, atol=1e-12)  # one stream: the readings coincide
    assert model.training  # the probe restores the mode it found


def test_sub_layers_that_add_nothing_give_identical_inputs_for_every_variant():
    """With every branch's output projection at zero each sub-layer adds nothing, so adjacent inputs are the same
    vector: similarity 1 exactly, for the baseline and for HC and mHC at their init (which computes the baseline)."""
    for name in ("residual", "dhc4", "shc2", "mhc4"):
        model = _gpt(name)
        with torch.no_grad():
            for block in model.blocks:
                for proj in block.output_projections():
                    proj.weight.zero_()
                    proj.bias.zero_()
        for reading, sims in sublayer_input_similarity(model, torch.randint(0, 64, (2, 16))).items():
            torch.testing.assert_close(sims, torch.ones_like(sims), rtol=0, atol=1e-6, msg=f"{name} {reading}")


def test_one_number_per_run_is_the_deeper_half_of_the_pairs():
    assert collapse([0.1, 0.2, 0.3, 0.9, 0.8, 1.0]) == (0.9 + 0.8 + 1.0) / 3
    assert collapse([0.5, 0.6, 0.7, 0.8, 0.9]) == pytest.approx(0.8)  # odd: the middle pair counts


def test_the_two_readings_differ_for_hc_off_its_init():
    """For DHC x4 off its init the branch input (A_m^T H) and the stream sum are different vectors, so the probe's
    two readings differ; both stay cosine similarities."""
    model = _gpt("dhc4")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    readings = sublayer_input_similarity(model, torch.randint(0, 64, (2, 16)))
    assert (readings["branch_input"] - readings["stream_sum"]).abs().max() > 1e-3
    assert all(r.abs().max() <= 1 + 1e-12 for r in readings.values())
