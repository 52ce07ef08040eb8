"""``pretrained=true`` for the timm-based ResNets: timm's own mechanism, fed a local file here (the
hub is unreachable in tests), the one-line error offline, and the size it needs."""
import pytest
import timm
import torch

from interpbench.zoo import create_model


@pytest.fixture
def offline(monkeypatch):
    """The Hugging Face hub in offline mode: a missing file fails at once instead of after retries."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_a_local_file_goes_through_timms_loader(tmp_path, offline):
    torch.manual_seed(0)
    imagenet = timm.create_model("resnet18", pretrained=False)  # stands in for the published weights
    torch.save(imagenet.state_dict(), tmp_path / "resnet18.pth")
    model = create_model("resnet18", size="paper", pretrained_file=str(tmp_path / "resnet18.pth"),
                         num_classes=10, input_size=(3, 224, 224))
    assert model.config["pretrained"] is True
    for name in ("conv1.weight", "layer1.0.conv1.weight", "layer4.1.bn2.running_var"):
        assert torch.equal(model.net.state_dict()[name], imagenet.state_dict()[name])
    assert model.net.fc.weight.shape == (10, 512)  # a new classifier for 10 classes
    small = create_model("resnet18", size="paper", pretrained_file=str(tmp_path / "resnet18.pth"))
    assert small.net.conv1.weight.shape == (64, 3, 3, 3)  # the CIFAR stem replaces timm's, trained anew
    assert torch.equal(small.net.layer2[0].conv2.weight, imagenet.layer2[0].conv2.weight)


def test_offline_without_the_file_is_one_line_naming_the_ways_out(offline):
    with pytest.raises(ValueError) as error:
        create_model("resnet50", size="paper", pretrained=True)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("pretrained resnet50 weights could not be loaded from timm's download (offline?)")
    assert "pretrained_file=PATH" in message and "weights=PATH" in message


def test_a_missing_local_file_and_the_cpu_size_are_one_line(tmp_path, offline):
    with pytest.raises(ValueError, match=r"could not be loaded from the file .*absent\.pth"):
        create_model("resnet18", size="paper", pretrained_file=str(tmp_path / "absent.pth"))
    with pytest.raises(ValueError, match="exist for size=paper only .* got size=cpu"):
        create_model("resnet18", pretrained=True)
