"""Every registered model: the interface, finite outputs, probabilities, explanation, one step."""
import pytest
import torch

from interpbench.zoo import MODELS, create_model
from interpbench.zoo.base import ZooModel, resolve_target, upsample
from interpbench.zoo.dynamic import DynamicLinearModel

NUM_CLASSES = 10


@pytest.fixture(params=MODELS.list())
def model(request) -> ZooModel:
    torch.manual_seed(0)
    return create_model(request.param, num_classes=NUM_CLASSES, input_size=(3, 32, 32),
                        mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def test_forward_gives_finite_logits_and_probabilities(model):
    x = torch.rand(4, 3, 32, 32)
    model.eval()
    logits = model(x)
    assert logits.shape == (4, NUM_CLASSES) and torch.isfinite(logits).all()
    probs = model.probabilities(logits)
    assert torch.allclose(probs.sum(1), torch.ones(4), atol=1e-5) and (probs >= 0).all()
    assert model.config["num_classes"] == NUM_CLASSES and model.config["input_size"] == (3, 32, 32)


def test_model_encodes_its_own_input(model):
    model.eval()
    x = torch.rand(2, 3, 32, 32)
    if isinstance(model, DynamicLinearModel):  # B-cos, CoDA: the image and its complement
        expected_input = torch.cat([x, 1 - x], dim=1)
    else:
        expected_input = (x - 0.5) / 0.25
    assert torch.equal(model.encode_input(x), expected_input)
    expected = model.forward_head(model.forward_features(expected_input))
    assert torch.allclose(model(x), expected, atol=1e-5)


def test_cam_layer_is_a_spatial_map_of_the_forward_pass(model):
    seen = {}
    handle = model.cam_layer.register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    model.eval()
    model(torch.rand(2, 3, 32, 32))
    handle.remove()
    assert seen["out"].dim() == 4 and seen["out"].shape[0] == 2


def test_native_explanation_shape_and_target(model):
    x = torch.rand(3, 3, 32, 32)
    model.eval()
    if not model.has_native_explanation:
        with pytest.raises(NotImplementedError):
            model.explain(x)
        return
    maps = model.explain(x)
    assert maps.shape == (3, 32, 32) and torch.isfinite(maps).all()
    predicted = model(x).argmax(1)
    assert torch.allclose(model.explain(x, target=predicted), maps)


def test_a_few_training_steps_lower_the_loss_on_a_fixed_batch(model):
    torch.manual_seed(1)
    x, y = torch.rand(16, 3, 32, 32), torch.randint(0, NUM_CLASSES, (16,))
    # Adam: its step size does not depend on the gradient's scale, which differs by orders of
    # magnitude between a network trained from scratch and a stream on a frozen random backbone.
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=1e-3)
    model.train()
    first = float(model.loss(model(x), y).detach())
    for _ in range(8):
        loss = model.loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.isfinite(loss)
    assert float(model.loss(model(x), y).detach()) < first


def test_resolve_target_and_upsample():
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2]])
    assert resolve_target(None, logits).tolist() == [1, 0]
    assert resolve_target(1, logits).tolist() == [1, 1]
    assert resolve_target(torch.tensor([0, 0]), logits).tolist() == [0, 0]
    maps = torch.ones(2, 4, 4)
    assert torch.allclose(upsample(maps, (8, 8)), torch.ones(2, 8, 8))


@pytest.mark.parametrize("name, arch_blocks", [("resnet18", "BasicBlock"), ("resnet50", "Bottleneck")])
def test_cpu_resnets_keep_their_architecture_with_quarter_widths(name, arch_blocks):
    model = create_model(name, num_classes=10)
    stages = [model.net.layer1, model.net.layer2, model.net.layer3, model.net.layer4]
    expected_depths = [2, 2, 2, 2] if name == "resnet18" else [3, 4, 6, 3]
    assert [len(s) for s in stages] == expected_depths
    assert all(type(block).__name__ == arch_blocks for s in stages for block in s)
    assert model.net.conv1.kernel_size == (3, 3) and model.net.conv1.stride == (1, 1)
    assert model.net.conv1.out_channels == 16
    expansion = 1 if name == "resnet18" else 4
    assert model.net.num_features == 128 * expansion
    paper = create_model(name, num_classes=10, size="paper")
    assert paper.net.num_features == 512 * expansion


@pytest.mark.parametrize("name", MODELS.list())
def test_paper_size_is_one_switch_away_and_larger(name):
    small = create_model(name, num_classes=NUM_CLASSES)
    paper = create_model(name, num_classes=NUM_CLASSES, size="paper").eval()
    if small.config.get("arch", "").startswith("cifar_resnet"):  # already small: one size for both profiles
        assert sum(p.numel() for p in paper.parameters()) == sum(p.numel() for p in small.parameters())
    else:
        assert sum(p.numel() for p in paper.parameters()) > 2 * sum(p.numel() for p in small.parameters())
    with torch.no_grad():
        assert paper(torch.rand(1, 3, 32, 32)).shape == (1, NUM_CLASSES)
    with pytest.raises(ValueError, match="valid sizes"):
        create_model(name, num_classes=NUM_CLASSES, size="huge")
