"""The environment `make install` builds: torchvision must load its compiled ops against this torch build
(a CPU-only `+cpu` torch wheel breaks that, which is why the project installs through uv)."""
import subprocess
import sys

import pytest
import torch


def test_torchvision_ops_run_against_this_torch():
    import torchvision
    from torchvision.ops import nms

    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    assert nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5).tolist() == [0, 2]
    assert torchvision.__version__


def test_core_import_leaves_the_training_stack_out():
    """`from lit_hc import HyperConnection` pays for torch and timm only; the CLI's class paths still resolve."""
    code = ("import sys, warnings, lit_hc\n"
            "print([m for m in ('lightning', 'torchmetrics', 'matplotlib', 'transformers', 'lit_hc.tasks', "
            "'lit_hc.data.text', 'lit_hc.data.images') if m in sys.modules])\n"
            "print([f[1].pattern for f in warnings.filters if f[1] is not None and 'set_vital' in f[1].pattern])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]"  # none of the training stack
    assert out[1] == "[]"  # and no process-wide warnings filter installed by importing the package


def test_public_names_resolve_to_the_classes():
    import lightning as L

    import lit_hc
    from lit_hc.data.text import TextDataModule

    for name in lit_hc.__all__:
        assert getattr(lit_hc, name) is not None, name
    assert issubclass(lit_hc.LanguageModel, L.LightningModule) and lit_hc.TextDataModule is TextDataModule
    assert set(lit_hc.__all__) <= set(dir(lit_hc))
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchThing'"):
        lit_hc.NoSuchThing  # noqa: B018


def test_lightning_internals_are_used_in_one_module_only():
    """Every use of a private Lightning attribute lives in lit_hc/lightning_compat.py, with the reason beside it."""
    import re
    from pathlib import Path

    import lit_hc

    private = re.compile(r"_checkpoint_connector|_batches_that_stepped|_parse_ckpt_path|fit_loop\.\w*\._|trainer\._")
    root = Path(lit_hc.__file__).parent
    users = sorted(str(p.relative_to(root)) for p in root.rglob("*.py") if private.search(p.read_text()))
    assert users == ["lightning_compat.py"]
