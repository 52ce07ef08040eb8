"""Known ordering on every metric: the true object mask, used as a saliency map, beats uniform
noise in the metric's own direction on a model trained on the synthetic shapes.

The model (a small CNN, 2,000 training images, 4 epochs, about 0.9 test accuracy) relies on the
shape; removing the shape's pixels first must hurt its prediction more than removing random
pixels, keeping them must help more, and the mask localises the object by construction.
"""
import pytest
import torch
from conftest import TINY_RECIPE

from interpbench.core import TrainSpec
from interpbench.data import load_dataset
from interpbench.data.base import to_float
from interpbench.engine.train import load_trained
from interpbench.metrics import METRICS

DATA = {"name": "synthetic", "num_train": 2000, "num_test": 200, "image_size": 32, "seed": 0}
NOT_ORDERED = {
    # A sanity check of the explainer, not a score of a given map: the mask and the noise are
    # both model-independent, so neither changes under randomisation.
    "model_randomisation",
    # Average gain and increase count the images whose confidence rises on x * S: few do for either
    # map (5 and 8 of the 64 images for the increase, on one of our machines), and which map wins
    # flips between machines whose CPU kernels train this model to slightly different weights
    # (the mask won where this test was first measured; noise wins, AG 5.81 against 7.24 %, on
    # another). Their values are checked against Quantus-style definitions in test_average_drop.py.
    "average_gain",
    "average_increase",
}
REVERSED = {
    # Measured findings on this data, asserted so that a change shows up. Blacking out the
    # shape leaves its black silhouette on the textured background, which this model still
    # reads, while black noise pixels spread over the image destroy it faster: removal to a
    # zero baseline ranks noise above the true mask (pixel flipping 6.63 against 3.51 with the
    # default random tie-break; ``deletion(baseline=zero)`` likewise), while with the dataset
    # mean as the baseline (deletion's default) the mask wins (0.121 against 0.205).
    "pixel_flipping": "black silhouette of the removed shape stays recognisable",
    # Average drop keeps x * S: the mask keeps about 13 % of the image, noise keeps half of every
    # pixel on average, and AD favours dense maps. The order is close and depends on the images:
    # on these 64 noise wins (80.9 % against 87.2 %), on their first 32 the mask does (80.4 %
    # against 86.1 %).
    "average_drop": "AD favours dense maps; the mask keeps about 13 % of the image",
    # (faithfulness_estimate was listed here while ties went by pixel index: the binary mask's
    # tied pixels then formed groups row by row and noise won, -0.311 against 0.020; with the
    # random tie-break the mask wins, 0.255 against 0.020.)
}


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """The trained model, 64 test images it classifies correctly, the mask and a noise map."""
    dataset = load_dataset(DATA)
    spec = TrainSpec(model="vanilla_cnn", data=DATA, recipe=dict(TINY_RECIPE, epochs=4, lr=0.05, batch_size=32))
    model, record = load_trained(spec, tmp_path_factory.mktemp("store"), dataset, device="cpu")
    assert record["test_accuracy"] > 0.8
    x, y, masks = to_float(dataset.test.images), dataset.test.labels, dataset.test.masks
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    keep = correct.nonzero().squeeze(1)[:64]
    x, y, masks = x[keep], y[keep], masks[keep]
    noise = torch.rand(masks.shape, generator=torch.Generator().manual_seed(0))
    return model, x, y, masks, {"oracle": masks.float(), "random": noise}


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in METRICS.list() if n not in NOT_ORDERED])
def test_the_true_mask_beats_noise_in_the_metrics_direction(scored, name):
    model, x, y, masks, maps = scored
    metric = METRICS.create(name)
    torch.manual_seed(0)
    scores = {}
    for kind, saliency in maps.items():
        torch.manual_seed(0)
        per_image = metric(model, x, y, saliency, target=y, masks=masks)["score"]
        scores[kind] = float(per_image.nanmean())
    better = scores["oracle"] > scores["random"] if metric.higher_is_better else scores["oracle"] < scores["random"]
    direction = "higher" if metric.higher_is_better else "lower"
    if name in REVERSED:
        assert not better, f"{name} now ranks the mask above noise; remove it from REVERSED"
        return
    assert better, f"{name} ({direction} is better): oracle {scores['oracle']:.4f}, random {scores['random']:.4f}"
