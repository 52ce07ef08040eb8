"""Test set-up: an isolated work directory, tiny data, and helpers shared by the tests."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

# Every test works in its own store, never in the user's ~/.cache/interpbench.
os.environ["INTERPBENCH_HOME"] = tempfile.mkdtemp(prefix="interpbench-tests-")
torch.set_num_threads(min(2, os.cpu_count() or 1))

TINY_DATA = {"name": "synthetic", "num_train": 300, "num_test": 100, "image_size": 32, "seed": 0}
TINY_RECIPE = {
    "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.0,
    "batch_size": 50, "epochs": 2, "schedule": "cosine", "warmup_epochs": 0, "augment": "auto",
    "max_train_images": None,
}
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


def calibrate(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """Set every uncentered norm's running variance to the batch's (one training-mode pass with
    momentum 1), so eval-mode activations keep their scale; returns the model in eval mode."""
    from interpbench.zoo.bcos import UncenteredBatchNorm2d

    norms = [m for m in model.modules() if isinstance(m, UncenteredBatchNorm2d)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(x)
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    return model.eval()


def random_fa_cnn(depth=6, channels=20, num_classes=10, seed=0, weight_scale=1.0) -> torch.nn.Module:
    """A random FA-CNN in eval mode with random batch-norm statistics and affine parameters."""
    from interpbench.zoo import create_model

    torch.manual_seed(seed)
    model = create_model("fa_cnn", num_classes=num_classes, depth=depth, channels=channels)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_(1.0, 0.5)
                module.bias.normal_(0.0, 0.5)
            if isinstance(module, torch.nn.Conv2d):
                module.weight.mul_(weight_scale)
    return model.eval()
