"""CA-Stream: the stream's layout (a block at the stem, one per stage, W_L), its size at paper
widths against the reference's layer shapes, the average-pooling identity, the native maps, and a
frozen backbone and classifier."""
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_DATA, TINY_RECIPE

from interpbench.core import RecordError, TrainSpec
from interpbench.engine.train import build_model, load_trained, train_model
from interpbench.zoo import MODELS, create_model
from interpbench.zoo.ca_stream import CAStreamResNet, cross_attention

PARENTS = ("resnet18", "resnet50", "cifar_resnet20", "cifar_resnet56")


def stream_model(parent: str = "resnet18", seed: int = 0) -> CAStreamResNet:
    torch.manual_seed(seed)
    model = create_model(f"ca_stream_{parent}", num_classes=10).eval()
    with torch.no_grad():  # a backbone whose batch norms do not all sit at their initial statistics
        for module in model.backbone.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
    return model


def reference_stream_size(stem: int, stages) -> int:
    """The reference's stream (``models/ResNet/resnet_stream.py``): a query as wide as the stem, then
    one block per map whose output projection (``nn.Linear``, with bias) maps the map's width to the
    next map's width, and the last stage's width to itself."""
    widths = [stem, *stages]
    outputs = widths[1:] + widths[-1:]
    return stem + sum(c_in * c_out + c_out for c_in, c_out in zip(widths, outputs))


def test_cross_attention_on_a_hand_computed_case():
    features = torch.zeros(1, 4, 1, 2)
    features[0, 0, 0, 0] = 2.0  # position 0 holds (2, 0, 0, 0), position 1 holds zeros
    pooled, attention = cross_attention(features, torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    e = math.e  # scores 2 / sqrt(4) = 1 and 0
    assert torch.allclose(attention, torch.tensor([[[e / (1 + e), 1 / (1 + e)]]]))
    assert torch.allclose(pooled, torch.tensor([[2 * e / (1 + e), 0.0, 0.0, 0.0]]))


@pytest.mark.parametrize("parent, stages", [("resnet18", 4), ("cifar_resnet20", 3)])
def test_the_stream_starts_at_the_stem_and_ends_with_w_l(parent, stages):
    model = stream_model(parent)
    x = torch.rand(3, 3, 32, 32)
    normalised = model.encode_input(x)
    if parent == "resnet18":  # the stem ends after conv1, bn1, ReLU, max-pool (an identity on 32 px)
        net = model.backbone.net
        stem = net.maxpool(net.act1(net.bn1(net.conv1(normalised))))
    else:
        stem = F.relu(model.backbone.bn1(model.backbone.conv1(normalised)))
    maps = model.stem_and_stage_outputs(normalised)
    assert len(maps) == stages + 1 and torch.equal(maps[0], stem)
    for got, expected in zip(maps[1:], model.backbone.stage_outputs(normalised)):
        assert torch.equal(got, expected)
    widths = [16] + list(model.backbone.stage_widths)
    assert model.stream_widths == widths and model.config["stream_widths"] == tuple(widths)
    assert model.query.shape == (16,)  # q_0 reads the stem's output (S0)
    assert [(p.in_features, p.out_features) for p in model.projections] == list(zip(widths, widths[1:] + widths[-1:]))
    assert all(p.bias is not None for p in model.projections)
    assert model.projections[-1].out_features == model.backbone.classifier.in_features  # W_L feeds the classifier
    attentions = model.attention_maps(x)
    assert [tuple(a.shape[1:]) for a in attentions] == [tuple(m.shape[-2:]) for m in maps]
    for attention in attentions:
        assert torch.allclose(attention.sum(dim=(1, 2)), torch.ones(3), atol=1e-5) and (attention >= 0).all()
    # the classifier reads W_L CA_L + b_L
    pooled = model.stream(normalised)[0]
    assert torch.allclose(model(x), model.backbone.classifier(model.projections[-1](pooled[-1])), atol=1e-6)


@pytest.mark.parametrize("arch, expansion, expected", [("resnet50", 4, 6_969_152), ("resnet18", 1, 439_808)])
def test_stream_size_at_paper_widths_is_the_references(arch, expansion, expected):
    with torch.device("meta"):  # the shapes are all that is counted
        model = CAStreamResNet(arch, 1000, (3, 224, 224), size="paper")
    stages = [expansion * w for w in (64, 128, 256, 512)]
    assert model.stream_widths == [64, *stages]
    assert reference_stream_size(64, stages) == expected
    assert sum(p.numel() for p in model.trainable_parameters()) == expected
    assert sum(p.numel() for p in model.trainable_parameters()) == (
        model.query.numel() + sum(p.numel() for p in model.projections.parameters()))


def test_initialisation_follows_the_reference():
    torch.manual_seed(0)
    model = create_model("ca_stream_resnet50", num_classes=10)  # stream widths 16, 64, 128, 256, 512, 512
    query = model.query.detach()
    assert 0.4 < float(query.mean()) < 1.6 and float(query.std()) > 0.5  # N(1, 1) entries
    for projection in model.projections:
        fan_in, fan_out = projection.in_features, projection.out_features
        bound = math.sqrt(6 / (fan_in + fan_out))  # Xavier-uniform
        weight = projection.weight.detach()
        assert float(weight.abs().max()) <= bound
        if weight.numel() >= 32_768:  # enough entries for the variance to sit within a few percent
            assert abs(float(weight.var()) / (bound ** 2 / 3) - 1) < 0.05
        assert float(projection.bias.detach().abs().max()) <= 1 / math.sqrt(fan_in)  # nn.Linear's bias


@pytest.mark.parametrize("parent, positions", [("resnet18", 4 * 4), ("cifar_resnet20", 8 * 8)])
def test_a_zero_last_query_pools_as_gap_and_w_l_identity_gives_the_parents_logits(parent, positions):
    model = stream_model(parent)
    x = torch.rand(4, 3, 32, 32)
    gap_logits = model.backbone(x)  # the frozen ResNet with global average pooling
    gap_feature = model.backbone.forward_features(model.encode_input(x)).mean(dim=(2, 3))
    with torch.no_grad():
        projection = model.projections[-2]  # W_{L-1}, b_{L-1}: they make the last stage's query
        projection.weight.zero_()
        projection.bias.zero_()
        pooled, attentions = model.stream(model.encode_input(x))
        assert torch.equal(attentions[-1], torch.full_like(attentions[-1], 1.0 / positions))
        assert not torch.allclose(attentions[0], attentions[0].mean(dim=(1, 2), keepdim=True))  # q_0 is not zero
        assert torch.allclose(pooled[-1], gap_feature, rtol=1e-6, atol=1e-6)  # CA_L is the average pool
        assert not torch.allclose(model(x), gap_logits, atol=1e-3)  # Xavier W_L sits in between
        width = model.projections[-1].in_features
        model.projections[-1].weight.copy_(torch.eye(width))
        model.projections[-1].bias.zero_()
        assert torch.allclose(model(x), gap_logits, rtol=1e-6, atol=1e-5)


def test_native_maps_are_the_attentions_upsampled_and_ignore_the_target():
    model = stream_model()
    x = torch.rand(2, 3, 32, 32)
    attentions = model.attention_maps(x)
    maps = model.explain(x)
    assert maps.shape == (2, 32, 32)
    assert torch.allclose(maps, F.interpolate(attentions[-1].unsqueeze(1), size=(32, 32), mode="bilinear",
                                              align_corners=False).squeeze(1))
    assert torch.equal(maps, model.explain(x, target=3)) and torch.equal(maps, model.explain(x, layer=4))
    assert torch.equal(model.explain(x, layer=0), attentions[0])  # the stem's map, already 32 x 32
    # bilinear upsampling keeps the mean of a 4x4 map that sums to one: 1/16 per pixel
    assert torch.allclose(maps.mean(dim=(1, 2)), torch.full((2,), 1 / 16), atol=1e-3)
    with pytest.raises(ValueError, match=r"^layer 5 out of range; valid layers: 0\.\.4 \(0: the stem, 1\.\.4: "
                                         r"the stages; default 4\)$"):
        model.explain(x, layer=5)
    with pytest.raises(ValueError, match=r"valid layers: 0\.\.3"):
        stream_model("cifar_resnet20").explain(x, layer=-1)


def test_a_checkpoint_of_the_previous_stream_does_not_load():
    model = stream_model()
    assert model.config["stream_version"] == 2
    assert {MODELS.info(f"ca_stream_{parent}")["version"] for parent in PARENTS} == {2}
    old = {f"backbone.{key}": value for key, value in model.backbone.state_dict().items()}
    old["query"] = torch.zeros(16)  # version 1: a query at stage 1, three projections, no bias, no W_L
    for index, (c_in, c_out) in enumerate([(16, 32), (32, 64), (64, 128)]):
        old[f"projections.{index}.weight"] = torch.zeros(c_out, c_in)
    with pytest.raises(RuntimeError, match="size mismatch for projections.0.weight"):
        model.load_state_dict(old)


def test_the_stream_version_is_in_the_checkpoint_key():
    """A store of version-1 streams must not hand their checkpoints, maps or cells to version 2."""
    from interpbench.storage import stable_hash

    spec = TrainSpec("ca_stream_resnet18", TINY_DATA, TINY_RECIPE)
    identity = spec.identity()
    assert identity["model_version"] == 2
    del identity["model_version"]  # what the key of the same spec was before versions
    assert spec.key() != stable_hash(identity)
    plain_spec = TrainSpec("resnet18", TINY_DATA, TINY_RECIPE)  # unversioned models keep their keys
    assert "model_version" not in plain_spec.identity()
    assert TrainSpec.from_json(spec.identity()).key() == spec.key()  # a cell record's train spec
    with pytest.raises(RecordError, match="model ca_stream_resnet18 of version 1; the zoo's is 2"):
        TrainSpec.from_json(dict(spec.identity(), model_version=1))


def test_training_moves_only_the_stream(store):
    from interpbench.data import load_dataset

    recipe = dict(TINY_RECIPE, optimizer="adamw", lr=0.01, epochs=1)
    parent_spec = TrainSpec("resnet18", TINY_DATA, TINY_RECIPE)
    spec = TrainSpec("ca_stream_resnet18", TINY_DATA, recipe, parent=parent_spec)
    assert spec.depth == 1 and spec.key() != TrainSpec("ca_stream_resnet18", TINY_DATA, recipe).key()
    record = train_model(spec, store, progress=False)
    assert (parent_spec.folder(store) / "record.json").exists()  # the parent was trained first
    dataset = load_dataset(TINY_DATA)
    parent, _ = load_trained(parent_spec, store, dataset)
    model, _ = load_trained(spec, store, dataset)
    parent_state, backbone_state = parent.state_dict(), model.backbone.state_dict()
    assert parent_state.keys() == backbone_state.keys()
    for key in parent_state:  # weights, the classifier and the batch-norm statistics
        assert torch.equal(parent_state[key], backbone_state[key]), key
    torch.manual_seed(spec.seed)  # training builds the model right after this seed
    initial = build_model(spec, dataset)
    stream = {name: p for name, p in model.named_parameters() if not name.startswith("backbone.")}
    assert sorted(stream) == ["projections.0.bias", "projections.0.weight", "projections.1.bias",
                              "projections.1.weight", "projections.2.bias", "projections.2.weight",
                              "projections.3.bias", "projections.3.weight", "projections.4.bias",
                              "projections.4.weight", "query"]
    initial_state = initial.state_dict()
    for name, parameter in stream.items():  # every part of the stream learned
        assert not torch.equal(parameter.detach(), initial_state[name]), name
    assert record["trained_parameters"] == sum(p.numel() for p in stream.values()) == reference_stream_size(
        16, [16, 32, 64, 128])
    assert record["config"]["stream_version"] == 2
    assert all(not p.requires_grad for p in model.backbone.parameters())
