"""Real `lit-hc fit` runs through the CLI (in-process), both tasks, several residual variants."""
import dataclasses

import pytest
import torch

from helpers import CONFIGS, images, lm_args, run_dir, scalars, vit_args, write_toy_corpus, write_toy_images
from lit_hc import HCConfig
from lit_hc.cli import cli_main

LM_VARIANTS = ["residual", "dhc2", "mhc4"]
VIT_VARIANTS = ["residual", "shc2"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_toy_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(autouse=True)
def _data_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("LIT_HC_DATA", str(tmp_path_factory.getbasetemp() / "data"))


def _mean(points, first: bool, k: int = 5) -> float:
    values = [v for _, v in sorted(points)]
    chunk = values[:k] if first else values[-k:]
    return sum(chunk) / len(chunk)


@pytest.mark.parametrize("variant", LM_VARIANTS)
def test_lm_fit_learns_and_logs(tmp_path, corpus, variant):
    cli = cli_main(lm_args(tmp_path, corpus, 30, "--config", str(CONFIGS / f"hc/{variant}.yaml"),
                           "--model.init_args.log_connections_every_n_steps", "10", "--trainer.log_every_n_steps", "1"))
    run = run_dir(tmp_path / "lm", variant)
    assert cli.model.net.config.vocab_size == 256 and cli.model.net.config.block_size == 32  # linked from data
    assert cli.model.hc.name == variant
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    s = scalars(run)
    assert {"train/loss", "train/ppl", "train/tokens_per_sec", "val/loss", "val/ppl", "hp/val_loss"} <= set(s)
    assert _mean(s["train/loss"], first=False) < _mean(s["train/loss"], first=True) - 0.5
    val = [v for _, v in sorted(s["val/loss"])]
    assert val[-1] < val[0]
    assert s["hp/val_loss"][-1][1] == pytest.approx(val[-1])  # hparams carry the real final metric
    assert s["val/ppl"][-1][1] == pytest.approx(torch.tensor(val[-1]).exp().item(), rel=1e-5)
    if variant != "residual":
        assert {"hc/amax_gain_fwd", "hc/amax_gain_bwd"} <= set(s)
        assert {"hc/connection_matrices", "hc/unrolled_connections"} <= images(run)
    if variant.startswith("mhc"):  # doubly stochastic residual matrices: the product keeps gain 1
        assert all(abs(v - 1) < 1e-3 for _, v in s["hc/amax_gain_fwd"])


def test_lm_fit_in_bf16_mixed_precision(tmp_path, corpus):
    """bf16-mixed, the GPU trainer config's precision, through the CLI (CPU autocast here): an HC model trains.
    Before the hand-written backwards ran under their forward's autocast state, the first backward failed."""
    cli_main(lm_args(tmp_path, corpus, 20, "--config", str(CONFIGS / "hc/dhc4.yaml"), "--trainer.precision",
                     "bf16-mixed", "--trainer.log_every_n_steps", "1"))
    losses = [v for _, v in sorted(scalars(run_dir(tmp_path / "lm", "dhc4"))["train/loss"])]
    assert len(losses) == 20 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3


@pytest.mark.parametrize("variant", VIT_VARIANTS)
def test_vit_fit_learns_and_logs(tmp_path, variant):
    toy = write_toy_images(tmp_path / "toy")
    cli = cli_main(vit_args(tmp_path, 30, "--config", str(CONFIGS / f"hc/{variant}.yaml"), "--data.init_args.root",
                            str(toy), "--data.init_args.batch_size", "16", "--trainer.log_every_n_steps", "1"))
    run = run_dir(tmp_path / "vit", variant)
    assert cli.model.net.config.num_classes == 2 and cli.model.net.config.image_size == 16  # linked from data
    s = scalars(run)
    assert {"train/loss", "train/acc1", "train/images_per_sec", "val/loss", "val/acc1", "val/acc5", "hp/val_acc1"} <= set(s)
    assert _mean(s["train/loss"], first=False) < _mean(s["train/loss"], first=True) - 0.3
    assert s["val/acc1"][-1][1] > 0.9
    assert s["val/acc5"][-1][1] == 1.0  # top-5 of 2 classes


def test_vit_mixup_trains_on_soft_targets(tmp_path):
    cli_main(vit_args(tmp_path, 6, "--data.init_args.mixup", "0.2", "--data.init_args.cutmix", "1.0",
                      "--trainer.log_every_n_steps", "1"))
    s = scalars(run_dir(tmp_path / "vit", "residual"))
    assert "train/acc1" not in s and "val/acc1" in s  # no accuracy on mixed targets; validation stays hard


def test_soft_targets_give_the_soft_cross_entropy():
    """Mixup's probabilities: loss = mean over images of -sum_c t_c log softmax(z)_c (timm's SoftTargetCrossEntropy);
    hard labels keep the label smoothing, soft ones do not get it twice."""
    from timm.loss import SoftTargetCrossEntropy

    from lit_hc import ImageClassifier, ViTConfig

    model = ImageClassifier(arch=ViTConfig(image_size=16, patch_size=4, num_classes=5, dim=24, depth=1, heads=2),
                            label_smoothing=0.1)

    logits, soft = torch.randn(4, 5), torch.softmax(torch.randn(4, 5), -1)
    torch.testing.assert_close(model.loss(logits, soft), SoftTargetCrossEntropy()(logits, soft))
    hard = torch.tensor([0, 1, 2, 3])
    smoothed = 0.9 * torch.nn.functional.one_hot(hard, 5) + 0.1 / 5
    torch.testing.assert_close(model.loss(logits, hard), SoftTargetCrossEntropy()(logits, smoothed))


def test_overlay_is_the_same_for_both_tasks(tmp_path, corpus):
    lm = cli_main(lm_args(tmp_path, corpus, 1, "--config", str(CONFIGS / "hc/dhc4-notanh.yaml")))
    vit = cli_main(vit_args(tmp_path, 1, "--config", str(CONFIGS / "hc/dhc4-notanh.yaml")))
    assert lm.model.hc == vit.model.hc and lm.model.hc.name == "dhc4-notanh"


def test_runs_of_different_settings_never_share_a_folder(tmp_path, corpus, capsys):
    from lit_hc.cli import main

    cli_main(lm_args(tmp_path, corpus, 2))
    cli_main(lm_args(tmp_path, corpus, 2, "--model.init_args.optim.lr", "0.02"))
    folders = sorted((tmp_path / "lm").glob("residual-s0-*"))
    assert len(folders) == 2  # <variant>-s<seed>-<hash of the settings>
    # the same settings find their folder again (a resume), also when only logging or devices differ
    cli_main(lm_args(tmp_path, corpus, 2, "--trainer.log_every_n_steps", "1", "--trainer.devices", "1"))
    assert sorted((tmp_path / "lm").glob("residual-s0-*")) == folders
    # a folder named by hand that holds another configuration is refused, in one line, before anything is written
    before = sorted(p.name for p in folders[0].rglob("*"))
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(lm_args(tmp_path, corpus, 2, "--trainer.logger.init_args.version", folders[0].name,
                     "--model.init_args.optim.lr", "0.05"))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"lit-hc: error: run folder {folders[0]} holds a run of another "
                                               "configuration (model.init_args.optim.lr: ")
    assert sorted(p.name for p in folders[0].rglob("*")) == before


def test_mfu_is_logged_with_hc_flops_where_the_peak_is_known(tmp_path, corpus, monkeypatch):
    """On an accelerator with a known peak, train/mfu = tokens/s x training FLOPs per token (HC included) / peak;
    on CPU (no peak) nothing is logged. The peak is faked here so the CPU run takes the GPU path."""
    from lit_hc import tasks
    from lit_hc.analysis import training_flops

    assert tasks.peak_flops(torch.device("cpu"), "32-true") is None
    monkeypatch.setattr(tasks, "peak_flops", lambda device, precision: 1e12)
    cli = cli_main(lm_args(tmp_path, corpus, 6, "--config", str(CONFIGS / "hc/dhc2.yaml"), "--trainer.log_every_n_steps", "1"))
    s = scalars(run_dir(tmp_path / "lm", "dhc2"))
    flops = training_flops(cli.model.net.config, 1)
    assert flops > training_flops(dataclasses.replace(cli.model.net.config, hc=HCConfig()), 1)  # HC counted
    rates, mfu = dict(s["train/tokens_per_sec"]), dict(s["train/mfu"])
    assert mfu.keys() == rates.keys() and len(mfu) == 5
    for step, value in mfu.items():
        assert value == pytest.approx(rates[step] * flops / 1e12, rel=1e-5)
