"""Before a sweep runs anything: what each job will cost on this device, and whether it fits.

For every job still to do the plan knows its model's multiply-adds per image (``Plan.macs``), its
training images and epochs; this module adds

- the device's **throughput** in multiply-adds per second for a training step (forward and backward
  of a small convolutional network, :func:`calibrate`), measured once per device, torch version and
  thread count and cached in ``<store>/calibration.json``;
- each model's **activation bytes** per image (the outputs of every module in one forward pass),
  for the peak memory of a training batch and of an evaluation batch.

Estimates (:func:`estimate`): training takes ``3 x MACs x images x epochs`` (forward, and a backward
pass counted as two forwards) at the measured throughput; each cell ``EVAL_FACTOR x MACs x images``
(maps and scoring: several forward passes per image). Peak memory: parameters with their gradients
and optimiser state (4 copies), plus ``2 x activation bytes x batch`` for the training batch
(evaluation batches adapt to the memory there is, down to one image). They are estimates, good to
a factor of about two: enough to see that a job needs hours, not minutes, or more memory than the
machine has.

:func:`preflight` prints the table and refuses (one line per job, with what to change) a job whose
estimate exceeds the launcher's time limit (``launcher.timeout_min`` locally, ``launcher.time_min``
on SLURM) or the machine's memory; ``preflight=force`` (``--force``) runs it anyway,
``preflight=plan`` (``--plan``) prints the table and stops, ``preflight=off`` skips it all.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from interpbench.console import EVAL_FACTOR, clock
from interpbench.engine.train import default_recipe_name, multiply_accumulates, resolve_device
from interpbench.launch.base import local_slots
from interpbench.storage import atomic_write_json

PREFLIGHT_MODES = ("check", "plan", "force", "off")
CALIBRATION_FILE = "calibration.json"
CALIBRATION_S = 0.5  # how long the throughput is measured
CALIBRATION_ENV = "INTERPBENCH_MACS_PER_S"  # a throughput to use instead of measuring one (tests, a known device)


@dataclass
class JobCost:
    """One job's estimate: what it trains and scores, how long and how much memory."""
    name: str
    train_images: int
    epochs: int
    macs: float  # per image, forward
    cells: int
    eval_images: int  # images over all its cells
    seconds: float
    peak_bytes: float
    problems: Tuple[str, ...] = ()


def device_label(device: str) -> str:
    """What the calibration is cached under: the device, its name, torch's version and threads."""
    import torch


    resolved = resolve_device(device)
    name = torch.cuda.get_device_name(resolved) if resolved.type == "cuda" else os.uname().machine
    return f"{resolved} ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads"


def calibrate(store: Path, device: str = "auto", refresh: bool = False, threads: Optional[int] = None) -> float:
    """The device's training throughput in multiply-adds per second: a small convolutional network's
    forward and backward passes on 32-px batches, timed for about ``CALIBRATION_S`` seconds after a
    warm-up, with ``threads`` torch threads (a job's share of the cores; default: as set); cached in
    ``<store>/calibration.json`` by :func:`device_label`. The environment variable
    ``INTERPBENCH_MACS_PER_S`` replaces the measurement with its value."""
    import torch

    if os.environ.get(CALIBRATION_ENV):
        try:
            value = float(os.environ[CALIBRATION_ENV])
        except ValueError:
            value = -1.0
        if not value > 0:
            raise ValueError(f"{CALIBRATION_ENV}={os.environ[CALIBRATION_ENV]!r}: give multiply-adds per second, "
                             "a number above 0")
        return value
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        return _calibrate(store, device, refresh)
    finally:
        torch.set_num_threads(before)


def _calibrate(store: Path, device: str, refresh: bool) -> float:
    import torch


    label = device_label(device)
    path = Path(store) / CALIBRATION_FILE
    cached = _read(path)
    if not refresh and isinstance(cached.get(label), dict) and cached[label].get("macs_per_s", 0) > 0:
        return float(cached[label]["macs_per_s"])
    resolved = resolve_device(device)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(32, 64, 3, padding=1),
        torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, 10)).to(resolved)
    per_image = multiply_accumulates(model, (3, 32, 32))
    x = torch.randn(32, 3, 32, 32, device=resolved)
    y = torch.randint(0, 10, (32,), device=resolved)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01)

    def step() -> None:
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()

    step()
    if resolved.type == "cuda":
        torch.cuda.synchronize(resolved)
    steps, began = 0, time.perf_counter()
    while time.perf_counter() - began < CALIBRATION_S or steps < 3:
        step()
        steps += 1
    if resolved.type == "cuda":
        torch.cuda.synchronize(resolved)
    seconds = time.perf_counter() - began
    macs_per_s = 3.0 * per_image * x.shape[0] * steps / seconds
    cached = _read(path)
    cached[label] = {"macs_per_s": macs_per_s, "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
    atomic_write_json(path, cached)
    return macs_per_s


def step_seconds(model: Any, input_size: Tuple[int, ...], num_classes: int, batch: int, store: Path,
                 label: str, key: str) -> Optional[float]:
    """Seconds per image of one training step of ``model`` (forward, backward, SGD update) on a
    random batch of ``batch`` images: the better of two timed steps after a warm-up step; cached
    in ``<store>/calibration.json`` under ``label`` and ``key``. None when the step fails (a model
    that trains otherwise, e.g. one with nothing to learn)."""
    import copy

    import torch

    path = Path(store) / CALIBRATION_FILE
    cached = _read(path)
    entry = f"{label} | {key} | batch {batch}"
    if isinstance(cached.get(entry), dict) and cached[entry].get("seconds_per_image", 0) > 0:
        return float(cached[entry]["seconds_per_image"])
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *input_size, generator=generator)
    y = torch.randint(0, max(1, num_classes), (batch,), generator=generator)
    try:
        model = copy.deepcopy(model).train()
        parameters = [p for p in model.parameters() if p.requires_grad]
        if not parameters:
            return None
        optimiser = torch.optim.SGD(parameters, lr=1e-3)
        times = []
        for _ in range(3):
            began = time.perf_counter()
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimiser.step()
            times.append(time.perf_counter() - began)
            if times[0] > 20.0:  # a slow model: one step tells enough
                break
    except Exception:  # the estimate falls back to multiply-adds
        return None
    seconds = min(times[1:] or times) / batch
    cached = _read(path)
    cached[entry] = {"seconds_per_image": seconds, "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
    atomic_write_json(path, cached)
    return seconds


def _read(path: Path) -> Dict[str, Any]:
    try:
        data = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        data = {}
    return data if isinstance(data, dict) else {}


def activation_bytes(model: Any, input_size: Tuple[int, ...]) -> float:
    """Bytes of every module's output in one forward pass of one image (leaf modules only)."""
    import torch

    total = [0.0]

    def count(_module: Any, _inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            total[0] += output.numel() * output.element_size()

    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model.eval()
            model(torch.zeros(1, *input_size))
    finally:
        for hook in hooks:
            hook.remove()
    return total[0]


def available_memory() -> Optional[float]:
    """Bytes of memory a job may use: ``MemAvailable`` from ``/proc/meminfo`` (Linux), else None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024.0
    except OSError:
        return None
    return None


def time_limit_s(cfg: Any) -> Tuple[Optional[float], str]:
    """The launcher's time limit per job in seconds, and the option that sets it."""
    launcher = cfg.launcher
    if launcher.name == "local" and launcher.get("timeout_min"):
        return float(launcher.timeout_min) * 60.0, "launcher.timeout_min"
    if launcher.name == "slurm" and launcher.get("time_min"):
        return float(launcher.time_min) * 60.0, "launcher.time_min"
    return None, ""


def gigabytes(count: float) -> str:
    return f"{count / 2**30:.1f} GB" if count >= 2**30 else f"{count / 2**20:.0f} MB"


def estimate(plan: Any, todo: List[str], untrained: List[str], missing: Dict[str, List[Any]], cfg: Any,
             macs_per_s: float, memory: Optional[float],
             per_image: Optional[Dict[str, Optional[float]]] = None) -> List[JobCost]:
    """Each job's cost (see the module's docstring) and its problems against the limits.
    ``per_image``: model key -> measured seconds per image of a training step (None: not measured;
    the multiply-adds and ``macs_per_s`` stand in)."""

    limit, limit_key = time_limit_s(cfg)
    parallel = local_slots(cfg.launcher)[0] if cfg.launcher.name == "local" else 1
    share = memory / parallel if memory else None
    costs = []
    for key in todo:
        spec = plan.specs[key]
        trains = key in untrained
        epochs = int(plan.epochs.get(key, 0)) if trains else 0
        images = int(plan.train_images.get(key, 0)) if trains else 0
        cells = missing.get(key, [])
        eval_images = sum(cell.num_images for cell in cells)
        macs = float(plan.macs.get(key, 0.0))
        measured = (per_image or {}).get(key)
        if measured:  # a training step's time stands for 3 forward passes
            seconds = measured * (images * epochs + EVAL_FACTOR / 3.0 * eval_images)
        else:
            seconds = (3.0 * macs * images * epochs + EVAL_FACTOR * macs * eval_images) / macs_per_s
        # evaluation batches adapt to the memory (the configured size is a maximum): one image must fit
        batch = max(int(spec.recipe.get("batch_size", 1)) if epochs else 0, 1)
        peak = 4.0 * plan.parameter_bytes.get(key, 0.0) + 2.0 * plan.activation_bytes.get(key, 0.0) * batch
        problems = []
        name = f"{spec.model}/seed{spec.seed}"
        if limit is not None and seconds > limit:
            problems.append(
                f"{name}: estimated {clock(seconds)} exceeds {limit_key}={limit / 60:g} min; raise {limit_key}, "
                f"or lower profile.recipes.{default_recipe_name(spec.model)}.epochs / max_train_images"
                + (" or data.image_size" if cfg.data.get("image_size") is not None else "") + ", or pass --force")
        if share is not None and peak > share:
            problems.append(
                f"{name}: estimated peak memory {gigabytes(peak)} exceeds the {gigabytes(share)} available per job "
                f"({gigabytes(memory)} / {parallel} parallel); lower profile.recipes.{default_recipe_name(spec.model)}"
                ".batch_size or launcher.max_parallel, or pass --force")
        costs.append(JobCost(name, images, epochs, macs, len(cells), eval_images, seconds, peak, tuple(problems)))
    return costs


def measure_steps(plan: Any, todo: List[str], store: Path, device: str,
                  threads: Optional[int]) -> Dict[str, Optional[float]]:
    """Model key -> seconds per image of one of its training steps on this CPU (:func:`step_seconds`,
    with a job's ``threads``), for the jobs ``todo``; on a GPU the multiply-adds estimate stands."""
    import torch


    if resolve_device(device).type != "cpu" or plan.input_size is None:
        return {}
    label = device_label(device)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        measured: Dict[str, Optional[float]] = {}
        for key in todo:
            spec = plan.specs[key]
            probe = plan.probes.get(spec.model)
            if probe is None:
                continue
            side = max(plan.input_size[1:]) if len(plan.input_size) > 1 else 32
            batch = max(1, min(int(spec.recipe.get("batch_size", 8) or 8), 8 if side <= 64 else 2))
            measured[key] = step_seconds(probe, plan.input_size, plan.num_classes or 2, batch, store,
                                         label.rsplit(",", 1)[0] + f", {torch.get_num_threads()} threads",
                                         f"{spec.model} {spec.size} {sorted(spec.model_args.items())}")
        return measured
    finally:
        torch.set_num_threads(before)


def table(costs: List[JobCost], macs_per_s: float, parallel: int, memory: Optional[float], label: str) -> str:
    """The preflight table: a row per job and the total."""
    rows = [("job", "train images", "epochs", "MMACs/image", "cells", "est. time", "peak memory")]
    for cost in costs:
        rows.append((cost.name + (" !" if cost.problems else ""), str(cost.train_images), str(cost.epochs),
                     f"{cost.macs / 1e6:,.1f}", str(cost.cells), clock(cost.seconds), gigabytes(cost.peak_bytes)))
    total = sum(cost.seconds for cost in costs)
    # the jobs shared out over the parallel slots, but never less than the longest job
    wall = max(total / max(1, min(parallel, len(costs))), max((c.seconds for c in costs), default=0.0))
    rows.append(("total", "", "", "", str(sum(c.cells for c in costs)), clock(wall) + f" ({parallel} at a time)", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"preflight on {label}: a training step of each model timed ({macs_per_s / 1e9:.1f} GMAC/s for a "
             "reference network)"
             + (f", {gigabytes(memory)} memory available" if memory else "")]
    for i, row in enumerate(rows):
        lines.append("  " + "  ".join(cell.ljust(w) if j == 0 else cell.rjust(w) for j, (cell, w) in
                                       enumerate(zip(row, widths))))
        if i == 0 or i == len(rows) - 2:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def preflight(plan: Any, todo: List[str], untrained: List[str], missing: Dict[str, List[Any]], cfg: Any,
              store: Path) -> Tuple[bool, List[JobCost]]:
    """Print the preflight table for the jobs ``todo``; returns (go on?, the costs). With
    ``preflight=check`` a job over a limit stops the sweep (its lines on stderr)."""
    import sys

    mode = str(cfg.get("preflight", "check"))
    if mode == "off" or not todo:
        return True, []
    launcher = cfg.launcher
    parallel, threads = local_slots(launcher) if launcher.name == "local" else (
        int(launcher.get("array_parallelism") or len(todo)) if launcher.name == "slurm" else 1,
        launcher.get("threads_per_job"))
    macs_per_s = calibrate(store, cfg.device, threads=threads)
    per_image = measure_steps(plan, todo, store, cfg.device, threads) if not os.environ.get(CALIBRATION_ENV) else {}
    memory = available_memory()
    costs = estimate(plan, todo, untrained, missing, cfg, macs_per_s, memory, per_image)
    label = device_label(cfg.device) if not threads else device_label(cfg.device).rsplit(",", 1)[0] + \
        f", {threads} threads per job"
    print(table(costs, macs_per_s, parallel, memory, label))
    problems = [problem for cost in costs for problem in cost.problems]
    if mode == "plan":
        return False, costs
    if problems and mode != "force":
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return False, costs
    for problem in problems:
        print(f"warning (--force): {problem}")
    return True, costs
