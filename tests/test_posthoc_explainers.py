"""Post-hoc explainers: Grad-CAM++, Score-CAM, RISE, occlusion, Integrated Gradients.

Grad-CAM++ and Score-CAM (written here; captum has neither) are compared with pytorch-grad-cam
and with closed forms; RISE with the reference code's mask upsampling (skimage), its estimator
in both masking spaces and its analytic limits (the reference protocol itself: test_rise_reference.py); occlusion and Integrated Gradients (captum) with their exact answers on a
model that is linear in the input. Every method runs on each zoo family, batched.
"""
import pytest
import torch
import torch.nn.functional as F
from conftest import calibrate
from torch import nn

from interpbench.explainers import EXPLAINERS
from interpbench.zoo import create_model
from interpbench.zoo.base import ZooModel, upsample

POSTHOC = ["gradcam_pp", "scorecam", "rise", "occlusion", "integrated_gradients"]


class GapNet(ZooModel):
    """conv -> ReLU -> conv (the CAM layer, 8 x 8 at 32 px) -> global average pool -> linear."""

    def __init__(self, num_classes: int = 4, channels: int = 6) -> None:
        super().__init__(num_classes)
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.cam = nn.Conv2d(8, channels, 3, stride=2, padding=1)
        self.fc = nn.Linear(channels, num_classes)

    def forward_features(self, x):
        return self.cam(F.relu(self.stem(x)))

    def forward_head(self, features):
        return self.fc(features.mean(dim=(2, 3)))

    @property
    def cam_layer(self):
        return self.cam


class LinearProbe(ZooModel):
    """``logit_c(x) = sum_v w_c(v) x(v)``; its "probabilities" are the logits, so RISE's P is linear."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__(weight.shape[0], input_size=tuple(weight.shape[1:]))
        self.weight = nn.Parameter(weight)

    def forward(self, x):
        return torch.einsum("bchw,kchw->bk", x, self.weight)

    def probabilities(self, logits):
        return logits


def minmax(maps) -> torch.Tensor:
    flat = torch.as_tensor(maps).double().flatten(1)
    flat = flat - flat.min(dim=1, keepdim=True).values
    return (flat / flat.max(dim=1, keepdim=True).values).view(torch.as_tensor(maps).shape)


@pytest.fixture(scope="module")
def gapnet():
    torch.manual_seed(0)
    return GapNet().eval()


# --- Grad-CAM++ ----------------------------------------------------------------------------------

def test_gradcam_pp_closed_form_on_a_global_average_pooling_head(gapnet):
    """With a GAP-linear head, g_kij = v_ck / hw everywhere, so alpha = 1 / (2 + S_k g) and
    w_k = relu(v_ck) / (2 + S_k v_ck / hw) (eq. 19 of the paper, summed over positions)."""
    torch.manual_seed(1)
    x, target = torch.rand(3, 3, 32, 32), torch.tensor([0, 2, 3])
    maps = EXPLAINERS.create("gradcam_pp")(gapnet, x, target)
    with torch.no_grad():
        activation = gapnet.forward_features(gapnet.normalize(x))  # [3, 6, 8, 8]
    hw = activation.shape[-1] * activation.shape[-2]
    v = gapnet.fc.weight.detach()[target]  # [3, 6]
    total = activation.sum(dim=(2, 3))
    weights = v.clamp_min(0) / (2 + total * v / hw)
    expected = upsample((weights[..., None, None] * activation).sum(1).clamp_min(0), (32, 32))
    assert maps.shape == (3, 32, 32)
    assert torch.allclose(maps, expected, rtol=1e-4, atol=1e-6) and maps.max() > 0


def test_gradcam_pp_equals_pytorch_grad_cam_with_its_epsilon():
    """pytorch-grad-cam adds 1e-6 to alpha's denominator and min-max scales each map; with the
    same epsilon our maps, min-max scaled, are its maps (the default eps = 0 differs measurably)."""
    pgc = pytest.importorskip("pytorch_grad_cam", reason="pytorch-grad-cam (the dev extra's grad-cam) not installed")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10).eval()
    x, target = torch.rand(4, 3, 32, 32), torch.tensor([0, 3, 5, 9])
    ours = EXPLAINERS.create("gradcam_pp", eps=1e-6)(model, x, target)
    reference = pgc.GradCAMPlusPlus(model, [model.cam_layer])(x, [ClassifierOutputTarget(int(c)) for c in target])
    assert torch.allclose(minmax(ours), minmax(reference), atol=1e-5)
    paper = EXPLAINERS.create("gradcam_pp")(model, x, target)
    assert (minmax(paper) - minmax(reference)).abs().max() > 1e-3


# --- Score-CAM -----------------------------------------------------------------------------------

class _UpsampleAsOurs(nn.Module):
    def __init__(self, size):
        super().__init__()
        self.size = size

    def forward(self, maps):
        return F.interpolate(maps, size=self.size, mode="bilinear", align_corners=False)


def test_scorecam_equals_pytorch_grad_cam_with_masks_upsampled_as_ours(monkeypatch):
    """pytorch-grad-cam's Score-CAM (softmax over channels of the target logit on the image masked
    by each min-max scaled channel) upsamples the masks with align_corners=True; with that one
    step switched to align_corners=False (ours and the authors'), the maps agree."""
    pgc = pytest.importorskip("pytorch_grad_cam", reason="pytorch-grad-cam (the dev extra's grad-cam) not installed")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = create_model("fa_cnn", num_classes=10).eval()
    x, target = torch.rand(2, 3, 32, 32), torch.tensor([4, 7])
    ours = EXPLAINERS.create("scorecam", batch_size=64)(model, x, target)
    monkeypatch.setattr(torch.nn, "UpsamplingBilinear2d", _UpsampleAsOurs)
    cam = pgc.ScoreCAM(model, [model.cam_layer])
    cam.batch_size = 64
    reference = cam(x, [ClassifierOutputTarget(int(c)) for c in target])
    assert torch.allclose(minmax(ours), minmax(reference), atol=1e-5)


def test_scorecam_weights_are_the_softmax_of_masked_logits_and_class_maps_agree(gapnet):
    torch.manual_seed(2)
    x, target = torch.rand(3, 3, 32, 32), torch.tensor([1, 0, 3])
    scorecam = EXPLAINERS.create("scorecam", batch_size=5)  # chunks that split images
    with torch.no_grad():
        activation = gapnet.forward_features(gapnet.normalize(x))
        up = F.interpolate(activation, size=(32, 32), mode="bilinear", align_corners=False)
        logits = torch.stack([
            torch.stack([gapnet(x[b : b + 1] * ((up[b, k] - up[b, k].min()) / (up[b, k].max() - up[b, k].min() + 1e-8)))[0]
                         for k in range(up.shape[1])])
            for b in range(3)
        ])  # [B, C, K], one image at a time
    weights = logits.softmax(dim=1)[torch.arange(3), :, target]  # [B, C]
    expected = upsample((weights[..., None, None] * activation).sum(1).clamp_min(0), (32, 32))
    maps = scorecam(gapnet, x, target)
    assert torch.allclose(maps, expected, rtol=1e-4, atol=1e-6) and maps.max() > 0
    every = scorecam.class_maps(gapnet, x)
    assert every.shape == (3, 4, 32, 32)
    assert torch.allclose(every[torch.arange(3), target], maps, atol=1e-6)


# --- RISE ----------------------------------------------------------------------------------------

def test_rise_masks_are_the_reference_codes_upsampled_shifted_grids():
    """Each mask is skimage's resize (order 1, mode reflect, no anti-aliasing) of its s x s grid
    to (s + 1) * cell pixels, cropped at its shift, as in the authors' generate_masks."""
    resize = pytest.importorskip("skimage.transform").resize
    for (h, w), (n, s) in [((32, 32), (1000, 4)), ((40, 27), (20, 5))]:
        rise = EXPLAINERS.create("rise", num_masks=None if n == 1000 else n, grid_size=None if s == 4 else s)
        assert rise.settings(h, w) == (n, s)
        grid, shift_h, shift_w = rise.grids_and_shifts(h, w)
        masks = rise.masks(h, w, start=3, stop=8)
        cell_h, cell_w = -(-h // s), -(-w // s)
        for i in range(3, 8):
            full = resize(grid[i].numpy(), ((s + 1) * cell_h, (s + 1) * cell_w), order=1, mode="reflect",
                          anti_aliasing=False)
            expected = torch.from_numpy(full[shift_h[i] : shift_h[i] + h, shift_w[i] : shift_w[i] + w]).float()
            assert torch.allclose(masks[i - 3], expected, atol=1e-6)
        assert 0 <= int(shift_h.min()) and int(shift_h.max()) < cell_h
    all_masks = EXPLAINERS.create("rise").masks(32, 32)
    assert all_masks.shape == (1000, 32, 32) and 0 <= float(all_masks.min()) and float(all_masks.max()) <= 1
    assert abs(float(all_masks.mean()) - 0.5) < 0.02  # E[M] = p: a convex combination of Bernoulli(p) cells
    assert EXPLAINERS.create("rise").settings(224, 224) == (4000, 7)  # the paper's defaults


@pytest.mark.parametrize("space", ["normalised", "pixel"])
def test_rise_is_the_monte_carlo_sum_over_its_masks_in_any_chunking(space):
    """Masked images: ``mean + (x - mean) * M`` (the model's mean, 0.5 here: the normalised image
    times the mask, the default) or ``x * M`` (pixel space, black)."""
    torch.manual_seed(3)
    model = LinearProbe(torch.randn(3, 3, 32, 32))
    x, target = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 1])
    rise = EXPLAINERS.create("rise", num_masks=50, p=0.3, batch_size=12, space=space)  # 3 masks per forward batch
    masks = rise.masks(32, 32).double()
    fill = 0.5 if space == "normalised" else 0.0
    masked = fill + (x.double().unsqueeze(1) - fill) * masks[None, :, None]
    probs = model(masked.flatten(0, 1).float()).view(4, 50, 3)
    expected = torch.einsum("bn,nhw->bhw", probs[torch.arange(4), :, target].double(), masks) / (50 * 0.3)
    maps = rise(model, x, target)
    assert torch.allclose(maps.double(), expected, rtol=1e-4, atol=1e-5)
    every = EXPLAINERS.create("rise", num_masks=50, p=0.3, space=space).class_maps(model, x)
    assert torch.allclose(every[torch.arange(4), target], maps, rtol=1e-4, atol=1e-5)


def test_rise_converges_to_its_analytic_limits():
    """For a model that reads one pixel v0 of an all-ones image masked in pixel space
    (P = M(v0)), E[S(u)] = E[M(u) M(v0)] / p: p where u is too far from v0 to share a grid cell
    (independent masks), and between p and 1 at v0. Masked in normalised space (the model's mean
    0.5 fills the masked part) P = 0.5 + 0.5 M(v0), so S = 0.5 E[M(u)] / p + 0.5 E[M(u) M(v0)] / p:
    0.75 far away. For a constant P = 1, S = mean_i M_i / p -> 1 everywhere. Seeded; N = 2000
    keeps the Monte Carlo error near 0.015."""
    weight = torch.zeros(2, 3, 32, 32)
    weight[0, 0, 4, 4] = 1.0
    model = LinearProbe(weight)
    rise = EXPLAINERS.create("rise", num_masks=2000, space="pixel")
    maps = rise(model, torch.ones(1, 3, 32, 32), torch.tensor([0]))[0]
    far = maps[24:, 24:]  # >= 20 pixels from v0: the interpolated grid cells are 10 pixels apart
    assert abs(float(far.mean()) - 0.5) < 0.03 and float((far - 0.5).abs().max()) < 0.08
    assert 0.6 < float(maps[4, 4]) <= 1.0
    peak = divmod(int(maps.argmax()), 32)
    assert abs(peak[0] - 4) <= 3 and abs(peak[1] - 4) <= 3
    shifted = EXPLAINERS.create("rise", num_masks=2000)(model, torch.ones(1, 3, 32, 32), torch.tensor([0]))[0]
    assert torch.allclose(shifted, 0.5 * rise.masks(32, 32).mean(0) / 0.5 + 0.5 * maps, atol=1e-5)
    assert abs(float(shifted[24:, 24:].mean()) - 0.75) < 0.03

    class Constant(LinearProbe):
        def probabilities(self, logits):
            return torch.ones_like(logits)

    flat = rise(Constant(weight), torch.rand(1, 3, 32, 32), torch.tensor([1]))[0]
    assert abs(float(flat.mean()) - 1) < 0.02 and float((flat - 1).abs().max()) < 0.1


def test_rise_is_seeded():
    model = LinearProbe(torch.randn(2, 3, 32, 32))
    x, target = torch.rand(2, 3, 32, 32), torch.tensor([0, 1])
    a = EXPLAINERS.create("rise", num_masks=20, seed=1)(model, x, target)
    b = EXPLAINERS.create("rise", num_masks=20, seed=1)(model, x, target)
    c = EXPLAINERS.create("rise", num_masks=20, seed=2)(model, x, target)
    assert torch.equal(a, b) and not torch.allclose(a, c)


# --- occlusion and Integrated Gradients (captum) ---------------------------------------------------

def test_occlusion_credits_each_patch_with_its_exact_logit_drop():
    """For a linear model with a zero baseline, occluding a patch lowers logit_c by
    sum_{patch} w_c x; each pixel gets the mean over the windows covering it."""
    torch.manual_seed(4)
    model = LinearProbe(torch.randn(3, 3, 32, 32))
    x, target = torch.rand(2, 3, 32, 32), torch.tensor([2, 0])
    contribution = (model.weight.detach()[target] * x).sum(1, keepdim=True)  # [2, 1, 32, 32]

    tiles = EXPLAINERS.create("occlusion", window=8, stride=8)(model, x, target)
    expected = F.avg_pool2d(contribution, 8) * 64
    assert torch.allclose(tiles, expected.repeat_interleave(8, 2).repeat_interleave(8, 3)[:, 0], atol=1e-4)

    occlusion = EXPLAINERS.create("occlusion")
    assert occlusion.geometry(32, 32) == ((4, 4), (2, 2)) and occlusion.geometry(224, 224) == ((28, 28), (14, 14))
    sums = F.avg_pool2d(contribution, 4, stride=2) * 16  # the 15 x 15 windows' drops
    ones = torch.ones(1, 1, 4, 4)
    expected = F.conv_transpose2d(sums, ones, stride=2) / F.conv_transpose2d(torch.ones_like(sums), ones, stride=2)
    maps = occlusion(model, x, target)
    assert torch.allclose(maps, expected[:, 0], atol=1e-4)
    every = occlusion.class_maps(model, x)  # one set of occluded passes for all classes
    assert every.shape == (2, 3, 32, 32) and torch.allclose(every[torch.arange(2), target], maps, atol=1e-6)


def test_occlusion_of_probabilities_uses_the_models_probability():
    torch.manual_seed(5)
    model = create_model("fa_cnn", num_classes=10, input_size=(3, 16, 16)).eval()
    x, target = torch.rand(2, 3, 16, 16), torch.tensor([1, 8])
    maps = EXPLAINERS.create("occlusion", window=8, stride=8, output="probability")(model, x, target)
    with torch.no_grad():
        clean = model.probabilities(model(x))[torch.arange(2), target]
        hidden = x.clone()
        hidden[:, :, :8, 8:] = 0
        dropped = model.probabilities(model(hidden))[torch.arange(2), target]
    assert torch.allclose(maps[:, 0, 15], clean - dropped, atol=1e-6)


def test_integrated_gradients_is_exact_on_a_linear_model_and_complete_on_a_network():
    torch.manual_seed(6)
    model = LinearProbe(torch.randn(3, 3, 32, 32))
    x, target = torch.rand(2, 3, 32, 32), torch.tensor([1, 2])
    expected = (model.weight.detach()[target] * x).sum(1)
    assert torch.allclose(EXPLAINERS.create("integrated_gradients", n_steps=5)(model, x, target), expected, atol=1e-5)
    assert torch.allclose(EXPLAINERS.create("integrated_gradients", n_steps=5, sign="absolute")(model, x, target),
                          expected.abs(), atol=1e-5)
    assert torch.allclose(EXPLAINERS.create("integrated_gradients", n_steps=5, sign="positive")(model, x, target),
                          expected.clamp_min(0), atol=1e-5)

    network = create_model("fa_cnn", num_classes=10, input_size=(3, 16, 16)).eval()
    x = torch.rand(2, 3, 16, 16)
    maps = EXPLAINERS.create("integrated_gradients", n_steps=32, internal_batch_size=16)(network, x, target)
    with torch.no_grad():
        gap = network(x)[torch.arange(2), target] - network(torch.zeros_like(x))[torch.arange(2), target]
    assert torch.allclose(maps.sum(dim=(1, 2)), gap, rtol=0.02)  # completeness, up to the quadrature error


# --- every method on every zoo family --------------------------------------------------------------

CHEAP = {
    "gradcam_pp": {}, "scorecam": {"batch_size": 64}, "rise": {"num_masks": 12},
    "occlusion": {"window": 8, "stride": 8}, "integrated_gradients": {"n_steps": 4},
}
FAMILIES = ["fa_cnn", "resnet18", "bcos_cnn", "coda_net", "ca_stream_resnet18", "kmeans_resnet18_b4"]


@pytest.fixture(scope="module", params=FAMILIES)
def zoo_model(request):
    torch.manual_seed(0)
    model = create_model(request.param, size="cpu", num_classes=10, input_size=(3, 16, 16))
    return calibrate(model, torch.rand(8, 3, 16, 16))  # eval mode, B-cos norms at the data's scale


@pytest.mark.parametrize("name", POSTHOC)
def test_every_explainer_explains_every_family(zoo_model, name):
    torch.manual_seed(7)
    x, target = torch.rand(2, 3, 16, 16), torch.tensor([3, 8])
    explainer = EXPLAINERS.create(name, **CHEAP[name])
    assert explainer.applies_to(zoo_model)
    maps = explainer(zoo_model, x, target)
    assert maps.shape == (2, 16, 16) and maps.dtype == x.dtype and torch.isfinite(maps).all()


@pytest.mark.parametrize("name", POSTHOC)
def test_explaining_in_two_halves_under_no_grad_equals_the_whole_batch(name):
    """The evaluation may run under no_grad and in any batch size: neither changes a map."""
    torch.manual_seed(8)
    model = create_model("fa_cnn", num_classes=10, input_size=(3, 16, 16)).eval()
    x, target = torch.rand(2, 3, 16, 16), torch.tensor([3, 9])
    explainer = EXPLAINERS.create(name, **CHEAP[name])
    whole = explainer(model, x, target)
    with torch.no_grad():
        halves = torch.cat([explainer(model, x[:1], target[:1]), explainer(model, x[1:], target[1:])])
    scale = float(whole.abs().max())
    assert scale > 0 and torch.allclose(halves, whole, rtol=1e-4, atol=1e-5 * scale)


def test_registered_with_their_names_and_bad_arguments_name_the_valid_choices():
    assert set(POSTHOC) <= set(EXPLAINERS.list())
    for name in POSTHOC:
        assert EXPLAINERS.create(name).name == name
    with pytest.raises(ValueError, match="signed, absolute, positive"):
        EXPLAINERS.create("integrated_gradients", sign="negative")
    with pytest.raises(ValueError, match="gausslegendre"):
        EXPLAINERS.create("integrated_gradients", method="simpson")
    with pytest.raises(ValueError, match="logit, probability"):
        EXPLAINERS.create("occlusion", output="loss")
    with pytest.raises(ValueError, match="must not exceed the window"):
        EXPLAINERS.create("occlusion", window=2, stride=3).geometry(32, 32)
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        EXPLAINERS.create("rise", p=1.0)
    with pytest.raises(ValueError, match="grid_size must be an integer >= 2"):
        EXPLAINERS.create("rise", grid_size=1)
    with pytest.raises(ValueError, match="^unknown rise space 'input'; valid spaces: normalised, pixel$"):
        EXPLAINERS.create("rise", space="input")
    with pytest.raises(ValueError, match="eps must be >= 0"):
        EXPLAINERS.create("gradcam_pp", eps=-1.0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        EXPLAINERS.create("scorecam", batch_size=0)


def test_the_cost_benchmark_counts_the_passes_each_method_needs(gapnet):
    """benchmarks/explainer_cost.py's counts for all K = 4 classes per image: Grad-CAM-type methods one
    forward and backward per class, Score-CAM one pass per channel (6) plus the activation pass,
    occlusion its 225 positions plus the clean pass, Integrated Gradients 50 per class, random none."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "explainer_cost.py"
    spec = importlib.util.spec_from_file_location("explainer_cost", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    x = torch.rand(2, 3, 32, 32)
    expected = {"gradcam": (4, 4), "gradcam_pp": (4, 4), "scorecam": (7, 0), "occlusion": (226, 0),
                "integrated_gradients": (200, 200), "random": (0, 0)}
    for name, (forward, backward) in expected.items():
        result = bench.measure(gapnet, name, x, torch.device("cpu"))
        assert (result["forward"], result["backward"]) == (forward, backward), name
