"""model_randomisation: the rank correlation, the cascade (order, cumulation, seeding), equality
with quantus 0.6's MPRT (same seeds, hence the same random layers), flags and errors."""
import warnings

import numpy as np
import pytest
import scipy.stats
import torch
from conftest import TINY_DATA
from torch import nn

from interpbench.data import load_dataset
from interpbench.data.base import to_float
from interpbench.explainers import EXPLAINERS
from interpbench.metrics import METRICS
from interpbench.metrics._quantus_common import spearman
from interpbench.metrics.model_randomisation import (
    randomisable_layers,
    randomised_models,
)
from interpbench.zoo.base import ZooModel


class TinyNet(ZooModel):
    """conv - BN - ReLU - conv - ReLU - average pool - linear: four layers to randomise."""

    def __init__(self, seed=0):
        super().__init__(num_classes=5, input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.25,) * 3)
        torch.manual_seed(seed)
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.fc = nn.Conv2d(8, 16, 3, padding=1), nn.Linear(16, 5)
        with torch.no_grad():  # batch-norm statistics that are not the identity
            self.bn1.running_mean.uniform_(-0.3, 0.3)
            self.bn1.running_var.uniform_(0.5, 2.0)
            self.bn1.weight.uniform_(0.5, 1.5)
            self.bn1.bias.uniform_(-0.2, 0.2)
        self.eval()

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(self.normalize(x))))
        return self.fc(torch.relu(self.conv2(h)).mean(dim=(2, 3)))

    @property
    def cam_layer(self):
        return self.conv2


def gradient_x_input(model, x, target):
    """A deterministic explainer: gradient times input, summed over channels."""
    with torch.enable_grad():
        x = x.clone().requires_grad_(True)
        grad, = torch.autograd.grad(model(x).gather(1, target.view(-1, 1)).sum(), x)
    return (grad * x).sum(1).detach()


def edges(model, x, target):
    """A model-independent 'explanation': the image's edge magnitude."""
    g = x.mean(1)
    dy = nn.functional.pad((g[:, 1:] - g[:, :-1]).abs(), (0, 0, 0, 1))
    dx = nn.functional.pad((g[:, :, 1:] - g[:, :, :-1]).abs(), (0, 1, 0, 0))
    return dy + dx


@pytest.fixture(scope="module")
def images():
    data = load_dataset(TINY_DATA).test
    return to_float(data.images[:8]).double(), data.labels[:8] % 5


def test_spearman_matches_scipy_with_ties():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (4, 50), generator=g).double()  # many ties
    b = torch.randint(0, 7, (4, 50), generator=g).double()
    ours = spearman(a, b)
    for i in range(4):
        assert float(ours[i]) == pytest.approx(scipy.stats.spearmanr(a[i], b[i])[0], abs=1e-12)
    assert torch.allclose(spearman(a, a), torch.ones(4, dtype=torch.float64))
    assert torch.allclose(spearman(a, -a), -torch.ones(4, dtype=torch.float64))
    constant = torch.zeros(1, 50, dtype=torch.float64)
    assert torch.isnan(spearman(a[:1], constant)).all()
    assert spearman(a[:1], constant, constant=0.0).tolist() == [0.0]


def test_cascade_is_top_down_cumulative_and_seeded():
    model = TinyNet()
    assert [name for name, _ in randomisable_layers(model)] == ["fc", "conv2", "bn1", "conv1"]
    original = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.get_rng_state()
    steps = []
    for name, randomised in randomised_models(model, seed=42):
        steps.append({k: v.clone() for k, v in randomised.state_dict().items()})
    assert torch.equal(torch.get_rng_state(), state)  # the global random state is left as it was
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in original.items())  # a copy was changed
    prefixes = ["fc.", "conv2.", "bn1.", "conv1."]
    for step, params in enumerate(steps, 1):
        changed = {k.split(".")[0] + "." for k, v in params.items() if not torch.equal(v, original[k])}
        assert changed == set(prefixes[:step])
    # each layer is drawn right after seeding with seed + 1, so the draws repeat call to call
    torch.manual_seed(43)
    expected = nn.Linear(16, 5)
    assert torch.equal(steps[0]["fc.weight"], expected.weight.detach())
    assert torch.equal(steps[-1]["bn1.running_var"], torch.ones(8))  # batch norm reset to identity


def test_equals_quantus_mprt(images):
    x, y = images
    model = TinyNet().double()
    saliency = gradient_x_input(model, x, y)
    metric = METRICS.create("model_randomisation")
    out = metric(model, x, y, saliency, explainer=gradient_x_input)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q, kwargs = metric.quantus_reference(gradient_x_input)
        last = q(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=saliency[:, None].numpy(),
                 device="cpu", **kwargs)
        q, kwargs = metric.quantus_reference(gradient_x_input)
        q.return_last_correlation = False
        by_layer = q(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=saliency[:, None].numpy(),
                     device="cpu", **kwargs)
    assert np.abs(out["score"].numpy() - np.asarray(last)).max() < 1e-5
    assert list(by_layer) == ["original", "fc", "conv2", "bn1", "conv1"]
    curve = np.array([by_layer[name] for name in ["fc", "conv2", "bn1", "conv1"]]).T
    assert np.abs(out["curve"].numpy() - curve).max() < 1e-5
    assert metric.curve_x == [1.0, 2.0, 3.0, 4.0]
    assert float(np.std(curve)) > 0.05  # the similarities differ: a real comparison


def test_skip_layers_gives_the_same_score_from_one_explanation(images):
    x, y = images
    model = TinyNet().double()
    saliency = gradient_x_input(model, x, y)
    calls = []

    def counting(model, x, target):
        calls.append(1)
        return gradient_x_input(model, x, target)

    full = METRICS.create("model_randomisation")(model, x, y, saliency, explainer=gradient_x_input)
    metric = METRICS.create("model_randomisation", skip_layers=True)
    quick = metric(model, x, y, saliency, explainer=counting)
    assert len(calls) == 1 and metric.curve_x == [4.0]
    assert torch.allclose(quick["score"], full["score"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q, kwargs = metric.quantus_reference(gradient_x_input)
        theirs = q(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=saliency[:, None].numpy(),
                   device="cpu", **kwargs)
    assert np.abs(quick["score"].numpy() - np.asarray(theirs)).max() < 1e-5


def test_scores_do_not_depend_on_batching(images):
    x, y = images
    model = TinyNet().double()
    saliency = gradient_x_input(model, x, y)
    metric = METRICS.create("model_randomisation")
    whole = metric(model, x, y, saliency, explainer=gradient_x_input)["score"]
    parts = torch.cat([metric(model, x[:3], y[:3], saliency[:3], explainer=gradient_x_input)["score"],
                       metric(model, x[3:], y[3:], saliency[3:], explainer=gradient_x_input)["score"]])
    assert torch.allclose(whole, parts)


def test_a_model_independent_map_is_flagged_and_grad_cam_is_not(images):
    x, y = images
    x = x.float()
    model = TinyNet()
    metric = METRICS.create("model_randomisation", skip_layers=True)
    edge_score = float(metric(model, x, y, edges(model, x, y), explainer=edges)["score"].mean())
    assert edge_score == pytest.approx(1.0)
    assert metric.flag(edge_score) == "explanation barely changes under model randomisation (similarity 1.00)"
    gradcam = EXPLAINERS.create("gradcam")
    cam_score = float(metric(model, x, y, gradcam(model, x, y), explainer=gradcam)["score"].nanmean())
    assert cam_score < 0.3
    assert metric.flag(cam_score) is None
    assert metric.flag(float("nan")) is None
    assert METRICS.create("model_randomisation", flag_above=0.9).flag(0.8) is None


def test_direction_and_needs_explainer():
    metric = METRICS.create("model_randomisation")
    assert metric.higher_is_better is False and metric.needs_explainer is True
    assert metric.curve_x is None  # known once a model has been seen


@pytest.mark.parametrize("kwargs, message", [
    ({"seed": 1.5}, "seed must be an integer, got 1.5"),
    ({"flag_above": 2.0}, "flag_above must be a correlation in [-1, 1], got 2.0"),
])
def test_bad_parameters_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError) as error:
        METRICS.create("model_randomisation", **kwargs)
    assert str(error.value) == message


def test_missing_explainer_is_a_one_line_error():
    model, x = TinyNet(), torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match="^model_randomisation re-explains the images: the batch needs its explainer$"):
        METRICS.create("model_randomisation")(model, x, torch.zeros(1, dtype=torch.long), torch.rand(1, 32, 32))
    with pytest.raises(ValueError, match="pass the explainer"):
        METRICS.create("model_randomisation").quantus_reference()
