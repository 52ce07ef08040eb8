"""The tie rule of the ranking metrics (``ties``: ``"random"``, ``"index"``, ``"quantus"``).

- No positional bias: on constant maps the default rule removes every image row (pixels, patches,
  segments) at the same mean step, within sampling error; ``"index"`` fails the same test.
- The random tie-break is a function of the image alone: one batch, split batches and a shuffled
  batch give identical ranks and scores.
- ``"quantus"`` equals Quantus 0.6 to 1e-5 on real tied maps: ReLU'd Grad-CAM maps of a zoo model
  (``resnet18`` at 32 x 32, random weights; its Grad-CAM layer is 4 x 4, upsampled to 32 x 32),
  which hold hundreds of tied pixels and zeros each; on those maps ``"index"`` does not.
- ``"index"`` reproduces the earlier numbers (known answers on a hand-built model).
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from interpbench.data import load_dataset
from interpbench.data.base import to_float
from interpbench.explainers import EXPLAINERS
from interpbench.metrics import METRICS
from interpbench.metrics.base import TIES, Batch, saliency_rank
from interpbench.metrics.irof import IROF
from interpbench.metrics.pixel_flipping import uniform_draws
from interpbench.metrics.region_perturbation import RegionPerturbation
from interpbench.zoo import create_model
from interpbench.zoo.base import ZooModel
from tests.conftest import TINY_DATA

quantus = pytest.importorskip("quantus")
from tests.test_quantus_rank_metrics import QuadrantModel, feed_uniform, run_quantus, trapz
from tests.test_quantus_sampling_metrics import QuantusNoiseROAD, call_quantus

RANKING = ("pixel_removal", "insertion", "deletion", "pixel_flipping", "region_perturbation", "irof",
           "monotonicity_correlation", "faithfulness_estimate", "road", "relevance_rank")
QUANTUS_MIRRORED = ("pixel_flipping", "region_perturbation", "irof", "monotonicity_correlation",
                    "faithfulness_estimate", "road", "relevance_rank")


class Blind(ZooModel):
    """Two constant logits: a batch for the ranking tests, which run no forward pass."""

    def __init__(self, size=32):
        super().__init__(num_classes=2, input_size=(3, size, size))
        self.bias = torch.nn.Parameter(torch.zeros(2))

    def forward(self, x):
        return self.bias.expand(x.shape[0], 2)


def noise_images(n, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def z_scores(means, expected, se):
    return (means - expected) / se


# --- no positional bias on constant maps -------------------------------------------------------

def test_constant_map_pixels_have_no_positional_bias():
    # M = 400 images (distinct noise), a constant map: each image's pixel ranks are a random
    # permutation of 0..N-1 (N = 1024). A row (or column) of n = 32 pixels then has a mean rank
    # with expectation (N - 1) / 2 = 511.5 and variance (N^2 - 1) / 12 / n * (N - n) / (N - 1)
    # (sampling without replacement): standard deviation 51.5 per image, 2.57 over M images.
    # Each of the 32 rows and 32 columns must be within 4.5 standard errors, in both orders, and
    # the z-scores must have about unit variance (the draws differ from image to image).
    m, n, size = 400, 32, 32 * 32
    x = noise_images(m)
    batch = Batch(Blind(), x, torch.zeros(m, dtype=torch.long), torch.zeros(m, 32, 32))
    se = ((size ** 2 - 1) / 12 / n * (size - n) / (size - 1) / m) ** 0.5
    for descending in (True, False):
        rank = batch.rank(descending).double().view(m, 32, 32)
        z = torch.cat([z_scores(rank.mean(2).mean(0), (size - 1) / 2, se),    # rows
                       z_scores(rank.mean(1).mean(0), (size - 1) / 2, se)])   # columns
        assert z.abs().max() < 4.5, z
        assert 0.4 < float((z ** 2).mean()) < 1.8, z
        # the same statistic on the old rule: the top row goes first (z about -190)
        index = batch.rank(descending, "index").double().view(m, 32, 32)
        assert z_scores(index.mean(2).mean(0), (size - 1) / 2, se)[0] < -100


def test_constant_map_patches_and_segments_have_no_positional_bias():
    # Patches (region_perturbation, 2 x 2: a 16 x 16 grid of P = 256): each patch row of 16 has
    # a mean position with expectation 127.5 and variance (P^2 - 1) / 12 / 16 * (P - 16) / (P - 1)
    # per image; 300 images. Segments (irof, SLIC): the removal position of each pixel's segment
    # as a fraction of the image's segments, mean 1/2 for every pixel under a random order; a
    # row's mean fraction is compared with 1/2 using the standard error measured over the 100
    # images (pixels of one segment move together, so no closed form). 4.5 standard errors.
    m = 300
    x = noise_images(m, seed=1)
    batch = Batch(Blind(), x, torch.zeros(m, dtype=torch.long), torch.zeros(m, 32, 32))
    p = 256
    se = ((p ** 2 - 1) / 12 / 16 * (p - 16) / (p - 1) / m) ** 0.5
    for order in ("morf", "lerf"):
        position, count = RegionPerturbation(order=order).patch_rank(batch)
        assert count == p
        grid = position[:, ::2, ::2].double()  # one pixel per patch [M, 16, 16]
        z = z_scores(grid.mean(2).mean(0), (p - 1) / 2, se)
        assert z.abs().max() < 4.5, z
        index, _ = RegionPerturbation(order=order, ties="index").patch_rank(batch)
        assert z_scores(index[:, ::2, ::2].double().mean(2).mean(0), (p - 1) / 2, se)[0] < -50

    m = 100
    batch = Batch(Blind(), x[:m], torch.zeros(m, dtype=torch.long), torch.zeros(m, 32, 32))

    def row_z(metric):
        position, count, _ = metric.segment_order(batch)
        assert bool((count >= 4).all())  # SLIC cuts these noise images into about 5 to 20 segments
        fraction = position.double() / (count.double() - 1).view(-1, 1, 1)
        rows = fraction.mean(2)  # [M, 32]
        return (rows.mean(0) - 0.5) / (rows.std(0) / m ** 0.5)

    z = row_z(IROF())
    assert z.abs().max() < 4.5, z
    assert row_z(IROF(ties="index"))[0] < -10  # SLIC labels run from the top left


# --- the random tie-break depends on the image only ---------------------------------------------

def test_random_ties_are_the_same_in_any_batch():
    # six images with heavily tied maps (a coarse 4 x 4 grid of levels 0, 1, 2: a third zero),
    # ranked in one batch, in two batches, and shuffled: identical ranks for every image
    x = noise_images(6, seed=2)
    coarse = torch.randint(0, 3, (6, 1, 4, 4), generator=torch.Generator().manual_seed(3)).float()
    maps = torch.nn.functional.interpolate(coarse, size=(32, 32), mode="nearest")[:, 0]
    y = torch.zeros(6, dtype=torch.long)

    def ranks(idx):
        batch = Batch(Blind(), x[idx], y[idx], maps[idx])
        return {"down": batch.rank(True), "up": batch.rank(False),
                "abs": batch.feature_rank(False, "random", abs=True),
                "patch": RegionPerturbation().patch_rank(batch)[0],
                "segment": IROF().segment_order(batch)[0]}

    whole = ranks(torch.arange(6))
    parts = [ranks(torch.arange(0, 2)), ranks(torch.arange(2, 6))]
    shuffle = torch.tensor([4, 1, 5, 0, 3, 2])
    shuffled = ranks(shuffle)
    for key, value in whole.items():
        assert torch.equal(value, torch.cat([part[key] for part in parts])), key
        assert torch.equal(value[shuffle], shuffled[key]), key
    # ... and the ties are really broken at random: not in index order, values still ordered
    index = Batch(Blind(), x, y, maps).rank(True, "index")
    assert not torch.equal(whole["down"], index)
    ordered = maps.flatten(1).gather(1, whole["down"].argsort(1))
    assert bool((ordered[:, 1:] <= ordered[:, :-1]).all())
    # the same image gets the same order whatever the map (common random numbers)
    flat = Batch(Blind(), x, y, torch.zeros(6, 32, 32))
    assert torch.equal(flat.rank(True), saliency_rank(torch.zeros(6, 32, 32), True, images=x))


def test_random_ties_give_the_same_scores_in_any_batch(gradcam):
    # (region_perturbation's default uniform fills are drawn per batch position, as Quantus's are,
    # so a fixed baseline here)
    model, x, y, maps = gradcam
    for name, params in (("pixel_flipping", {}), ("deletion", {}), ("region_perturbation", {"baseline": "black"})):
        metric = METRICS.create(name, **params)
        whole = metric(model, x, y, maps)["score"]
        parts = torch.cat([metric(model, x[:2], y[:2], maps[:2])["score"],
                           metric(model, x[2:], y[2:], maps[2:])["score"]])
        assert torch.allclose(whole, parts, atol=1e-6), name


def test_the_cache_keeps_tie_rules_apart():
    x, y = quadrant_images(2)
    flat = torch.zeros(2, 16, 16)
    batch = Batch(QuadrantModel(), x, y, flat)
    index = METRICS.create("pixel_flipping", ties="index").compute(batch)
    assert batch.forward_images == 2 * 16
    random = METRICS.create("pixel_flipping").compute(batch)
    assert batch.forward_images == 2 * 32  # its own passes, not the cached index ones
    assert not torch.equal(index["curve"], random["curve"])
    assert not torch.equal(batch.rank(True, "index"), batch.rank(True, "random"))
    METRICS.create("deletion", baseline="zero", step=16).compute(batch)
    assert batch.forward_images == 2 * 33  # the same images as pixel flipping's: only the clean pass


# --- "index" reproduces the earlier numbers --------------------------------------------------------

def quadrant_images(n=4):
    """Images for ``QuadrantModel`` (it reads channel 0): the top-left 8 x 8 quadrant 1, the rest
    0.2, channel 1 noise so that the images differ; labels 1."""
    x = torch.full((n, 3, 16, 16), 0.2)
    x[:, :, :8, :8] = 1.0
    x[:, 1] = torch.rand(n, 16, 16, generator=torch.Generator().manual_seed(0))
    return x, torch.ones(n, dtype=torch.long)


def test_index_ties_reproduce_the_earlier_known_curves():
    # A constant map: "index" removes whole rows in pixel order, 16 pixels (one row) per step,
    # so after step k the quadrant keeps (64 - 8k) / 64 of its pixels (0 from step 8): the class
    # probability is sigmoid(10 * (kept - 0.5)) (zero baseline), as before the random rule.
    x, y = quadrant_images()
    flat = torch.zeros(4, 16, 16)
    out = METRICS.create("pixel_flipping", ties="index")(QuadrantModel(), x, y, flat)
    kept = torch.tensor([max(64 - 8 * k, 0) / 64 for k in range(1, 17)])
    expected = torch.sigmoid(10 * (kept - 0.5))
    assert torch.allclose(out["curve"], expected.expand(4, -1), atol=1e-6)
    # region perturbation, 2 x 2 patches in raster order over the 8 x 8 grid set to 0.2: after t
    # patches the quadrant has lost 4 pixels per patch taken from its 4 x 4 corner of the grid
    metric = METRICS.create("region_perturbation", baseline=0.2, ties="index", regions_evaluation=64)
    out = metric(QuadrantModel(), x, y, flat)
    lost = torch.tensor([4 * sum(1 for p in range(t) if p // 8 < 4 and p % 8 < 4) for t in range(1, 65)])
    mean = (64 - lost + 0.2 * lost) / 64
    clean = torch.sigmoid(torch.tensor(10 * 0.5))
    assert torch.allclose(out["curve"], (clean - torch.sigmoid(10 * (mean - 0.5))).expand(4, -1), atol=1e-6)
    # the default rule spreads the quadrant's removal over the whole curve instead
    random = METRICS.create("pixel_flipping")(QuadrantModel(), x, y, flat)["curve"]
    assert bool((random[:, 3] > expected[3] + 0.2).all())


# --- "quantus" equals Quantus on real tied maps ------------------------------------------------------

@pytest.fixture(scope="module")
def gradcam():
    """``resnet18`` (random weights, seed 0) at 32 x 32, six synthetic test images and their ReLU'd
    Grad-CAM maps (4 x 4 upsampled to 32 x 32); per image, the class whose map is zero on the
    share of pixels nearest 0.4 (a mix of zeros and tied positive values)."""
    data = load_dataset(dict(TINY_DATA))
    x = to_float(data.test.images[:6])
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10).eval()
    shapes = []
    hook = model.cam_layer.register_forward_hook(lambda module, inputs, out: shapes.append(tuple(out.shape[-2:])))
    explainer = EXPLAINERS.create("gradcam")
    every = torch.stack([explainer(model, x, torch.full((6,), c)) for c in range(10)])  # [10, 6, H, W]
    hook.remove()
    assert set(shapes) == {(4, 4)}
    zero_share = (every.flatten(2) == 0).double().mean(2)
    target = (zero_share - 0.4).abs().argmin(0)
    maps = every[target, torch.arange(6)]
    # real ties: pixels whose value another pixel of the map shares, and zeros
    tied = [int(c[c > 1].sum()) for c in (torch.unique(m, return_counts=True)[1] for m in maps.flatten(1))]
    zeros = (maps.flatten(1) == 0).double().mean(1)
    assert np.mean(tied) >= 100 and min(tied) >= 100, tied
    assert bool((zeros >= 0.05).all() and (zeros <= 0.9).all()), zeros
    return model, x, target, maps


def quantus_cases():
    return [
        ("pixel_flipping", {}, None),
        ("pixel_flipping", {"baseline": "uniform", "features_in_step": 64, "seed": 3}, (16, 6)),
        ("region_perturbation", {}, (32, 6)),
        ("region_perturbation", {"baseline": "black", "order": "lerf", "patch_size": 5, "regions_evaluation": 20}, None),
        ("faithfulness_estimate", {}, None),
        ("monotonicity_correlation", {"nr_samples": 2, "features_in_step": 64}, (16, 2, 6)),
    ]


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name, params, draws", quantus_cases())
def test_quantus_rule_equals_quantus_on_gradcam_maps(gradcam, monkeypatch, name, params, draws):
    model, x, y, maps = gradcam
    metric = METRICS.create(name, ties="quantus", **params)
    ours = metric(model, x, y, maps)
    index = METRICS.create(name, ties="index", **params)(model, x, y, maps)
    if draws is not None:
        feed_uniform(monkeypatch, uniform_draws(params.get("seed", 0), draws, "cpu"))
    theirs = run_quantus(metric, model, x, y, maps)
    if name == "region_perturbation":  # Quantus returns the curves
        np.testing.assert_allclose(ours["curve"].numpy(), np.asarray(theirs), atol=1e-5)
        theirs = trapz(theirs)
    np.testing.assert_allclose(ours["score"].numpy(), np.asarray(theirs, dtype=float), atol=1e-5)
    # the rule matters on these maps: index order is off by far more than the tolerance
    assert np.abs(index["score"].numpy() - np.asarray(theirs, dtype=float)).max() > 1e-3


@pytest.mark.filterwarnings("ignore")
def test_quantus_rule_equals_quantus_irof_on_gradcam_maps(gradcam):
    # Quantus's IROF runs one image per call here (~100 segments each): two images. The score
    # sums ~100 float32 probability ratios, so 1e-5 is relative as well as absolute.
    model, x, y, maps = gradcam
    x, y, maps = x[:2], y[:2], maps[:2]
    metric = METRICS.create("irof", ties="quantus")
    ours = metric(model, x, y, maps)["score"].numpy()
    theirs = np.asarray(run_quantus(metric, model, x, y, maps))
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    index = METRICS.create("irof", ties="index")(model, x, y, maps)["score"].numpy()
    assert np.abs(index - theirs).max() > 1e-3


@pytest.mark.filterwarnings("ignore")
def test_quantus_rule_equals_quantus_road_on_gradcam_maps(gradcam):
    # our ROAD fed the noise Quantus draws, placed in the order of the tie rule under test
    model, x, y, maps = gradcam
    percentages = [1, 9, 25, 50, 75, 91, 99]
    batch = Batch(model, x, y, maps, target=y)
    metric = QuantusNoiseROAD(batch, 11, percentages=percentages, ties="quantus")
    ours = metric.compute(batch)["curve"].mean(0)
    np.random.seed(11)
    theirs = call_quantus(metric, model, x, y, maps)
    assert ours.tolist() == pytest.approx([theirs[p] for p in percentages], abs=1e-12)
    # the imputed images themselves differ from those of the index order
    index = QuantusNoiseROAD(batch, 11, percentages=percentages, ties="index")
    counts = metric.counts(1024)[2:4]
    assert not torch.allclose(metric.imputed(batch, counts), index.imputed(batch, counts))


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("sign", ["raw", "abs", "positive"])
def test_quantus_rule_equals_quantus_relevance_rank_on_gradcam_maps(gradcam, sign):
    model, x, y, maps = gradcam
    masks = torch.as_tensor(load_dataset(dict(TINY_DATA)).test.masks[:6])
    metric = METRICS.create("relevance_rank", sign=sign, ties="quantus")
    ours = metric(model, x, y, maps, masks=masks)["score"].numpy()
    reference, kwargs = metric.quantus_reference()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = np.asarray(reference(model=model, x_batch=x.numpy(), y_batch=y.numpy(),
                                      a_batch=maps[:, None].numpy(), s_batch=masks[:, None].numpy(), **kwargs))
    np.testing.assert_allclose(ours, theirs, atol=1e-12)
    index = METRICS.create("relevance_rank", sign=sign, ties="index")(model, x, y, maps, masks=masks)["score"]
    assert np.abs(index.numpy() - theirs).max() > 1e-3


# --- parameters ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", RANKING)
def test_every_ranking_metric_takes_ties_and_keeps_its_label(name):
    assert METRICS.create(name).label == name
    assert METRICS.create(name, ties="index").label == f"{name}(ties=index)"
    valid = TIES if name in QUANTUS_MIRRORED else ("random", "index")
    for ties in valid:
        assert METRICS.create(name, ties=ties).ties == ties
    with pytest.raises(ValueError, match="unknown ties 'sideways'; valid tie rules: " + ", ".join(valid)) as error:
        METRICS.create(name, ties="sideways")
    assert "\n" not in str(error.value)
    if name not in QUANTUS_MIRRORED:
        with pytest.raises(ValueError, match="'quantus' only on metrics that mirror Quantus"):
            METRICS.create(name, ties="quantus")
