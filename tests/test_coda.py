"""CoDA-Net: squashing, the DAU layer against a per-patch computation, and complete explanations."""
import math

import pytest
import torch
import torch.nn.functional as F

from interpbench.zoo import create_model
from interpbench.zoo.coda import (
    KERNEL_SIZES,
    PADDINGS,
    SIZES,
    STRIDES,
    CoDANet,
    DAUConv2d,
    squash,
)
from interpbench.zoo.dynamic import explanation_mode

TINY = {"channels": (3, 3, 4, 4, 4, 5, 5, 5), "rank": (3, 3, 4, 4, 4, 4, 4, 4, 4)}


def tiny_coda(dtype=torch.float64, temperature=1.0, seed=0, num_classes=10) -> CoDANet:
    torch.manual_seed(seed)
    model = create_model("coda_net", num_classes=num_classes, temperature=temperature, **TINY)
    return model.to(dtype).eval()


def explicit_dau(layer: DAUConv2d, x: torch.Tensor):
    """The layer computed patch by patch: unfold, w(x) = A B x + b explicitly, g(w(x)) . x."""
    k, s, p = layer.kernel_size, layer.stride, layer.padding
    patches = F.unfold(x, k, padding=p, stride=s)  # [B, D, L]
    b_matrix = layer.reduce.weight.reshape(layer.rank, -1)  # [r, D]
    z = torch.einsum("rd,bdl->brl", b_matrix, patches)
    a = layer.expand.weight.reshape(layer.out_channels, layer.patch_dim, layer.rank)
    bias = layer.expand.bias.reshape(layer.out_channels, layer.patch_dim)
    w = torch.einsum("jdr,brl->bjdl", a, z) + bias[None, :, :, None]  # [B, J, D, L]
    norm = w.norm(dim=2, keepdim=True)
    g = norm**2 / (1 + norm**2) * w / norm
    out = (g * patches[:, None]).sum(2)  # [B, J, L]
    h = (x.shape[2] + 2 * p - k) // s + 1
    return out.reshape(x.shape[0], layer.out_channels, h, -1), g


# --- squashing ------------------------------------------------------------------------------
def test_squash_known_answers():
    u = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    g = squash(u, dim=1)
    # |u| = 5: g = 25/26 * u / 5; |u| = 0: 0; |u| = 1: half the unit vector.
    expected = torch.tensor([[15 / 26, 20 / 26], [0.0, 0.0], [0.5, 0.0]], dtype=torch.float64)
    assert torch.allclose(g, expected, rtol=0, atol=1e-15)


def test_squash_norm_is_below_one_and_equals_q_over_one_plus_q():
    torch.manual_seed(0)
    scales = torch.logspace(-3, 3, 40, dtype=torch.float64).view(-1, 1)
    u = torch.randn(40, 7, dtype=torch.float64) * scales
    g = squash(u, dim=1)
    q = u.pow(2).sum(1)
    assert torch.allclose(g.norm(dim=1), q / (1 + q), rtol=1e-12, atol=0)
    assert (g.norm(dim=1) < 1).all()
    cosine = (g * u).sum(1) / (g.norm(dim=1) * u.norm(dim=1))
    assert torch.allclose(cosine, torch.ones(40, dtype=torch.float64), atol=1e-12)  # same direction
    zero = torch.zeros(1, 4, requires_grad=True)
    squash(zero, dim=1).sum().backward()
    assert torch.isfinite(zero.grad).all()


# --- the DAU layer -------------------------------------------------------------------------
@pytest.mark.parametrize("in_c, out_c, rank, k, stride, pad, size", [
    (6, 5, 4, 3, 1, 1, (7, 9)),
    (4, 3, 2, 3, 2, 1, (9, 8)),
    (5, 10, 6, 1, 1, 0, (4, 4)),
    (3, 2, 8, 3, 1, 0, (6, 5)),  # no padding
])
def test_dau_layer_equals_explicit_per_patch_computation(in_c, out_c, rank, k, stride, pad, size):
    torch.manual_seed(1)
    layer = DAUConv2d(in_c, out_c, rank, k, stride, pad).double()
    x = torch.randn(2, in_c, *size, dtype=torch.float64)
    expected, g = explicit_dau(layer, x)
    out = layer(x)
    assert out.shape == expected.shape
    assert torch.allclose(out, expected, rtol=1e-10, atol=1e-12)
    assert expected.abs().max() > 1e-3  # not trivially zero
    explicit = layer.dynamic_weights(x).flatten(3)  # [B, J, D, L]
    assert torch.allclose(explicit, g, rtol=1e-10, atol=1e-12)


def test_dau_in_explanation_mode_is_the_linear_map_of_its_dynamic_weights():
    torch.manual_seed(2)
    layer = DAUConv2d(4, 3, 5, 3, 1, 1).double()
    x = torch.randn(1, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    _, g = explicit_dau(layer, x.detach())
    unit, row, col = 2, 3, 4
    with explanation_mode(layer):
        out = layer(x)
        (grad,) = torch.autograd.grad(out[0, unit, row, col], x)
    patch_grads = F.unfold(grad, 3, padding=1)  # [1, D, L]; only position (row, col) is touched
    position = row * 6 + col
    assert torch.allclose(patch_grads[0, :, position], g[0, unit, :, position], rtol=1e-10, atol=1e-12)
    # The value equals g(w(x)) . x for the patch, i.e. x . d out / d x.
    assert torch.allclose((x * grad).sum(), out[0, unit, row, col], rtol=1e-10, atol=1e-12)
    assert not layer.explanation_mode  # restored on leaving


# --- the network ---------------------------------------------------------------------------
def test_explanation_mode_changes_no_forward_value():
    model = tiny_coda(torch.float32, temperature=1.0)
    x = torch.rand(3, 3, 32, 32)
    plain = model(x)
    with explanation_mode(model):
        explained = model(x)
    assert torch.equal(plain, explained)
    _, logits = model.contributions(x, target=0)
    assert torch.equal(logits, plain)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_contributions_sum_to_the_logit_minus_bias_for_every_image_and_class(dtype):
    """Completeness: for every image and class, the sum over the 6 x 32 x 32 encoded inputs of
    x * dy_c/dx equals y_c - bias to 16 machine epsilons of max(1, |y_c|): 7.8e-15 in float64,
    4.2e-6 in float32 (the float32 logit itself carries a rounding error of ~2.4e-7 at |y| = 2.2)."""
    model = tiny_coda(dtype, temperature=1.0, seed=3)
    x = torch.rand(4, 3, 32, 32, dtype=dtype, generator=torch.Generator().manual_seed(3))
    logits = model(x)
    assert math.isclose(model.logit_bias, math.log(0.1 / 0.9), rel_tol=1e-12)
    k = model.num_classes
    images = x.repeat_interleave(k, dim=0)  # image i, class c at row i * K + c: one batched pass
    classes = torch.arange(k).repeat(4)
    contributions, same_logits = model.contributions(images, classes)
    assert contributions.shape == (4 * k, 6, 32, 32)
    assert torch.equal(same_logits, model(images))
    total = contributions.sum(dim=(1, 2, 3)).view(4, k)
    expected = logits - model.logit_bias
    tolerance = 16 * torch.finfo(dtype).eps * logits.abs().clamp_min(1.0)
    assert ((total - expected).abs() <= tolerance).all(), (total - expected).abs().max()
    maps = model.explain(images, classes).sum(dim=(1, 2)).view(4, k)
    assert ((maps - expected).abs() <= tolerance).all()
    # Not vacuous: every class has evidence far above the tolerance, different across classes.
    assert expected.abs().min() > 100 * tolerance.max() and expected.std(dim=1).min() > 0


def test_batched_contributions_equal_per_image_contributions():
    model = tiny_coda(torch.float64, seed=4)
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    target = torch.tensor([0, 5, 9])
    batched, _ = model.contributions(x, target)
    for i in range(3):
        single, _ = model.contributions(x[i : i + 1], int(target[i]))
        assert torch.allclose(batched[i], single[0], rtol=1e-12, atol=1e-15)


def test_head_sum_pools_divides_by_temperature_and_adds_the_prior_bias():
    model = tiny_coda(torch.float64, temperature=1.0, seed=5)
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    maps = model.forward_features(model.encode_input(x))
    assert maps.shape == (2, 10, 8, 8)
    bias = math.log(1 / 9)
    assert torch.allclose(model(x), maps.sum(dim=(2, 3)) + bias, rtol=1e-12, atol=1e-12)
    model.temperature = 8.0
    assert torch.allclose(model(x), maps.sum(dim=(2, 3)) / 8.0 + bias, rtol=1e-12, atol=1e-12)
    three = tiny_coda(torch.float64, num_classes=3)
    assert math.isclose(three.logit_bias, math.log(0.5), rel_tol=1e-12)


def test_bce_loss_at_the_prior_and_cross_entropy_option():
    model = tiny_coda(torch.float64)
    labels = torch.tensor([0, 3, 9])
    at_prior = torch.full((3, 10), model.logit_bias, dtype=torch.float64)
    # every class at probability 0.1: -(log 0.1 + 9 log 0.9) / 10
    expected = -(math.log(0.1) + 9 * math.log(0.9)) / 10
    assert math.isclose(float(model.loss(at_prior, labels)), expected, rel_tol=1e-12)
    ce = create_model("coda_net", loss="ce", **TINY)
    assert math.isclose(float(ce.loss(at_prior, labels)), math.log(10), rel_tol=1e-12)
    assert torch.allclose(model.probabilities(at_prior).sum(1), torch.ones(3, dtype=torch.float64))


def test_paper_and_cpu_sizes_share_the_nine_layer_structure():
    paper = create_model("coda_net", size="paper")
    cpu = create_model("coda_net")
    assert paper.temperature == 1000.0
    assert [m.out_channels for m in paper.layers] == [16, 16, 32, 32, 32, 64, 64, 64, 10]
    assert [m.rank for m in paper.layers] == [32, 32, 64, 64, 64, 64, 64, 64, 64]
    assert [m.in_channels for m in paper.layers][:2] == [6, 16]
    for model in (paper, cpu):
        assert len(model.layers) == 9
        assert tuple(m.kernel_size for m in model.layers) == KERNEL_SIZES == (3,) * 8 + (1,)
        assert tuple(m.stride for m in model.layers) == STRIDES == (1, 1, 2, 1, 1, 2, 1, 1, 1)
        assert tuple(m.padding for m in model.layers) == PADDINGS == (1,) * 8 + (0,)
        assert model.cam_layer is model.layers[-1]
    assert tuple(m.out_channels for m in cpu.layers[:-1]) == SIZES["cpu"]["channels"]
    assert tuple(m.rank for m in cpu.layers) == SIZES["cpu"]["ranks"]
    # parameters of a layer: B (r x D) + A (J D x r) + b (J D), D = C_in k^2
    layer = paper.layers[3]  # 32 -> 32, rank 64, 3 x 3
    d = 32 * 9
    assert sum(p.numel() for p in layer.parameters()) == 64 * d + 32 * d * 64 + 32 * d
    assert create_model("coda_net", rank=7).layers[4].rank == 7


@pytest.mark.parametrize("kwargs, message", [
    ({"size": "huge"}, "unknown size 'huge'; valid sizes: cpu, paper"),
    ({"temperature": 0}, "temperature must be a finite number > 0"),
    ({"temperature": float("nan")}, "temperature must be a finite number > 0"),
    ({"rank": (4, 4)}, "rank must be one integer or 9"),
    ({"rank": 0}, "rank must be a positive integer"),
    ({"rank": "8"}, "rank must be one integer or 9"),
    ({"channels": 8}, "channels must list 8 hidden widths"),
    ({"channels": (4, 4, 4)}, "channels must list 8 hidden widths"),
    ({"channels": (4, 4, 4, 4, 4, 4, 4, -1)}, "every width in channels must be a positive integer"),
    ({"loss": "mse"}, "unknown loss 'mse'; valid losses: bce, ce"),
    ({"logit_bias": float("inf")}, "logit_bias must be a finite number"),
    ({"num_classes": 1}, "num_classes must be at least 2"),
])
def test_bad_arguments_fail_with_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")) as info:
        create_model("coda_net", **kwargs)
    assert "\n" not in str(info.value)


def test_bad_layer_arguments_and_inputs_fail_with_one_line():
    with pytest.raises(ValueError, match=r"padding must be an integer in \[0, kernel_size - 1 = 2\]"):
        DAUConv2d(3, 4, 2, kernel_size=3, padding=3)
    with pytest.raises(ValueError, match="stride must be a positive integer"):
        DAUConv2d(3, 4, 2, stride=0)
    with pytest.raises(ValueError, match=r"expects input \[B, 3, H, W\], got \[1, 5, 8, 8\]"):
        DAUConv2d(3, 4, 2)(torch.zeros(1, 5, 8, 8))
    model = tiny_coda(torch.float32)
    with pytest.raises(ValueError, match="explains at the input only"):
        model.explain(torch.rand(1, 3, 32, 32), layer=2)
