"""lit-hc: Hyper-Connections and mHC for GPT and ViT, in PyTorch Lightning.

The core (residual variants, GPT, ViT, optimizer groups, analysis) imports only torch and timm.layers. The training
stack (LightningModules and DataModules, by short name for the CLI: `class_path: lit_hc.LanguageModel`) is imported
on first use, so `from lit_hc import HyperConnection` does not pay for Lightning, torchmetrics or torchvision.
"""
import importlib

from lit_hc.gpt import GPT, GPTConfig
from lit_hc.hyper_connections import (
    HCConfig,
    HyperConnection,
    ManifoldHyperConnection,
    Residual,
    expand_streams,
    reduce_streams,
    sinkhorn_knopp,
)
from lit_hc.optim import configure_optimizers_for_hyper_connections, param_groups
from lit_hc.vit import ViT, ViTConfig

_LAZY = {
    "ImageClassifier": "lit_hc.tasks", "LanguageModel": "lit_hc.tasks", "OptimConfig": "lit_hc.tasks",
    "TextDataModule": "lit_hc.data.text", "ImageFolderDataModule": "lit_hc.data.images",
}


def __getattr__(name: str):  # PEP 562: the training stack on first use
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lit_hc' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))


__all__ = [
    "GPT", "GPTConfig", "HCConfig", "ImageClassifier", "ImageFolderDataModule", "LanguageModel", "OptimConfig",
    "TextDataModule", "HyperConnection", "ManifoldHyperConnection", "Residual", "ViT", "ViTConfig",
    "configure_optimizers_for_hyper_connections", "expand_streams", "param_groups", "reduce_streams",
    "sinkhorn_knopp",
]
