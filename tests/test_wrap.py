"""``interpbench.wrap``: a plain torchvision ResNet-18 as a zoo model, explained by every registered
explainer and scored by every registered metric; a plain module given to either is one line that
points to ``interpbench.wrap``."""
import copy

import pytest
import torch
import torchvision
from captum.attr import LayerGradCam

import interpbench
from interpbench.explainers import EXPLAINERS
from interpbench.metrics import METRICS
from interpbench.metrics.base import Batch
from interpbench.zoo.base import NotAZooModelError, ZooModel, upsample
from interpbench.zoo.wrapped import HEADS, WrappedModel, wrap

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
# Small settings: the whole file runs in well under a minute on 2 cores.
EXPLAINER_ARGS = {"rise": {"num_masks": 40, "batch_size": 40}, "occlusion": {"window": 8, "stride": 8},
                  "integrated_gradients": {"n_steps": 4}}
METRIC_ARGS = {"faithfulness_correlation": {"nr_runs": 8}, "monotonicity_correlation": {"nr_samples": 2},
               "model_randomisation": {"skip_layers": True}, "region_perturbation": {"regions_evaluation": 8},
               "road": {"percentages": [10, 50, 90]}}


def resnet18() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10).eval()


@pytest.fixture(scope="module")
def setup():
    """The wrapped ResNet-18 at 32 px, two images, their predicted classes and Grad-CAM maps.

    At 32 px torchvision's ResNet-18 downsamples ``layer4`` to 1 x 1 (a constant map after
    upsampling), so the CAM layer is ``layer3`` (2 x 2); the maps keep their sign (``relu=False``)
    so that no map is constant and every metric has a defined score."""
    net = resnet18()
    model = wrap(net, mean=MEAN, std=STD, cam_layer="layer3", input_size=(3, 32, 32))
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    explainer = EXPLAINERS.create("gradcam", relu=False)
    saliency = explainer(model, x, y)
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[:, 8:24, 8:24] = True
    return net, model, x, y, explainer, saliency, masks


def normalised(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def test_the_wrapped_model_is_the_module_on_normalised_images(setup):
    net, model, x, _, _, _, _ = setup
    assert isinstance(model, WrappedModel) and isinstance(model, ZooModel) and interpbench.wrap is wrap
    assert model.num_classes == 10 and model.input_size == (3, 32, 32)
    assert model.config["mean"] == MEAN and model.config["std"] == STD
    assert model.cam_layer is net.layer3 and not model.has_native_explanation
    with torch.no_grad():
        logits, reference = model(x), net(normalised(x))
    assert logits.shape == (2, 10) and torch.allclose(logits, reference, atol=1e-6)
    probabilities = model.probabilities(logits)
    assert torch.allclose(probabilities.sum(1), torch.ones(2), atol=1e-6)
    assert torch.allclose(probabilities, reference.softmax(1), atol=1e-6)
    labels = torch.tensor([3, 7])
    assert torch.allclose(model.loss(logits, labels), torch.nn.functional.cross_entropy(reference, labels), atol=1e-6)
    assert next(name for name, _ in model.named_parameters()) == "net.conv1.weight"  # the module is `net`


def test_gradcam_on_the_wrapped_model_is_captums_on_the_module(setup):
    net, _, x, y, _, saliency, _ = setup
    reference = LayerGradCam(net, net.layer3).attribute(normalised(x), target=y)
    assert torch.allclose(saliency, upsample(reference.squeeze(1), (32, 32)), atol=1e-5)


def test_num_classes_and_the_size_come_from_one_probe_that_leaves_the_modes_alone():
    net = resnet18().train()
    net.layer1.eval()  # a mixed state survives the probe
    before = {name: buffer.clone() for name, buffer in net.named_buffers()}
    model = wrap(net, mean=MEAN, std=STD, cam_layer=net.layer4)
    assert model.num_classes == 10 and model.input_size == (3, 224, 224) and model.cam_layer_name == "layer4"
    assert net.training and not net.layer1.training and net.layer2.training and model.training
    assert all(torch.equal(before[name], buffer) for name, buffer in net.named_buffers())  # eval-mode probe
    copied = copy.deepcopy(model)  # model randomisation explains a copy: its CAM layer is the copy's
    assert copied.cam_layer is copied.net.layer4 and copied.cam_layer is not model.cam_layer


def test_the_sigmoid_head_scores_each_class_on_its_own(setup):
    net, _, x, _, _, _, _ = setup
    model = wrap(net, mean=MEAN, std=STD, head="sigmoid", num_classes=10, input_size=(3, 32, 32))
    with torch.no_grad():
        logits = model(x)
    assert torch.allclose(model.probabilities(logits), logits.sigmoid())
    labels = torch.tensor([1, 2])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.eye(10)[labels])
    assert torch.allclose(model.loss(logits, labels), expected)


def one_line(error) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


def test_bad_arguments_are_one_line_naming_the_valid_choices():
    net = resnet18()
    with pytest.raises(ValueError) as error:
        wrap(net, mean=MEAN, std=STD, head="l2", num_classes=10)
    assert one_line(error) == f"wrap: unknown head 'l2'; valid heads: {', '.join(HEADS)}"
    assert HEADS == ("softmax", "sigmoid")
    with pytest.raises(ValueError) as error:
        wrap(net, mean=MEAN, std=STD, cam_layer="layer5", num_classes=10)
    assert one_line(error) == ("wrap: cam_layer 'layer5' is not a module inside ResNet; its top-level modules: "
                               "conv1, bn1, relu, maxpool, layer1, layer2, layer3, layer4, avgpool, fc")
    with pytest.raises(ValueError, match="is not a module inside ResNet"):
        wrap(net, mean=MEAN, std=STD, cam_layer=torch.nn.Conv2d(3, 3, 1), num_classes=10)
    with pytest.raises(ValueError) as error:
        wrap(net, mean=MEAN, std=(0.2,), num_classes=10)
    assert one_line(error) == "wrap: mean and std need one value per channel each, got 3 and 1"
    with pytest.raises(TypeError, match="is a zoo model already"):
        wrap(wrap(net, mean=MEAN, std=STD, num_classes=10), mean=MEAN, std=STD)


def test_a_module_that_takes_only_small_images_needs_its_input_size():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 32 * 32, 5))
    with pytest.raises(ValueError) as error:
        wrap(net, mean=MEAN, std=STD)
    assert one_line(error).startswith("wrap: the probe pass of a [2, 3, 224, 224] batch through Sequential failed "
                                      "(RuntimeError: ")
    assert "give input_size=(C, H, W) that the module takes, or num_classes" in str(error.value)
    model = wrap(net, mean=MEAN, std=STD, cam_layer="1", input_size=(3, 32, 32))
    assert model.num_classes == 5 and model.cam_layer is net[1]


def test_without_a_cam_layer_cam_methods_do_not_apply_or_ask_for_one(setup):
    net, _, x, y, _, _, _ = setup
    model = wrap(net, mean=MEAN, std=STD, num_classes=10, input_size=(3, 32, 32))
    assert not EXPLAINERS.create("gradcam_pp").applies_to(model)
    assert not EXPLAINERS.create("scorecam").applies_to(model)
    with pytest.raises(NotImplementedError, match=r"declares no cam_layer; CAM methods need one: wrap\(module"):
        EXPLAINERS.create("gradcam")(model, x, y)


@pytest.mark.parametrize("name", EXPLAINERS.list())
def test_every_explainer_explains_the_wrapped_model(setup, name):
    _, model, x, y, _, _, _ = setup
    explainer = EXPLAINERS.create(name, **EXPLAINER_ARGS.get(name, {}))
    if not explainer.applies_to(model):
        assert name == "native"  # the wrapped model has no explanation of its own
        pytest.skip(f"{name} does not apply to a wrapped model")
    maps = explainer(model, x, y)
    assert maps.shape == (2, 32, 32) and maps.dtype == torch.float32
    assert torch.isfinite(maps).all()
    assert (maps.flatten(1).std(1) > 0).all(), "a map is constant"
    if hasattr(explainer, "class_maps"):  # methods that share their passes among the classes
        every = explainer.class_maps(model, x)
        assert every.shape == (2, 10, 32, 32)
        assert torch.allclose(every[torch.arange(2), y], maps, rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", METRICS.list())
def test_every_metric_scores_the_wrapped_model(setup, name):
    _, model, x, y, explainer, saliency, masks = setup
    metric = METRICS.create(name, **METRIC_ARGS.get(name, {}))
    out = metric(model, x, y, saliency, target=y, masks=masks if metric.needs_masks else None,
                 explainer=explainer if metric.needs_explainer else None)
    assert out["score"].shape == (2,)
    assert torch.isfinite(out["score"]).all(), out["score"]
    if "curve" in out:
        assert out["curve"].shape[0] == 2 and torch.isfinite(out["curve"]).all()


def test_pixel_removal_starts_from_the_wrapped_models_own_accuracy(setup):
    """The targets are the predicted classes: at 0 % removed the accuracy is 1 for every image."""
    _, model, x, y, _, saliency, _ = setup
    out = METRICS.create("pixel_removal")(model, x, y, saliency)
    assert torch.equal(out["curve"][:, 0], torch.ones(2))


def test_a_plain_module_is_one_line_that_points_to_wrap(setup):
    net, _, x, y, _, saliency, masks = setup
    for name in ("gradcam", "random", "native"):
        with pytest.raises(NotAZooModelError) as error:
            EXPLAINERS.create(name)(net, x, y)
        assert one_line(error).startswith(f"explainer '{name}' needs a zoo model")
        assert "got ResNet, a plain torch.nn.Module" in str(error.value)
        assert str(error.value).endswith("make one with interpbench.wrap(module, mean=..., std=..., cam_layer=...)")
    for call in (lambda e: e.applies_to(net), lambda e: e.class_maps(net, x), lambda e: e.explain_all(net, x, y)):
        with pytest.raises(NotAZooModelError, match=r"^explainer 'rise' needs a zoo model.*interpbench\.wrap\("):
            call(EXPLAINERS.create("rise", num_masks=4))
    for name in ("pixel_removal", "relevance_mass"):
        with pytest.raises(NotAZooModelError) as error:
            METRICS.create(name)(net, x, y, saliency, masks=masks)
        assert one_line(error).startswith(f"metric '{name}' needs a zoo model")
        assert "interpbench.wrap(module, mean=..., std=..., cam_layer=...)" in str(error.value)
    with pytest.raises(NotAZooModelError, match=r"^a metric's Batch needs a zoo model"):
        Batch(net, x, y, saliency)
    assert issubclass(NotAZooModelError, TypeError)
