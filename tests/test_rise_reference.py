"""RISE and its causal metrics against a step-by-step copy of the reference protocol.

The reference (Petsiuk et al., BMVC 2018; the authors' ``explanations.py``, ``evaluation.py`` and
``Evaluation.ipynb``) works on *normalised* images: RISE multiplies the normalised image by the
masks, deletion replaces pixels by ``torch.zeros_like`` of the normalised image, insertion starts
from the normalised image convolved with ``gkern(11, 5)`` (scipy's ``gaussian_filter`` of an
impulse) with zero padding. Each is written out below, plainly, on a model that takes normalised
images (``forward_head(forward_features(z))``), and compared with ours, which take pixel-space
images and let the model normalise them.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from interpbench.explainers import EXPLAINERS
from interpbench.metrics import METRICS
from interpbench.metrics.insertion_deletion import gaussian_blur, reference_blur, reference_kernel
from interpbench.zoo.base import ZooModel


class SmallNet(ZooModel):
    """conv -> ReLU -> strided conv -> global average pool -> linear, on normalised input."""

    def __init__(self, num_classes=5, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26), seed=0):
        super().__init__(num_classes, mean=mean, std=std)
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, num_classes)

    def forward_features(self, z):
        return torch.relu(self.conv2(torch.relu(self.conv1(z))))

    def forward_head(self, features):
        return 3 * self.fc(features.mean(dim=(2, 3)))


def reference_model(model):
    """The reference's black box: normalised images in, softmax probabilities out."""
    return lambda z: F.softmax(model.forward_head(model.forward_features(z)), dim=1)


def normalised(model, x):
    return (x - model.mean.to(x)) / model.std.to(x)


def gkern(klen, nsig):
    """The reference's kernel: a unit impulse smoothed by scipy's gaussian_filter, on the diagonal
    of a [3, 3, klen, klen] convolution weight (each channel blurred on its own)."""
    gaussian_filter = pytest.importorskip("scipy.ndimage").gaussian_filter
    inp = np.zeros((klen, klen))
    inp[klen // 2, klen // 2] = 1
    k = gaussian_filter(inp, nsig)
    kern = np.zeros((3, 3, klen, klen))
    kern[0, 0] = k
    kern[1, 1] = k
    kern[2, 2] = k
    return torch.from_numpy(kern)


def data(n=3, size=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, dtype=torch.float64, generator=generator)
    saliency = torch.rand(n, size, size, dtype=torch.float64, generator=generator)  # no ties
    return x, saliency


# --- RISE ----------------------------------------------------------------------------------------

def reference_rise(model, x, masks, p1):
    """RISE.forward of the reference, one image at a time: the masks times the normalised image,
    the probabilities of every class, their mask-weighted sum divided by N p1: [B, K, H, W]."""
    black_box = reference_model(model)
    n, h, w = masks.shape
    maps = []
    for image in normalised(model, x):
        stack = torch.mul(masks.view(n, 1, h, w), image)  # [N, 3, H, W]
        p = black_box(stack)  # [N, K]
        sal = torch.matmul(p.transpose(0, 1), masks.view(n, h * w)).view(-1, h, w)
        maps.append(sal / n / p1)
    return torch.stack(maps)


def test_rise_is_the_reference_rise_on_the_normalised_image():
    model = SmallNet().double().eval()
    x, _ = data()
    rise = EXPLAINERS.create("rise", num_masks=40, p=0.4, batch_size=30)  # 10 masks per forward batch
    masks = rise.masks(32, 32).double()
    expected = reference_rise(model, x, masks, 0.4)
    assert torch.allclose(rise.class_maps(model, x), expected, rtol=0, atol=1e-12)
    target = torch.tensor([0, 3, 4])
    assert torch.allclose(rise(model, x, target), expected[torch.arange(3), target], rtol=0, atol=1e-12)
    # the former behaviour, masking in pixel space (masked pixels black), stays reachable and differs
    pixel = EXPLAINERS.create("rise", num_masks=40, p=0.4, space="pixel").class_maps(model, x)
    stack = (x.unsqueeze(1) * masks[None, :, None]).flatten(0, 1)  # [B * N, 3, H, W]
    probs = F.softmax(model(stack), dim=1).view(3, 40, -1)
    assert torch.allclose(pixel, torch.einsum("bnk,nhw->bkhw", probs, masks) / (40 * 0.4), rtol=0, atol=1e-12)
    assert float((pixel - expected).detach().abs().max()) > 1e-2


def test_rise_in_single_precision_is_the_reference_to_rounding():
    model = SmallNet().eval()
    x, _ = data()
    rise = EXPLAINERS.create("rise", num_masks=40)
    masks = rise.masks(32, 32)
    ours = rise.class_maps(model, x.float())
    expected = reference_rise(model, x.float(), masks, 0.5)
    assert torch.allclose(ours, expected, rtol=0, atol=2e-6)


def test_masked_pixels_take_the_dataset_mean():
    model = SmallNet()
    x, _ = data(n=2)
    rise = EXPLAINERS.create("rise")
    masks = torch.stack([torch.zeros(32, 32), torch.ones(32, 32)]).double()
    images = rise.masked_images(model, x, masks).view(2, 2, 3, 32, 32)
    assert torch.equal(images[:, 0], model.mean.double().expand(2, 3, 32, 32))
    assert torch.allclose(images[:, 1], x, rtol=0, atol=1e-15)
    # normalised by the model, the masked image is the normalised image times the mask
    mask = torch.rand(1, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    one = rise.masked_images(model, x, mask)
    assert torch.allclose(normalised(model, one), normalised(model, x) * mask, rtol=0, atol=1e-14)


# --- deletion and insertion ----------------------------------------------------------------------

def test_reference_kernel_is_scipys_gaussian_filter_of_an_impulse():
    for klen, sigma in [(11, 5.0), (11, 1.0), (7, 3.0), (5, 0.5)]:
        assert torch.allclose(reference_kernel(klen, sigma), gkern(klen, sigma)[0, 0], rtol=0, atol=1e-15)
    kernel = reference_kernel()
    # nearly flat: the 41-tap Gaussian folded into 11 taps (1-D weights 0.0880 to 0.0940, a box's
    # are 1/11 = 0.0909), not the sampled 11-tap Gaussian (0.0663 to 0.1094)
    line = kernel[5] / kernel[5, 5].sqrt()
    assert float(kernel.sum()) == pytest.approx(1.0, abs=1e-15)
    assert (float(line.min()), float(line.max())) == pytest.approx((0.087958, 0.093982), abs=1e-6)
    assert (float(kernel.min()), float(kernel.max())) == pytest.approx((0.0077366, 0.0088326), abs=1e-7)
    sampled = torch.exp(-torch.arange(-5, 6, dtype=torch.float64) ** 2 / 50)
    sampled = sampled / sampled.sum()
    assert (float(sampled.min()), float(sampled.max())) == pytest.approx((0.066342, 0.109379), abs=1e-6)


def test_reference_blur_is_the_normalised_image_blurred_with_zero_padding():
    model = SmallNet()
    x, _ = data(n=2)
    ours = reference_blur(x, model.mean, model.std)
    expected = F.conv2d(normalised(model, x), gkern(11, 5), padding=11 // 2)
    assert torch.allclose(normalised(model, ours), expected, rtol=0, atol=1e-14)
    # zero padding in normalised space is padding with the mean: a constant image fades to the
    # mean at the corner, by the kernel's mass inside the image (6 x 6 of 11 x 11 taps)
    flat = torch.full((1, 3, 32, 32), 0.9, dtype=torch.float64)
    blurred = reference_blur(flat, model.mean, model.std)
    inside = float(reference_kernel()[5:, 5:].sum())
    mean = model.mean.double().view(3)
    assert torch.allclose(blurred[0, :, 0, 0], mean + (0.9 - mean) * inside, rtol=0, atol=1e-14)
    assert torch.allclose(blurred[0, :, 16, 16], torch.full((3,), 0.9, dtype=torch.float64), rtol=0, atol=1e-14)


def reference_causal_metric(black_box, image, explanation, mode, step, substrate_fn):
    """CausalMetric.single_run of the reference on one image ``[1, 3, H, W]`` (normalised, for the
    reference's black box): the class is the clean image's top class, pixels change in the order
    ``np.flip(np.argsort(map))``, ``step`` at a time, and the probability is recorded before each
    step and after the last."""
    hw = image.shape[-1] * image.shape[-2]
    c = int(black_box(image).argmax(1))
    n_steps = (hw + step - 1) // step
    if mode == "del":
        start, finish = image.clone(), substrate_fn(image)
    else:
        start, finish = substrate_fn(image), image.clone()
    scores = np.empty(n_steps + 1)
    salient_order = np.flip(np.argsort(explanation.reshape(-1, hw).numpy(), axis=1), axis=-1)
    for i in range(n_steps + 1):
        scores[i] = float(black_box(start)[0, c])
        if i < n_steps:
            coords = torch.from_numpy(salient_order[:, step * i: step * (i + 1)].copy())[0]
            start.view(1, 3, hw)[0, :, coords] = finish.view(1, 3, hw)[0, :, coords]
    auc = (scores.sum() - scores[0] / 2 - scores[-1] / 2) / (scores.shape[0] - 1)
    return auc, scores


@pytest.mark.parametrize("name, mode", [("deletion", "del"), ("insertion", "ins")])
def test_default_substrates_are_the_reference_protocols(name, mode):
    model = SmallNet(seed=2).double().eval()
    x, saliency = data(n=4, seed=5)
    kern = gkern(11, 5)
    substrate = torch.zeros_like if mode == "del" else (lambda z: F.conv2d(z, kern, padding=11 // 2))
    with torch.no_grad():
        predicted = model(x).argmax(1)
        out = METRICS.create(name)(model, x, torch.zeros(4, dtype=torch.long), saliency, target=predicted)
        for i in range(4):
            area, curve = reference_causal_metric(reference_model(model), normalised(model, x[i:i + 1]),
                                                  saliency[i], mode, 32, substrate)
            assert out["curve"][i].numpy() == pytest.approx(curve, abs=1e-12)
            assert float(out["score"][i]) == pytest.approx(area, abs=1e-12)
    assert float(out["curve"].std()) > 1e-2  # the curves move


def test_the_former_substrates_stay_reachable_and_differ():
    """``deletion(baseline=zero)`` and ``insertion(blur=reflect)``: the same loop on pixel-space
    images (the model normalises them), with black pixels and the reflected pixel-space blur."""
    model = SmallNet(seed=2).double().eval()
    x, saliency = data(n=4, seed=5)
    y = torch.zeros(4, dtype=torch.long)
    pixel_box = lambda z: F.softmax(model(z), dim=1)
    with torch.no_grad():
        predicted = model(x).argmax(1)
        for (name, args), mode, substrate in ((("deletion", {"baseline": "zero"}), "del", torch.zeros_like),
                                              (("insertion", {"blur": "reflect"}), "ins", gaussian_blur)):
            former = METRICS.create(name, **args)(model, x, y, saliency, target=predicted)
            default = METRICS.create(name)(model, x, y, saliency, target=predicted)
            for i in range(4):
                area, curve = reference_causal_metric(pixel_box, x[i:i + 1], saliency[i], mode, 32, substrate)
                assert former["curve"][i].numpy() == pytest.approx(curve, abs=1e-12)
                assert float(former["score"][i]) == pytest.approx(area, abs=1e-12)
            assert float((former["score"] - default["score"]).abs().max()) > 1e-5  # agreement is to 1e-12
