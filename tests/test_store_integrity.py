"""A store that checks itself: each kind of corrupt artifact is named, quarantined and recomputed by
the same run, which ends with the leaderboard of an uncorrupted run; ``store=`` holds the decoded data."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_sweep import tiny

from interpbench.core import read_cell_result
from interpbench.integrity import load_verified, sidecar_path, torch_file, trained_record
from interpbench.storage import using_store
from interpbench.sweep import run_sweep

ROOT = Path(__file__).resolve().parents[1]
# one FA-CNN (2 epochs, so that an interrupted training leaves last.pt), two explainers, one metric
OVERRIDES = ("zoo=fa_cnn", "explainer=[native,random]", "launcher=debug", "profile.recipes.fa_minimal.epochs=2")

pytestmark = pytest.mark.slow  # each test runs a tiny sweep (seconds)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uncorrupted sweep, run once, with $HOME and $INTERPBENCH_HOME empty temporary folders:
    ``(its folder, its leaderboard.csv text)``."""
    root = tmp_path_factory.mktemp("reference").resolve()
    (root / "home").mkdir()
    (root / "interpbench-home").mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(root / "home"))
        patch.setenv("INTERPBENCH_HOME", str(root / "interpbench-home"))
        assert run_sweep(tiny(root, *OVERRIDES)) == 0
    return root, (root / "results" / "synthetic" / "leaderboard.csv").read_text()


def copy_of_reference(reference, tmp_path):
    shutil.copytree(reference[0] / "store", tmp_path / "store")
    return (tmp_path / "store").resolve()


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def rerun(tmp_path, capsys, reference, victim: Path, store: Path) -> str:
    """Run the sweep again: ``victim`` is named on stderr, quarantined and recomputed, and the
    leaderboard is the reference's. Returns stdout."""
    capsys.readouterr()
    assert run_sweep(tiny(tmp_path, *OVERRIDES)) == 0
    out, err = capsys.readouterr()
    assert f"quarantined {victim}: " in err
    relative = victim.relative_to(store)
    moved = [p for p in (store / "quarantine" / relative.parent).glob(relative.name + ".*")
             if not p.name.endswith(".sha256.json")]
    assert len(moved) == 1  # the truncated file, kept for a look
    assert (tmp_path / "results" / "synthetic" / "leaderboard.csv").read_text() == reference[1]
    return out


def test_store_holds_the_decoded_data_and_nothing_goes_to_home(reference):
    root, _ = reference
    assert sorted(p.name for p in (root / "store" / "data").rglob("*.npy"))  # decoded into <store>/data
    assert list((root / "interpbench-home").iterdir()) == []
    assert not list((root / "home").rglob("*.npy")) and not (root / "home" / ".cache" / "interpbench").exists()
    meta = json.loads(next((root / "store" / "data").glob("synthetic-*/meta.json")).read_text())
    assert sorted(meta["arrays"]) == sorted(p.name for p in (root / "store" / "data").rglob("*.npy"))


def test_jobs_in_their_own_processes_keep_the_data_in_the_store(tmp_path, monkeypatch):
    for name, variable in (("home", "HOME"), ("interpbench-home", "INTERPBENCH_HOME")):
        (tmp_path / name).mkdir()
        monkeypatch.setenv(variable, str(tmp_path / name))
    assert run_sweep(tiny(tmp_path, "zoo=fa_cnn", "explainer=random", "launcher=local")) == 0
    assert list((tmp_path / "store" / "sweeps").rglob("*_log.err"))  # the job ran in its own process
    assert list((tmp_path / "store" / "data").rglob("*.npy"))
    assert list((tmp_path / "interpbench-home").iterdir()) == []
    assert not list((tmp_path / "home").rglob("*.npy")) and not (tmp_path / "home" / ".cache" / "interpbench").exists()


def test_a_truncated_cell_is_quarantined_and_recomputed(reference, tmp_path, capsys):
    store = copy_of_reference(reference, tmp_path)
    victim = sorted((store / "cells").glob("*.json"))[0]
    truncate(victim)
    out = rerun(tmp_path, capsys, reference, victim, store)
    assert "(0 to train)" in out and "(1 to compute)" in out
    assert read_cell_result(victim).key in victim.name


@pytest.mark.parametrize("name", ["record.json", "model.pt"])
def test_a_truncated_checkpoint_is_quarantined_and_trained_again(reference, tmp_path, capsys, name):
    store = copy_of_reference(reference, tmp_path)
    folder = next((store / "models").glob("fa_cnn-*"))
    victim = folder / name
    truncate(victim)
    out = rerun(tmp_path, capsys, reference, victim, store)  # every cell was there: only training reruns
    assert "(1 to train)" in out and "(0 to compute)" in out
    record = trained_record(folder, store)
    assert record is not None and record["model_sha256"]
    before = reference[0] / "store" / "models" / folder.name
    timing = ("train_seconds", "model_sha256")  # model.pt holds the record, its timing too
    assert {k: v for k, v in record.items() if k not in timing} == {
        k: v for k, v in json.loads((before / "record.json").read_text()).items() if k not in timing}
    weights, reference_weights = (torch_file(f / "model.pt")["model"] for f in (folder, before))
    assert all(torch.equal(weights[k], reference_weights[k]) for k in reference_weights)  # the same weights


def test_a_truncated_last_checkpoint_is_quarantined_and_training_starts_over(reference, tmp_path, capsys):
    from interpbench.engine.plan import plan_sweep
    from interpbench.engine.train import train_model

    store = (tmp_path / "store").resolve()
    cfg = tiny(tmp_path, *OVERRIDES)
    with using_store(store):
        (spec,) = plan_sweep(cfg).specs.values()
        assert train_model(spec, store, progress=False, stop_after_epochs=1)["finished"] is False
    victim = spec.folder(store) / "last.pt"
    assert sidecar_path(victim).exists()
    truncate(victim)
    rerun(tmp_path, capsys, reference, victim, store)
    record = trained_record(spec.folder(store), store)
    assert record["resumed_at_epochs"] == [] and len(record["history"]) == 2  # from scratch, not resumed
    assert not victim.exists() and not sidecar_path(victim).exists()  # rewritten, then removed at the end


def test_a_truncated_saliency_cache_is_quarantined_and_recomputed(reference, tmp_path, capsys):
    store = copy_of_reference(reference, tmp_path)
    victim = next((store / "saliency").glob("fa_cnn__random-*.pt"))
    maps = torch.load(victim)
    truncate(victim)
    for cell in (store / "cells").glob("fa_cnn__random__*.json"):  # so that the rerun reads the maps
        cell.unlink()
    out = rerun(tmp_path, capsys, reference, victim, store)
    assert "(1 to compute)" in out
    assert torch.equal(load_verified(victim, store, torch_file), maps)


def test_a_truncated_decoded_array_is_quarantined_and_decoded_again(reference, tmp_path, capsys):
    store = copy_of_reference(reference, tmp_path)
    victim = next((store / "data").glob("synthetic-*/test_images.npy"))
    truncate(victim)
    out = rerun(tmp_path, capsys, reference, victim, store)
    assert "(0 to train)" in out and "(0 to compute)" in out


def test_a_changed_byte_is_caught_by_the_manifest(reference, tmp_path, capsys):
    store = copy_of_reference(reference, tmp_path)
    victim = next((store / "saliency").glob("*.pt"))
    data = bytearray(victim.read_bytes())
    data[-100] ^= 0xFF  # same size, another sha256
    victim.write_bytes(bytes(data))
    assert load_verified(victim, store, torch_file) is None
    assert "sha256 differs" in capsys.readouterr().err and not victim.exists()


def test_status_verify_quarantines_a_corrupt_cell_and_counts_it(reference, tmp_path):
    store = copy_of_reference(reference, tmp_path)
    victim = sorted((store / "cells").glob("*.json"))[-1]
    truncate(victim)
    env = {**os.environ, "INTERPBENCH_HOME": str(tmp_path / "home")}
    result = subprocess.run([sys.executable, str(ROOT / "runners" / "status.py"), "--verify", f"store={store}"],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith(f"quarantined {victim}: not valid JSON")
    assert result.stderr.count("quarantined ") == 1
    # 2 cells, 1 model folder, 2 saliency caches, 1 decoded dataset
    assert "verify: 6 artifacts checked" in result.stdout and ", 1 quarantined" in result.stdout
    assert not victim.exists() and list((store / "quarantine" / "cells").glob(victim.name + ".*"))
    assert not (tmp_path / "home").exists()


def test_files_from_before_the_checks_are_accepted_when_they_load(reference, tmp_path, capsys):
    """A store written before hashes existed: no sidecars, no model_sha256, no array manifest. Sound
    files pass; a truncated one is still caught, by loading it."""
    store = copy_of_reference(reference, tmp_path)
    for sidecar in store.rglob("*.sha256.json"):
        sidecar.unlink()
    (folder,) = (store / "models").glob("fa_cnn-*")
    record = json.loads((folder / "record.json").read_text())
    del record["model_sha256"]
    (folder / "record.json").write_text(json.dumps(record))
    (data,) = (store / "data").glob("*")
    meta = json.loads((data / "meta.json").read_text())
    del meta["arrays"]
    (data / "meta.json").write_text(json.dumps(meta))
    from interpbench.integrity import verify_store

    checked, quarantined = verify_store(store)
    assert checked == 6 and quarantined == []
    truncate(folder / "model.pt")
    assert trained_record(folder, store) is None
    assert f"quarantined {folder / 'model.pt'}: model.pt: does not load" in capsys.readouterr().err


def test_without_a_root_the_download_goes_into_the_store_in_use(tmp_path):
    """``store=`` holds torchvision's downloads too (offline here: the error names where it looked)."""
    from interpbench.data import load_dataset
    from interpbench.data.base import DatasetNotFoundError

    with using_store(tmp_path / "store"), pytest.raises(DatasetNotFoundError) as caught:
        load_dataset({"name": "cifar10", "download": False})
    assert str(tmp_path / "store" / "datasets" / "cifar10") in str(caught.value)
