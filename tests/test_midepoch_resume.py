"""Checkpoints within an epoch: a run stopped or killed mid-epoch resumes to the weights of an
uninterrupted run, bit for bit (on the CPU)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_DATA, TINY_RECIPE

import interpbench.engine.train as train
from interpbench.core import TrainSpec
from interpbench.engine.train import train_model
from interpbench.integrity import sidecar_path

# 300 images in batches of 50: 6 steps an epoch; crop_flip draws from the epoch's generator.
STEPS = 6


def spec(model="fa_cnn", image_size=32, **changes):
    args = {"depth": 3, "channels": 10} if model == "fa_cnn" else {}
    recipe = dict(TINY_RECIPE, augment="crop_flip", **changes)
    return TrainSpec(model=model, data=dict(TINY_DATA, image_size=image_size), recipe=recipe, model_args=args)


def weights(trained, store):
    return torch.load(trained.folder(store) / "model.pt", weights_only=False)["model"]


def assert_bit_identical(a, b):
    assert a.keys() == b.keys()
    assert any(k.endswith("running_mean") for k in a) and any(k.endswith("num_batches_tracked") for k in a)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == []


def last_state(trained, store):
    return torch.load(trained.folder(store) / "last.pt", weights_only=False)


@pytest.mark.parametrize("image_size", [32, 64, pytest.param(224, marks=pytest.mark.slow)])  # pad-and-crop; random resized crop (64, ImageNet's 224)
def test_runs_stopped_within_epochs_resume_to_bit_identical_weights(store, tmp_path, image_size, capsys):
    trained = spec(image_size=image_size)
    first = train_model(trained, store, device="cpu", progress=False, stop_after_steps=4)
    assert first == {"finished": False, "epoch": 0, "step": 4, "folder": str(trained.folder(store))}
    state = last_state(trained, store)
    assert (state["epoch"], state["step"], state["samples"], state["steps_per_epoch"]) == (0, 4, 200, STEPS)
    assert state["history"] == [] and sidecar_path(trained.folder(store) / "last.pt").exists()
    # on into the second epoch: 2 steps finish the first, 3 more of the second
    assert train_model(trained, store, device="cpu", progress=False, stop_after_steps=5)["step"] == 3
    assert "fa_cnn: resuming in epoch 1 after step 4/6 from " in capsys.readouterr().out
    assert (last_state(trained, store)["epoch"], last_state(trained, store)["step"]) == (1, 3)
    resumed = train_model(trained, store, device="cpu", progress=False)
    straight = train_model(trained, tmp_path / "other", device="cpu", progress=False)
    assert_bit_identical(weights(trained, store), weights(trained, tmp_path / "other"))
    assert resumed["history"] == straight["history"]  # the running loss and accuracy sums went on
    assert resumed["test_accuracy"] == straight["test_accuracy"]
    assert resumed["resumed_at_epochs"] == [0, 1] and resumed["resumed_at_steps"] == [4, STEPS + 3]
    assert straight["resumed_at_epochs"] == straight["resumed_at_steps"] == []
    assert not (trained.folder(store) / "last.pt").exists()


def test_a_stop_at_an_epoch_end_resumes_there(store, tmp_path):
    trained = spec()
    assert train_model(trained, store, device="cpu", progress=False, stop_after_steps=STEPS) == {
        "finished": False, "epoch": 1, "step": 0, "folder": str(trained.folder(store))}
    assert last_state(trained, store)["step"] == 0
    resumed = train_model(trained, store, device="cpu", progress=False)
    train_model(trained, tmp_path / "other", device="cpu", progress=False)
    assert_bit_identical(weights(trained, store), weights(trained, tmp_path / "other"))
    assert resumed["resumed_at_epochs"] == [1] and resumed["resumed_at_steps"] == [STEPS]


DROPOUT_MODEL = "dropout_cnn_midepoch_test"


@pytest.fixture
def dropout_model(monkeypatch):
    """A small CNN with batch norm and dropout (the global torch generator), registered for one test."""
    from torch import nn

    from interpbench import wrap
    from interpbench.zoo import MODELS

    monkeypatch.setattr(MODELS, "_builders", dict(MODELS._builders))
    monkeypatch.setattr(MODELS, "_info", dict(MODELS._info))

    @MODELS.register(DROPOUT_MODEL)
    def build(num_classes=10, input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.25,) * 3, size="cpu"):
        net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout2d(0.3),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3), nn.Linear(8, num_classes))
        return wrap(net, mean=mean, std=std, cam_layer="2", num_classes=num_classes, input_size=input_size)

    return DROPOUT_MODEL


def test_dropout_draws_go_on_after_a_resume(dropout_model, store, tmp_path):
    """The global generator's state is part of the checkpoint: dropout masks after the resume are
    those the uninterrupted run draws (at a step within an epoch and at an epoch's end)."""
    trained = spec(model=dropout_model, epochs=3)
    train_model(trained, store, device="cpu", progress=False, stop_after_steps=3)
    torch.manual_seed(12345)  # what the process did meanwhile must not matter
    train_model(trained, store, device="cpu", progress=False, stop_after_steps=STEPS - 3)
    torch.rand(7)
    resumed = train_model(trained, store, device="cpu", progress=False)
    straight = train_model(trained, tmp_path / "other", device="cpu", progress=False)
    assert_bit_identical(weights(trained, store), weights(trained, tmp_path / "other"))
    assert resumed["history"] == straight["history"] and resumed["resumed_at_steps"] == [3, STEPS]


def test_checkpoints_within_epochs_follow_checkpoint_every_s(store, monkeypatch):
    """Each write of last.pt as (epochs finished, step within the next): at epoch ends only with
    checkpoint_every_s None or 0; after every step but an epoch's last with a tiny interval."""
    writes = []
    save = train.save_last
    monkeypatch.setattr(train, "save_last", lambda path, state: (writes.append((state["epoch"], state["step"])),
                                                                 save(path, state)))
    train_model(spec(), store / "none", progress=False, checkpoint_every_s=None)
    train_model(spec(), store / "zero", progress=False, checkpoint_every_s=0)
    assert writes == [(1, 0), (2, 0)] * 2
    writes.clear()
    train_model(spec(), store / "often", progress=False, checkpoint_every_s=1e-9)
    assert writes == [(0, s) for s in range(1, STEPS)] + [(1, 0)] + [(1, s) for s in range(1, STEPS)] + [(2, 0)]
    writes.clear()
    train_model(spec(), store / "default", progress=False)  # 600 s: no tiny run writes within an epoch
    assert writes == [(1, 0), (2, 0)]


@pytest.mark.parametrize("value", [-1, float("inf"), float("nan"), "10", True])
def test_a_bad_checkpoint_interval_is_a_one_line_error(store, value):
    with pytest.raises(ValueError) as error:
        train_model(spec(), store, progress=False, checkpoint_every_s=value)
    assert str(error.value) == (f"checkpoint_every_s must be a finite number of seconds >= 0, or None "
                                f"(0 and None: checkpoints at epoch ends only), got {value!r}")


def test_a_kill_between_the_checkpoint_and_its_manifest_loses_nothing(store, tmp_path, monkeypatch):
    """The old manifest goes before the new checkpoint is written: a kill after the checkpoint, before
    its manifest, leaves a checkpoint that resumes (not one quarantined for another's manifest)."""
    trained = spec()
    calls = []
    write = train.write_sidecar

    def killed_on_the_third(path):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as a kill there would
        return write(path)

    monkeypatch.setattr(train, "write_sidecar", killed_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        train_model(trained, store, device="cpu", progress=False, checkpoint_every_s=1e-9)
    monkeypatch.setattr(train, "write_sidecar", write)
    last = trained.folder(store) / "last.pt"
    assert not sidecar_path(last).exists() and last_state(trained, store)["step"] == 3
    resumed = train_model(trained, store, device="cpu", progress=False)
    assert resumed["resumed_at_steps"] == [3] and not (store / "quarantine").exists()
    train_model(trained, tmp_path / "other", device="cpu", progress=False)
    assert_bit_identical(weights(trained, store), weights(trained, tmp_path / "other"))


def test_a_mid_epoch_checkpoint_off_its_epoch_length_is_quarantined(store, capsys):
    trained = spec()
    train_model(trained, store, device="cpu", progress=False, stop_after_steps=2)
    last = trained.folder(store) / "last.pt"
    state = torch.load(last, weights_only=False)
    torch.save(dict(state, steps_per_epoch=7), last)
    sidecar_path(last).unlink()
    record = train_model(trained, store, device="cpu", progress=False)
    assert record["resumed_at_epochs"] == [] and len(record["history"]) == 2  # from scratch
    assert "stands at step 2 of an epoch of 7 steps; this training has 6" in capsys.readouterr().err
    assert len(list((store / "quarantine").rglob("last.pt*"))) == 1


CHILD = """
import json, sys, time
import torch
import interpbench.engine.train as train
from interpbench.core import TrainSpec

torch.set_num_threads(int(sys.argv[3]))
plain_rate = train.learning_rate

def slowly(*args, **kwargs):  # a pause each step (the rate itself unchanged): time to catch it
    time.sleep(0.05)
    return plain_rate(*args, **kwargs)

train.learning_rate = slowly
train.train_model(TrainSpec(**json.loads(sys.argv[1])), sys.argv[2], device="cpu", progress=False,
                  checkpoint_every_s=1e-6)
"""


def test_a_training_killed_mid_epoch_resumes_to_bit_identical_weights(store, tmp_path, capsys):
    """A real kill: SIGKILL once last.pt stands within an epoch (the process stopped first, so that the
    checkpoint read is the one it leaves), then a resume in this process and an uninterrupted run."""
    trained = spec(epochs=3)
    arguments = {"model": trained.model, "data": trained.data, "recipe": trained.recipe,
                 "model_args": trained.model_args}
    child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(arguments), str(store),
                              str(torch.get_num_threads())], stderr=subprocess.PIPE, text=True)
    folder, position = trained.folder(store), None
    try:
        deadline = time.time() + 120
        while position is None:
            assert time.time() < deadline, "no checkpoint within an epoch in 120 s"
            assert child.poll() is None, f"the training ended before it was killed: {child.stderr.read()}"
            assert not (folder / "record.json").exists()
            if (folder / "last.pt").exists() and last_state(trained, store)["step"] > 0:
                os.kill(child.pid, signal.SIGSTOP)
                state = last_state(trained, store)
                if state["step"] > 0:
                    os.kill(child.pid, signal.SIGKILL)
                    position = (state["epoch"], state["step"])
                else:
                    os.kill(child.pid, signal.SIGCONT)
            time.sleep(0.02)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    epoch, step = position
    assert 0 < step < STEPS and not (folder / "record.json").exists()
    resumed = train_model(trained, store, device="cpu", progress=False)
    assert f"fa_cnn: resuming in epoch {epoch + 1} after step {step}/{STEPS}" in capsys.readouterr().out
    assert resumed["resumed_at_steps"] == [epoch * STEPS + step] and resumed["resumed_at_epochs"] == [epoch]
    straight = train_model(trained, tmp_path / "other", device="cpu", progress=False)
    assert_bit_identical(weights(trained, store), weights(trained, tmp_path / "other"))
    assert resumed["history"] == straight["history"]
    assert Path(folder / "model.pt").exists() and not (folder / "last.pt").exists()
