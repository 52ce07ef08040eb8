"""average_drop / average_gain / average_increase: known answers on a hand-built model, the
min-max scaling, undefined denominators, one shared forward pass, directions and errors; the class
they explain and score (``target``: the true label by default, as CA-Stream's code; the prediction
as an option), in a direct call and in a sweep whose other cells explain the predicted class."""
import pytest
import torch
from conftest import random_fa_cnn

from interpbench.metrics import METRICS
from interpbench.metrics.average_drop import explanation_map_images, minmax
from interpbench.metrics.base import Batch
from interpbench.zoo.base import ZooModel

NAMES = ("average_drop", "average_gain", "average_increase")


class MeanModel(ZooModel):
    """Two classes; L1-normalised probabilities ``[1 - m, m]`` with ``m`` the mean of channel 0."""

    def __init__(self):
        super().__init__(num_classes=2, input_size=(3, 4, 4), mean=(0.5,) * 3, std=(1.0,) * 3)

    def forward(self, x):
        m = x[:, 0].mean(dim=(1, 2))
        return torch.stack([1 - m, m], dim=1)

    def probabilities(self, logits):
        return logits / logits.sum(1, keepdim=True)


def half_map(low=3.0, high=5.0):
    """Left half ``high``, right half ``low``: min-max scaled to 1 on the left, 0 on the right."""
    s = torch.full((4, 4), low, dtype=torch.float64)
    s[:, :2] = high
    return s


def scores(x, saliency, labels, **args):
    """The three metrics' per-image scores of maps that explain ``labels`` (the default target)."""
    model = MeanModel().double()
    return {name: METRICS.create(name, **args)(model, x, labels, saliency, target=labels)["score"] for name in NAMES}


def test_known_drop_gain_and_increase():
    # Channel 0 is 0.5 everywhere: Y = 0.5 for both classes. E keeps the left half only, so
    # m(E) = 0.25: class 1 drops to O = 0.25 (drop 50 %), class 0 rises to O = 0.75
    # (gain (0.75 - 0.5) / (1 - 0.5) = 50 %, an increase).
    x = torch.full((2, 3, 4, 4), 0.5, dtype=torch.float64)
    out = scores(x, torch.stack([half_map(), half_map()]), torch.tensor([1, 0]))
    assert out["average_drop"].tolist() == pytest.approx([50.0, 0.0])
    assert out["average_gain"].tolist() == pytest.approx([0.0, 50.0])
    assert out["average_increase"].tolist() == [0.0, 100.0]
    # the reported values are the means: AD 25 %, AG 25 %, AI 50 %
    assert float(out["average_drop"].mean()) == pytest.approx(25.0)
    assert float(out["average_increase"].mean()) == pytest.approx(50.0)


def test_map_is_min_max_scaled_per_image_and_applied_in_pixel_space():
    saliency = torch.stack([half_map(3.0, 5.0), torch.linspace(-1, 2, 16, dtype=torch.float64).view(4, 4)])
    scaled = minmax(saliency)
    assert scaled[0].tolist() == [[1.0, 1.0, 0.0, 0.0]] * 4
    assert scaled[1].flatten().tolist() == pytest.approx((torch.arange(16) / 15).tolist())
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    batch = Batch(MeanModel().double(), x, torch.zeros(2, dtype=torch.long), saliency)
    assert torch.equal(explanation_map_images(batch), x * scaled.unsqueeze(1))
    # a constant map has no range: it keeps nothing (E is black)
    assert minmax(torch.full((1, 4, 4), 7.0)).abs().sum() == 0


def test_constant_map_makes_a_black_image_a_full_drop():
    x = torch.full((1, 3, 4, 4), 0.5, dtype=torch.float64)
    out = scores(x, torch.full((1, 4, 4), 2.0, dtype=torch.float64), torch.tensor([1]))
    assert out["average_drop"].tolist() == pytest.approx([100.0])


def test_zero_denominators_count_as_zero():
    # Channel 0 all ones: Y = 1 for class 1 (no gain possible), Y = 0 for class 0 (no drop
    # possible); E keeps half the image, O = 0.5 for both.
    x = torch.ones(2, 3, 4, 4, dtype=torch.float64)
    out = scores(x, torch.stack([half_map(), half_map()]), torch.tensor([1, 0]))
    assert out["average_drop"].tolist() == pytest.approx([50.0, 0.0])
    assert out["average_gain"].tolist() == pytest.approx([0.0, 50.0])
    assert out["average_increase"].tolist() == [0.0, 100.0]


def test_the_three_share_one_forward_pass_of_the_map():
    x = torch.rand(3, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    saliency = torch.rand(3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    batch = Batch(MeanModel().double(), x, torch.zeros(3, dtype=torch.long), saliency)
    results = [METRICS.create(name).compute(batch)["score"] for name in NAMES]
    assert batch.forward_images == 2 * 3  # the clean images and E, once for all three
    assert all(r.shape == (3,) for r in results)


def test_oracle_map_drops_less_than_a_reversed_map():
    # The evidence for class 1 is channel 0's brightness; keeping the bright pixels drops less.
    x = torch.rand(6, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    target = torch.ones(6, dtype=torch.long)
    oracle, reversed_ = scores(x, x[:, 0].clone(), target), scores(x, -x[:, 0], target)
    assert float(oracle["average_drop"].mean()) < float(reversed_["average_drop"].mean())


def test_directions():
    assert METRICS.create("average_drop").higher_is_better is False
    assert METRICS.create("average_gain").higher_is_better is True
    assert METRICS.create("average_increase").higher_is_better is True


@pytest.mark.parametrize("name", NAMES)
def test_unknown_argument_is_a_one_line_error(name):
    with pytest.raises(TypeError) as error:
        METRICS.create(name, scale="minmax")
    assert str(error.value) == f"metric '{name}' takes no argument 'scale'; valid arguments: target"


# --- which class: the true label (default, as CA-Stream's code) or the prediction ----------------

def test_target_label_scores_the_label_and_predicted_the_prediction():
    # Channel 0 is 0.75: P = [0.25, 0.75], the model predicts class 1; the label is class 0. E keeps
    # the left half, m(E) = 0.375, P(E) = [0.625, 0.375].
    # label (class 0): Y = 0.25, O = 0.625: no drop, gain (0.625 - 0.25) / 0.75 = 50 %, an increase;
    # predicted (class 1): Y = 0.75, O = 0.375: drop 0.375 / 0.75 = 50 %, no gain, no increase.
    x = torch.full((1, 3, 4, 4), 0.75, dtype=torch.float64)
    labels, predicted, saliency = torch.tensor([0]), torch.tensor([1]), half_map().unsqueeze(0)
    model = MeanModel().double()
    by_label = {name: METRICS.create(name)(model, x, labels, saliency, target=labels)["score"] for name in NAMES}
    by_prediction = {name: METRICS.create(name, target="predicted")(model, x, labels, saliency, target=predicted)["score"]
                     for name in NAMES}
    assert [float(by_label[n]) for n in NAMES] == pytest.approx([0.0, 50.0, 100.0])
    assert [float(by_prediction[n]) for n in NAMES] == pytest.approx([50.0, 0.0, 0.0])
    assert METRICS.create("average_drop").label == "average_drop"  # the default is not shown
    assert METRICS.create("average_gain", target="predicted").label == "average_gain(target=predicted)"
    assert [METRICS.create(n).explains for n in NAMES] == ["label"] * 3
    assert METRICS.create("average_increase", target="predicted").explains == "predicted"


def test_maps_of_another_class_are_a_one_line_error():
    x = torch.full((2, 3, 4, 4), 0.75, dtype=torch.float64)  # both images predicted as class 1
    labels, saliency, model = torch.tensor([0, 1]), torch.stack([half_map(), half_map()]), MeanModel().double()
    with pytest.raises(ValueError) as error:  # maps of the prediction, scored on the label
        METRICS.create("average_drop")(model, x, labels, saliency, target=torch.tensor([1, 1]))
    assert str(error.value) == ("average_drop scores each image's true label, but 1 of 2 maps explain another "
                                "class; explain the true label (target='label') or give the metric target='predicted'")
    with pytest.raises(ValueError) as error:  # maps of the label (a call without target), scored on the prediction
        METRICS.create("average_gain", target="predicted")(model, x, labels, saliency)
    assert str(error.value) == ("average_gain(target=predicted) scores each image's predicted class, but 1 of 2 "
                                "maps explain another class; explain the predicted class (target='predicted') or "
                                "give the metric target='label'")
    # a tie (P = [0.5, 0.5]) makes either class a prediction
    tie = torch.full((2, 3, 4, 4), 0.5, dtype=torch.float64)
    out = METRICS.create("average_drop", target="predicted")(model, tie, labels, saliency, target=torch.tensor([0, 1]))
    assert out["score"].tolist() == pytest.approx([0.0, 50.0])


@pytest.mark.parametrize("name", NAMES)
def test_unknown_target_is_a_one_line_error(name):
    with pytest.raises(ValueError) as error:
        METRICS.create(name, target="true")
    assert str(error.value) == "unknown target 'true'; valid targets: label, predicted"


def test_a_sweep_explaining_the_prediction_explains_and_scores_the_label_for_these_metrics(tmp_path):
    """plan_sweep gives the three metrics' cells the metric's target (the true label) while the other
    cells explain the sweep's (the prediction); run_cells explains each class once for its group,
    every score equals a direct call on maps of its class, and the cells share one leaderboard."""
    from hydra import compose, initialize_config_dir

    from interpbench.cli import CONFIG_DIR, register_configs
    from interpbench.data import load_dataset
    from interpbench.engine.evaluate import evaluation_images, run_cells
    from interpbench.engine.plan import plan_sweep
    from interpbench.explainers import EXPLAINERS
    from interpbench.report.tables import settings_conflict

    register_configs()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[
            f"store={tmp_path / 'store'}", "data.num_train=20", "data.num_test=40", "profile.eval.num_images=12",
            "profile.eval.batch_size=12", "profile.eval.target=predicted", "zoo=fa_cnn", "explainer=gradcam",
            "metric=[average_drop,average_gain,deletion]", "metrics.average_gain.target=predicted",
            "+model_args.fa_cnn={depth:3,channels:10}"])
    cells = {cell.metric: cell for cell in plan_sweep(cfg).all_cells}
    assert (cells["average_drop"].target, cells["average_drop"].metric_args) == ("label", {"target": "label"})
    assert (cells["average_gain"].target, cells["average_gain"].metric_args) == ("predicted", {"target": "predicted"})
    assert cells["deletion"].target == "predicted" and "target" not in cells["deletion"].metric_args

    dataset = load_dataset(cfg.data)
    model = random_fa_cnn(depth=3, channels=10)
    results, errors = run_cells(list(cells.values()), tmp_path / "store", device="cpu", model=model,
                                record={"test_accuracy": 0.1, "key": "random"}, dataset=dataset)
    assert errors == {}
    assert len(list((tmp_path / "store" / "saliency").glob("*.pt"))) == 2  # labels, predictions: once each
    images = evaluation_images(dataset, 12, 0)
    x, y = images["x"], images["y"]
    with torch.no_grad():
        predicted = model(x).argmax(1)
    assert bool((predicted != y).any())  # the two targets differ on these images
    for metric, classes in (("average_drop", y), ("average_gain", predicted), ("deletion", predicted)):
        cell = cells[metric]
        maps = EXPLAINERS.create("gradcam").explain_all(model, x, classes)
        expected = METRICS.create(metric, **cell.metric_args)(model, x, y, maps, target=classes)["score"]
        assert results[cell.key()].per_image == pytest.approx(expected.tolist(), abs=1e-5)
    wrong_maps = EXPLAINERS.create("gradcam").explain_all(model, x, predicted)
    on_prediction = METRICS.create("average_drop", target="predicted")(model, x, y, wrong_maps, target=predicted)
    assert results[cells["average_drop"].key()].per_image != pytest.approx(on_prediction["score"].tolist(), abs=1e-5)
    assert [results[cells[m].key()].label for m in ("average_drop", "average_gain")] == [
        "average_drop", "average_gain(target=predicted)"]
    assert settings_conflict(list(results.values())) is None
