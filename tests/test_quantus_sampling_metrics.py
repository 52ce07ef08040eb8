"""faithfulness_correlation, road, sufficiency, infidelity: equal to Quantus 0.6, known answers.

Parity tests run the installed quantus 0.6 on the same model, images and maps. The model is a
small random CNN in float64 (Quantus feeds it float32 images, which the float64 normalisation
promotes, so both sides compute the same float64 logits); the images are synthetic 32 x 32 test
images; the maps are the blurred object masks with distinct tiny offsets (no ties). Random draws
are matched rather than compared in distribution: Quantus draws from numpy's global RNG, so the
tests seed it, replay the same numpy calls in the same order to get Quantus's draws, and feed
them to our batched code.
"""
import numpy as np
import pytest
import torch
from conftest import TINY_DATA
from torch import nn

from interpbench.metrics import METRICS
from interpbench.metrics._quantus_common import pearson
from interpbench.metrics.base import Batch
from interpbench.metrics.faithfulness_correlation import FaithfulnessCorrelation
from interpbench.metrics.region_perturbation import patch_ids
from interpbench.metrics.road import ROAD, linear_imputation
from interpbench.metrics.sufficiency import standardised_distances
from interpbench.zoo.base import ZooModel

QUANTUS_WARNINGS = pytest.mark.filterwarnings("ignore")


class TinyCNN(ZooModel):
    """A small random CNN (32 x 32 inputs) with non-trivial batch-norm statistics, in float64."""

    def __init__(self, channels=3, seed=0):
        super().__init__(num_classes=10, input_size=(channels, 32, 32), mean=(0.5,) * channels,
                         std=(0.25,) * channels)
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.body = nn.Sequential(
                nn.Conv2d(channels, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                nn.Flatten(), nn.Linear(16 * 8 * 8, 10))  # no pooling: the class depends on the image
        for m in self.body:
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3, generator=generator)
                m.running_var.uniform_(0.5, 2.0, generator=generator)
        self.double().eval()

    def forward(self, x):
        return self.body(self.normalize(x))


class LinearModel(ZooModel):
    """Class-1 logit ``sum_{c,h,w} W[h, w] x[c, h, w]``, class-0 logit 0 (float64)."""

    def __init__(self, weight):
        super().__init__(num_classes=2, input_size=(3, *weight.shape))
        self.weight = weight.double()

    def forward(self, x):
        score = (x.double() * self.weight).sum((1, 2, 3))
        return torch.stack([torch.zeros_like(score), score], dim=1)


@pytest.fixture(scope="module")
def data():
    from interpbench.data import load_dataset
    from interpbench.data.base import to_float

    test = load_dataset(TINY_DATA).test
    x = to_float(test.images[:8])
    masks = torch.as_tensor(test.masks[:8]).float()
    blurred = nn.functional.avg_pool2d(masks[:, None], 5, 1, 2, count_include_pad=False)[:, 0]
    offsets = torch.stack([torch.randperm(1024, generator=torch.Generator().manual_seed(i)) for i in range(8)])
    saliency = blurred + 0.01 * offsets.view(8, 32, 32).float() / 1024
    model = TinyCNN()
    with torch.no_grad():
        target = model(x).argmax(1)
    return model, x, torch.as_tensor(test.labels[:8]), saliency, target


def call_quantus(metric, model, x, target, saliency, **reference_args):
    q, kwargs = metric.quantus_reference(**reference_args)
    return q(model=model, x_batch=x.numpy(), y_batch=target.numpy(), a_batch=saliency[:, None].numpy(),
             device="cpu", **kwargs)


# --------------------------------------------------------------------------- faithfulness_correlation

def quantus_subsets(seed, runs, batch_size, features, size):
    """The subsets Quantus 0.6 draws after ``np.random.seed(seed)``: per run, one
    ``choice(features, size, replace=False)`` per image, then the ``uniform(size=B)`` draw its
    baseline lookup makes (unused for "black", but it advances the RNG)."""
    np.random.seed(seed)
    runs_ = []
    for _ in range(runs):
        runs_.append(np.stack([np.random.choice(features, size, replace=False) for _ in range(batch_size)]))
        np.random.uniform(size=batch_size)
    return torch.as_tensor(np.stack(runs_))


@QUANTUS_WARNINGS
@pytest.mark.parametrize("params", [
    {"nr_runs": 30},
    {"nr_runs": 20, "subset_size": 100, "abs": True, "perturb_baseline": "mean"},
])
def test_faithfulness_correlation_equals_quantus_with_its_draws(data, params):
    model, x, y, saliency, target = data
    metric = METRICS.create("faithfulness_correlation", **params)
    size = metric.size_for(x)
    subsets = quantus_subsets(7, params["nr_runs"], 8, 3 * 32 * 32, size)
    ours = metric.correlation(Batch(model, x, y, saliency, target=target), subsets)
    np.random.seed(7)
    theirs = np.asarray(call_quantus(metric, model, x, target, saliency))
    assert np.allclose(ours.numpy(), theirs, atol=1e-5, rtol=0)
    assert ours.std() > 0.05  # the scores differ between images: the comparison has teeth


def test_faithfulness_correlation_is_one_for_the_exact_attribution_of_a_linear_model():
    # Grey images (equal channels) and f = sum W x: removing subset S to the black baseline b
    # drops the logit by sum_S W (x - b), which is the subset's sum of a = W (x - b).
    torch.manual_seed(0)
    weight = torch.randn(16, 16)
    x = torch.rand(4, 1, 16, 16).expand(4, 3, 16, 16).contiguous()
    black = x.flatten(1).min(1).values.view(4, 1, 1)
    exact = weight * (x[:, 0] - black)
    y = torch.ones(4, dtype=torch.long)
    metric = METRICS.create("faithfulness_correlation", nr_runs=10)
    model = LinearModel(weight)
    assert torch.allclose(metric(model, x, y, exact)["score"], torch.ones(4, dtype=torch.float64))
    assert torch.allclose(metric(model, x, y, -exact)["score"], -torch.ones(4, dtype=torch.float64))
    assert metric.higher_is_better


def test_faithfulness_correlation_draws_seeded_subsets_of_the_image_width(data):
    model, x, y, saliency, target = data
    metric = METRICS.create("faithfulness_correlation", nr_runs=5)
    batch = Batch(model, x, y, saliency, target=target)
    subsets = metric.draw_subsets(batch)
    assert subsets.shape == (5, 8, 32)  # default subset size: the image width
    assert all(len(set(row.tolist())) == 32 for row in subsets.reshape(-1, 32))
    assert int(subsets.min()) >= 0 and int(subsets.max()) < 3 * 32 * 32
    assert torch.equal(subsets, metric.draw_subsets(batch))
    assert not torch.equal(subsets, METRICS.create("faithfulness_correlation", nr_runs=5, seed=1).draw_subsets(batch))
    assert metric.size_for(torch.zeros(1, 3, 224, 224)) == 224  # Quantus's default at 224 pixels
    # compute() is correlation() on its own draws, and a second call reuses the cached logits
    scores = metric.compute(batch)["score"]
    assert torch.equal(scores, metric.correlation(batch, subsets))
    seen = batch.forward_images
    assert torch.equal(metric.compute(batch)["score"], scores) and batch.forward_images == seen


def test_pearson_matches_scipy_and_gives_nan_for_a_constant_series():
    from scipy.stats import pearsonr

    a, b = torch.randn(3, 50, dtype=torch.float64), torch.randn(3, 50, dtype=torch.float64)
    expected = [pearsonr(a[i].numpy(), b[i].numpy())[0] for i in range(3)]
    assert np.allclose(pearson(a, b).numpy(), expected, atol=1e-12)
    assert torch.isnan(pearson(torch.ones(1, 5), torch.randn(1, 5))).all()


# --------------------------------------------------------------------------- road

@pytest.mark.parametrize("shape", [(3, 32, 32), (3, 6, 11), (1, 7, 5)])
def test_linear_imputation_equals_quantus_noisy_linear_imputation(shape):
    from quantus.functions.perturb_func import noisy_linear_imputation

    rng = np.random.default_rng(0)
    c, h, w = shape
    x = rng.random((3, c, h, w)).astype(np.float32)
    order = np.argsort(-rng.random((3, h * w)), axis=1)
    for p in (1, 37, 99):
        k = max(1, int(h * w * p / 100))
        removed = np.zeros((3, h * w), bool)
        np.put_along_axis(removed, order[:, :k], True, axis=1)
        ours = linear_imputation(torch.as_tensor(x), torch.as_tensor(removed.reshape(3, h, w)))
        theirs = np.stack([noisy_linear_imputation(x[i], order[i, :k], noise=0.0) for i in range(3)])
        assert np.abs(ours.numpy() - theirs).max() < 1e-6  # theirs is rounded to float32


def test_linear_imputation_known_answers():
    # A linear ramp is its own weighted neighbour mean away from the border (symmetric weights);
    # a constant image stays constant anywhere, the border included.
    h = w = 12
    ramp = (0.3 + 0.05 * torch.arange(w, dtype=torch.float64) + 0.02 * torch.arange(h, dtype=torch.float64).view(-1, 1))
    x = ramp.expand(1, 3, h, w)
    removed = torch.zeros(1, h, w, dtype=torch.bool)
    removed[0, 2:9, 3:10] = True
    assert torch.allclose(linear_imputation(x, removed), x, atol=1e-12)
    everywhere_but_one = torch.ones(1, h, w, dtype=torch.bool)
    everywhere_but_one[0, 5, 5] = False
    assert torch.allclose(linear_imputation(torch.full((1, 3, h, w), 0.7), everywhere_but_one),
                          torch.full((1, 3, h, w), 0.7, dtype=torch.float64), atol=1e-12)
    with pytest.raises(ValueError, match="at least one known pixel"):
        linear_imputation(x, torch.ones(1, h, w, dtype=torch.bool))


@QUANTUS_WARNINGS
def test_quantus_road_fails_on_rgb_images(data):
    # why quantus_reference corrects the ranking: Quantus 0.6 indexes H*W pixels with a ranking
    # of the 3*H*W channel-broadcast attributions
    import quantus

    model, x, _, saliency, target = data
    with pytest.raises(IndexError):
        quantus.ROAD(percentages=[50], disable_warnings=True)(
            model=model, x_batch=x[:2].numpy(), y_batch=target[:2].numpy(),
            a_batch=saliency[:2, None].numpy(), device="cpu")


PERCENTAGES = [1, 9, 25, 50, 75, 91, 99]


class QuantusNoiseROAD(ROAD):
    """Our ROAD fed the noise Quantus draws after ``np.random.seed(seed)``: for each percentage,
    for each image, ``randn(C, k)`` placed on the ``k`` removed pixels in ranking order (the
    metric's own tie rule, ``ties``)."""

    def __init__(self, batch, seed, **params):
        super().__init__(**params)
        order = batch.rank(descending=True, ties=self.ties).argsort(1)  # pixel indices, most salient first
        np.random.seed(seed)
        self.grids = {}
        channels = batch.x.shape[1]
        for k in self.counts(batch.num_pixels):
            grid = torch.zeros(batch.size, channels, batch.num_pixels, dtype=torch.float64)
            for i in range(batch.size):
                grid[i][:, order[i, :k]] = torch.as_tensor(self.noise * np.random.randn(channels, k))
            self.grids[k] = grid.view_as(batch.x)

    def draw_noise(self, k, batch):
        return self.grids[k]


@QUANTUS_WARNINGS
def test_road_pixel_ranking_equals_unmodified_quantus_on_one_channel_images(data):
    # On one-channel images Quantus's ROAD runs as published; the corrected class used for RGB
    # gives the same numbers there, and so does ours with Quantus's noise.
    import quantus

    _, x, y, saliency, _ = data
    model = TinyCNN(channels=1, seed=1)
    grey = x.mean(1, keepdim=True)
    with torch.no_grad():
        target = model(grey).argmax(1)
    metric = METRICS.create("road", percentages=PERCENTAGES)
    np.random.seed(5)
    published = quantus.ROAD(percentages=PERCENTAGES, disable_warnings=True)(
        model=model, x_batch=grey.numpy(), y_batch=target.numpy(), a_batch=saliency[:, None].numpy(), device="cpu")
    np.random.seed(5)
    corrected = call_quantus(metric, model, grey, target, saliency)
    assert corrected == published
    batch = Batch(model, grey, y, saliency, target=target)
    ours = QuantusNoiseROAD(batch, 5, percentages=PERCENTAGES).compute(batch)["curve"].mean(0)
    assert ours.tolist() == pytest.approx([published[p] for p in PERCENTAGES], abs=1e-12)
    assert 0 < ours.min() < ours.max()  # the curve moves: the comparison has teeth


@QUANTUS_WARNINGS
def test_road_equals_quantus_on_rgb_images_with_its_noise(data):
    from quantus.functions.perturb_func import noisy_linear_imputation

    model, x, y, saliency, target = data
    batch = Batch(model, x, y, saliency, target=target)
    metric = QuantusNoiseROAD(batch, 11, percentages=PERCENTAGES)
    out = metric.compute(batch)
    np.random.seed(11)
    theirs = call_quantus(metric, model, x, target, saliency)
    assert out["curve"].mean(0).tolist() == pytest.approx([theirs[p] for p in PERCENTAGES], abs=1e-12)
    assert torch.allclose(out["score"], out["curve"].mean(1))
    # the imputed images themselves, noise included, equal Quantus's
    np.random.seed(11)
    order = np.argsort(-saliency.reshape(8, -1).numpy(), axis=1)
    images = metric.imputed(batch, metric.counts(1024)[:2])
    for step, p in enumerate(PERCENTAGES[:2]):
        k = int(1024 * p / 100)
        expected = np.stack([noisy_linear_imputation(x[i].numpy(), order[i, :k], noise=0.01) for i in range(8)])
        assert np.abs(images[step].numpy() - expected).max() < 1e-6


def test_road_defaults_cache_and_direction(data):
    model, x, y, saliency, target = data
    metric = METRICS.create("road", percentages=[10, 50])
    assert METRICS.create("road").percentages == list(range(1, 100, 2))
    assert metric.counts(1024) == [102, 512] and metric.curve_x == [0.1, 0.5]
    assert metric.higher_is_better is False
    batch = Batch(model, x, y, saliency, target=target)
    first = metric.compute(batch)
    assert batch.forward_images == 16
    # a second list sharing a percentage runs only the new one; same noise, same answers
    other = METRICS.create("road", percentages=[50, 90]).compute(batch)
    assert batch.forward_images == 24
    assert torch.equal(other["curve"][:, 0], first["curve"][:, 1])
    assert set(first["curve"].unique().tolist()) <= {0.0, 1.0}


# --------------------------------------------------------------------------- sufficiency

@QUANTUS_WARNINGS
@pytest.mark.parametrize("params", [{"group_size": 4}, {"group_size": 8, "threshold": 0.8, "abs": False}])
def test_sufficiency_equals_quantus(data, params):
    model, x, y, saliency, target = data
    # maps that fall into look-alike groups, so that neighbourhoods are neither empty nor full
    maps = saliency + torch.tensor([0, 0, 1, 1, 0, 1, 0, 1.0]).view(8, 1, 1) * torch.linspace(0, 1, 1024).view(32, 32)
    maps = maps - 0.4
    metric = METRICS.create("sufficiency", **params)
    ours = metric(model, x, y, maps, target=target)["score"]
    theirs = np.asarray(call_quantus(metric, model, x, target, maps))
    assert np.allclose(ours.numpy(), theirs, atol=1e-12)
    assert len(set(ours.tolist())) > 1


def test_sufficiency_known_answer():
    # Two pairs of identical maps far apart: each image's one neighbour is its twin; the first
    # pair share a predicted class, the second do not.
    class Fixed(ZooModel):
        def __init__(self):
            super().__init__(num_classes=3, input_size=(3, 4, 4))

        def forward(self, x):
            return nn.functional.one_hot(x[:, 0, 0, 0].round().long(), 3).double()

    x = torch.zeros(4, 3, 4, 4)
    x[:, 0, 0, 0] = torch.tensor([0.0, 0.0, 1.0, 2.0])
    a, b = torch.rand(4, 4), torch.rand(4, 4) + 2.0
    maps = torch.stack([a, a, b, b])
    out = METRICS.create("sufficiency")(Fixed(), x, torch.zeros(4, dtype=torch.long), maps)
    assert out["score"].tolist() == [1.0, 1.0, 0.0, 0.0]


def test_standardised_distance_matches_scipy_and_skips_constant_pixels():
    from scipy.spatial.distance import cdist

    maps = torch.rand(6, 20, dtype=torch.float64)
    expected = cdist(maps.numpy(), maps.numpy(), "seuclidean")
    assert np.allclose(standardised_distances(maps).numpy(), expected, atol=1e-12)
    padded = torch.cat([maps, torch.zeros(6, 3, dtype=torch.float64)], 1)  # a constant region
    assert np.allclose(standardised_distances(padded).numpy(), expected, atol=1e-12)
    with np.errstate(all="ignore"):  # scipy divides 0 by 0 there
        assert np.isnan(cdist(padded.numpy(), padded.numpy(), "seuclidean")).all()


# --------------------------------------------------------------------------- infidelity

@QUANTUS_WARNINGS
@pytest.mark.parametrize("params", [
    {},
    {"perturb_patch_sizes": [8, 16], "perturb_baseline": "mean", "normalise": True, "abs": True},
])
def test_infidelity_equals_quantus(data, params):
    model, x, y, saliency, target = data
    metric = METRICS.create("infidelity", **params)
    ours = metric(model, x, y, saliency - 0.3, target=target)["score"]
    theirs = np.asarray(call_quantus(metric, model, x, target, saliency - 0.3))
    assert np.allclose(ours.numpy(), theirs, rtol=1e-5, atol=0)
    assert ours.std() > 0


@pytest.mark.parametrize("size", [16, 18])
def test_infidelity_is_zero_for_the_exact_attribution_of_a_linear_model(size):
    # f = sum W x: replacing patches by b changes the logit by sum over them of W * sum_c (x - b),
    # which a = W predicts exactly, at any step; 18 pixels is not a multiple of the patch size.
    torch.manual_seed(1)
    weight = torch.randn(size, size)
    x = torch.rand(3, 3, size, size)
    y = torch.ones(3, dtype=torch.long)
    model = LinearModel(weight)
    for baseline in ("black", "mean", 0.25):
        metric = METRICS.create("infidelity", perturb_baseline=baseline, perturb_patch_sizes=[4, 5])
        assert torch.allclose(metric(model, x, y, weight.expand(3, -1, -1))["score"], torch.zeros(3, dtype=torch.float64), atol=1e-18 + 1e-9)
        assert (metric(model, x, y, 2 * weight.expand(3, -1, -1))["score"] > 1e-3).all()


def test_patch_index_pads_like_quantus():
    index, patches = patch_ids(6, 7, 4)
    # height 6: padding 2 -> 1 before; width 7: padding 1 -> 0 before (the larger half last)
    assert patches == 4
    assert index[:, 0].tolist() == [0, 0, 0, 2, 2, 2] and index[0].tolist() == [0, 0, 0, 0, 1, 1, 1]


# --------------------------------------------------------------------------- shared

def test_registered_names_and_directions():
    directions = {"faithfulness_correlation": True, "road": False, "sufficiency": True, "infidelity": False}
    for name, higher in directions.items():
        metric = METRICS.create(name)
        assert metric.name == name and metric.higher_is_better is higher and metric.label == name


@pytest.mark.parametrize("name, kwargs, message", [
    ("faithfulness_correlation", {"nr_runs": 1}, "nr_runs must be an integer >= 2 (a correlation needs two runs), got 1"),
    ("faithfulness_correlation", {"perturb_baseline": "grey"},
     "unknown perturb_baseline 'grey'; valid baselines: a number or black, white, mean"),
    ("faithfulness_correlation", {"subset_size": 0}, "subset_size must be a positive number of features or None (the image width), got 0"),
    ("road", {"percentages": [0, 50]}, "percentages must be a non-empty list of numbers in (0, 100); got [0.0, 50.0]"),
    ("road", {"noise": -1}, "noise must be a standard deviation >= 0, got -1"),
    ("sufficiency", {"threshold": -0.1}, "threshold must be a number >= 0 (a share of the largest distance), got -0.1"),
    ("sufficiency", {"group_size": 1}, "group_size must be an integer >= 2 (images compared together), got 1"),
    ("infidelity", {"perturb_patch_sizes": [0]}, "perturb_patch_sizes must be a positive integer or a non-empty list of them, got [0]"),
])
def test_bad_parameters_are_one_line_errors(name, kwargs, message):
    with pytest.raises(ValueError) as error:
        METRICS.create(name, **kwargs)
    assert str(error.value) == message


def test_faithfulness_correlation_subset_must_be_smaller_than_the_image():
    metric = FaithfulnessCorrelation(subset_size=48)
    with pytest.raises(ValueError, match="subset_size 48 must be smaller than the 48 features"):
        metric.size_for(torch.zeros(1, 3, 4, 4))
