import pytest
import torch

from lit_hc import HCConfig

def pytest_configure(config):
    # Here, not in pyproject.toml: pyproject.toml is part of the code version a run records (experiments/reproduce.py),
    # and a test marker changes no number.
    config.addinivalue_line("markers", "gpu: checks of the GPU paths on a CUDA device, skipped without one "
                            "(`make test-gpu`)")


# The variants every model-level test runs over, by name (HCConfig.from_name: the names of configs/hc/*.yaml).
VARIANTS = ("residual", "shc2", "dhc4", "dhc4-notanh", "mhc4")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _argv(monkeypatch):
    """The CLI runs in-process with explicit args; pytest's own argv must not look like CLI arguments."""
    monkeypatch.setattr("sys.argv", ["lit-hc"])


@pytest.fixture(params=VARIANTS, ids=VARIANTS)
def hc(request) -> HCConfig:
    return HCConfig.from_name(request.param)
