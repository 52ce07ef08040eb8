"""pointing_game / relevance_mass / relevance_rank: known answers, ties, empty masks, and
equality with quantus 0.6 (PointingGame, RelevanceMassAccuracy, RelevanceRankAccuracy)."""
import warnings

import numpy as np
import pytest
import torch
from conftest import TINY_DATA

from interpbench.data import load_dataset
from interpbench.data.base import to_float
from interpbench.metrics import METRICS
from interpbench.zoo.base import ZooModel

NAMES = ("pointing_game", "relevance_mass", "relevance_rank")


class ConstantModel(ZooModel):
    """Localisation needs no forward pass; the batch still carries a model."""

    def __init__(self, size=4):
        super().__init__(num_classes=2, input_size=(3, size, size))
        self.bias = torch.nn.Parameter(torch.zeros(2))

    def forward(self, x):
        return self.bias.expand(x.shape[0], 2)


def run(name, saliency, masks, **kwargs):
    b, h, w = saliency.shape
    x = torch.zeros(b, 3, h, w)
    return METRICS.create(name, **kwargs)(ConstantModel(h), x, torch.zeros(b, dtype=torch.long),
                                          saliency, masks=masks)["score"]


def square_mask():
    """A 4 x 4 mask with the top-left 2 x 2 square (4 pixels) set."""
    m = torch.zeros(1, 4, 4, dtype=torch.bool)
    m[0, :2, :2] = True
    return m


def test_pointing_game_known_answers_and_ties():
    s = torch.zeros(1, 4, 4)
    s[0, 0, 0] = 2.0
    assert run("pointing_game", s, square_mask()).tolist() == [1.0]
    s[0, 3, 3] = 3.0
    assert run("pointing_game", s, square_mask()).tolist() == [0.0]
    s[0, 1, 1] = 3.0  # a tied maximum inside counts as a hit
    assert run("pointing_game", s, square_mask()).tolist() == [1.0]
    # a strongly negative pixel inside wins only once magnitudes count
    s = torch.full((1, 4, 4), 0.5)
    s[0, 0, 0] = -4.0
    assert run("pointing_game", s.clone(), square_mask()).tolist() == [1.0]  # all but one tie at 0.5...
    s[0, 3, 3] = 1.0
    assert run("pointing_game", s, square_mask()).tolist() == [0.0]
    assert run("pointing_game", s, square_mask(), sign="abs").tolist() == [1.0]


def test_relevance_mass_known_answers():
    s = torch.zeros(1, 4, 4)
    s[0, 0, 0], s[0, 0, 1], s[0, 3, 3], s[0, 2, 2] = 3.0, 1.0, 4.0, -4.0
    # positive part: 4 inside of 8 in all
    assert run("relevance_mass", s, square_mask()).tolist() == [0.5]
    # raw (Quantus's default): 4 inside of 4 in all, the negative pixel cancelling one outside
    assert run("relevance_mass", s, square_mask(), sign="raw").tolist() == [1.0]
    # absolute: 4 of 12
    assert run("relevance_mass", s, square_mask(), sign="abs").tolist() == pytest.approx([1 / 3])
    # no positive saliency at all: undefined
    assert torch.isnan(run("relevance_mass", -s.abs(), square_mask())).all()


def test_relevance_rank_known_answers():
    s = torch.arange(16, dtype=torch.float32).view(1, 4, 4)  # pixel 15 most salient
    # the mask has 4 pixels; the 4 most salient are 12..15 (the bottom row): none inside
    assert run("relevance_rank", s, square_mask()).tolist() == [0.0]
    # reversed: 0, 1, 2, 3 (the top row) are the 4 most salient, 0 and 1 inside
    assert run("relevance_rank", -s, square_mask()).tolist() == [0.5]
    s2 = torch.zeros(1, 4, 4)
    s2[0, 0, 0], s2[0, 3, 3], s2[0, 1, 0] = 5.0, 4.0, 3.0
    # top 4: 5 (in), 4 (out), 3 (in), then the first tied zero by index: pixel 1 (in) -> 3 / 4
    assert run("relevance_rank", s2, square_mask(), ties="index").tolist() == [0.75]
    # the default takes one of the 13 tied zeros at random: 2 of them are inside
    assert run("relevance_rank", s2, square_mask()).tolist()[0] in (0.5, 0.75)


def test_empty_mask_is_nan_and_masks_are_required():
    empty = torch.zeros(1, 4, 4, dtype=torch.bool)
    for name in NAMES:
        assert torch.isnan(run(name, torch.rand(1, 4, 4), empty)).all()
        assert METRICS.create(name).needs_masks is True
        assert METRICS.create(name).higher_is_better is True
        with pytest.raises(ValueError, match=f"metric '{name}' needs ground-truth masks"):
            METRICS.create(name)(ConstantModel(), torch.zeros(1, 3, 4, 4), torch.zeros(1, dtype=torch.long),
                                 torch.rand(1, 4, 4))


def test_oracle_beats_random_on_synthetic_masks():
    data = load_dataset(TINY_DATA).test
    masks = data.masks[:16]
    oracle = masks.float() + 0.01 * torch.rand(16, 32, 32, generator=torch.Generator().manual_seed(0))
    rnd = torch.rand(16, 32, 32, generator=torch.Generator().manual_seed(1))
    for name in NAMES:
        good, bad = run(name, oracle, masks).mean(), run(name, rnd, masks).mean()
        assert float(good) > 0.9 and float(bad) < 0.6, name


@pytest.fixture(scope="module")
def synthetic():
    data = load_dataset(TINY_DATA).test
    x, y, masks = to_float(data.images[:8]), data.labels[:8], data.masks[:8]
    g = torch.Generator().manual_seed(7)
    blurred = torch.nn.functional.avg_pool2d(masks[:, None].float(), 5, 1, 2)[:, 0]
    saliency = torch.cat([torch.rand(4, 32, 32, generator=g) - 0.3,
                          blurred[4:] + 0.2 * torch.randn(4, 32, 32, generator=g)])
    return x, y, masks, saliency


@pytest.mark.parametrize("sign", ["raw", "abs", "positive"])
@pytest.mark.parametrize("name", NAMES)
def test_equals_quantus(synthetic, name, sign):
    x, y, masks, saliency = synthetic
    model = ConstantModel(32).eval()
    metric = METRICS.create(name, sign=sign)
    ours = metric(model, x, y, saliency, masks=masks)["score"]
    q, kwargs = metric.quantus_reference()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = q(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=saliency[:, None].numpy(),
                   s_batch=masks[:, None].numpy(), device="cpu", **kwargs)
    theirs = np.asarray(theirs, dtype=np.float64)
    assert np.abs(ours.numpy() - theirs).max() < 1e-5
    assert len(set(np.round(theirs, 6))) > 1  # the images differ: a real comparison


@pytest.mark.parametrize("name", NAMES)
def test_bad_sign_is_a_one_line_error(name):
    with pytest.raises(ValueError) as error:
        METRICS.create(name, sign="negative")
    assert str(error.value) == "unknown sign 'negative'; valid signs: raw, abs, positive"
