"""The sweep: plan the cells, train what is missing, compute the missing cells through a launcher,
write the leaderboard; ``status`` reports on a sweep's cells and ``train_only`` only trains."""
from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from omegaconf import DictConfig

from interpbench.config import ConfigError, validate
from interpbench.engine.plan import plan_or_report
from interpbench.engine.preflight import preflight
from interpbench.engine.train import train_model
from interpbench.integrity import cell_done, cell_result, model_trained, verify_store
from interpbench.launch.base import Launcher, SweepWork, train_options
from interpbench.launch.local import DebugLauncher, LocalLauncher
from interpbench.launch.slurm import SlurmLauncher
from interpbench.launch.slurm_client import (
    LIVE_STATES,
    check_slurm,
    read_slurm_records,
    slurm_states,
    task_outcome,
)
from interpbench.report.markdown import sweep_notes
from interpbench.report.stats import mean_rank_text, with_interval
from interpbench.report.tables import board_order, directions, mean_rank_column
from interpbench.report.write import write_leaderboard
from interpbench.storage import (
    atomic_write_json,
    git_commit,
    plain,
    read_json,
    stable_hash,
    using_store,
    work_dir,
)

LAUNCHERS: Dict[str, Callable[[], Launcher]] = {"debug": DebugLauncher, "local": LocalLauncher,
                                                "slurm": SlurmLauncher}


def in_sweep_store(task: Any) -> Any:
    """Run ``task(cfg)`` with decoded data kept in the sweep's store (``<store>/data``; without
    ``store=`` the work directory's, as before)."""
    @functools.wraps(task)
    def wrapped(cfg: Any) -> Any:
        store = cfg.get("store")
        with using_store(work_dir(None if store is None else str(store))):
            return task(cfg)
    return wrapped


def chance_note(accuracy: float, num_classes: Optional[int]) -> str:
    """A warning for an accuracy within a tenth of the way from chance level (1 / ``num_classes``)
    to 1, i.e. at most ``1/K + 0.1 (1 - 1/K)``, else ``""``."""
    if not num_classes or num_classes < 2:
        return ""
    chance = 1.0 / num_classes
    if accuracy > chance + 0.1 * (1.0 - chance):
        return ""
    return (f" (near chance level, 1/{num_classes} = {chance:.3f}: the model has barely learned; "
            "its explanations say little)")


@in_sweep_store
def train_only(cfg: Any) -> int:
    """Train (or find in the cache) every model the sweep ``cfg`` would use; print each one."""
    plan = plan_or_report(cfg)
    if plan is None:
        return 2
    store = work_dir(cfg.store)
    for spec in plan.specs.values():
        record = train_model(spec, store, device=cfg.device, progress=bool(cfg.progress), **train_options(cfg))
        print(f"{spec.model} (seed {spec.seed}): test accuracy {record['test_accuracy']:.4f}"
              + chance_note(record["test_accuracy"], (record.get("config") or {}).get("num_classes")) + ", "
              f"{record['train_seconds']} s training"
              + (f" + {record['fit_seconds']} s fitting on its parent" if record.get("fit_seconds") else "")
              + f", {spec.folder(store)}")
    return 0


@in_sweep_store
def run_sweep(cfg: DictConfig) -> int:
    """Run the sweep described by ``cfg``; returns the exit status (0: every cell done)."""
    began = time.time()
    try:
        validate(cfg)  # before the SLURM check, so that a bad value is named first
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if cfg.launcher.name == "slurm":
        problem = check_slurm()
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
    plan = plan_or_report(cfg)
    if plan is None:
        return 2

    store = work_dir(cfg.store)
    cells = plan.all_cells
    # a corrupt cell or checkpoint counts as missing: it is quarantined (named on stderr) and redone
    missing = {key: [c for c in plan.cells[key] if not cell_done(c, store)] for key in plan.specs}
    untrained = [key for key, spec in plan.specs.items() if not model_trained(spec, store)]
    todo = [key for key in plan.specs if missing[key] or key in untrained]
    # Models trained from scratch before the ones derived from them (a derived job waits for its
    # parent's checkpoint); within a level longest first, so that parallel slots finish together.
    todo.sort(key=lambda key: (plan.specs[key].depth, -(plan.cost[key] if key in untrained else 0.0)))
    sweep_id = time.strftime("%Y%m%d-%H%M%S") + "-" + stable_hash([c.key() for c in cells], 8)
    sweep_dir = store / "sweeps" / sweep_id
    print(f"sweep: {len(plan.specs)} models ({len(untrained)} to train), {len(cells)} cells "
          f"({sum(len(m) for m in missing.values())} to compute); folder {sweep_dir}")
    if plan.skipped:
        print(f"not applicable, skipped: {', '.join(plan.skipped)}")
    go_on, _ = preflight(plan, todo, untrained, missing, cfg, store)
    if not go_on:
        return 0 if str(cfg.get("preflight")) == "plan" else 2

    outcomes = []
    if todo:
        atomic_write_json(sweep_dir / "sweep.json", {
            "config": plain(cfg), "git_commit": git_commit(),
            "cells": {c.key(): c.path(store).name for c in cells},
        })
        work = SweepWork(plan=plan, todo=todo, missing=missing, store=store, sweep_dir=sweep_dir, cfg=cfg)
        outcomes = LAUNCHERS[cfg.launcher.name]().launch(work)
        if outcomes is None:  # submitted without waiting (launcher=slurm launcher.wait=false): --status follows
            return 0

    failures = []
    failed_cells: Dict[str, Dict[str, Any]] = {}  # for --status: what went wrong, where the log is
    cell_names = {c.key(): f"{c.train.model}/{c.explainer}/{c.metric} ({c.path(store).name})" for c in cells}
    for outcome in outcomes:
        if not outcome.ok:
            failures.append(f"job {outcome.name} failed (log: {outcome.log}):\n{outcome.error}")
            failed_cells.update({key: {"error": outcome.error, "log": outcome.log} for key in outcome.cells})
        else:
            for key, error in outcome.value["errors"].items():
                log = f" (log: {outcome.log})" if outcome.log else ""
                failures.append(f"cell {cell_names.get(key, key)} failed{log}:\n{error}")
                failed_cells[key] = {"error": error, "log": outcome.log}
    if failed_cells:
        atomic_write_json(sweep_dir / "failures.json", failed_cells)
    results = [result for result in (cell_result(c, store) for c in cells) if result is not None]
    warnings: List[str] = []
    reports: List[Path] = []
    if results:
        results_dir = Path(cfg.results_dir)
        if not results_dir.is_absolute():
            results_dir = Path(os.getcwd()) / results_dir
        config = plain(cfg)
        written = write_leaderboard(results, results_dir, notes=sweep_notes(config, git_commit()), store=store,
                                    config=config, log=warnings.append)
        for name, path in sorted(written.items()):
            if name.endswith("/leaderboard.csv"):
                print("\n" + top_rows(path))
            if name.endswith("/report.html"):
                reports.append(path)
        print(f"written: {len(written)} files under {results_dir}")
    warnings = result_warnings(results, plan.num_classes) + warnings
    missing_after = len(cells) - len(results)
    if warnings:
        print("\nwarnings:")
        for warning in dict.fromkeys(warnings):
            print(f"  - {warning}")
    print(f"{len(results)}/{len(cells)} cells done in {time.time() - began:.1f} s")
    status = 0
    if failures or missing_after:
        for failure in failures:
            print(failure, file=sys.stderr)
        print(f"error: {missing_after} of {len(cells)} cells failed or are missing; "
              "rerun the same command to retry them", file=sys.stderr)
        status = 1
    sys.stderr.flush()
    for path in reports:
        print(f"report: {path}")
    return status


def result_warnings(results: List[Any], num_classes: Optional[int]) -> List[str]:
    """What a researcher must not miss, once each: models near chance level, flagged cells."""
    lines: List[str] = []
    accuracies = {}
    for result in results:
        accuracies.setdefault(f"{result.model} (seed {result.seed})", result.test_accuracy)
    for name, accuracy in sorted(accuracies.items()):
        note = chance_note(float(accuracy), num_classes) if accuracy is not None else ""
        if note:
            lines.append(f"{name}: test accuracy {float(accuracy):.3f}{note}")
    flagged: Dict[str, List[str]] = {}
    for result in results:
        if result.flag:
            flagged.setdefault(str(result.flag), []).append(f"{result.model}/{result.explainer} ({result.label})")
    for flag, where in flagged.items():
        lines.append(f"{flag}: {', '.join(sorted(set(where)))}")
    return lines


def top_rows(csv_path: Path, count: int = 5) -> str:
    """The leaderboard's best ``count`` rows (at most four metric columns), as text: the rows in the
    leaderboard's order, the numbers written as the leaderboard writes them."""
    import pandas as pd

    board = pd.read_csv(csv_path)
    higher = directions(pd.read_csv(csv_path.with_name("leaderboard_tidy.csv")))
    metrics = [label for label in higher if label in board.columns]
    rank = mean_rank_column(board, metrics)
    board = board.iloc[board_order(board, higher)]
    shown = pd.DataFrame({"model": board["model"], "explainer": board["explainer"],
                          "accuracy": board["accuracy"].map(lambda v: f"{v:.3f}")})
    for metric in metrics[:4]:
        half = (board[f"{metric}_ci_high"] - board[f"{metric}_ci_low"]) / 2
        shown[metric] = [with_interval(v, h) for v, h in zip(board[metric], half)]
    if len(metrics) > 1:
        shown["mean rank"] = board[rank].map(mean_rank_text)
    more = f", {len(metrics) - 4} more metrics" if len(metrics) > 4 else ""
    head = (f"leaderboard {csv_path.parent.name}: top {min(count, len(board))} of {len(board)} rows by "
            f"{'mean rank' if len(metrics) > 1 else metrics[0] if metrics else 'rank'}{more} "
            f"(all of it: {csv_path.with_suffix('.md')})")
    return head + "\n" + shown.head(count).to_string(index=False)


@in_sweep_store
def sweep_status(cfg: DictConfig) -> int:
    """``interpbench status <the sweep's arguments>`` (or ``sweep ... --status``): each cell done, running, failed
    or missing, read from the result files, from SLURM (squeue, sacct) for the tasks recorded under
    ``<store>/sweeps/*/slurm.json``, and from the failures recorded by earlier runs."""
    plan = plan_or_report(cfg)
    if plan is None:
        return 2
    store = work_dir(cfg.store)
    cells = plan.all_cells
    keys = {cell.key() for cell in cells}
    entries = [entry for entry in read_slurm_records(store)
               if set(entry["cells"]) & keys or (entry["stage"].startswith("train") and entry["model"] in plan.specs)]
    states = slurm_states(entry["job_id"] for entry in entries)
    outcomes: Dict[str, Any] = {}

    def outcome(entry: Dict[str, Any]) -> Any:
        if entry["job_id"] not in outcomes:
            outcomes[entry["job_id"]] = task_outcome(entry, states.get(entry["job_id"], ""), patience_s=0.0)
        return outcomes[entry["job_id"]]

    def live(entry: Dict[str, Any]) -> bool:
        return states.get(entry["job_id"], "") in LIVE_STATES and not Path(entry["result"]).exists()

    recorded: Dict[str, Any] = {}  # cell key -> (time, failure) from the runs' failures.json
    for path in sorted(store.glob("sweeps/*/failures.json"), key=lambda path: path.stat().st_mtime):
        for key, failure in read_json(path).items():
            recorded[key] = (path.stat().st_mtime, failure)

    counts = {"done": 0, "running": 0, "failed": 0, "missing": 0}
    lines: List[str] = []
    for cell in cells:
        name = f"{cell.train.model}/seed{cell.train.seed}/{cell.explainer}/{cell.metric}"
        if cell_done(cell, store):  # a corrupt result is quarantined and counts as missing
            counts["done"] += 1
            continue
        tasks = [entry for entry in entries if cell.key() in entry["cells"]
                 or (entry["stage"].startswith("train") and entry["model"] == cell.train.key())]
        running = [entry for entry in tasks if live(entry)]
        if running:
            counts["running"] += 1
            lines.append(f"running  {name}: " + ", ".join(
                f"{entry['name']} job {entry['job_id']} {states[entry['job_id']]}" for entry in running))
            continue
        evaluated = [entry for entry in tasks if cell.key() in entry["cells"]]
        latest = evaluated[-1] if evaluated else None
        failure = None
        if latest is not None:
            result = outcome(latest)
            if not result.ok:
                failure = (latest["submitted"], {"error": result.error, "log": result.log}, latest["job_id"])
            elif cell.key() in result.value.get("errors", {}):
                failure = (latest["submitted"], {"error": result.value["errors"][cell.key()], "log": result.log},
                           latest["job_id"])
        if cell.key() in recorded and (failure is None or recorded[cell.key()][0] > failure[0]):
            failure = (*recorded[cell.key()], None)
        if failure is None:
            counts["missing"] += 1
            lines.append(f"missing  {name}")
            continue
        counts["failed"] += 1
        _, info, job = failure
        where = (f"job {job} {states.get(job, '')}".rstrip() + ", " if job else "") + f"log {info.get('log')}"
        lines.append(f"failed   {name} ({where}):")
        lines.extend("    " + line for line in str(info.get("error", "")).splitlines())
    trainings = {entry["model"]: entry for entry in entries if entry["stage"].startswith("train")}
    for entry in trainings.values():  # the latest training of a model still without a checkpoint
        spec = plan.specs[entry["model"]]
        if not live(entry) and not model_trained(spec, store) and not outcome(entry).ok:
            lines.append(f"training {entry['name']} failed (job {entry['job_id']} "
                         f"{states.get(entry['job_id'], '')}, log {entry['stderr']}):".replace(" ,", ","))
            lines.extend("    " + line for line in outcome(entry).error.splitlines())
    print(f"sweep status: {len(cells)} cells: {counts['done']} done, {counts['running']} running, "
          f"{counts['failed']} failed, {counts['missing']} missing (store {store})")
    for line in lines:
        print(line)
    return 0


def verify_status(cfg: DictConfig) -> int:
    """``interpbench status --verify [store=PATH]``: check every artifact of the store (cells, model
    folders, ``last.pt``, saliency caches, decoded arrays), quarantine what is corrupt (one line each on
    stderr), print the total; a later sweep recomputes what was quarantined."""
    store = work_dir(None if cfg.get("store") is None else str(cfg.store))
    checked, quarantined = verify_store(store)
    print(f"verify: {checked} artifacts checked in {store}, {len(quarantined)} quarantined"
          + (f" (moved to {store / 'quarantine'}; the next sweep recomputes them)" if quarantined else ""))
    return 0
