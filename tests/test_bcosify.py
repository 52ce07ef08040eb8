"""B-cosification: the converted ResNet reproduces the original at B = 1 (with its biases), and
after the biases are removed and B raised to 2 it is dynamic-linear (the contribution identity).

Tolerances (float32): logits of the B = 1 conversion against the original's 1e-4 absolute plus
1e-4 relative (the weight-norm reparametrisation and the folded batch-norm mean change the
rounding, nothing else); the stem's output 1e-5; contributions against logits 1e-4 absolute plus
1e-4 relative.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import calibrate
from torch import nn

from interpbench.zoo import MODELS, create_model
from interpbench.zoo.bcos import BcosConv2d, UncenteredBatchNorm2d, bcos_layers, set_b
from interpbench.zoo.bcosify import BcosifiedResNet, bcosify

NUM_CLASSES = 10
MEAN, STD = (0.45, 0.5, 0.55), (0.2, 0.25, 0.3)
ATOL, RTOL = 1e-4, 1e-4


@pytest.fixture(scope="module")
def parent():
    """A CPU-size ResNet-18 with non-trivial batch-norm statistics, affine terms and fc bias
    (as a trained one has), normalising with a non-uniform mean and std."""
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=NUM_CLASSES, mean=MEAN, std=STD)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.3)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_(1.0, 0.2)
                module.bias.normal_(0.0, 0.2)
        model.net.fc.bias.normal_(0.0, 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.rand(4, 3, 32, 32)


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_b1_conversion_with_biases_reproduces_the_original_logits(parent, images, loss):
    converted = bcosify(parent, b=1.0, keep_biases=True, loss=loss)
    assert all(layer.b == 1.0 for layer in bcos_layers(converted)) and converted.has_biases
    with torch.no_grad():
        expected, got = parent(images), converted(images)
    assert expected.abs().max() > 0.5  # a real comparison, not of near-zero logits
    assert torch.allclose(got, expected, atol=ATOL, rtol=RTOL)
    assert converted.logit_bias == (pytest.approx(-math.log(NUM_CLASSES - 1)) if loss == "bce" else 0.0)


def test_b1_conversion_with_the_deep_stem_and_max_pool_of_larger_inputs():
    torch.manual_seed(2)
    big = create_model("resnet18", num_classes=NUM_CLASSES, input_size=(3, 72, 72), mean=MEAN, std=STD)
    with torch.no_grad():
        for module in big.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.3)
                module.bias.normal_(0.0, 0.2)
    big.eval()
    assert isinstance(big.net.conv1, nn.Sequential) and isinstance(big.net.maxpool, nn.MaxPool2d)
    converted = bcosify(big)
    assert converted.net.conv1[0].in_channels == 6 and isinstance(converted.net.maxpool, nn.MaxPool2d)
    x = torch.rand(2, 3, 72, 72)
    with torch.no_grad():
        assert torch.allclose(converted(x), big(x), atol=ATOL, rtol=RTOL)


def test_stem_reads_the_complement_encoding_like_the_original_reads_the_normalised_image(parent, images):
    converted = bcosify(parent)
    original = parent.net.conv1.weight
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    stem = converted.net.conv1
    assert isinstance(stem, BcosConv2d) and stem.in_channels == 6
    # [W (1 - m) / s, W (-m) / s], carried as direction and gain
    expected = torch.cat([original * (1 - mean) / std, original * (-mean) / std], dim=1)
    assert torch.allclose(stem.unit_weight() * stem.gain.view(-1, 1, 1, 1), expected, atol=1e-6)
    with torch.no_grad():  # borders included: zero padding means the same in both encodings
        reference = F.conv2d(parent.normalize(images), original, padding=1)
        assert torch.allclose(stem(converted.encode_input(images)), reference, atol=1e-5)


def test_batch_norm_becomes_an_uncentered_scale_plus_the_folded_bias(parent):
    converted = bcosify(parent)
    old, new = parent.net.layer2[0].bn1, converted.net.layer2[0].bn1
    assert isinstance(new, UncenteredBatchNorm2d)
    z = torch.randn(2, old.num_features, 3, 3)
    assert torch.allclose(new(z), old(z), atol=1e-5)
    new.remove_bias()
    assert torch.equal(new(torch.zeros_like(z)), torch.zeros_like(z))


def test_after_removing_biases_and_raising_b_the_contributions_sum_to_the_logits(parent, images):
    converted = bcosify(parent, b=1.0, keep_biases=True)
    converted.remove_biases()
    set_b(converted, 2.0)
    assert not converted.has_biases
    assert not any(name.endswith("bias") for name, _ in converted.named_parameters())
    calibrate(converted, torch.rand(16, 3, 32, 32))
    logits = converted(images)
    assert logits.std() > 1e-2
    for c in range(NUM_CLASSES):
        contributions, same = converted.contributions(images, c)
        assert torch.equal(same, logits.detach())
        assert torch.allclose(contributions.sum(dim=(1, 2, 3)), logits[:, c] - converted.logit_bias,
                              atol=ATOL, rtol=RTOL)
    # ReLU stays: it is positively homogeneous, so the identity holds with it
    assert any(isinstance(m, nn.ReLU) for m in converted.modules())


def test_builder_and_init_from_parent_give_the_finished_conversion_and_reload(parent, images):
    info = MODELS.info("bcosified_resnet18")
    assert info["parent"] == "resnet18" and info["recipe"] == "bcosify"
    torch.manual_seed(3)
    model = create_model("bcosified_resnet18", num_classes=NUM_CLASSES, mean=MEAN, std=STD)
    assert not model.has_biases and all(layer.b == 2.0 for layer in bcos_layers(model))
    model.init_from_parent(parent, None)
    pipeline = bcosify(parent, b=2.0, keep_biases=False)
    assert model.state_dict().keys() == pipeline.state_dict().keys()
    model.eval()
    assert torch.equal(model(images), pipeline(images))
    torch.manual_seed(4)
    fresh = create_model("bcosified_resnet18", num_classes=NUM_CLASSES, mean=MEAN, std=STD)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.eval()(images), model(images))
    head = model.net.fc  # the classifier: a 1x1 B-cos convolution with per-class gains
    assert isinstance(head, BcosConv2d) and head.kernel_size == (1, 1) and head.gain is not None


def test_conversion_rejects_a_parent_it_cannot_convert():
    target = create_model("bcosified_resnet18", num_classes=NUM_CLASSES)
    with pytest.raises(ValueError, match="converts a zoo ResNet") as error:
        target.init_from_parent(create_model("bcos_cnn", num_classes=NUM_CLASSES), None)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match=r"does not match the B-cosified architecture \(widths"):
        target.init_from_parent(create_model("resnet18", num_classes=NUM_CLASSES, size="paper"), None)
    with pytest.raises(ValueError, match=r"arch: parent resnet50 vs resnet18"):
        target.init_from_parent(create_model("resnet50", num_classes=NUM_CLASSES), None)
    with pytest.raises(ValueError, match="B must be a finite number >= 1"):
        bcosify(create_model("resnet18", num_classes=NUM_CLASSES), b=0.0)
    with pytest.raises(ValueError, match="unknown size 'tiny'; valid sizes: cpu, paper"):
        create_model("bcosified_resnet18", size="tiny")
    with pytest.raises(ValueError, match="unknown loss 'l2'; valid losses: bce, ce"):
        create_model("bcosified_resnet18", loss="l2")
    assert isinstance(target, BcosifiedResNet)
