"""insertion / deletion (RISE): known curves, the area, the substrates, the shared cache, and
agreement with a per-image, step-by-step loop written after the RISE reference's ``CausalMetric``
for the pixel-space options (``deletion(baseline=zero)``, ``insertion(blur=reflect)``); the
defaults against the reference protocol on normalised images are in test_rise_reference.py."""
import numpy as np
import pytest
import torch
from torch import nn

from interpbench.metrics import METRICS
from interpbench.metrics.base import Batch
from interpbench.metrics.insertion_deletion import gaussian_blur, reference_blur, rise_auc, step_counts
from interpbench.zoo.base import ZooModel


class MeanModel(ZooModel):
    """Two classes; L1-normalised probabilities ``[1 - m, m]`` with ``m`` the mean of channel 0."""

    def __init__(self, size=4, mean=0.0):
        super().__init__(num_classes=2, input_size=(3, size, size), mean=(mean,) * 3, std=(1.0,) * 3)

    def forward(self, x):
        m = x[:, 0].mean(dim=(1, 2))
        return torch.stack([1 - m, m], dim=1)

    def probabilities(self, logits):
        return logits / logits.sum(1, keepdim=True)


class TinyConvNet(ZooModel):
    """A small randomly initialised CNN with a softmax head (fast enough for per-image loops)."""

    def __init__(self, seed=0):
        super().__init__(num_classes=5, input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.25,) * 3)
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        h = torch.relu(self.conv2(torch.relu(self.conv1(self.normalize(x)))))
        return 3 * self.fc(h.mean(dim=(2, 3)))


def ramp_image():
    """A 4 x 4 image whose channel 0 holds 0/15, 1/15, ..., 15/15 in reading order."""
    x = torch.zeros(1, 3, 4, 4, dtype=torch.float64)
    x[0, 0] = torch.arange(16, dtype=torch.float64).view(4, 4) / 15
    return x


def test_deletion_to_black_known_curve_and_area():
    # Removing the 4, 8, 12, 16 brightest pixels (saliency = brightness) leaves the sums
    # 120, 66, 28, 6, 0 (/15) of 16 pixels: p = [0.5, 0.275, 0.11667, 0.025, 0].
    x, metric = ramp_image(), METRICS.create("deletion", baseline="zero")
    out = metric(MeanModel(mean=0.5).double(), x, torch.ones(1, dtype=torch.long), x[:, 0].clone())
    expected = torch.tensor([120, 66, 28, 6, 0], dtype=torch.float64) / 240
    assert torch.allclose(out["curve"][0], expected)
    # RISE area: (sum - first/2 - last/2) / 4 = (220 - 60) / 240 / 4 = 1/6
    assert float(out["score"][0]) == pytest.approx(1 / 6)
    assert metric.curve_x == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert metric.label == "deletion(baseline=zero)"


def test_deletion_to_the_dataset_mean_by_default():
    # Deleted pixels take the model's mean, 0.5 (zero after normalisation, as RISE's zeros_like of
    # the normalised image): the sums become 120 + 15 * 0.5 * k (/15) for k deleted pixels less
    # the deleted values: [120, 66 + 30, 28 + 60, 6 + 90, 0 + 120] / 240.
    x, metric = ramp_image(), METRICS.create("deletion")
    out = metric(MeanModel(mean=0.5).double(), x, torch.ones(1, dtype=torch.long), x[:, 0].clone())
    expected = torch.tensor([120, 96, 88, 96, 120], dtype=torch.float64) / 240
    assert torch.allclose(out["curve"][0], expected)
    assert metric.label == "deletion"


def test_deletion_reads_the_explained_class_not_the_label():
    x = ramp_image()
    metric = METRICS.create("deletion")
    out = metric(MeanModel().double(), x, torch.ones(1, dtype=torch.long), x[:, 0].clone(),
                 target=torch.zeros(1, dtype=torch.long))
    assert torch.allclose(out["curve"][0], 1 - torch.tensor([120, 66, 28, 6, 0], dtype=torch.float64) / 240)


def test_insertion_known_curves_with_both_blurs():
    # The image at the dataset mean is zero after normalisation, so the reference blur (zero padded,
    # in normalised space) keeps it: insertion starts and stays at its probability. A constant
    # image away from the mean fades towards the mean at the borders under the reference blur and
    # keeps its value under the reflected pixel-space blur.
    y = torch.ones(1, dtype=torch.long)
    at_mean = torch.full((1, 3, 8, 8), 0.3, dtype=torch.float64)
    out = METRICS.create("insertion")(MeanModel(8, mean=0.3).double(), at_mean, y, torch.rand(1, 8, 8))
    assert torch.allclose(out["curve"][0], torch.full((9,), 0.3, dtype=torch.float64))
    out = METRICS.create("insertion", blur="reflect")(MeanModel(8).double(), at_mean, y, torch.rand(1, 8, 8))
    assert torch.allclose(out["curve"][0], torch.full((9,), 0.3, dtype=torch.float64))
    out = METRICS.create("insertion")(MeanModel(8).double(), at_mean, y, torch.rand(1, 8, 8))
    assert float(out["curve"][0, 0]) < 0.3 * 0.7 and float(out["curve"][0, -1]) == pytest.approx(0.3)
    # On a ramp the curve moves from the blurred image's mean to the image's, adding the inserted
    # pixels' differences in saliency order, 8 at a time.
    x = torch.zeros(1, 3, 8, 8, dtype=torch.float64)
    x[0, 0] = torch.arange(64, dtype=torch.float64).view(8, 8) / 63
    model = MeanModel(8, mean=0.2).double()
    image = x[0, 0].flatten()
    order = torch.argsort(image, descending=True)
    for blur, blurred in (("reference", reference_blur(x, model.mean, model.std)), ("reflect", gaussian_blur(x))):
        out = METRICS.create("insertion", blur=blur)(model, x, y, x[:, 0].clone())
        blurred = blurred[0, 0].flatten()
        expected = [float((blurred.sum() + (image - blurred)[order[:k]].sum()) / 64) for k in range(0, 65, 8)]
        assert expected[-1] == pytest.approx(0.5)
        assert out["curve"][0].tolist() == pytest.approx(expected)
    # with the reflected blur the brightest pixels come back first into a copy that keeps the
    # image's mean, so the curve overshoots it; the reference copy is pulled towards the dataset
    # mean (0.2) at the borders and starts lower
    assert expected[1] > 0.51 and out["curve"][0, 0] == pytest.approx(0.5)
    reference = METRICS.create("insertion")(model, x, y, x[:, 0].clone())["curve"][0]
    assert float(reference[0]) < 0.45
    assert METRICS.create("insertion").higher_is_better is True
    assert METRICS.create("deletion").higher_is_better is False
    assert METRICS.create("insertion").label == "insertion"
    assert METRICS.create("insertion", blur="reflect").label == "insertion(blur=reflect)"


def test_blur_is_a_normalised_gaussian_with_reflected_borders():
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    d = torch.arange(11, dtype=torch.float64) - 5
    k = torch.exp(-d ** 2 / (2 * 5.0 ** 2))
    k = k / k.sum()
    padded = torch.nn.functional.pad(x, (5, 5, 5, 5), mode="reflect")
    rows = torch.nn.functional.conv2d(padded.reshape(-1, 1, 42, 42), k.view(1, 1, 11, 1))
    both = torch.nn.functional.conv2d(rows, k.view(1, 1, 1, 11)).reshape(2, 3, 32, 32)
    assert torch.allclose(gaussian_blur(x), both, atol=1e-6)


def test_area_formula_and_step_counts():
    assert rise_auc(torch.ones(1, 5)).tolist() == [1.0]
    assert rise_auc(torch.linspace(1, 0, 33).view(1, -1)).tolist() == pytest.approx([0.5])
    # (1 + 0 + 1 - 0.5 - 0.5) / 2
    assert rise_auc(torch.tensor([[1.0, 0.0, 1.0]])).tolist() == [0.5]
    assert step_counts(1024, 32) == list(range(0, 1025, 32))
    assert step_counts(10, 4) == [0, 4, 8, 10]  # the last step takes what is left, as in RISE


def test_step_defaults_to_the_image_width():
    model = TinyConvNet()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    saliency = torch.rand(2, 32, 32, generator=torch.Generator().manual_seed(2))
    out = METRICS.create("deletion")(model, x, torch.zeros(2, dtype=torch.long), saliency)
    assert out["curve"].shape == (2, 33)
    out = METRICS.create("deletion", step=256)(model, x, torch.zeros(2, dtype=torch.long), saliency)
    assert out["curve"].shape == (2, 5)
    assert METRICS.create("deletion", step=256).label == "deletion(step=256)"


def test_deletion_shares_its_forward_passes_with_the_same_removals():
    model = TinyConvNet()
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    saliency = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(2))
    batch = Batch(model, x, torch.zeros(3, dtype=torch.long), saliency)
    METRICS.create("deletion").compute(batch)
    assert batch.forward_images == 3 * 33  # the clean image and 32 steps
    # removal to the dataset mean (pixel removal's "mean"), one row per step, in the same order: no new pass
    counts = step_counts(1024, 32)
    removed = batch.removal_logits(counts, model.mean, "mean", descending=True)
    assert batch.forward_images == 3 * 33 and removed.shape == (33, 3, 5)
    # deletion to black is other images (32 new passes), which pixel flipping to zero then shares
    METRICS.create("deletion", baseline="zero").compute(batch)
    assert batch.forward_images == 3 * 65
    flipped = batch.removal_logits(counts, torch.zeros(1, 3, 1, 1), 0.0, descending=True)
    assert batch.forward_images == 3 * 65 and not torch.allclose(flipped, removed)
    # insertion reuses the clean pass (its last point) and adds its 32 blurred images per blur
    METRICS.create("insertion").compute(batch)
    assert batch.forward_images == 3 * 97
    METRICS.create("insertion", blur="reflect").compute(batch)
    assert batch.forward_images == 3 * 129
    # a coarser deletion's counts are a subset: nothing new
    METRICS.create("deletion", step=64).compute(batch)
    assert batch.forward_images == 3 * 129


def rise_causal_metric(model, image, explanation, mode, step, substrate):
    """One image, step by step, after the RISE reference's ``CausalMetric.single_run``:
    the class is the clean image's prediction, pixels go in order of decreasing saliency."""
    hw = image.shape[-1] * image.shape[-2]
    with torch.no_grad():
        c = int(model(image).argmax(1))
        if mode == "del":
            start, finish = image.clone(), substrate(image)
        else:
            start, finish = substrate(image), image.clone()
        n_steps = (hw + step - 1) // step
        scores = np.empty(n_steps + 1)
        salient_order = np.flip(np.argsort(explanation.reshape(-1, hw).numpy(), axis=1), axis=-1)
        for i in range(n_steps + 1):
            scores[i] = float(model.probabilities(model(start))[0, c])
            if i < n_steps:
                coords = torch.from_numpy(salient_order[0, step * i: step * (i + 1)].copy())
                flat_start, flat_finish = start.view(1, 3, hw), finish.view(1, 3, hw)
                flat_start[0, :, coords] = flat_finish[0, :, coords]
    return (scores.sum() - scores[0] / 2 - scores[-1] / 2) / (scores.shape[0] - 1), scores


@pytest.mark.parametrize("name, args, mode", [("deletion", {"baseline": "zero"}, "del"),
                                              ("insertion", {"blur": "reflect"}, "ins")])
def test_pixel_space_options_agree_with_a_per_image_rise_loop(name, args, mode):
    model = TinyConvNet(seed=3).double().eval()
    x = torch.rand(4, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    saliency = torch.rand(4, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        predicted = model(x).argmax(1)
    substrate = torch.zeros_like if mode == "del" else gaussian_blur
    out = METRICS.create(name, **args)(model, x, torch.zeros(4, dtype=torch.long), saliency, target=predicted)
    for i in range(4):
        area, curve = rise_causal_metric(model, x[i:i + 1], saliency[i], mode, 32, substrate)
        assert out["curve"][i].numpy() == pytest.approx(curve, abs=1e-9)
        assert float(out["score"][i]) == pytest.approx(area, abs=1e-9)
    # and the curves are not trivial
    assert float(out["curve"].std()) > 1e-3


def test_oracle_beats_random_on_a_hand_built_model():
    x = torch.rand(4, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    oracle, rnd = x[:, 0].clone(), torch.rand(4, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y, model = torch.ones(4, dtype=torch.long), MeanModel(8).double()
    deletion, insertion = METRICS.create("deletion"), METRICS.create("insertion")
    assert bool((deletion(model, x, y, oracle)["score"] < deletion(model, x, y, rnd)["score"]).all())
    assert bool((insertion(model, x, y, oracle)["score"] > insertion(model, x, y, rnd)["score"]).all())


@pytest.mark.parametrize("step", [0, -3, 2.5, True])
def test_bad_step_is_a_one_line_error(step):
    with pytest.raises(ValueError) as error:
        METRICS.create("deletion", step=step)
    assert str(error.value) == f"step must be a positive number of pixels or None (the image width), got {step!r}"


def test_images_too_small_for_the_reflected_blur_are_a_one_line_error():
    x, y, saliency = torch.rand(1, 3, 4, 4), torch.ones(1, dtype=torch.long), torch.rand(1, 4, 4)
    with pytest.raises(ValueError) as error:
        METRICS.create("insertion", blur="reflect")(MeanModel(4), x, y, saliency)
    assert str(error.value) == ("insertion's reflect blur has an 11-pixel kernel: images need at least "
                                "6 x 6 pixels, got 4 x 4")
    # the reference blur pads with zeros (the mean, 0 here): any size works. Each of the 16 pixels
    # of the copy takes about 1/121 of every pixel (the kernel is nearly an 11 x 11 box), so the
    # copy keeps about 16/121 of the image's sum; the model reads channel 0's mean of it
    out = METRICS.create("insertion")(MeanModel(4), x, y, saliency)
    blurred = reference_blur(x, MeanModel(4).mean, MeanModel(4).std)
    assert float(out["curve"][0, 0]) == pytest.approx(float(blurred[0, 0].mean()), abs=1e-6)
    assert float(blurred[0, 0].sum()) == pytest.approx(float(x[0, 0].sum()) * 16 / 121, rel=0.05)


def test_bad_deletion_baseline_and_blur_are_one_line_errors():
    with pytest.raises(ValueError) as error:
        METRICS.create("deletion", baseline="blur")
    assert str(error.value) == "unknown baseline 'blur'; valid baselines: mean, zero"
    with pytest.raises(ValueError) as error:
        METRICS.create("insertion", blur="gaussian")
    assert str(error.value) == "unknown blur 'gaussian'; valid blurs: reference, reflect"
