"""CA-Stream: attention over positions, the zero-query identity with GAP, and a frozen backbone."""
import torch
from conftest import TINY_DATA, TINY_RECIPE

from interpbench.core import TrainSpec
from interpbench.engine.train import load_trained, train_model
from interpbench.zoo import create_model


def stream_model(seed: int = 0):
    torch.manual_seed(seed)
    model = create_model("ca_stream_resnet18", num_classes=10).eval()
    with torch.no_grad():  # a stream that is not the identity at initialisation
        for projection in model.projections:
            projection.weight.normal_(0, 0.3)
    return model


def test_attention_of_every_stage_sums_to_one_per_image():
    model = stream_model()
    maps = model.attention_maps(torch.rand(3, 3, 32, 32))
    assert [tuple(m.shape) for m in maps] == [(3, 32, 32), (3, 16, 16), (3, 8, 8), (3, 4, 4)]
    for attention in maps:
        assert torch.allclose(attention.sum(dim=(1, 2)), torch.ones(3), atol=1e-5)
        assert (attention >= 0).all()
    last = maps[-1]
    assert not torch.allclose(last, torch.full_like(last, 1 / 16))  # a trained-looking stream attends


def test_zero_query_attends_uniformly_and_predicts_as_the_gap_resnet():
    model = stream_model()
    x = torch.rand(4, 3, 32, 32)
    gap_logits = model.backbone(x)  # the frozen ResNet with global average pooling
    with torch.no_grad():
        model.query.zero_()
        for projection in model.projections:
            projection.weight.zero_()
    for attention, n in zip(model.attention_maps(x), (32 * 32, 16 * 16, 8 * 8, 4 * 4)):
        assert torch.equal(attention, torch.full_like(attention, 1.0 / n))
    assert torch.allclose(model(x), gap_logits, rtol=0, atol=1e-5)
    assert torch.equal(model(x).argmax(1), gap_logits.argmax(1))


def test_zero_initialised_projections_start_from_the_parents_predictions():
    torch.manual_seed(3)
    parent = create_model("resnet18", num_classes=10).eval()
    model = create_model("ca_stream_resnet18", num_classes=10).eval()
    model.init_from_parent(parent)
    x = torch.rand(4, 3, 32, 32)
    assert torch.allclose(model(x), parent(x), rtol=0, atol=1e-5)


def test_native_map_is_the_last_attention_upsampled_and_ignores_the_target():
    model = stream_model()
    x = torch.rand(2, 3, 32, 32)
    maps = model.explain(x)
    assert maps.shape == (2, 32, 32)
    assert torch.equal(maps, model.explain(x, target=3))
    # bilinear upsampling keeps the mean of a 4x4 map that sums to one: 1/16 per pixel
    assert torch.allclose(maps.mean(dim=(1, 2)), torch.full((2,), 1 / 16), atol=1e-3)


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
    assert all(float(p.detach().abs().sum()) > 0 for p in model.projections.parameters())  # the stream learned
    stream_size = model.query.numel() + sum(p.numel() for p in model.projections.parameters())
    assert record["trained_parameters"] == stream_size
    assert all(not p.requires_grad for p in model.backbone.parameters())
