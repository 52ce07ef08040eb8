"""Explainers: Grad-CAM against captum, native applicability, seeded random maps."""
import torch
from captum.attr import LayerGradCam

from interpbench.explainers import EXPLAINERS
from interpbench.zoo import create_model
from interpbench.zoo.base import upsample


def test_gradcam_is_captum_layer_gradcam_with_relu_upsampled():
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10).eval()
    x, target = torch.rand(3, 3, 32, 32), torch.tensor([1, 2, 3])
    maps = EXPLAINERS.create("gradcam")(model, x, target)
    reference = LayerGradCam(model, model.net.layer4).attribute(x, target=target).clamp_min(0)
    expected = torch.nn.functional.interpolate(reference, size=(32, 32), mode="bilinear", align_corners=False)
    assert maps.shape == (3, 32, 32)
    assert torch.allclose(maps, expected.squeeze(1), atol=1e-7)
    assert (maps >= 0).all() and maps.abs().sum() > 0


def test_native_applies_only_to_models_that_explain_themselves():
    native = EXPLAINERS.create("native")
    assert native.applies_to(create_model("fa_cnn"))
    assert not native.applies_to(create_model("fa_cnn_linear"))
    assert not native.applies_to(create_model("resnet18"))


def test_native_at_a_hidden_layer_averages_that_layers_class_channels():
    torch.manual_seed(0)
    model = create_model("fa_cnn", num_classes=10, depth=6, channels=20).eval()
    x, target = torch.rand(2, 3, 32, 32), torch.tensor([3, 7])
    maps = EXPLAINERS.create("native", layer=2)(model, x, target)
    features = model.layer_features(model.normalize(x))[2]  # [B, 20, 32, 32]
    expected = torch.stack([features[0, 6:8].mean(0), features[1, 14:16].mean(0)])
    assert torch.allclose(maps, expected, atol=1e-6)


def test_random_is_seeded_and_batched():
    model = create_model("fa_cnn")
    x, target = torch.rand(4, 3, 32, 32), torch.zeros(4, dtype=torch.long)
    a = EXPLAINERS.create("random", seed=1).explain_all(model, x, target, batch_size=2)
    b = EXPLAINERS.create("random", seed=1).explain_all(model, x, target, batch_size=2)
    c = EXPLAINERS.create("random", seed=2).explain_all(model, x, target, batch_size=2)
    assert a.shape == (4, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    assert 0 <= float(a.min()) and float(a.max()) < 1


def test_upsample_keeps_a_constant_map_constant():
    assert torch.allclose(upsample(torch.full((1, 4, 4), 2.0), (32, 32)), torch.full((1, 32, 32), 2.0))
