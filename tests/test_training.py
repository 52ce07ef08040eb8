"""Training: the checkpoint cache, resuming after an interruption, recipe checks, augmentation."""
import pytest
import torch
from conftest import TINY_DATA, TINY_RECIPE

from interpbench.core import TrainSpec
from interpbench.engine.train import (
    check_recipe,
    crop_flip,
    learning_rate,
    load_trained,
    multiply_accumulates,
    random_crop_flip,
    random_resized_crop_flip,
    resized_crop_boxes,
    resized_crops,
    train_model,
)
from interpbench.zoo import create_model


def spec(**changes):
    return TrainSpec(model=changes.pop("model", "fa_cnn"), data=TINY_DATA, recipe=dict(TINY_RECIPE, **changes),
                     model_args={"depth": 3, "channels": 10})


def test_training_is_cached_by_everything_that_determines_the_weights(store):
    first = spec()
    record = train_model(first, store, progress=False)
    assert record["finished"] and 0.0 <= record["test_accuracy"] <= 1.0
    assert record["train_images"] == 300 and len(record["history"]) == 2
    stamp = (first.folder(store) / "model.pt").stat().st_mtime_ns
    assert train_model(first, store, progress=False) == record  # a cache hit trains nothing
    assert (first.folder(store) / "model.pt").stat().st_mtime_ns == stamp
    assert spec(lr=0.05).key() != first.key() and spec().key() == first.key()
    elsewhere = TrainSpec("fa_cnn", dict(TINY_DATA, download=False), TINY_RECIPE,
                          model_args={"depth": 3, "channels": 10})
    assert elsewhere.key() == first.key()  # where the data comes from is not part of the key


def test_an_interrupted_run_resumes_to_the_same_weights(store, tmp_path):
    interrupted = spec(epochs=3)
    partial = train_model(interrupted, store, device="cpu", progress=False, stop_after_epochs=1)
    assert partial == {"finished": False, "epoch": 1, "folder": str(interrupted.folder(store))}
    assert (interrupted.folder(store) / "last.pt").exists()
    resumed = train_model(interrupted, store, device="cpu", progress=False)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    straight = train_model(interrupted, tmp_path / "other", device="cpu", progress=False)
    a = torch.load(interrupted.folder(store) / "model.pt", weights_only=False)["model"]
    b = torch.load(interrupted.folder(tmp_path / "other") / "model.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["history"] == straight["history"]
    assert not (interrupted.folder(store) / "last.pt").exists()


def test_load_trained_returns_the_recorded_model(store):
    from interpbench.data import load_dataset

    trained = spec()
    dataset = load_dataset(TINY_DATA)
    model, record = load_trained(trained, store, dataset, device="cpu")
    assert not model.training
    from interpbench.engine.train import evaluate_accuracy

    assert evaluate_accuracy(model, dataset.test, torch.device("cpu")) == record["test_accuracy"]


@pytest.mark.parametrize("changes, message", [
    ({"optimizer": "lbfgs"}, "unknown optimizer 'lbfgs'; valid optimizers: sgd, adamw"),
    ({"schedule": "linear"}, "unknown schedule 'linear'; valid schedules: constant, cosine, step"),
    ({"augment": "mixup"}, "unknown augment 'mixup'; valid augments: auto, none, crop_flip"),
])
def test_bad_recipes_are_one_line_errors(changes, message):
    with pytest.raises(ValueError) as error:
        check_recipe(dict(TINY_RECIPE, **changes))
    assert str(error.value) == message


def test_recipe_with_a_typo_names_the_valid_keys():
    recipe = dict(TINY_RECIPE)
    recipe["learning_rate"] = recipe.pop("lr")
    with pytest.raises(ValueError, match=r"missing keys \['lr'\] and unknown keys \['learning_rate'\]"):
        check_recipe(recipe)


def test_learning_rate_schedules():
    recipe = dict(TINY_RECIPE, lr=1.0, warmup_epochs=1, schedule="cosine")
    assert learning_rate(recipe, 0, 100, 10) == pytest.approx(0.1)
    assert learning_rate(recipe, 9, 100, 10) == pytest.approx(1.0)
    assert learning_rate(recipe, 10, 100, 10) == pytest.approx(1.0)
    assert learning_rate(recipe, 55, 100, 10) == pytest.approx(0.5)
    assert learning_rate(dict(recipe, schedule="constant", warmup_epochs=0), 99, 100, 10) == 1.0


STEP_RECIPE = dict(TINY_RECIPE, lr=0.1, schedule="step", milestones=[100, 150], gamma=0.1, epochs=200)


@pytest.mark.parametrize("epoch, expected", [
    (0, 0.1), (99, 0.1), (100, 0.01), (149, 0.01), (150, 0.001), (199, 0.001),
])
def test_step_schedule_divides_the_rate_when_a_milestone_epoch_begins(epoch, expected):
    """The usual CIFAR ResNet schedule: 0.1, then x0.1 at epochs 100 and 150 (counted from 0), the
    same at the first and the last step of an epoch."""
    steps_per_epoch = 7
    for step in (epoch * steps_per_epoch, epoch * steps_per_epoch + steps_per_epoch - 1):
        assert learning_rate(STEP_RECIPE, step, 200 * steps_per_epoch, steps_per_epoch) == pytest.approx(expected)


def test_step_schedule_agrees_with_torch_multisteplr():
    """CoDA-Net's schedule (2.5e-4, divided by 1.5 every 30 epochs) against PyTorch's MultiStepLR
    stepped once per epoch, over all 200 epochs."""
    milestones, gamma = [30, 60, 90, 120, 150, 180], 1 / 1.5
    recipe = dict(TINY_RECIPE, optimizer="adamw", lr=2.5e-4, schedule="step", milestones=milestones, gamma=gamma)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=2.5e-4)
    reference = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=gamma)
    ours, theirs = [], []
    for epoch in range(200):
        theirs.append(optimizer.param_groups[0]["lr"])
        ours.append(learning_rate(recipe, epoch * 3 + 1, 600, 3))
        optimizer.step()
        reference.step()
    assert ours == pytest.approx(theirs, rel=1e-12)
    assert ours[29] == pytest.approx(2.5e-4) and ours[30] == pytest.approx(2.5e-4 / 1.5)
    assert ours[199] == pytest.approx(2.5e-4 / 1.5 ** 6)


def test_step_schedule_after_warm_up():
    recipe = dict(STEP_RECIPE, lr=1.0, milestones=[2], gamma=0.5, warmup_epochs=1)
    assert [learning_rate(recipe, step, 40, 10) for step in (0, 4, 9, 10, 19, 20, 39)] == pytest.approx(
        [0.1, 0.5, 1.0, 1.0, 1.0, 0.5, 0.5])


@pytest.mark.parametrize("changes, message", [
    ({"gamma": None}, "schedule 'step' needs milestones (epochs) and gamma (the factor at each); missing: gamma"),
    ({"milestones": None, "gamma": None},
     "schedule 'step' needs milestones (epochs) and gamma (the factor at each); missing: milestones, gamma"),
    ({"milestones": [150, 100]},
     "milestones must be a non-empty list of increasing epochs (integers >= 1), got [150, 100]"),
    ({"milestones": [100, 100]},
     "milestones must be a non-empty list of increasing epochs (integers >= 1), got [100, 100]"),
    ({"milestones": [0, 100]},
     "milestones must be a non-empty list of increasing epochs (integers >= 1), got [0, 100]"),
    ({"milestones": []}, "milestones must be a non-empty list of increasing epochs (integers >= 1), got []"),
    ({"milestones": [10.5]}, "milestones must be a non-empty list of increasing epochs (integers >= 1), got [10.5]"),
    ({"milestones": "100,150"},
     "milestones must be a non-empty list of increasing epochs (integers >= 1), got '100,150'"),
    ({"gamma": 0}, "gamma must be a number in (0, 1], got 0"),
    ({"gamma": 1.5}, "gamma must be a number in (0, 1], got 1.5"),
    ({"gamma": "0.1"}, "gamma must be a number in (0, 1], got '0.1'"),
    ({"schedule": "cosine"}, "milestones and gamma apply to schedule 'step' only, got schedule 'cosine'; "
                             "set schedule: step or remove milestones, gamma"),
    ({"schedule": "constant", "milestones": None},
     "gamma applies to schedule 'step' only, got schedule 'constant'; set schedule: step or remove gamma"),
])
def test_bad_step_schedules_are_one_line_errors(changes, message):
    recipe = dict(STEP_RECIPE, **changes)
    for key in [k for k, v in changes.items() if v is None]:
        del recipe[key]
    with pytest.raises(ValueError) as error:
        check_recipe(recipe)
    assert str(error.value) == message
    check_recipe(STEP_RECIPE)  # the good one passes


def test_training_applies_the_step_schedule(store):
    """The optimiser's rate saved after each epoch: 0.1 in epoch 0, x0.5 from epoch 1, x0.25 from
    epoch 2 (milestones 1 and 2); the recipe's step keys are part of the cache key."""
    stepped = spec(schedule="step", milestones=[1, 2], gamma=0.5, epochs=4, lr=0.1)
    for epoch, expected in enumerate((0.1, 0.05, 0.025), start=1):
        assert train_model(stepped, store, progress=False, stop_after_epochs=1)["epoch"] == epoch
        state = torch.load(stepped.folder(store) / "last.pt", weights_only=False)
        assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(expected)
    record = train_model(stepped, store, progress=False)
    assert record["finished"] and [h["epoch"] for h in record["history"]] == [1, 2, 3, 4]
    assert spec(schedule="step", milestones=[1, 2], gamma=0.25, epochs=4).key() != stepped.key()


def test_random_crop_flip_moves_pixels_without_changing_them():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    out = random_crop_flip(x, torch.Generator().manual_seed(0), pad=2)
    assert out.shape == x.shape
    values = set(x.flatten().tolist()) | {0.0}
    assert set(out.flatten().tolist()) <= values  # crops of the zero-padded image, maybe flipped
    same = random_crop_flip(x, torch.Generator().manual_seed(0), pad=2)
    assert torch.equal(out, same)
    assert torch.equal(random_crop_flip(x, torch.Generator().manual_seed(0), pad=0)[0, 0].sort(-1).values,
                       x[0, 0].sort(-1).values)


def test_random_resized_crop_flip_is_seeded_and_keeps_the_shape():
    x = torch.rand(6, 3, 64, 80, generator=torch.Generator().manual_seed(1))
    out = random_resized_crop_flip(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out, random_resized_crop_flip(x, torch.Generator().manual_seed(0)))  # bit-identical
    assert not torch.equal(out, random_resized_crop_flip(x, torch.Generator().manual_seed(1)))
    assert float(out.min()) >= float(x.min()) and float(out.max()) <= float(x.max())  # interpolated values


def test_a_whole_image_crop_is_the_image_or_its_mirror_as_the_generator_draws():
    """Scale and ratio 1: every crop is the whole image; which images are flipped follows from the
    generator's draws after the boxes'."""
    x = torch.rand(16, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    out = random_resized_crop_flip(x, torch.Generator().manual_seed(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    generator = torch.Generator().manual_seed(0)
    top, left, height, width = resized_crop_boxes(16, 64, 64, generator, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert top.tolist() == left.tolist() == [0] * 16 and height.tolist() == width.tolist() == [64] * 16
    flipped = (torch.rand(16, generator=generator) < 0.5).tolist()
    assert 0 < sum(flipped) < 16
    for image, result, flip in zip(x, out, flipped):
        assert torch.equal(result, image.flip(-1) if flip else image)


def test_a_resized_crop_of_a_constant_image_is_constant():
    x = torch.tensor([0.3, 0.7, 0.1]).view(1, 3, 1, 1).expand(8, 3, 96, 72).contiguous()
    out = random_resized_crop_flip(x, torch.Generator().manual_seed(3))
    assert torch.equal(out, x)


def test_resized_crops_agree_with_bilinear_interpolation_of_the_crop():
    x = torch.rand(3, 2, 64, 64, generator=torch.Generator().manual_seed(4))
    top, left = torch.tensor([0, 10, 40]), torch.tensor([5, 0, 31])
    height, width = torch.tensor([64, 23, 17]), torch.tensor([50, 64, 33])
    out = resized_crops(x, top, left, height, width)
    for i in range(3):
        crop = x[i : i + 1, :, top[i] : top[i] + height[i], left[i] : left[i] + width[i]]
        expected = torch.nn.functional.interpolate(crop, size=(64, 64), mode="bilinear", align_corners=False)
        assert torch.allclose(out[i], expected[0], atol=1e-6)


def test_resized_crop_boxes_fit_the_image_in_area_and_aspect():
    top, left, height, width = resized_crop_boxes(2000, 224, 224, torch.Generator().manual_seed(5))
    assert bool((top >= 0).all() and (left >= 0).all())
    assert bool((top + height <= 224).all() and (left + width <= 224).all())
    area = (height * width).double() / 224 ** 2
    aspect = width.double() / height
    # the boxes are rounded to whole pixels: a little slack at the bounds
    assert float(area.min()) >= 0.075 and float(area.max()) <= 1.0 and float(area.min()) < 0.1
    assert float(aspect.min()) >= 0.74 and float(aspect.max()) <= 1.35
    assert float(aspect.min()) < 0.8 and float(aspect.max()) > 1.25  # the whole range is drawn


def test_a_panorama_falls_back_to_the_central_crop_of_the_widest_ratio():
    # 64 x 640: no box of the whole area with a ratio in [3/4, 4/3] fits, so each crop is the central
    # 64 x round(64 * 4/3) = 64 x 85 box
    top, left, height, width = resized_crop_boxes(4, 64, 640, torch.Generator().manual_seed(0), scale=(1.0, 1.0))
    assert top.tolist() == [0] * 4 and left.tolist() == [277] * 4
    assert height.tolist() == [64] * 4 and width.tolist() == [85] * 4


def test_crop_flip_pads_small_images_and_resizes_crops_of_large_ones():
    small = torch.rand(4, 3, 63, 63)
    assert torch.equal(crop_flip(small, torch.Generator().manual_seed(0)),
                       random_crop_flip(small, torch.Generator().manual_seed(0)))
    large = torch.rand(4, 3, 64, 64)
    assert torch.equal(crop_flip(large, torch.Generator().manual_seed(0)),
                       random_resized_crop_flip(large, torch.Generator().manual_seed(0)))
    wide = torch.rand(4, 3, 32, 128)  # the shorter side decides
    assert torch.equal(crop_flip(wide, torch.Generator().manual_seed(0)),
                       random_crop_flip(wide, torch.Generator().manual_seed(0)))


def test_training_reports_its_progress(store, monkeypatch, tmp_path):
    from interpbench import progress

    calls = []
    report = progress.report
    monkeypatch.setattr(progress, "report", lambda stage, force=False, **fields: (
        calls.append((stage, force, fields)), report(stage, force, **fields)))
    path = tmp_path / "progress" / "job.json"
    progress.bind(path, job="job-1")
    try:
        record = train_model(spec(), store, progress=False)
        trained = progress.read(path)
        train_model(spec(), store, progress=False)  # a cache hit
        loaded = progress.read(path)
    finally:
        progress.bind(None)
    steps = [(f["epoch"], f["step"]) for stage, force, f in calls if stage == "train" and not force]
    assert steps == [(e, s) for e in (1, 2) for s in range(1, 7)]
    ends = [f for stage, force, f in calls if stage == "train" and force]
    assert [(f["epoch"], f["step"], f["steps"], f["epochs"]) for f in ends] == [(1, 6, 6, 2), (2, 6, 6, 2)]
    for end, epoch in zip(ends, record["history"]):
        assert end["loss"] == epoch["loss"] and end["accuracy"] == epoch["train_accuracy"]
    assert calls[-2] == ("trained", True, {"model": "fa_cnn", "test_accuracy": record["test_accuracy"]})
    assert calls[-1] == ("load", False, {"model": "fa_cnn"})
    assert {k: trained[k] for k in ("job", "stage", "model", "test_accuracy")} == {
        "job": "job-1", "stage": "trained", "model": "fa_cnn", "test_accuracy": record["test_accuracy"]}
    assert loaded["stage"] == "load" and loaded["model"] == "fa_cnn"


def test_fitting_on_a_parent_is_reported(store, monkeypatch):
    """A derived model fitted on its trained parent reports ``fit``, after its parent's training."""
    from torch import nn

    from interpbench import progress, wrap
    from interpbench.zoo import MODELS

    monkeypatch.setattr(MODELS, "_builders", dict(MODELS._builders))
    monkeypatch.setattr(MODELS, "_info", dict(MODELS._info))

    @MODELS.register("copied_cnn_progress_test")
    def build(num_classes=10, input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.25,) * 3, size="cpu"):
        net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(4, num_classes))
        model = wrap(net, mean=mean, std=std, cam_layer="0", num_classes=num_classes, input_size=input_size)
        model.init_from_parent = lambda parent, train: model.load_state_dict(parent.state_dict())
        return model

    calls = []
    monkeypatch.setattr(progress, "report", lambda stage, force=False, **fields: calls.append((stage, fields)))
    parent = TrainSpec("copied_cnn_progress_test", TINY_DATA, dict(TINY_RECIPE, epochs=1))
    derived = TrainSpec("copied_cnn_progress_test", TINY_DATA, dict(TINY_RECIPE, epochs=0), parent=parent)
    record = train_model(derived, store, progress=False)
    stages = [stage for stage, _ in calls]
    assert stages == ["train"] * 7 + ["trained", "fit", "trained"]
    assert calls[-2] == ("fit", {"model": "copied_cnn_progress_test"})
    assert calls[-1][1]["test_accuracy"] == record["test_accuracy"] and record["history"] == []


def test_the_train_script_trains_and_reports(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "runners" / "train.py"
    result = subprocess.run(
        [sys.executable, str(script), "zoo=fa_cnn", f"store={tmp_path}", "data.num_train=100",
         "data.num_test=50", "profile.recipes.fa_minimal.epochs=1", "+model_args.fa_cnn={depth:3,channels:10}",
         "progress=false"], capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("fa_cnn (seed 0): test accuracy ") and str(tmp_path / "models" / "fa_cnn-") in line
    assert len(list((tmp_path / "models").glob("fa_cnn-*/record.json"))) == 1


def test_multiply_accumulates_counts_convolutions():
    model = create_model("fa_cnn", num_classes=10, depth=3, channels=10)
    # stem 3->10 at 32x32, then 10->10 convs at 32, 16 and 8 pixels; the pooling head has none.
    expected = 27 * 10 * 32 * 32 + 90 * 10 * (32 * 32 + 16 * 16 + 8 * 8)
    assert multiply_accumulates(model, (3, 32, 32)) == expected


def test_training_lock_lets_one_holder_in_at_a_time(tmp_path):
    import threading
    import time

    from interpbench.engine.train import training_lock

    events, first_inside = [], threading.Event()

    def hold(name, wait_for=None):
        if wait_for is not None:
            wait_for.wait()
        with training_lock(tmp_path / "models" / "m-key"):
            events.append(f"{name} in")
            first_inside.set()
            time.sleep(0.3)
            events.append(f"{name} out")

    threads = [threading.Thread(target=hold, args=("first",)),
               threading.Thread(target=hold, args=("second", first_inside))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert events == ["first in", "first out", "second in", "second out"]
    assert (tmp_path / "models" / "m-key" / "train.lock").exists()
