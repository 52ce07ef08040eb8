"""FA-CNN: the paper's Theorem 1 (penultimate maps = Grad-CAM) and Theorem 2 (bounded increment)."""
import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam
from conftest import random_fa_cnn

from interpbench.zoo import create_model
from interpbench.zoo.fa_cnn import DampenedLayer, FeatureAlignCNN


@pytest.mark.parametrize("depth, channels, seed", [(6, 20, 0), (9, 30, 1), (3, 10, 2)])
def test_theorem1_gradcam_of_each_class_equals_intrinsic_map_over_hw(depth, channels, seed):
    model = random_fa_cnn(depth, channels, seed=seed)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    intrinsic = model.class_maps(x)  # [B, K, h, w] at the penultimate layer
    h, w = intrinsic.shape[-2:]
    gradcam = LayerGradCam(model, model.cam_layer)
    grad_maps = torch.stack([
        gradcam.attribute(x, target=c, relu_attributions=False).squeeze(1) for c in range(model.num_classes)
    ], dim=1)
    expected = intrinsic / (h * w)
    assert (grad_maps - expected).abs().max() <= 1e-6 * expected.abs().max()
    assert torch.corrcoef(torch.stack([grad_maps.flatten(), expected.flatten()]))[0, 1] > 0.999999
    # Not vacuous: most classes have a non-constant map.
    assert (intrinsic.flatten(2).std(dim=2) > 0).float().mean() > 0.5


def test_theorem1_holds_for_the_explain_api_at_input_resolution():
    model = random_fa_cnn(6, 20, seed=3)
    x = torch.rand(3, 3, 32, 32)
    from interpbench.explainers import EXPLAINERS

    target = torch.tensor([0, 4, 9])
    native = EXPLAINERS.create("native")(model, x, target)
    gradcam = EXPLAINERS.create("gradcam", relu=False)(model, x, target)
    h, w = model.class_maps(x).shape[-2:]
    assert torch.allclose(gradcam * h * w, native, rtol=1e-5, atol=1e-7)


def rescaled_features(model: FeatureAlignCNN, x: torch.Tensor, target_layer: int):
    """S_0 = 0, S_L = (L / N_D) MaxPool_T(X_L) for L <= T (every map at layer T's resolution)."""
    features = model.layer_features(model.normalize(x))
    size = features[target_layer].shape[-1]
    scaled = [torch.zeros_like(F.adaptive_max_pool2d(features[0], size))]
    for layer in range(1, target_layer + 1):
        pooled = F.max_pool2d(features[layer], features[layer].shape[-1] // size)
        scaled.append(layer / model.depth * pooled)
    return scaled


@pytest.mark.parametrize("weight_scale", [1.0, 5.0])
@pytest.mark.parametrize("depth, channels", [(6, 20), (24, 10)])
def test_theorem2_bounded_increment_and_range(depth, channels, weight_scale):
    model = random_fa_cnn(depth, channels, seed=depth, weight_scale=weight_scale)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(7)) * 2.0
    delta = 1.0 / depth
    with torch.no_grad():
        for target_layer in range(1, depth + 1):
            scaled = rescaled_features(model, x, target_layer)
            for layer in range(1, target_layer + 1):
                step = (scaled[layer] - scaled[layer - 1]).abs().max()
                assert step <= delta + 1e-6, (target_layer, layer, float(step))
                assert scaled[layer].min() >= 0.0
                assert scaled[layer].max() <= layer / depth + 1e-6
    # The bound is attained in practice, not vacuous: some step is close to 1 / N_D.
    assert max((scaled[l] - scaled[l - 1]).abs().max() for l in range(1, depth + 1)) > 0.5 * delta


def test_theorem2_recurrence_within_a_stage():
    """Within a stage, S_L = ReLU(S_{L-1} + tanh(F_L(X_{L-1})) / N_D) exactly."""
    model = random_fa_cnn(6, 20, seed=5)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        features = model.layer_features(model.normalize(x))
        for layer in range(2, model.depth + 1):
            if (layer - 1) in model.pool_after:
                continue  # a pool lies between X_{L-1} and X_L
            block = model.layers[layer - 1]
            residual = torch.tanh(block.bn(block.conv(features[layer - 1])))
            previous = (layer - 1) / model.depth * features[layer - 1]
            expected = F.relu(previous + residual / model.depth)
            assert torch.allclose(layer / model.depth * features[layer], expected, atol=1e-6)


def test_pooling_head_probabilities_and_loss():
    model = random_fa_cnn(6, 20, seed=1)
    x = torch.rand(5, 3, 32, 32)
    features = model.forward_features(model.normalize(x))
    expected = features.view(5, 10, 2, *features.shape[-2:]).mean(dim=(2, 3, 4))
    logits = model(x)
    assert torch.allclose(logits, expected, atol=1e-6) and (logits >= 0).all()
    probs = model.probabilities(logits)
    eps = 1e-6
    assert torch.allclose(probs, (logits + eps) / (logits + eps).sum(1, keepdim=True), atol=1e-7)
    labels = torch.tensor([0, 1, 2, 3, 4])
    assert torch.allclose(model.loss(logits, labels), -probs[torch.arange(5), labels].log().mean())


def test_channels_must_be_a_multiple_of_classes():
    with pytest.raises(ValueError, match=r"channels C \(45\) to be a multiple of num_classes \(10\)"):
        create_model("fa_cnn", num_classes=10, channels=45)
    create_model("fa_cnn_linear", num_classes=10, channels=45)  # the linear head has no such need


def test_dampened_and_ordinary_skip_connections():
    torch.manual_seed(0)
    x = torch.rand(2, 4, 8, 8)
    dampened, ordinary = DampenedLayer(4, index=3), DampenedLayer(4, index=3, dampened=False)
    ordinary.load_state_dict(dampened.state_dict())
    dampened.eval(), ordinary.eval()
    residual = dampened.bn(dampened.conv(x))
    assert torch.allclose(dampened(x), F.relu(2 / 3 * x + 1 / 3 * torch.tanh(residual)))
    assert torch.allclose(ordinary(x), F.relu(x + residual))
    assert torch.allclose(DampenedLayer(4, index=1).eval()(x).max() <= 1, torch.tensor(True))


def test_sizes_follow_the_profile():
    cpu, paper = create_model("fa_cnn", num_classes=10), create_model("fa_cnn", num_classes=10, size="paper")
    assert (cpu.depth, cpu.channels) == (9, 30)
    assert (paper.depth, paper.channels) == (24, 200)
    assert create_model("fa_cnn", num_classes=100, size="paper").channels == 600
    assert len(paper.pool_after) == 2 and paper.pool_after == {8, 16}
