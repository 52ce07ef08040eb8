"""B-cos layers and networks: the layer definitions against explicit formulas, the contribution
identity, explanation mode, MaxOut, and one-line errors.

Tolerances (float32): layer outputs against the explicit per-patch formula 1e-5 absolute
(products of unit vectors and inputs of order 1); contributions against logits 1e-4 absolute
plus 1e-4 relative (a sum over 6 x 32 x 32 terms of a backward pass).
"""
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import calibrate
from torch import nn

from interpbench.zoo import create_model
from interpbench.zoo.bcos import (
    BcosConv2d,
    BcosLinear,
    UncenteredBatchNorm2d,
    bcos_layers,
    set_b,
)
from interpbench.zoo.dynamic import explanation_mode

NUM_CLASSES = 10
ATOL, RTOL = 1e-4, 1e-4


def explicit_bcos_conv(x, weight, b, stride, padding, max_out=1):
    """The definition, patch by patch: unfold, cosine with each unit-norm weight, MaxOut."""
    n, _, h, w = x.shape
    k = weight.shape[-1]
    patches = F.unfold(x, k, padding=padding, stride=stride)  # [N, C k k, L]
    w_hat = weight.flatten(1) / weight.flatten(1).norm(dim=1, keepdim=True)
    linear = torch.einsum("oc,ncl->nol", w_hat, patches)  # [N, O M, L]
    if max_out > 1:
        linear = linear.unflatten(1, (-1, max_out)).amax(dim=2)
    norms = (patches.pow(2).sum(dim=1, keepdim=True) + 1e-6).sqrt()
    out = (linear / norms).abs().pow(b - 1) * linear
    size = (h + 2 * padding - k) // stride + 1
    return out.view(n, -1, size, (w + 2 * padding - k) // stride + 1)


@pytest.fixture
def images():
    torch.manual_seed(0)
    return torch.rand(3, 3, 32, 32)


# --- layers ---------------------------------------------------------------------------------------

def test_bcos_conv_at_b1_is_a_plain_convolution_with_unit_norm_weights():
    torch.manual_seed(0)
    layer = BcosConv2d(6, 8, kernel_size=3, stride=2, padding=1, b=1)
    x = torch.randn(2, 6, 9, 9)
    w_hat = layer.weight / layer.weight.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    expected = F.conv2d(x, w_hat, None, stride=2, padding=1)
    assert torch.allclose(layer(x), expected, atol=1e-6)
    # a linear map: homogeneous and additive
    y = torch.randn(2, 6, 9, 9)
    assert torch.allclose(layer(2.5 * x - y), 2.5 * layer(x) - layer(y), atol=1e-5)


@pytest.mark.parametrize("b, stride, padding", [(2.0, 1, 1), (2.0, 2, 0), (2.5, 1, 1), (1.5, 2, 1)])
def test_bcos_conv_matches_the_per_patch_cosine_definition(b, stride, padding):
    torch.manual_seed(1)
    layer = BcosConv2d(4, 5, kernel_size=3, stride=stride, padding=padding, b=b)
    x = torch.randn(2, 4, 8, 8)
    expected = explicit_bcos_conv(x, layer.weight, b, stride, padding)
    assert torch.allclose(layer(x), expected, atol=1e-5)


def test_maxout_keeps_the_largest_linear_response_before_scaling():
    torch.manual_seed(2)
    layer = BcosConv2d(4, 3, kernel_size=3, padding=1, b=2, max_out=2)
    x = torch.randn(2, 4, 6, 6)
    assert torch.allclose(layer(x), explicit_bcos_conv(x, layer.weight, 2.0, 1, 1, max_out=2), atol=1e-5)
    # Known answer: units w and -w make MaxOut an absolute value, so B = 2 gives lin^2 / ||x||.
    with torch.no_grad():
        layer.weight[1::2] = -layer.weight[0::2]
    single = BcosConv2d(4, 3, kernel_size=3, padding=1, b=1)
    with torch.no_grad():
        single.weight.copy_(layer.weight[0::2])
    linear = single(x)
    norms = (F.conv2d(x.pow(2).sum(1, keepdim=True), torch.ones(1, 1, 3, 3), padding=1) + 1e-6).sqrt()
    out = layer(x)
    assert (out >= 0).all()
    assert torch.allclose(out, linear.pow(2) / norms, atol=1e-5)


@pytest.mark.parametrize("b", [2.0, 3.0])
def test_bcos_linear_known_answers(b):
    layer = BcosLinear(2, 1, b=b)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, 0.0]]))  # unit direction e1, norm 3 (ignored)
    r = 2.0
    angles = torch.tensor([0.0, math.pi / 3, math.pi / 2, math.pi])
    x = r * torch.stack([angles.cos(), angles.sin()], dim=1)
    cos = angles.cos()
    expected = cos.abs().pow(b - 1) * r * cos  # |cos|^(B-1) * (w_hat . x)
    assert torch.allclose(layer(x).squeeze(1), expected, atol=1e-5)
    assert torch.allclose(layer(x).squeeze(1)[1], torch.tensor(r * 0.5 ** b), atol=1e-5)


def test_explanation_mode_detaches_the_dynamic_scale():
    torch.manual_seed(3)
    layer = BcosLinear(5, 1, b=2)
    x = torch.randn(5, requires_grad=True)
    w_hat = layer.weight[0] / layer.weight[0].norm()
    scale = (w_hat @ x).abs() / x.norm()
    with explanation_mode(layer):
        (gradient,) = torch.autograd.grad(layer(x).sum(), x)
    assert torch.allclose(gradient, scale.detach() * w_hat.detach(), atol=1e-6)  # the row W(x)
    (full,) = torch.autograd.grad(layer(x).sum(), x)
    assert not torch.allclose(full, gradient, atol=1e-3)  # the true gradient also moves the scale
    assert layer.explanation_mode is False


def test_uncentered_batch_norm_in_eval_is_a_pure_per_channel_scale():
    norm = UncenteredBatchNorm2d(3)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, -0.5]))
        norm.running_var.copy_(torch.tensor([4.0, 1.0, 0.25]))
    norm.eval()
    x = torch.randn(2, 3, 4, 4)
    expected = x * (norm.weight / (norm.running_var + norm.eps).sqrt()).view(1, 3, 1, 1)
    assert torch.allclose(norm(x), expected, atol=1e-6)
    assert torch.equal(norm(torch.zeros(1, 3, 2, 2)), torch.zeros(1, 3, 2, 2))  # no additive term
    assert torch.allclose(norm(-3 * x), -3 * norm(x), atol=1e-5)
    # training mode: divided by the batch standard deviation, the mean is not subtracted
    norm.train()
    y = torch.randn(4, 3, 5, 5) + 2.0
    std = (y.var(dim=(0, 2, 3), unbiased=False) + norm.eps).sqrt().view(1, 3, 1, 1)
    assert torch.allclose(norm(y), y / std * norm.weight.view(1, 3, 1, 1), atol=1e-5)


# --- networks ---------------------------------------------------------------------------------

@pytest.fixture(params=[("bcos_cnn", {}), ("bcos_cnn", {"loss": "bce", "b": 2.5}), ("bcos_resnet18", {})],
                ids=["bcos_cnn", "bcos_cnn_bce_b2.5", "bcos_resnet18"])
def network(request, images):
    torch.manual_seed(0)
    name, kwargs = request.param
    model = create_model(name, num_classes=NUM_CLASSES, **kwargs)
    return calibrate(model, torch.rand(16, 3, 32, 32))


def test_contributions_sum_to_the_logit_for_every_image_and_class(network, images):
    logits = network(images)
    assert logits.std() > 1e-3  # calibrated: the identity is not checked on near-zero logits
    for c in range(NUM_CLASSES):
        contributions, same_logits = network.contributions(images, c)
        assert contributions.shape == (3, 6, 32, 32)
        assert torch.equal(same_logits, logits.detach())  # explanation mode changes no value
        expected = logits[:, c] - network.logit_bias
        assert torch.allclose(contributions.sum(dim=(1, 2, 3)), expected, atol=ATOL, rtol=RTOL)
    maps = network.explain(images, target=torch.tensor([0, 4, 9]))
    expected = logits[torch.arange(3), torch.tensor([0, 4, 9])] - network.logit_bias
    assert torch.allclose(maps.sum(dim=(1, 2)), expected, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("name, kwargs", [("bcos_cnn", {"max_out": 1}), ("bcos_resnet18", {})])
def test_contributions_are_the_rows_of_the_frozen_linear_map(name, kwargs, images, monkeypatch):
    """The sum identity alone cannot tell a detached scale from an attached one (a bias-free
    B-cos network is positively homogeneous either way); the map itself can. Record every
    dynamic scale at x, replay the recorded scales for another input z: that is the linear map
    W(x), and its gradient must be what explanation mode gives at x."""
    import interpbench.zoo.bcos as bcos_module

    torch.manual_seed(0)
    model = calibrate(create_model(name, num_classes=NUM_CLASSES, **kwargs), torch.rand(16, 3, 32, 32))
    target = 7
    contributions, logits = model.contributions(images, target)
    real, recorded = bcos_module.dynamic_scale, []

    def record(response, inv_norm, b, detach):
        recorded.append(real(response, inv_norm, b, True))
        return recorded[-1]

    monkeypatch.setattr(bcos_module, "dynamic_scale", record)
    encoded = model.encode_input(images)
    with torch.no_grad():
        model.forward_head(model.forward_features(encoded))
    replay = iter(recorded)
    monkeypatch.setattr(bcos_module, "dynamic_scale", lambda *args: next(replay))
    z = torch.randn_like(encoded, requires_grad=True)
    frozen = model.forward_head(model.forward_features(z))[:, target]
    (rows,) = torch.autograd.grad(frozen.sum(), z)
    assert next(replay, None) is None  # every scale replayed once
    assert torch.allclose(contributions, encoded * rows, atol=1e-6, rtol=1e-4)
    # the frozen map is linear: W(x) z is the sum of z times the rows
    assert torch.allclose(frozen.detach() - model.logit_bias, (z * rows).sum(dim=(1, 2, 3)), atol=ATOL, rtol=RTOL)


def test_identity_holds_per_image_in_training_mode_too(images):
    torch.manual_seed(0)
    model = create_model("bcos_cnn", num_classes=NUM_CLASSES).train()
    contributions, logits = model.contributions(images, 2)  # batch statistics, std detached
    assert torch.allclose(contributions.sum(dim=(1, 2, 3)), logits[:, 2] - model.logit_bias,
                          atol=ATOL, rtol=RTOL)


def test_logit_bias_follows_the_loss():
    bce = create_model("bcos_cnn", num_classes=NUM_CLASSES, loss="bce")
    assert bce.logit_bias == pytest.approx(-math.log(NUM_CLASSES - 1))
    logits, labels = torch.zeros(2, NUM_CLASSES) + bce.logit_bias, torch.tensor([0, 3])
    # zero evidence: every sigmoid is 1/K, the BCE of a one-hot target is known
    p = 1.0 / NUM_CLASSES
    known = -(math.log(p) + (NUM_CLASSES - 1) * math.log(1 - p)) / NUM_CLASSES
    assert float(bce.loss(logits, labels)) == pytest.approx(known, rel=1e-5)
    ce = create_model("bcos_cnn", num_classes=NUM_CLASSES)  # CPU size: CE, no bias
    assert ce.config["loss"] == "ce" and ce.logit_bias == 0.0
    assert float(ce.loss(torch.zeros(2, NUM_CLASSES), labels)) == pytest.approx(math.log(NUM_CLASSES), rel=1e-6)
    assert create_model("bcos_cnn", size="paper").config["loss"] == "bce"


def test_b1_network_is_linear_in_the_encoded_input():
    torch.manual_seed(0)
    model = calibrate(create_model("bcos_cnn", num_classes=NUM_CLASSES, b=1, max_out=1),
                      torch.rand(8, 3, 32, 32))
    enc = torch.rand(2, 6, 32, 32), torch.rand(2, 6, 32, 32)
    f = lambda z: model.forward_head(model.forward_features(z)) - model.logit_bias  # noqa: E731
    assert torch.allclose(f(2 * enc[0] - enc[1]), 2 * f(enc[0]) - f(enc[1]), atol=1e-4, rtol=1e-4)


def test_bcos_resnet_keeps_timm_blocks_and_has_no_biases_norm_centering_or_activations():
    model = create_model("bcos_resnet18", num_classes=NUM_CLASSES)
    kinds = {type(m).__name__ for m in model.modules()}
    assert "BasicBlock" in kinds and "ResNet" in kinds  # timm's own code runs the blocks
    assert not kinds & {"Conv2d", "BatchNorm2d", "ReLU", "Linear", "MaxPool2d"}
    assert not any(name.endswith("bias") for name, _ in model.named_parameters())
    assert model.net.conv1.in_channels == 6 and model.net.conv1.kernel_size == (3, 3)
    assert [len(s) for s in (model.net.layer1, model.net.layer2, model.net.layer3, model.net.layer4)] == [2] * 4
    assert model.net.layer4[-1].conv2.out_channels == 128
    assert create_model("bcos_resnet18", size="paper").net.layer4[-1].conv2.out_channels == 512
    big = create_model("bcos_resnet18", num_classes=NUM_CLASSES, input_size=(3, 72, 72))  # ImageNet stem
    assert isinstance(big.net.maxpool, nn.AvgPool2d) and big.net.conv1[0].in_channels == 6
    assert all(layer.b == 2.0 for layer in bcos_layers(model))
    set_b(model, 1.5)
    assert all(layer.b == 1.5 for layer in bcos_layers(model))


def test_cnn_profiles_and_maxout():
    cpu = create_model("bcos_cnn", num_classes=NUM_CLASSES)
    convs = [m for m in cpu.modules() if isinstance(m, BcosConv2d)]
    assert [c.out_channels for c in convs] == [16, 16, 32, 32, 32, 64, 64, 64, NUM_CLASSES]
    assert all(c.max_out == 2 and c.weight.shape[0] == 2 * c.out_channels for c in convs)
    paper = create_model("bcos_cnn", num_classes=NUM_CLASSES, size="paper")
    paper_widths = [m.out_channels for m in paper.modules() if isinstance(m, BcosConv2d)][:8]
    assert paper_widths == [64, 64, 128, 128, 128, 256, 256, 256]


def test_state_dict_reloads_into_a_fresh_builder(images):
    torch.manual_seed(0)
    model = calibrate(create_model("bcos_resnet18", num_classes=NUM_CLASSES), torch.rand(8, 3, 32, 32))
    torch.manual_seed(5)
    fresh = create_model("bcos_resnet18", num_classes=NUM_CLASSES)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.eval()(images), model(images))


@pytest.mark.parametrize("make, message", [
    (lambda: BcosConv2d(4, 4, 3, b=0.5), "B must be a finite number >= 1"),
    (lambda: BcosLinear(4, 4, b=float("nan")), "B must be a finite number >= 1"),
    (lambda: BcosConv2d(4, 4, 3, max_out=0), "max_out must be an integer >= 1"),
    (lambda: BcosConv2d(4, 4, 3, max_out=2, gain=True), "gain and MaxOut cannot be combined"),
    (lambda: BcosConv2d.like(nn.Conv2d(4, 4, 3, groups=2)), "valid: groups=1"),
    (lambda: BcosConv2d.like(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")), "padding_mode='zeros'"),
    (lambda: create_model("bcos_cnn", size="huge"), "unknown size 'huge'; valid sizes: cpu, paper"),
    (lambda: create_model("bcos_resnet18", size="huge"), "unknown size 'huge'; valid sizes: cpu, paper"),
    (lambda: create_model("bcos_cnn", loss="mse"), "unknown loss 'mse'; valid losses: bce, ce"),
    (lambda: set_b(nn.Sequential(), 0), "B must be a finite number >= 1"),
    (lambda: UncenteredBatchNorm2d(3)(torch.zeros(2, 3)), r"expects \[B, C, H, W\] input"),
])
def test_bad_inputs_fail_with_a_one_line_message(make, message):
    with pytest.raises(ValueError, match=message) as error:
        make()
    assert "\n" not in str(error.value)
