"""pixel_removal: known answers on a hand-built model, ordering, ties, batching, errors."""
import pytest
import torch

from interpbench.metrics import METRICS
from interpbench.metrics.pixel_removal import curve_area, saliency_rank
from interpbench.zoo.base import ZooModel


class QuadrantModel(ZooModel):
    """Class 1 iff the mean of the top-left 8x8 quadrant (channel 0) exceeds 0.75, else class 0."""

    def __init__(self):
        super().__init__(num_classes=2, input_size=(3, 16, 16), mean=(0.5,) * 3, std=(1.0,) * 3)

    def forward(self, x):
        score = x[:, 0, :8, :8].mean(dim=(1, 2)) - 0.75
        return torch.stack([torch.zeros_like(score), score], dim=1)


def quadrant_images(n=3):
    x = torch.zeros(n, 3, 16, 16)
    x[:, :, :8, :8] = 1.0
    return x, torch.ones(n, dtype=torch.long)


def oracle_saliency(n=3):
    saliency = torch.zeros(n, 16, 16)
    saliency[:, :8, :8] = 1.0
    return saliency


def test_least_salient_first_known_curve_and_area():
    # 256 pixels, 64 in the quadrant. Removing k = round(f * 256) least salient pixels (baseline
    # 0.5) keeps the quadrant intact up to f = 0.7 (179 px) and at f = 0.8 (205 px: 13 quadrant
    # pixels go, mean 0.898 > 0.75); at f = 0.9 (230 px: 38 go, mean 0.703) the class flips.
    model, (x, y) = QuadrantModel(), quadrant_images()
    out = METRICS.create("pixel_removal")(model, x, y, oracle_saliency())
    assert out["curve"][0].tolist() == [1.0] * 9 + [0.0, 0.0]
    assert torch.allclose(out["score"], torch.full((3,), 0.85, dtype=out["score"].dtype))


def test_most_salient_first_known_curve_and_area():
    # f = 0.1 removes 26 quadrant pixels (mean 0.797, still class 1); f = 0.2 removes 51 (0.60).
    model, (x, y) = QuadrantModel(), quadrant_images()
    metric = METRICS.create("pixel_removal", order="most_salient_first")
    out = metric(model, x, y, oracle_saliency())
    assert out["curve"][0].tolist() == [1.0, 1.0] + [0.0] * 9
    assert torch.allclose(out["score"], torch.full((3,), 0.15, dtype=out["score"].dtype))
    assert metric.higher_is_better is False
    assert METRICS.create("pixel_removal").higher_is_better is True


def test_oracle_beats_random_and_reversed_maps_in_both_orders():
    model, (x, y) = QuadrantModel(), quadrant_images(8)
    random = torch.rand(8, 16, 16, generator=torch.Generator().manual_seed(0))
    least = METRICS.create("pixel_removal")
    most = METRICS.create("pixel_removal", order="most_salient_first")
    oracle, reversed_ = oracle_saliency(8), -oracle_saliency(8)
    assert least(model, x, y, oracle)["score"].mean() > least(model, x, y, random)["score"].mean()
    assert least(model, x, y, random)["score"].mean() > least(model, x, y, reversed_)["score"].mean()
    assert most(model, x, y, oracle)["score"].mean() < most(model, x, y, random)["score"].mean()


def test_zero_baseline_removes_to_black():
    model, (x, y) = QuadrantModel(), quadrant_images()
    # With a zero baseline, removing 10 % of quadrant pixels first (26 px) drops the mean to 0.59.
    out = METRICS.create("pixel_removal", order="most_salient_first", baseline="zero")(model, x, y, oracle_saliency())
    assert out["curve"][0].tolist() == [1.0] + [0.0] * 10


def test_index_ties_go_by_pixel_index_in_both_orders():
    flat = torch.zeros(1, 2, 3)
    assert saliency_rank(flat, descending=False, ties="index").tolist() == [[0, 1, 2, 3, 4, 5]]
    assert saliency_rank(flat, descending=True, ties="index").tolist() == [[0, 1, 2, 3, 4, 5]]
    values = torch.tensor([[[3.0, 1.0, 1.0], [2.0, 0.0, 3.0]]])
    assert saliency_rank(values, descending=False, ties="index").tolist() == [[4, 1, 2, 3, 0, 5]]
    assert saliency_rank(values, descending=True, ties="index").tolist() == [[0, 3, 4, 2, 5, 1]]
    # the default breaks the two ties (1.0 twice, 3.0 twice) at random; the rest is fixed
    for descending, fixed in ((False, {4: 0, 3: 3}), (True, {3: 2, 4: 5})):
        rank = saliency_rank(values, descending=descending)[0].tolist()
        assert sorted(rank) == list(range(6)) and all(rank[p] == r for p, r in fixed.items())


def test_index_ties_reproduce_the_earlier_known_curve():
    # A constant map, least salient first, baseline 0.5: the class holds while fewer than 32 of
    # the 64 quadrant pixels are gone. With "index" the top rows go first: f = 0.2 (51 px: rows
    # 0-2 and 3 pixels of row 3) takes 27 quadrant pixels, f = 0.3 (77 px: rows 0-3 and 13 of
    # row 4) takes 40, and the class flips there, as it did before the random rule existed.
    model, (x, y) = QuadrantModel(), quadrant_images()
    flat = torch.zeros(3, 16, 16)
    out = METRICS.create("pixel_removal", ties="index")(model, x, y, flat)
    assert out["curve"].tolist() == [[1.0] * 3 + [0.0] * 8] * 3
    assert METRICS.create("pixel_removal", ties="index").label == "pixel_removal(ties=index)"
    # The default has no such order: at f = 0.3 the quadrant loses 77 * 64 / 256 = 19.25 pixels
    # on average (hypergeometric, sd 3.4), far from 32, on 64 different images.
    x, y = quadrant_images(64)
    x[:, 1:] = torch.rand(64, 2, 16, 16, generator=torch.Generator().manual_seed(0))  # distinct images
    random = METRICS.create("pixel_removal")(model, x, y, torch.zeros(64, 16, 16))
    assert random["curve"][:, 3].mean() > 0.95


def test_scores_do_not_depend_on_batching():
    model, (x, y) = QuadrantModel(), quadrant_images(6)
    saliency = torch.rand(6, 16, 16, generator=torch.Generator().manual_seed(1))
    metric = METRICS.create("pixel_removal")
    whole = metric(model, x, y, saliency)["score"]
    parts = torch.cat([metric(model, x[:2], y[:2], saliency[:2])["score"],
                       metric(model, x[2:], y[2:], saliency[2:])["score"]])
    assert torch.equal(whole, parts)


def test_curve_area_is_trapezoidal_and_normalised():
    x = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert float(curve_area(torch.ones(1, 11, dtype=torch.float64), x)) == pytest.approx(1.0)
    assert float(curve_area(x.view(1, -1), x)) == pytest.approx(0.5)


def test_label_names_changed_parameters_only():
    assert METRICS.create("pixel_removal").label == "pixel_removal"
    assert METRICS.create("pixel_removal", order="most_salient_first").label == \
        "pixel_removal(order=most_salient_first)"


@pytest.mark.parametrize("kwargs, message", [
    ({"order": "sideways"}, "unknown order 'sideways'; valid orders: least_salient_first, most_salient_first"),
    ({"baseline": "blur"}, "unknown baseline 'blur'; valid baselines: mean, zero"),
    ({"ties": "quantus"}, ("unknown ties 'quantus'; valid tie rules: random, index ('quantus' only on metrics "
                           "that mirror Quantus)")),
])
def test_bad_parameters_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError) as error:
        METRICS.create("pixel_removal", **kwargs)
    assert str(error.value) == message
