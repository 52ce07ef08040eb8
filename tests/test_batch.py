"""The shared batch context: a metric's scores do not depend on how many images go through the
model per forward pass (``Batch.chunk``: 64 on a CPU, 1024 on an accelerator, any number on
request), including the metrics that draw random perturbations group by group."""
import pytest
import torch
from conftest import TINY_DATA
from torch import nn

from interpbench.metrics import METRICS
from interpbench.metrics.base import CPU_CHUNK, DEVICE_CHUNK, Batch
from interpbench.zoo.base import ZooModel


class SmallCNN(ZooModel):
    def __init__(self):
        super().__init__(num_classes=10, input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.25,) * 3)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
        self.double().eval()

    def forward(self, x):
        return self.body(self.normalize(x))


@pytest.fixture(scope="module")
def data():
    from interpbench.data import load_dataset
    from interpbench.data.base import to_float

    test = load_dataset(TINY_DATA).test
    x = to_float(test.images[:6]).double()
    masks = torch.as_tensor(test.masks[:6])
    saliency = masks.double() + torch.rand(6, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return SmallCNN(), x, torch.as_tensor(test.labels[:6]), saliency, masks


def test_the_default_chunk_follows_the_device(data):
    model, x, y, saliency, masks = data
    assert Batch(model, x, y, saliency).chunk == CPU_CHUNK
    assert Batch(model, x, y, saliency, chunk=5).chunk == 5
    assert CPU_CHUNK < DEVICE_CHUNK


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", [n for n in METRICS.list() if not METRICS.create(n).needs_explainer])
def test_scores_do_not_depend_on_the_images_per_forward_pass(data, name):
    model, x, y, saliency, masks = data
    results = {}
    for chunk in (5, 64, 1024):
        batch = Batch(model, x, y, saliency, masks=masks, chunk=chunk)
        results[chunk] = (METRICS.create(name).compute(batch), batch.forward_images)
    reference, forwards = results[1024]
    for chunk in (5, 64):
        other, other_forwards = results[chunk]
        assert other_forwards == forwards, f"chunk {chunk}: {other_forwards} forward images, 1024: {forwards}"
        for key in reference:
            a, b = reference[key], other[key]
            assert torch.allclose(a.double(), b.double(), rtol=1e-9, atol=1e-12, equal_nan=True), (
                f"{name} {key}: chunk {chunk} differs from chunk 1024 by "
                f"{float((a.double() - b.double()).abs().nan_to_num().max()):.3g}")
    assert reference["score"].shape == (6,)
