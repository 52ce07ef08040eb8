"""The sweep: ``python runners/sweep.py zoo=all metric=pixel_removal``.

Expands models x explainers x metrics x data x seeds into cells, trains the models that are
missing, computes the cells that have no result yet (one job per model, through the launcher),
and writes the leaderboard under ``results/<data>/``. A second identical run finds every
checkpoint and cell result and only rebuilds the leaderboard.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from omegaconf import DictConfig, ListConfig

from bench.registry import Registry, UnknownNameError
from bench.storage import atomic_write_json, git_commit, plain, read_json, stable_hash, work_dir
from data import DATASETS
from explainers import EXPLAINERS
from metrics import METRICS
from zoo import MODELS

CONFIG_DIR = Path(__file__).resolve().parent / "conf"
DEFAULT_EXPLAINERS = ("native", "gradcam", "random")


class SweepConfigError(ValueError):
    """A bad name or value in the sweep's config; the message is one line."""


def register_configs() -> None:
    """Put the registries' names and default arguments into hydra's config store.

    ``data=<name>`` selects a dataset (its arguments under ``data.*``); ``explainers.<name>.*``
    and ``metrics.<name>.*`` hold each method's arguments, so a new file in ``data/``,
    ``explainers/`` or ``metrics/`` needs no YAML.
    """
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name in DATASETS.list():
        store.store(group="data", name=name, node={"name": name, **plain(DATASETS.defaults(name))})
    store.store(name="registry_defaults", node={
        "explainers": {name: plain(EXPLAINERS.defaults(name)) for name in EXPLAINERS.list()},
        "metrics": {name: plain(METRICS.defaults(name)) for name in METRICS.list()},
    })


def resolve_names(value: Any, registry: Registry, option: str) -> List[str]:
    """``all``, a name, a comma-separated string or a list -> registered names (checked)."""
    if isinstance(value, (list, tuple, ListConfig)):
        names = [str(v) for v in value]
    else:
        names = [part.strip() for part in str(value).split(",") if part.strip()]
    if names == ["all"]:
        return registry.list()
    resolved: List[str] = []
    for name in names:
        try:
            registry.check(name)
        except UnknownNameError as error:
            raise SweepConfigError(f"{option}={name}: {error}") from None
        resolved.append(name)
    if not resolved:
        raise SweepConfigError(f"{option} is empty; valid names: all, {', '.join(registry.list())}")
    return list(dict.fromkeys(resolved))


@dataclass
class Plan:
    specs: Dict[str, Any] = field(default_factory=dict)  # model key -> TrainSpec
    cells: Dict[str, List[Any]] = field(default_factory=dict)  # model key -> its cells
    cost: Dict[str, float] = field(default_factory=dict)  # model key -> training MACs (for ordering)
    skipped: List[str] = field(default_factory=list)  # explainer/model pairs that do not apply

    @property
    def all_cells(self) -> List[Any]:
        return [cell for cells in self.cells.values() for cell in cells]


def plan_sweep(cfg: DictConfig) -> Plan:
    """Check every name in ``cfg`` and expand it into training specs and cells."""
    from data import load_dataset
    from runners.evaluate import Cell, TARGETS
    from runners.launchers import LAUNCHERS
    from runners.train import TrainSpec, check_recipe, default_recipe_name, multiply_accumulates
    from zoo import create_model

    models = resolve_names(cfg.zoo, MODELS, "zoo")
    metrics = resolve_names(cfg.metric, METRICS, "metric")
    if str(cfg.explainer) == "default":
        explainer_names = list(DEFAULT_EXPLAINERS)
    else:
        explainer_names = resolve_names(cfg.explainer, EXPLAINERS, "explainer")
    if cfg.launcher.name not in LAUNCHERS:
        raise SweepConfigError(f"unknown launcher '{cfg.launcher.name}'; valid launchers: {', '.join(LAUNCHERS)}")
    if cfg.profile.eval.target not in TARGETS:
        raise SweepConfigError(f"unknown eval target '{cfg.profile.eval.target}'; valid targets: {', '.join(TARGETS)}")
    for name in cfg.get("model_args", {}) or {}:
        resolve_names(name, MODELS, "model_args")
    for name, recipe in cfg.profile.recipes.items():
        try:
            check_recipe(plain(recipe))
        except ValueError as error:
            raise SweepConfigError(f"profile.recipes.{name}: {error}") from None
    explainer_objects = {}
    for name in explainer_names:
        try:
            explainer_objects[name] = EXPLAINERS.create(name, **plain(cfg.explainers.get(name, {})))
        except (TypeError, ValueError) as error:
            raise SweepConfigError(f"explainers.{name}: {error}") from None
    metric_objects = {}
    for name in metrics:
        try:
            metric_objects[name] = METRICS.create(name, **plain(cfg.metrics.get(name, {})))
        except (TypeError, ValueError) as error:
            raise SweepConfigError(f"metrics.{name}: {error}") from None

    dataset = load_dataset(cfg.data)  # decodes once into the cache; jobs then only read it
    if dataset.test.masks is None:  # localisation metrics need ground-truth object masks
        unmasked = [name for name in metrics if metric_objects[name].needs_masks]
        metrics = [name for name in metrics if name not in unmasked]
        if not metrics:
            raise SweepConfigError(f"metric {', '.join(unmasked)} needs ground-truth masks; data "
                                   f"'{cfg.data.name}' has none (synthetic has)")
    else:
        unmasked = []

    def recipe_and_args(model_name: str):
        recipe_name = default_recipe_name(model_name)
        if recipe_name not in cfg.profile.recipes:
            raise SweepConfigError(
                f"profile '{cfg.profile.name}' has no recipe '{recipe_name}' for model {model_name}; "
                f"its recipes: {', '.join(cfg.profile.recipes)}"
            )
        return plain(cfg.profile.recipes[recipe_name]), plain((cfg.get("model_args", {}) or {}).get(model_name, {}))

    def make_spec(model_name: str, seed: int) -> TrainSpec:
        """The training spec of ``model_name``, with its parent's spec for a derived model."""
        recipe, model_args = recipe_and_args(model_name)
        parent_name = MODELS.info(model_name).get("parent")
        parent = make_spec(parent_name, seed) if parent_name else None
        return TrainSpec(model=model_name, data=plain(cfg.data), recipe=recipe, size=cfg.profile.size,
                         model_args=model_args, seed=seed, parent=parent)

    plan = Plan()
    for model_name in models:
        recipe, model_args = recipe_and_args(model_name)
        try:
            probe = create_model(model_name, size=cfg.profile.size, **dataset.model_config(), **model_args)
        except (TypeError, ValueError) as error:
            raise SweepConfigError(f"model {model_name}: {error}") from None
        train_images = min(len(dataset.train), recipe["max_train_images"] or len(dataset.train))
        cost = multiply_accumulates(probe, dataset.input_size) * train_images * recipe["epochs"]
        for seed in cfg.seeds:
            spec = make_spec(model_name, int(seed))
            plan.cost[spec.key()] = cost
            cells = []
            for explainer_name in explainer_names:
                if not explainer_objects[explainer_name].applies_to(probe):
                    plan.skipped.append(f"{model_name}/{explainer_name}")
                    continue
                for metric_name in metrics:
                    cells.append(Cell(
                        train=spec, explainer=explainer_name, metric=metric_name,
                        explainer_args=plain(cfg.explainers.get(explainer_name, {})),
                        metric_args=plain(cfg.metrics.get(metric_name, {})),
                        num_images=int(cfg.profile.eval.num_images),
                        batch_size=int(cfg.profile.eval.batch_size),
                        target=str(cfg.profile.eval.target),
                        eval_seed=int(cfg.profile.eval.seed),
                    ))
            plan.specs[spec.key()] = spec
            plan.cells[spec.key()] = cells
    plan.skipped = sorted(set(plan.skipped)) + [f"{name} (data '{cfg.data.name}' has no masks)" for name in unmasked]
    return plan


def plan_or_report(cfg: DictConfig) -> "Plan | None":
    """``plan_sweep(cfg)``, or ``None`` after printing a bad config's one-line error to stderr."""
    try:
        return plan_sweep(cfg)
    except (SweepConfigError, UnknownNameError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return None


def run_sweep(cfg: DictConfig) -> int:
    """Run the sweep described by ``cfg``; returns the exit status (0: every cell done)."""
    from runners.jobs import ModelJob
    from runners.launchers import run_debug, run_local
    from runners.leaderboard import sweep_notes, write_leaderboard

    began = time.time()
    if cfg.launcher.name == "slurm":
        from runners.launchers import check_slurm

        problem = check_slurm(plain(cfg.launcher))
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
    plan = plan_or_report(cfg)
    if plan is None:
        return 2

    store = work_dir(cfg.store)
    cells = plan.all_cells
    missing = {key: [c for c in plan.cells[key] if not c.path(store).exists()] for key in plan.specs}
    untrained = [key for key, spec in plan.specs.items() if not (spec.folder(store) / "record.json").exists()]
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

    outcomes = []
    if todo:
        atomic_write_json(sweep_dir / "sweep.json", {
            "config": plain(cfg), "git_commit": git_commit(),
            "cells": {c.key(): c.path(store).name for c in cells},
        })
        threads = cfg.launcher.get("threads_per_job") or max(1, (os.cpu_count() or 1) // int(cfg.launcher.get("max_parallel", 1)))
        jobs = [(plan.specs[key].model + f"/seed{plan.specs[key].seed}",
                 ModelJob(plan.specs[key], missing[key], str(store), device=cfg.device,
                          threads=None if cfg.launcher.name == "debug" else threads,
                          progress=bool(cfg.progress)))
                for key in todo]
        if cfg.launcher.name == "debug":
            outcomes = run_debug(jobs, progress=bool(cfg.progress))
        elif cfg.launcher.name == "slurm":
            submitted = run_slurm_sweep(plan, store, sweep_dir, cfg)
            if submitted is None:  # launcher.wait=false: the tasks run on; --status follows them
                return 0
            outcomes = submitted
        else:
            outcomes = run_local(jobs, sweep_dir / "jobs", max_parallel=int(cfg.launcher.max_parallel),
                                 timeout_min=float(cfg.launcher.timeout_min), progress=bool(cfg.progress))

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
    results = [read_json(c.path(store)) for c in cells if c.path(store).exists()]
    if results:
        results_dir = Path(cfg.results_dir)
        if not results_dir.is_absolute():
            results_dir = Path(os.getcwd()) / results_dir
        config = plain(cfg)
        written = write_leaderboard(results, results_dir, notes=sweep_notes(config, git_commit()), store=store,
                                    config=config)
        for name, path in written.items():
            if name.endswith("leaderboard.md"):
                print("\n" + path.read_text())
        print("written: " + ", ".join(str(p) for p in written.values()))
    missing_after = len(cells) - len(results)
    print(f"{len(results)}/{len(cells)} cells done in {time.time() - began:.1f} s")
    if failures or missing_after:
        for failure in failures:
            print(failure, file=sys.stderr)
        print(f"error: {missing_after} of {len(cells)} cells failed or are missing; "
              "rerun the same command to retry them", file=sys.stderr)
        return 1
    return 0


def slurm_stages(plan: Plan, store: Path, cfg: DictConfig) -> List[Any]:
    """The SLURM job arrays of what is still to do: training, then evaluation.

    Training: one task per model without a checkpoint (models derived from a parent in a second
    array that waits for the first). Evaluation: the missing cells grouped per model and explainer
    (``launcher.group_cells=explainer``, the default: the explainer's maps are computed once and its
    metrics run as one suite that shares forward passes, while explainers run in parallel) or per
    model (``group_cells=model``: fewer, longer tasks). The evaluation array waits for the training
    arrays with an ``afterany`` dependency rather than ``afterok``: one model that fails to train must
    not cancel the cells of the others; its own evaluation tasks stop at once with an error naming
    the failed training task.
    """
    from runners.jobs import ModelJob, TrainJob
    from runners.launchers import SlurmStage, SlurmTask

    options = plain(cfg.launcher)
    threads = options.get("threads_per_job") or options.get("cpus_per_task") or None
    levels: Dict[int, List[Any]] = {}
    untrained = [key for key, spec in plan.specs.items() if not (spec.folder(store) / "record.json").exists()]
    for key in sorted(untrained, key=lambda key: -plan.cost[key]):  # longest first
        spec = plan.specs[key]
        levels.setdefault(spec.depth, []).append(SlurmTask(
            f"train {spec.model}/seed{spec.seed}",
            TrainJob(spec, str(store), device=cfg.device, threads=threads), model=key))
    stages: List[Any] = []
    for depth in sorted(levels):
        stages.append(SlurmStage("train" if depth == 0 else f"train{depth}", levels[depth],
                                 after=[stage.name for stage in stages]))
    evaluation = []
    for key, spec in plan.specs.items():
        groups: Dict[str, List[Any]] = {}
        for cell in plan.cells[key]:
            if not cell.path(store).exists():
                groups.setdefault(cell.explainer if options["group_cells"] == "explainer" else "", []).append(cell)
        for explainer, group in groups.items():
            evaluation.append(SlurmTask(
                f"eval {spec.model}/seed{spec.seed}" + (f"/{explainer}" if explainer else ""),
                ModelJob(spec, group, str(store), device=cfg.device, threads=threads, progress=False, train=False),
                model=key, cells=[cell.key() for cell in group]))
    stages.append(SlurmStage("eval", evaluation, after=[stage.name for stage in stages]))
    return stages


def run_slurm_sweep(plan: Plan, store: Path, sweep_dir: Path, cfg: DictConfig) -> "List[Any] | None":
    """Submit what is missing as SLURM job arrays and wait for it; ``None`` with ``launcher.wait=false``.

    Tasks of an earlier submission that SLURM still runs on these cells or models (the same sweep
    started again, or another sweep sharing cells) are not submitted twice: the sweep waits for
    them first, then submits only what is still missing.
    """
    from runners.launchers import (LIVE_STATES, SLURM_RECORD, array_id, read_slurm_records, slurm_states,
                                   submit_slurm, wait_slurm)

    options = plain(cfg.launcher)
    ours = {cell.key() for cell in plan.all_cells} | set(plan.specs)
    while True:  # until no earlier task runs on these cells (one may be submitting more meanwhile)
        earlier = [entry for entry in read_slurm_records(store)
                   if set(entry["cells"]) & ours or entry["model"] in ours]
        states = slurm_states(entry["job_id"] for entry in earlier)
        live = [entry for entry in earlier
                if states.get(entry["job_id"], "") in LIVE_STATES and not Path(entry["result"]).exists()]
        if not live:
            break
        arrays = ", ".join(sorted({array_id(entry["job_id"]) for entry in live}))
        print(f"{len(live)} task(s) of an earlier submission (job {arrays}) still queued or running on "
              "these cells: not submitted again; waiting for them")
        if not options["wait"]:
            return None
        wait_slurm(live, poll_s=float(options["poll_s"]), progress=bool(cfg.progress))
    stages = slurm_stages(plan, store, cfg)
    if not any(stage.tasks for stage in stages):
        return []
    print(f"SLURM logs and submitit files: {sweep_dir / 'slurm'}")
    entries = submit_slurm(stages, sweep_dir / "slurm", options, sweep_dir / SLURM_RECORD)
    if not options["wait"]:
        print("submitted; the same command with --status shows progress, and run again it collects "
              "the results and writes the leaderboard")
        return None
    try:
        return wait_slurm(entries, poll_s=float(options["poll_s"]), progress=bool(cfg.progress))
    except KeyboardInterrupt:
        print(f"\ninterrupted: the tasks go on on SLURM (record {sweep_dir / SLURM_RECORD}); --status "
              "shows them; the same command waits for them and collects the results", file=sys.stderr)
        raise


def sweep_status(cfg: DictConfig) -> int:
    """``python runners/sweep.py <the sweep's arguments> --status``: each cell done, running, failed
    or missing, read from the result files, from SLURM (squeue, sacct) for the tasks recorded under
    ``<store>/sweeps/*/slurm.json``, and from the failures recorded by earlier runs."""
    from bench.storage import read_json as load
    from runners.launchers import LIVE_STATES, read_slurm_records, slurm_states, task_outcome

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
        for key, failure in load(path).items():
            recorded[key] = (path.stat().st_mtime, failure)

    counts = {"done": 0, "running": 0, "failed": 0, "missing": 0}
    lines: List[str] = []
    for cell in cells:
        name = f"{cell.train.model}/seed{cell.train.seed}/{cell.explainer}/{cell.metric}"
        if cell.path(store).exists():
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
        if not live(entry) and not (spec.folder(store) / "record.json").exists() and not outcome(entry).ok:
            lines.append(f"training {entry['name']} failed (job {entry['job_id']} "
                         f"{states.get(entry['job_id'], '')}, log {entry['stderr']}):".replace(" ,", ","))
            lines.extend("    " + line for line in outcome(entry).error.splitlines())
    print(f"sweep status: {len(cells)} cells: {counts['done']} done, {counts['running']} running, "
          f"{counts['failed']} failed, {counts['missing']} missing (store {store})")
    for line in lines:
        print(line)
    return 0


def group_options() -> Dict[str, List[str]]:
    """The options of each config group: datasets from the registry, the rest from YAML files."""
    options = {"data": DATASETS.list()}
    for group in ("profile", "launcher"):
        options[group] = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
    return options


def check_group_overrides(arguments: Sequence[str]) -> None:
    """Reject ``data=``, ``profile=`` or ``launcher=`` with an unknown option in one line (exit 2).

    A multirun's comma-separated choices (``-m data=cifar10,cifar100``) are checked one by one.
    """
    options = group_options()
    for argument in arguments:
        key, separator, value = argument.partition("=")
        group = key.lstrip("+~")
        if not separator or group not in options:
            continue
        for choice in value.split(",") if "," in value else [value]:
            if choice not in options[group]:
                print(f"error: {group}={choice}: unknown {group}; valid choices: {', '.join(options[group])}",
                      file=sys.stderr)
                sys.exit(2)


def hydra_entry(task: Callable[[DictConfig], int]) -> None:
    """Run ``task`` on the config hydra composes from the command line; exit with its status."""
    import hydra

    check_group_overrides(sys.argv[1:])
    register_configs()

    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
    def _main(cfg: DictConfig) -> None:
        status = task(cfg)
        if status:
            sys.exit(status)

    _main()


def main() -> None:
    """``python runners/sweep.py <overrides>`` runs the sweep; with ``--status`` it reports on it."""
    if "--status" in sys.argv[1:]:
        sys.argv.remove("--status")
        hydra_entry(sweep_status)
    else:
        hydra_entry(run_sweep)


if __name__ == "__main__":
    from runners.sweep import main as package_main  # one copy of the module, also as a script

    package_main()
