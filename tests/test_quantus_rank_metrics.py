"""The rank/region-removal Quantus metrics (pixel_flipping, region_perturbation,
faithfulness_estimate, monotonicity_correlation, irof) and their shared helpers.

Every equality test runs the installed quantus 0.6 metric, configured by the metric's own
``quantus_reference()``, on the same model, images and saliency, and compares the per-image numbers
to 1e-5. Stochastic baselines are matched draw for draw: Quantus draws each uniform fill with
``np.random.uniform(size=...)`` in a fixed order (step by step, and sample by sample within a
step), so the test replaces that function with one that hands out, in that order, the very draws
our metric takes from its seeded torch generator; no test compares in distribution.

The maps here have no ties (the object mask plus noise), so every tie rule (``ties``: the default
``"random"``, ``"index"``, ``"quantus"``) gives Quantus's numbers; on tied maps only ``"quantus"``
does, which ``test_ties.py`` tests on Grad-CAM maps.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from interpbench.data import load_dataset
from interpbench.data.base import to_float
from interpbench.metrics import METRICS
from interpbench.metrics._quantus_common import (
    average_ranks,
    baseline_value,
    pearson,
    preprocess_attributions,
    quantus_numpy_compat,
    spearman,
)
from interpbench.metrics.base import Batch
from interpbench.metrics.pixel_flipping import uniform_draws
from interpbench.zoo.base import ZooModel
from tests.conftest import TINY_DATA

quantus = pytest.importorskip("quantus")
quantus_numpy_compat()


class TinyCNN(ZooModel):
    """A small random CNN (two convolutions, pooled, linear): fast, nonlinear, softmax outputs."""

    def __init__(self, seed: int = 0):
        super().__init__(num_classes=10, input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.25,) * 3)
        torch.manual_seed(seed)
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(32, 10)

    def forward_features(self, x):
        return torch.relu(self.conv2(torch.relu(self.conv1(x))))

    def forward_head(self, features):
        return 3 * self.fc(torch.nn.functional.adaptive_avg_pool2d(features, 2).flatten(1))


@pytest.fixture(scope="module")
def setup():
    """Model, six synthetic test images, their labels, a continuous saliency without ties (the
    object mask plus noise) and the masks."""
    data = load_dataset(dict(TINY_DATA))
    x = to_float(data.test.images[:6])
    y = torch.as_tensor(data.test.labels[:6]).long()
    masks = torch.as_tensor(data.test.masks[:6])
    noise = torch.rand(6, 32, 32, generator=torch.Generator().manual_seed(1))
    return TinyCNN().eval(), x, y, masks.float() + 0.3 * noise, masks


def run_quantus(metric, model, x, y, saliency, **settings):
    reference, kwargs = metric.quantus_reference()
    for name, value in settings.items():
        setattr(reference, name, value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = reference(model=model, x_batch=x.numpy(), y_batch=y.numpy(),
                        a_batch=saliency[:, None].numpy(), device="cpu", **kwargs)
    return out


def feed_uniform(monkeypatch, draws: torch.Tensor) -> list:
    """Make ``np.random.uniform`` return ``draws[i]`` (shape ``size``) at its ``i``-th call."""
    queue = [d.numpy() for d in draws.reshape(-1, draws.shape[-1])]
    used = []

    def uniform(low=0.0, high=1.0, size=None):
        value = queue[len(used)]
        assert value.shape == tuple(np.atleast_1d(size)), (value.shape, size)
        used.append(value)
        return low + (high - low) * value

    monkeypatch.setattr(np.random, "uniform", uniform)
    return used


def trapz(curves) -> np.ndarray:
    return np.array([np.trapezoid(np.asarray(c, dtype=float), dx=1) for c in curves])


# --- the shared helpers ---------------------------------------------------------------------

def test_preprocessing_and_baselines_match_quantus():
    from quantus.functions.normalise_func import normalise_by_max
    from quantus.helpers.utils import get_baseline_value

    a = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for take_abs in (False, True):
        ours = preprocess_attributions(a, normalise=True, abs=take_abs)
        theirs = normalise_by_max(a.numpy())
        theirs = np.abs(theirs) if take_abs else theirs
        np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-12)
    assert torch.equal(preprocess_attributions(torch.zeros(2, 3, 3)), torch.zeros(2, 3, 3))
    per_image = preprocess_attributions(a, per_image=True)
    assert torch.allclose(per_image.flatten(1).abs().amax(1), torch.ones(4, dtype=torch.float64))

    x = torch.rand(3, 3, 5, 5, generator=torch.Generator().manual_seed(2))
    for name in ("black", "white", "mean", 0.25):
        theirs = get_baseline_value(name, x.reshape(3, -1).numpy(), return_shape=(3, 7), batched=True)
        ours = baseline_value(name, x).view(3, 1).expand(3, 7)
        np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-6)
    assert baseline_value("black", x).flatten().tolist() == x.flatten(1).amin(1).tolist()
    assert baseline_value("uniform", x, per_channel=True).shape == (3, 3, 1, 1)
    assert baseline_value("uniform", x).shape == (3, 1, 1, 1)
    with pytest.raises(ValueError, match="valid baselines"):
        baseline_value("grey", x)


def test_correlations_match_scipy():
    from scipy.stats import pearsonr, spearmanr

    g = torch.Generator().manual_seed(3)
    a, b = (torch.randn(5, 12, generator=g, dtype=torch.float64) for _ in range(2))
    a[0, :4] = a[0, 4]  # ties: average ranks
    b[1] = torch.arange(12.0, dtype=torch.float64).flip(0)
    np.testing.assert_allclose(pearson(a, b).numpy(), [pearsonr(u, v)[0] for u, v in zip(a.numpy(), b.numpy())],
                               atol=1e-12)
    np.testing.assert_allclose(spearman(a, b).numpy(), [spearmanr(u, v)[0] for u, v in zip(a.numpy(), b.numpy())],
                               atol=1e-12)
    assert average_ranks(torch.tensor([[3.0, 1.0, 3.0, 2.0]])).tolist() == [[3.5, 1.0, 3.5, 2.0]]
    assert torch.isnan(pearson(torch.ones(1, 4), torch.randn(1, 4))).all()


# --- equality with quantus 0.6 ---------------------------------------------------------------

@pytest.mark.parametrize("ties", ["random", "index", "quantus"])
def test_pixel_flipping_equals_quantus(setup, ties):
    # defaults: zero baseline, one row (32 pixels, 96 of Quantus's per-channel features) per step
    model, x, y, saliency, _ = setup
    assert len(saliency.flatten(1)[0].unique()) == 1024  # no ties: every rule is Quantus's order
    metric = METRICS.create("pixel_flipping", ties=ties)
    out = metric(model, x, y, saliency)
    # quantus_reference returns Quantus's per-image AUCs: our scores (two images suffice here)
    np.testing.assert_allclose(out["score"][:2].numpy(), run_quantus(metric, model, x[:2], y[:2], saliency[:2]),
                               atol=1e-5)
    curves = np.array(run_quantus(metric, model, x, y, saliency, return_auc_per_sample=False))
    assert curves.shape == (6, 32) and out["curve"].shape == (6, 32)
    np.testing.assert_allclose(out["curve"].numpy(), curves, atol=1e-5)
    np.testing.assert_allclose(out["score"].numpy(), trapz(curves), atol=1e-5)
    assert metric.curve_x[0] == pytest.approx(1 / 32) and metric.curve_x[-1] == 1.0


@pytest.mark.parametrize("baseline", ["black", 0.3])
def test_pixel_flipping_other_baselines_equal_quantus(setup, baseline):
    # "black" is each image's minimum (not 0: the first image's is 0.349)
    model, x, y, saliency, _ = setup
    assert baseline_value("black", x)[0].item() > 0.3
    metric = METRICS.create("pixel_flipping", baseline=baseline, features_in_step=64)
    curves = np.array(run_quantus(metric, model, x, y, saliency, return_auc_per_sample=False))
    np.testing.assert_allclose(metric(model, x, y, saliency)["curve"].numpy(), curves, atol=1e-5)


def test_pixel_flipping_uniform_equals_quantus_draw_for_draw(setup, monkeypatch):
    model, x, y, saliency, _ = setup
    metric = METRICS.create("pixel_flipping", baseline="uniform", features_in_step=64, seed=5)
    out = metric(model, x, y, saliency)
    used = feed_uniform(monkeypatch, uniform_draws(5, (16, 6), "cpu"))
    curves = np.array(run_quantus(metric, model, x, y, saliency, return_auc_per_sample=False))
    assert len(used) == 16  # one draw of B values per step, all consumed
    np.testing.assert_allclose(out["curve"].numpy(), curves, atol=1e-5)


def test_pixel_flipping_shares_deletions_forward_passes(setup):
    # zero baseline, one row per step, most salient first: the images deletion to zero evaluates
    model, x, y, saliency, _ = setup
    batch = Batch(model, x, y, saliency)
    METRICS.create("pixel_flipping").compute(batch)
    assert batch.forward_images == 32 * 6
    batch.removal_logits(list(range(0, 1025, 32)), torch.zeros(1, 3, 1, 1), 0.0, descending=True)
    assert batch.forward_images == 33 * 6  # only deletion's untouched point was new


@pytest.mark.parametrize("params", [{}, {"baseline": "black", "order": "lerf", "patch_size": 5,
                                         "regions_evaluation": 500, "ties": "index"},
                                    {"ties": "quantus"}])
def test_region_perturbation_equals_quantus(setup, monkeypatch, params):
    # the default draws one uniform value per image and region; patch 5 pads 32 to 35 (1 | 2)
    model, x, y, saliency, _ = setup
    metric = METRICS.create("region_perturbation", **params)
    out = metric(model, x, y, saliency)
    steps = 49 if "order" in params else 32  # all 7 x 7 patches when regions_evaluation exceeds them
    if "order" not in params:
        feed_uniform(monkeypatch, uniform_draws(0, (steps, 6), "cpu"))
    curves = np.array(run_quantus(metric, model, x, y, saliency))
    assert curves.shape == (6, steps) == tuple(out["curve"].shape)
    np.testing.assert_allclose(out["curve"].numpy(), curves, atol=1e-5)
    np.testing.assert_allclose(out["score"].numpy(), trapz(curves), atol=1e-5)
    assert metric.higher_is_better == (metric.order == "morf")


@pytest.mark.parametrize("baseline", ["black", "uniform"])
def test_faithfulness_estimate_equals_quantus(setup, monkeypatch, baseline):
    model, x, y, saliency, _ = setup
    metric = METRICS.create("faithfulness_estimate", baseline=baseline)
    scores = metric(model, x, y, saliency)["score"]
    if baseline == "uniform":
        feed_uniform(monkeypatch, uniform_draws(0, (32, 1, 6), "cpu"))
    np.testing.assert_allclose(scores.numpy(), run_quantus(metric, model, x, y, saliency), atol=1e-5)


@pytest.mark.parametrize("baseline", ["uniform", "black"])
def test_monotonicity_correlation_equals_quantus(setup, monkeypatch, baseline):
    # saliency with negative values: Quantus ranks and sums absolute values (abs=True)
    model, x, y, saliency, _ = setup
    signed = saliency * torch.where(torch.arange(32) % 2 == 0, 1.0, -1.0)
    metric = METRICS.create("monotonicity_correlation", baseline=baseline, nr_samples=3, features_in_step=64)
    scores = metric(model, x, y, signed)["score"]
    used = feed_uniform(monkeypatch, uniform_draws(0, (16, 3, 6), "cpu"))
    np.testing.assert_allclose(scores.numpy(), run_quantus(metric, model, x, y, signed), atol=1e-5)
    assert len(used) == 48  # Quantus draws for every replacement, even with a fixed baseline


@pytest.mark.parametrize("baseline, images", [("mean", slice(0, 2)), (0.0, slice(2, 3))])
def test_irof_equals_quantus_image_by_image(setup, baseline, images):
    # scores are areas over ~100-point curves (values up to ~50): relative tolerance; Quantus
    # runs one image per batch here (~100 steps each), so few images keep the test fast
    model, x, y, saliency, _ = setup
    x, y, saliency = x[images], y[images], saliency[images]
    metric = METRICS.create("irof", baseline=baseline)
    scores = metric(model, x, y, saliency)["score"]
    np.testing.assert_allclose(scores.numpy(), run_quantus(metric, model, x, y, saliency), rtol=1e-5, atol=1e-4)
    # each image's score is its own: the same on any sub-batch
    assert torch.allclose(metric(model, x[-1:], y[-1:], saliency[-1:])["score"], scores[-1:], atol=1e-5)


# --- known answers and orderings on a hand-built model -----------------------------------------

class QuadrantModel(ZooModel):
    """Class 1 logit = 10 * (mean of the top-left 8 x 8 quadrant's channel 0 - 0.5), class 0 logit 0."""

    def __init__(self):
        super().__init__(num_classes=2, input_size=(3, 16, 16), mean=(0.5,) * 3, std=(1.0,) * 3)

    def forward(self, x):
        score = 10 * (x[:, 0, :8, :8].mean(dim=(1, 2)) - 0.5)
        return torch.stack([torch.zeros_like(score), score], dim=1)


def quadrant_case(n=4):
    x = torch.full((n, 3, 16, 16), 0.2)
    x[:, :, :8, :8] = 1.0
    noise = 0.01 * torch.rand(n, 16, 16, generator=torch.Generator().manual_seed(0))
    oracle = torch.zeros(n, 16, 16)
    oracle[:, :8, :8] = 1.0
    return x, torch.ones(n, dtype=torch.long), oracle + noise, 1.0 - oracle + noise


def test_pixel_flipping_known_curve():
    # 16 pixels per step; the quadrant's 64 pixels go in the first 4 steps (zero baseline):
    # after step k the quadrant mean is (64 - 16k) / 64, then 0.
    x, y, oracle, _ = quadrant_case()
    out = METRICS.create("pixel_flipping")(QuadrantModel(), x, y, oracle)
    kept = torch.tensor([max(64 - 16 * k, 0) / 64 for k in range(1, 17)])
    expected = torch.sigmoid(10 * (kept - 0.5))
    assert torch.allclose(out["curve"], expected.expand(4, -1), atol=1e-6)
    assert torch.allclose(out["score"], (expected.sum() - expected[0] / 2 - expected[-1] / 2).expand(4), atol=1e-5)


@pytest.mark.parametrize("name", ["pixel_flipping", "region_perturbation", "faithfulness_estimate",
                                  "monotonicity_correlation", "irof"])
def test_oracle_beats_the_reversed_map_in_the_metrics_direction(name):
    x, y, oracle, reversed_ = quadrant_case()
    metric = METRICS.create(name)
    good = metric(QuadrantModel(), x, y, oracle)["score"].mean()
    bad = metric(QuadrantModel(), x, y, reversed_)["score"].mean()
    assert (good > bad) if metric.higher_is_better else (good < bad), (good, bad)


# --- registration and errors -------------------------------------------------------------------

def test_registered_names_and_directions():
    expected = {"pixel_flipping": False, "region_perturbation": True, "faithfulness_estimate": True,
                "monotonicity_correlation": True, "irof": True}
    for name, higher in expected.items():
        metric = METRICS.create(name)
        assert metric.name == name and metric.higher_is_better is higher and metric.label == name


@pytest.mark.parametrize("name, params, message", [
    ("pixel_flipping", {"baseline": "grey"}, "valid baselines"),
    ("pixel_flipping", {"baseline": "mean"}, "valid baselines"),
    ("pixel_flipping", {"features_in_step": 0}, "positive integer"),
    ("region_perturbation", {"order": "random"}, "valid orders: morf, lerf"),
    ("region_perturbation", {"patch_size": 2.5}, "positive integer"),
    ("faithfulness_estimate", {"baseline": None}, "valid baselines"),
    ("monotonicity_correlation", {"nr_samples": 0}, "positive integer"),
    ("monotonicity_correlation", {"eps": -1.0}, "non-negative"),
    ("irof", {"baseline": "uniform"}, "valid baselines: a number or mean, black, white"),
    ("pixel_flipping", {"ties": "stable"}, "unknown ties 'stable'; valid tie rules: random, index, quantus"),
    ("region_perturbation", {"ties": None}, "unknown ties None; valid tie rules: random, index, quantus"),
    ("irof", {"ties": "Random"}, "valid tie rules: random, index, quantus"),
])
def test_bad_parameters_are_one_line_errors(name, params, message):
    with pytest.raises(ValueError, match=message) as error:
        METRICS.create(name, **params)
    assert "\n" not in str(error.value)
