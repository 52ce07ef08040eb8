"""average_drop / average_gain / average_increase: known answers on a hand-built model, the
min-max scaling, undefined denominators, one shared forward pass, directions and errors."""
import pytest
import torch

from interpbench.metrics import METRICS
from interpbench.metrics.average_drop import explanation_map_images, minmax
from interpbench.metrics.base import Batch
from interpbench.zoo.base import ZooModel

NAMES = ("average_drop", "average_gain", "average_increase")


class MeanModel(ZooModel):
    """Two classes; L1-normalised probabilities ``[1 - m, m]`` with ``m`` the mean of channel 0."""

    def __init__(self):
        super().__init__(num_classes=2, input_size=(3, 4, 4), mean=(0.5,) * 3, std=(1.0,) * 3)

    def forward(self, x):
        m = x[:, 0].mean(dim=(1, 2))
        return torch.stack([1 - m, m], dim=1)

    def probabilities(self, logits):
        return logits / logits.sum(1, keepdim=True)


def half_map(low=3.0, high=5.0):
    """Left half ``high``, right half ``low``: min-max scaled to 1 on the left, 0 on the right."""
    s = torch.full((4, 4), low, dtype=torch.float64)
    s[:, :2] = high
    return s


def scores(x, saliency, target):
    model = MeanModel().double()
    y = torch.zeros(x.shape[0], dtype=torch.long)
    return {name: METRICS.create(name)(model, x, y, saliency, target=target)["score"] for name in NAMES}


def test_known_drop_gain_and_increase():
    # Channel 0 is 0.5 everywhere: Y = 0.5 for both classes. E keeps the left half only, so
    # m(E) = 0.25: class 1 drops to O = 0.25 (drop 50 %), class 0 rises to O = 0.75
    # (gain (0.75 - 0.5) / (1 - 0.5) = 50 %, an increase).
    x = torch.full((2, 3, 4, 4), 0.5, dtype=torch.float64)
    out = scores(x, torch.stack([half_map(), half_map()]), torch.tensor([1, 0]))
    assert out["average_drop"].tolist() == pytest.approx([50.0, 0.0])
    assert out["average_gain"].tolist() == pytest.approx([0.0, 50.0])
    assert out["average_increase"].tolist() == [0.0, 100.0]
    # the reported values are the means: AD 25 %, AG 25 %, AI 50 %
    assert float(out["average_drop"].mean()) == pytest.approx(25.0)
    assert float(out["average_increase"].mean()) == pytest.approx(50.0)


def test_map_is_min_max_scaled_per_image_and_applied_in_pixel_space():
    saliency = torch.stack([half_map(3.0, 5.0), torch.linspace(-1, 2, 16, dtype=torch.float64).view(4, 4)])
    scaled = minmax(saliency)
    assert scaled[0].tolist() == [[1.0, 1.0, 0.0, 0.0]] * 4
    assert scaled[1].flatten().tolist() == pytest.approx((torch.arange(16) / 15).tolist())
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    batch = Batch(MeanModel().double(), x, torch.zeros(2, dtype=torch.long), saliency)
    assert torch.equal(explanation_map_images(batch), x * scaled.unsqueeze(1))
    # a constant map has no range: it keeps nothing (E is black)
    assert minmax(torch.full((1, 4, 4), 7.0)).abs().sum() == 0


def test_constant_map_makes_a_black_image_a_full_drop():
    x = torch.full((1, 3, 4, 4), 0.5, dtype=torch.float64)
    out = scores(x, torch.full((1, 4, 4), 2.0, dtype=torch.float64), torch.tensor([1]))
    assert out["average_drop"].tolist() == pytest.approx([100.0])


def test_zero_denominators_count_as_zero():
    # Channel 0 all ones: Y = 1 for class 1 (no gain possible), Y = 0 for class 0 (no drop
    # possible); E keeps half the image, O = 0.5 for both.
    x = torch.ones(2, 3, 4, 4, dtype=torch.float64)
    out = scores(x, torch.stack([half_map(), half_map()]), torch.tensor([1, 0]))
    assert out["average_drop"].tolist() == pytest.approx([50.0, 0.0])
    assert out["average_gain"].tolist() == pytest.approx([0.0, 50.0])
    assert out["average_increase"].tolist() == [0.0, 100.0]


def test_the_three_share_one_forward_pass_of_the_map():
    x = torch.rand(3, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    saliency = torch.rand(3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    batch = Batch(MeanModel().double(), x, torch.zeros(3, dtype=torch.long), saliency)
    results = [METRICS.create(name).compute(batch)["score"] for name in NAMES]
    assert batch.forward_images == 2 * 3  # the clean images and E, once for all three
    assert all(r.shape == (3,) for r in results)


def test_oracle_map_drops_less_than_a_reversed_map():
    # The evidence for class 1 is channel 0's brightness; keeping the bright pixels drops less.
    x = torch.rand(6, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    target = torch.ones(6, dtype=torch.long)
    oracle, reversed_ = scores(x, x[:, 0].clone(), target), scores(x, -x[:, 0], target)
    assert float(oracle["average_drop"].mean()) < float(reversed_["average_drop"].mean())


def test_directions():
    assert METRICS.create("average_drop").higher_is_better is False
    assert METRICS.create("average_gain").higher_is_better is True
    assert METRICS.create("average_increase").higher_is_better is True


@pytest.mark.parametrize("name", NAMES)
def test_unknown_argument_is_a_one_line_error(name):
    with pytest.raises(TypeError) as error:
        METRICS.create(name, scale="minmax")
    assert str(error.value) == f"metric '{name}' takes no argument 'scale'; valid arguments: none"
