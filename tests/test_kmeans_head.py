"""k-means head: k-means itself, k = 1 as the nearest class mean, and the explanation's identity."""
import pytest
import torch
from conftest import TINY_DATA, TINY_RECIPE

from interpbench.core import TrainSpec
from interpbench.data import load_dataset
from interpbench.engine.train import load_trained, train_model
from interpbench.zoo import create_model
from interpbench.zoo.kmeans_head import kmeans


def test_kmeans_recovers_well_separated_clusters():
    torch.manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([c + 0.1 * torch.randn(50, 2) for c in centres])
    found = kmeans(points, 3, seed=1)
    order = torch.cdist(centres, found).argmin(dim=1)
    assert sorted(order.tolist()) == [0, 1, 2]
    expected = torch.stack([points[i * 50 : (i + 1) * 50].mean(0) for i in range(3)])
    assert torch.allclose(found[order], expected, atol=1e-5)  # each centre is its cluster's mean
    assert torch.equal(kmeans(points, 3, seed=1), found)  # seeded
    with pytest.raises(ValueError, match="at least k=5"):
        kmeans(points[:4], 5)


@pytest.fixture(scope="module")
def fitted():
    torch.manual_seed(0)
    parent = create_model("resnet18", num_classes=10).eval()
    data = load_dataset(TINY_DATA)
    models = {}
    for features, k in (("b4", 1), ("b234", 3)):
        model = create_model(f"kmeans_resnet18_{features}", num_classes=10, k=k).eval()
        model.init_from_parent(parent, data.train)
        models[features] = model
    return parent, data, models


def test_k_equal_one_on_b4_is_the_nearest_class_mean_classifier(fitted):
    parent, data, models = fitted
    model = models["b4"]
    from interpbench.data.base import to_float

    with torch.no_grad():
        train_x = to_float(data.train.images)
        pooled = parent.forward_features(parent.normalize(train_x)).mean(dim=(2, 3))
        means = torch.stack([pooled[data.train.labels == c].mean(0) for c in range(10)])
        scale = pooled.norm(dim=1).mean()
        assert torch.allclose(model.prototypes[:, 0], means / scale, atol=1e-5)
        test_x = to_float(data.test.images)
        test_pooled = parent.forward_features(parent.normalize(test_x)).mean(dim=(2, 3))
        direct = torch.cdist(test_pooled.double(), means.double()).argmin(dim=1)
        assert torch.equal(model(test_x).argmax(dim=1), direct)


def test_b234_combines_three_blocks_each_at_unit_mean_norm(fitted):
    _, data, models = fitted
    model = models["b234"]
    from interpbench.data.base import to_float

    assert model.prototypes.shape == (10, 3, 32 + 64 + 128)
    with torch.no_grad():
        pooled = model.forward_features(model.encode_input(to_float(data.train.images)))
    for a, b in ((0, 32), (32, 96), (96, 224)):
        assert float(pooled[:, a:b].norm(dim=1).mean()) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("features", ["b4", "b234"])
def test_similarity_maps_average_to_the_logit_up_to_a_shared_term(fitted, features):
    _, data, models = fitted
    model = models[features]
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        pooled = model.forward_features(model.encode_input(x))
        for target in range(10):
            maps, logits = model.similarity_maps(x, target)
            recovered = maps.mean(dim=(1, 2)) - pooled.pow(2).sum(1)
            assert torch.allclose(recovered, logits[:, target], rtol=1e-4, atol=1e-4)
    explained = model.explain(x)
    assert explained.shape == (5, 32, 32) and torch.isfinite(explained).all()


def test_fitting_through_the_training_cache_keeps_the_backbone(store):
    parent_spec = TrainSpec("resnet18", TINY_DATA, TINY_RECIPE)
    fit = dict(TINY_RECIPE, epochs=0, lr=0.0)
    spec = TrainSpec("kmeans_resnet18_b4", TINY_DATA, fit, parent=parent_spec, model_args={"k": 2})
    record = train_model(spec, store, progress=False)
    assert record["history"] == [] and 0.0 <= record["test_accuracy"] <= 1.0
    data = load_dataset(TINY_DATA)
    parent, _ = load_trained(parent_spec, store, data)
    model, _ = load_trained(spec, store, data)
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in parent.state_dict().items())
    assert model.prototypes.shape == (10, 2, 128) and float(model.prototypes.detach().abs().sum()) > 0
    from interpbench.engine.train import evaluate_accuracy

    assert evaluate_accuracy(model, data.test, torch.device("cpu")) == record["test_accuracy"]


# --- the paper's backbone: ResNet-34 -------------------------------------------------------------

def test_resnet34_at_paper_size_has_the_papers_stages():
    from timm.models.resnet import BasicBlock

    torch.manual_seed(0)
    parent = create_model("resnet34", num_classes=10, size="paper")
    stages = [parent.net.layer1, parent.net.layer2, parent.net.layer3, parent.net.layer4]
    assert [len(stage) for stage in stages] == [3, 4, 6, 3]
    assert all(type(block) is BasicBlock for stage in stages for block in stage)
    assert parent.stage_widths == [64, 128, 256, 512]
    assert parent.config["arch"] == "resnet34"
    heads = {features: create_model(f"kmeans_resnet34_{features}", num_classes=10, size="paper", k=2).eval()
             for features in ("b4", "b234")}
    assert heads["b4"].prototypes.shape == (10, 2, 512)
    assert heads["b234"].prototypes.shape == (10, 2, 128 + 256 + 512)
    assert all(head.backbone.config["arch"] == "resnet34" for head in heads.values())
    assert [len(s) for s in (heads["b4"].backbone.net.layer1, heads["b4"].backbone.net.layer4)] == [3, 3]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        for head in heads.values():
            logits = head(x)
            assert logits.shape == (2, 10) and torch.isfinite(logits).all()
            assert (logits <= 0).all()  # negative squared distances


def test_resnet34_heads_are_registered_outside_the_default_sweep():
    from interpbench.engine.plan import resolve_names
    from interpbench.zoo import MODELS

    for name, parent in (("resnet34", None), ("kmeans_resnet34_b4", "resnet34"), ("kmeans_resnet34_b234", "resnet34")):
        assert name in MODELS.list()
        info = MODELS.info(name)
        assert info["in_all"] is False and info.get("parent") == parent
    assert MODELS.info("kmeans_resnet34_b4")["recipe"] == "kmeans_fit"
    default = resolve_names("all", MODELS, "zoo")
    assert not [name for name in default if "resnet34" in name] and "kmeans_resnet18_b4" in default
    assert resolve_names("*resnet34*", MODELS, "zoo") == ["kmeans_resnet34_b234", "kmeans_resnet34_b4", "resnet34"]


def test_k_equal_one_on_a_resnet34_is_the_nearest_class_mean_of_its_last_stage():
    from interpbench.data.base import to_float

    torch.manual_seed(1)
    parent = create_model("resnet34", num_classes=10).eval()
    data = load_dataset(TINY_DATA)
    model = create_model("kmeans_resnet34_b4", num_classes=10, k=1).eval()
    model.init_from_parent(parent, data.train)
    with torch.no_grad():
        pooled = parent.forward_features(parent.normalize(to_float(data.train.images))).mean(dim=(2, 3))
        means = torch.stack([pooled[data.train.labels == c].mean(0) for c in range(10)])
        assert torch.allclose(model.prototypes[:, 0], means / pooled.norm(dim=1).mean(), atol=1e-5)
