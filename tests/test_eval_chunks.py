"""Evaluation in chunks: batch sizes fitted to memory (a maximum, halved on out-of-memory errors),
maps that do not depend on the batch size, saliency computation that resumes after a kill from
the partial file, and the progress reports. Tiny FA-CNN (random weights), 40 synthetic images."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch
from conftest import TINY_DATA, TINY_RECIPE, random_fa_cnn

import interpbench.explainers.base as explainer_base
from interpbench.core import Cell, TrainSpec
from interpbench.engine import evaluate
from interpbench.engine.evaluate import compute_saliency, evaluation_images, partial_path, run_cells
from interpbench.explainers import EXPLAINERS
from interpbench.explainers.base import (
    LiveStorages,
    MemoryMeter,
    cgroup_memory_room,
    fit_batch_size,
    host_available_memory,
    is_out_of_memory,
)
from interpbench.explainers.gradcam import GradCAM
from interpbench.integrity import sidecar_path
from interpbench.metrics import METRICS

NUM_IMAGES = 40
SPEC = TrainSpec(model="fa_cnn", data=TINY_DATA, recipe=TINY_RECIPE, model_args={"depth": 3, "channels": 10})
CPU_OOM = "DefaultCPUAllocator: can't allocate memory: you tried to allocate 1073741824 bytes."


@pytest.fixture(scope="module")
def dataset():
    from interpbench.data import load_dataset

    return load_dataset(TINY_DATA)


@pytest.fixture
def model():
    return random_fa_cnn(depth=3, channels=10)


@pytest.fixture
def no_fit(monkeypatch):
    """No memory figure: batches are the configured size (only halving adapts them)."""
    monkeypatch.setattr(explainer_base, "available_memory", lambda device: None)


@pytest.fixture
def no_figures(monkeypatch):
    """The figure inputs run their own explainer: left out where explainer calls are counted."""
    monkeypatch.setattr(evaluate, "store_figure_inputs", lambda *args, **kwargs: None)


def cell(explainer: str = "gradcam", metric: str = "pixel_removal", batch_size: int = 250) -> Cell:
    arguments = {"pixel_removal": {"steps": 4}, "insertion": {"step": 256}}  # 4 steps at 32 x 32 pixels
    return Cell(train=SPEC, explainer=explainer, metric=metric, num_images=NUM_IMAGES, batch_size=batch_size,
                metric_args=arguments.get(metric, {}))


def record() -> Dict[str, Any]:
    return {"test_accuracy": 0.5, "key": SPEC.key()}


def maps_of(explainer: str, model, dataset, store: Path, batch_size: int, **kwargs: Any) -> torch.Tensor:
    images = evaluation_images(dataset, NUM_IMAGES)
    return compute_saliency(cell(explainer, batch_size=batch_size), model, images, store, **kwargs)


def count_calls(monkeypatch, cls, fail=lambda x, calls: None, seen=None) -> List[int]:
    """Record the size of every batch ``cls`` explains (and its images in ``seen``, a list);
    ``fail(x, calls)`` may raise before the batch is explained."""
    calls: List[int] = []
    original = cls.__call__

    def counted(self, model, x, target):
        fail(x, calls)
        calls.append(x.shape[0])
        if seen is not None:
            seen.append(x.clone())
        return original(self, model, x, target)

    monkeypatch.setattr(cls, "__call__", counted)
    return calls


def out_of_memory_above(size: int):
    """A ``fail`` for :func:`count_calls`: batches of more than ``size`` images run out of memory."""
    def fail(x, calls):
        if x.shape[0] > size:
            raise RuntimeError(CPU_OOM)
    return fail


def raise_(error: BaseException):
    def fail(*args):
        raise error
    return fail


# --- memory ---------------------------------------------------------------------------------------

def test_live_storages_count_what_is_alive_at_the_peak():
    with LiveStorages() as live:
        a = torch.zeros(1000)  # 4000 bytes
        b = torch.zeros(500)  # 2000
        c = a[:10]  # a view: no new storage
        del a, c
        d = torch.zeros(200, dtype=torch.float64)  # 1600, after a was freed
    assert live.peak == 6000 and live.now == 3600
    del b, d


def test_the_meter_estimates_activations_twice_under_autograd():
    """Input 2x3x8x8 float32 (1536 bytes), conv and ReLU outputs 2x4x8x8 (2048 each)."""
    layers = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU())
    x = torch.zeros(2, 3, 8, 8)
    with torch.no_grad(), MemoryMeter("cpu") as meter:
        layers(x)
    assert meter.module_peak == 1536 + 2048 + 2048 and meter.peak == meter.module_peak
    with MemoryMeter("cpu") as meter:
        layers(x)
    assert meter.module_peak == 1536 + 2 * (2048 + 2048) and meter.peak == meter.module_peak


def test_the_fitted_batch_size_separates_the_fixed_cost_from_the_cost_per_item():
    sizes = []

    def run(n):  # 5000 bytes whatever n, plus 1000 per item
        sizes.append(n)
        return torch.zeros(5000 + 1000 * n, dtype=torch.uint8)

    # half of 84,000 bytes less the fixed 5,000 leaves room for 37 items of 1,000
    assert fit_batch_size(run, 250, "cpu", available=84_000) == 37 and sizes == [1, 2]
    sizes.clear()
    assert fit_batch_size(run, 7, "cpu", available=84_000) == 7 and sizes == [1]  # 7 x 6000 fit: one probe
    assert fit_batch_size(run, 250, "cpu", available=1) == 1
    assert fit_batch_size(run, 1, "cpu", available=1) == 1


def test_a_probe_that_runs_out_of_memory_gives_batches_of_one():
    assert fit_batch_size(raise_(RuntimeError(CPU_OOM)), 250, "cpu", available=10**9) == 1
    # another error: no fit (the work raises it again, where it is reported)
    assert fit_batch_size(raise_(ValueError("not memory")), 250, "cpu", available=1) == 250


def test_out_of_memory_errors_are_recognised():
    assert is_out_of_memory(RuntimeError(CPU_OOM))
    assert is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(MemoryError())
    if hasattr(torch.cuda, "OutOfMemoryError"):
        assert is_out_of_memory(torch.cuda.OutOfMemoryError("whatever it says"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))  # not an error memory raises


def test_available_memory_reads_meminfo_and_the_cgroup_limit(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24683652 kB\nMemFree:   100 kB\nMemAvailable:   2000 kB\n")
    monkeypatch.setattr(explainer_base, "cgroup_memory_room", lambda: None)
    assert host_available_memory(meminfo) == 2000 * 1024
    monkeypatch.setattr(explainer_base, "cgroup_memory_room", lambda: 5000)
    assert host_available_memory(meminfo) == 5000


def test_cgroup_room_is_the_tightest_limit_less_usage_plus_inactive_file_cache(tmp_path):
    root = tmp_path / "cgroup"
    job = root / "slurm" / "job_7"
    job.mkdir(parents=True)
    (job / "memory.max").write_text("1000000\n")
    (job / "memory.current").write_text("400000\n")
    (job / "memory.stat").write_text("anon 300000\ninactive_file 100000\n")
    (root / "slurm" / "memory.max").write_text("max\n")  # no limit above it
    (root / "slurm" / "memory.current").write_text("900000\n")
    cgroups = tmp_path / "cgroup-of-self"
    cgroups.write_text("0::/slurm/job_7\n")
    assert cgroup_memory_room(root, cgroups) == 1000000 - 400000 + 100000
    # cgroup v1: the memory controller's hierarchy; "no limit" is a number near 2**63
    v1 = root / "memory" / "job"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (v1 / "memory.usage_in_bytes").write_text("5\n")
    cgroups.write_text("4:memory:/job\n")
    assert cgroup_memory_room(root, cgroups) is None
    (v1 / "memory.limit_in_bytes").write_text("800\n")
    (v1 / "memory.stat").write_text("cache 10\ntotal_inactive_file 50\n")
    assert cgroup_memory_room(root, cgroups) == 800 - 5 + 50
    assert cgroup_memory_room(root, tmp_path / "absent") is None


# --- maps that do not depend on the batch size ------------------------------------------------------

def test_random_maps_depend_on_the_image_and_the_seed_only(model):
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    x[5] = x[1]
    target = torch.zeros(6, dtype=torch.long)
    explainer = EXPLAINERS.create("random", seed=1)
    whole = explainer(model, x, target)
    assert torch.equal(explainer.explain_all(model, x, target, batch_size=4), whole)
    assert torch.equal(explainer(model, x[[4, 2, 0]], target[:3]), whole[[4, 2, 0]])  # any order, any batch
    assert torch.equal(whole[5], whole[1])  # the same image: the same map
    assert not torch.equal(whole[0], whole[2])
    assert not torch.equal(EXPLAINERS.create("random", seed=2)(model, x, target), whole)
    assert 0 <= float(whole.min()) and float(whole.max()) < 1
    with pytest.raises(ValueError, match="^random seed must be an integer, got 'a'$"):
        EXPLAINERS.create("random", seed="a")


@pytest.mark.parametrize("name", ["gradcam", "random"])
def test_maps_do_not_depend_on_the_batch_size(name, model, dataset, tmp_path, monkeypatch, no_fit):
    largest = maps_of(name, model, dataset, tmp_path / "all", 250)  # one batch of 40
    single = maps_of(name, model, dataset, tmp_path / "one", 1)
    cls = type(EXPLAINERS.create(name))
    calls = count_calls(monkeypatch, cls, fail=out_of_memory_above(8))
    halved = maps_of(name, model, dataset, tmp_path / "halved", 250)
    assert calls == [5] * 8  # 40, 20 and 10 ran out of memory; 5 fits, and stays for the rest
    monkeypatch.undo()
    monkeypatch.setattr(explainer_base, "available_memory", lambda device: None)
    fives = maps_of(name, model, dataset, tmp_path / "fives", 5)
    assert largest.shape == (NUM_IMAGES, 32, 32)
    assert torch.equal(halved, fives)  # the same batches: the same bits
    if name == "random":  # drawn per image: bit-identical whatever the batches
        assert torch.equal(largest, single) and torch.equal(largest, halved)
    else:  # the kernels may round otherwise for another batch size
        scale = float(largest.abs().max())
        assert scale > 0
        for other in (single, halved):
            assert torch.allclose(other, largest, rtol=0, atol=1e-6 * scale)


def test_an_error_that_is_not_memory_and_memory_short_at_one_image_are_raised(model, dataset, tmp_path, monkeypatch,
                                                                             no_fit):
    count_calls(monkeypatch, GradCAM, fail=raise_(RuntimeError(CPU_OOM)))
    with pytest.raises(RuntimeError, match="can't allocate memory"):
        maps_of("gradcam", model, dataset, tmp_path / "a", 4)
    count_calls(monkeypatch, GradCAM, fail=raise_(ValueError("broken")))
    with pytest.raises(ValueError, match="^broken$"):
        maps_of("gradcam", model, dataset, tmp_path / "b", 4)


def test_the_batch_size_is_fitted_to_the_memory_available(model, dataset, tmp_path, monkeypatch):
    reference = maps_of("gradcam", model, dataset, tmp_path / "reference", 250)
    calls = count_calls(monkeypatch, GradCAM)
    monkeypatch.setattr(explainer_base, "available_memory", lambda device: 1 << 50)
    roomy = maps_of("gradcam", model, dataset, tmp_path / "roomy", 250)
    assert calls == [1, 40]  # one image's cost times 40 fits: one probe, then the configured batch
    calls.clear()
    monkeypatch.setattr(explainer_base, "available_memory", lambda device: 1)
    tight = maps_of("gradcam", model, dataset, tmp_path / "tight", 250)
    assert calls == [1, 2] + [1] * NUM_IMAGES  # two probes, then what fits: one image at a time
    assert torch.equal(roomy, reference)
    assert torch.allclose(tight, reference, rtol=0, atol=1e-6 * float(reference.abs().max()))


def test_metric_batches_are_halved_when_memory_runs_out(model, dataset, tmp_path, monkeypatch, no_fit, no_figures):
    cells = [cell("random", "pixel_removal", 250), cell("random", "insertion", 250)]
    whole, errors = run_cells(cells, tmp_path / "whole", device="cpu", model=model, record=record(), dataset=dataset)
    assert not errors
    metric_class = type(METRICS.create("insertion"))
    original = metric_class.compute
    sizes = []

    def compute(self, batch):
        if batch.size > 8:
            raise RuntimeError(CPU_OOM)
        sizes.append(batch.size)
        return original(self, batch)

    monkeypatch.setattr(metric_class, "compute", compute)
    halved, errors = run_cells(cells, tmp_path / "halved", device="cpu", model=model, record=record(),
                               dataset=dataset)
    assert not errors and sizes == [5] * 8
    for key, result in whole.items():
        assert result.num_images == halved[key].num_images == NUM_IMAGES
        assert halved[key].per_image == pytest.approx(result.per_image, abs=1e-6)

    # almost no memory: two probes (copies of the metric), then one image at a time
    sizes.clear()
    monkeypatch.setattr(metric_class, "compute", lambda self, batch: sizes.append(batch.size) or original(self, batch))
    monkeypatch.setattr(explainer_base, "available_memory", lambda device: 1)
    fitted, errors = run_cells(cells, tmp_path / "fitted", device="cpu", model=model, record=record(),
                               dataset=dataset)
    assert not errors and sizes == [1, 2] + [1] * NUM_IMAGES
    for key, result in whole.items():
        assert fitted[key].per_image == pytest.approx(result.per_image, abs=1e-6)


# --- resuming -------------------------------------------------------------------------------------

class Killed(BaseException):
    """What a kill looks like to the code it interrupts: nothing catches it."""


def test_a_killed_computation_resumes_after_the_last_chunk_written(model, dataset, tmp_path, monkeypatch, no_fit,
                                                                  no_figures):
    cells = [cell("gradcam", "pixel_removal", 8)]
    uninterrupted, _ = run_cells(cells, tmp_path / "reference", device="cpu", model=model, record=record(),
                                 dataset=dataset, checkpoint_seconds=0)
    reference = torch.load(cells[0].saliency_path(tmp_path / "reference"))

    store = tmp_path / "store"
    original = GradCAM.__call__

    def kill_after_two(x, calls):
        if len(calls) == 2:
            raise Killed()

    calls = count_calls(monkeypatch, GradCAM, fail=kill_after_two)
    with pytest.raises(Killed):
        run_cells(cells, store, device="cpu", model=model, record=record(), dataset=dataset, checkpoint_seconds=0)
    partial = partial_path(cells[0].saliency_path(store))
    assert partial.name == cells[0].saliency_path(store).stem + ".partial.pt"
    state = torch.load(partial)
    assert calls == [8, 8] and state["done"] == 16 and state["batch_size"] == 8
    assert torch.equal(state["maps"], reference[:16]) and sidecar_path(partial).exists()

    monkeypatch.setattr(GradCAM, "__call__", original)
    seen: List[torch.Tensor] = []
    calls = count_calls(monkeypatch, GradCAM, seen=seen)
    results, errors = run_cells(cells, store, device="cpu", model=model, record=record(), dataset=dataset,
                                checkpoint_seconds=0)
    assert not errors and calls == [8, 8, 8]  # chunks 3 to 5 only
    images = evaluation_images(dataset, NUM_IMAGES)["x"]
    assert all(torch.equal(x, images[16 + 8 * i : 24 + 8 * i]) for i, x in enumerate(seen))
    assert torch.equal(torch.load(cells[0].saliency_path(store)), reference)  # bit-identical
    assert not partial.exists() and not sidecar_path(partial).exists()
    key = cells[0].key()
    assert results[key].per_image == uninterrupted[key].per_image


def test_partial_maps_are_written_only_after_the_interval(model, dataset, tmp_path, no_fit, monkeypatch):
    writes = []
    monkeypatch.setattr(evaluate, "write_partial", lambda *args: writes.append(args[1][-1].shape[0]))
    maps_of("gradcam", model, dataset, tmp_path / "a", 8, checkpoint_seconds=3600)
    assert writes == []  # within the hour: none
    maps_of("gradcam", model, dataset, tmp_path / "b", 8, checkpoint_seconds=0)
    assert len(writes) == 4  # after every chunk but the last (then the cache itself is written)


def test_a_corrupt_partial_file_is_quarantined_and_one_of_other_inputs_removed(model, dataset, tmp_path, capsys,
                                                                               no_fit):
    store = tmp_path / "store"
    reference = maps_of("gradcam", model, dataset, tmp_path / "reference", 8)
    path = cell("gradcam", batch_size=8).saliency_path(store)
    partial = partial_path(path)
    images = evaluation_images(dataset, NUM_IMAGES)
    targets = evaluate.explain_targets(cell(), model, images)
    fingerprint = evaluate.maps_fingerprint(model, images["x"], targets)

    # maps of other model weights: removed, and the maps start over
    evaluate.write_partial(partial, [torch.zeros(16, 32, 32)], NUM_IMAGES, 8, "0" * 64)
    assert torch.equal(maps_of("gradcam", model, dataset, store, 8), reference)
    assert f"removed {partial}: its maps are of other images, classes or model weights" in capsys.readouterr().err
    assert not partial.exists()

    # a partial file that does not fit its format: quarantined
    path.unlink()
    evaluate.write_partial(partial, [torch.zeros(16, 32, 32)], NUM_IMAGES, 8, fingerprint)
    state = torch.load(partial)
    state["done"] = 17
    torch.save(state, partial)
    sidecar_path(partial).unlink()
    assert torch.equal(maps_of("gradcam", model, dataset, store, 8), reference)
    err = capsys.readouterr().err
    assert f"quarantined {partial}: maps of shape (16, 32, 32) (torch.float32); expected (17, 32, 32)" in err

    # a truncated one: its sidecar catches it
    path.unlink()
    evaluate.write_partial(partial, [reference[:16]], NUM_IMAGES, 8, fingerprint)
    partial.write_bytes(partial.read_bytes()[:100])
    assert torch.equal(maps_of("gradcam", model, dataset, store, 8), reference)
    assert f"quarantined {partial}: size 100 bytes" in capsys.readouterr().err

    # a sound one of the same inputs is used: the first 16 maps are its, the rest computed
    path.unlink()
    evaluate.write_partial(partial, [torch.full((16, 32, 32), 7.0)], NUM_IMAGES, 8, fingerprint)
    resumed = maps_of("gradcam", model, dataset, store, 8)
    assert torch.equal(resumed[:16], torch.full((16, 32, 32), 7.0)) and torch.equal(resumed[16:], reference[16:])


def test_the_fingerprint_changes_with_the_images_the_classes_and_the_weights(model):
    x, t = torch.rand(3, 3, 32, 32), torch.tensor([0, 1, 2])
    base = evaluate.maps_fingerprint(model, x, t)
    assert evaluate.maps_fingerprint(model, x.clone(), t.clone()) == base
    assert evaluate.maps_fingerprint(model, x, torch.tensor([0, 1, 3])) != base
    assert evaluate.maps_fingerprint(model, x[:2], t[:2]) != base
    assert evaluate.maps_fingerprint(random_fa_cnn(depth=3, channels=10, seed=1), x, t) != base


# --- progress -------------------------------------------------------------------------------------

def test_progress_reports_the_images_explained_and_the_cells_scored(model, dataset, tmp_path, monkeypatch, no_fit,
                                                                   no_figures):
    reports = []
    monkeypatch.setattr(evaluate.job_progress, "report", lambda stage, **fields: reports.append((stage, fields)))
    done = cell("native", "pixel_removal", 16)
    run_cells([done], tmp_path / "store", device="cpu", model=model, record=record(), dataset=dataset)
    reports.clear()
    cells = [done, cell("random", "pixel_removal", 16), cell("random", "insertion", 16)]
    run_cells(cells, tmp_path / "store", device="cpu", model=model, record=record(), dataset=dataset)
    explain = [fields for stage, fields in reports if stage == "explain"]
    assert [f["images_done"] for f in explain] == [0, 16, 32, 40]
    assert explain[0] == {"cell": "fa_cnn/random", "explainer": "random", "images_done": 0, "images": 40,
                          "batch_size": 16, "cells_done": 1, "cells": 3}
    metric = [fields for stage, fields in reports if stage == "metric"]
    # three batches, two metrics each; the first cell was done before
    assert [(f["cell"], f["metric"], f["cells_done"], f["cells"]) for f in metric] == [
        ("fa_cnn/random/pixel_removal", "pixel_removal", 1, 3), ("fa_cnn/random/insertion", "insertion", 1, 3),
    ] * 3


def test_the_progress_file_of_a_bound_job_says_what_is_explained(model, dataset, tmp_path, no_fit, no_figures):
    from interpbench import progress

    status = tmp_path / "progress" / "job.json"
    progress.bind(status, "fa_cnn/seed0")
    try:
        run_cells([cell("gradcam", "pixel_removal", 16)], tmp_path / "store", device="cpu", model=model,
                  record=record(), dataset=dataset)
    finally:
        progress.bind(None)
    last = progress.read(status)
    assert last["job"] == "fa_cnn/seed0" and last["stage"] == "metric" and last["metric"] == "pixel_removal"
    assert last["cells"] == 1 and last["cell"] == "fa_cnn/gradcam/pixel_removal"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
