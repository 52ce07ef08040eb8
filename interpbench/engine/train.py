"""Training with a checkpoint cache keyed by everything that determines the weights.

A :class:`TrainSpec` names the model, its size, the data, the recipe and the seed; its hash is the
cache key. ``train_model`` returns at once on a cache hit, resumes from the last finished epoch
after an interruption, and otherwise trains with a progress bar, checkpointing every epoch and
recording the top-1 test accuracy with the final weights.

A recipe's learning-rate ``schedule`` (after ``warmup_epochs`` of linear warm-up from ``lr / W`` to
``lr``, ``W`` the warm-up steps):

- ``constant``: ``lr`` throughout;
- ``cosine``: ``lr * (1 + cos(pi * t)) / 2`` with ``t`` the fraction of the post-warm-up steps done,
  updated every step;
- ``step``: ``lr * gamma ** k`` in epoch ``e`` (counted from 0), ``k`` the number of ``milestones``
  ``<= e``: the rate is multiplied by ``gamma`` when epoch ``m`` begins, for each milestone ``m``
  (PyTorch's ``MultiStepLR`` stepped once per epoch). ``milestones`` (increasing epochs ``>= 1``)
  and ``gamma`` (in ``(0, 1]``) are recipe keys that only this schedule takes; a milestone at or
  past ``epochs`` never applies.
"""
from __future__ import annotations

import bisect
import math
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F

from interpbench.core import TrainSpec
from interpbench.data import load_dataset
from interpbench.data.base import Dataset, Split, to_float
from interpbench.engine.weights import WeightsError, load_weights, weights_ref
from interpbench.integrity import load_verified, remove_with_sidecar, sha256_file, trained_record, write_sidecar
from interpbench.storage import atomic_torch_save, atomic_write_json, plain
from interpbench.zoo import MODELS, ZooModel, create_model

RECIPE_KEYS = {
    "optimizer", "lr", "momentum", "nesterov", "weight_decay", "batch_size", "epochs", "schedule",
    "warmup_epochs", "augment", "max_train_images",
}
# Keys only the step schedule takes (a recipe without them keeps its cache key).
STEP_KEYS = ("milestones", "gamma")
OPTIONAL_RECIPE_KEYS = set(STEP_KEYS)


# "auto" takes the dataset's own choice (none for synthetic, crop_flip for CIFAR and folders).
AUGMENTS = ("auto", "none", "crop_flip")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "cosine", "step")


def check_recipe(recipe: Dict[str, Any]) -> None:
    valid = RECIPE_KEYS | OPTIONAL_RECIPE_KEYS
    missing, unknown = RECIPE_KEYS - set(recipe), set(recipe) - valid
    if missing or unknown:
        raise ValueError(
            f"training recipe has missing keys {sorted(missing)} and unknown keys {sorted(unknown)}; "
            f"valid keys: {', '.join(sorted(valid))}"
        )
    if recipe["optimizer"] not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer '{recipe['optimizer']}'; valid optimizers: {', '.join(OPTIMIZERS)}")
    if recipe["schedule"] not in SCHEDULES:
        raise ValueError(f"unknown schedule '{recipe['schedule']}'; valid schedules: {', '.join(SCHEDULES)}")
    if recipe["augment"] not in AUGMENTS:
        raise ValueError(f"unknown augment '{recipe['augment']}'; valid augments: {', '.join(AUGMENTS)}")
    check_schedule(recipe)


def check_schedule(recipe: Dict[str, Any], where: str = "") -> None:
    """The step schedule's keys: ``milestones`` and ``gamma`` are needed by ``schedule: step`` and
    taken by no other schedule. ``where`` (e.g. ``profile.recipes.coda``) prefixes the messages."""
    head, key = (f"{where}: ", f"{where}.") if where else ("", "")
    present = [name for name in STEP_KEYS if name in recipe]
    if recipe["schedule"] != "step":
        if present:
            verb = "apply" if len(present) > 1 else "applies"
            raise ValueError(f"{head}{' and '.join(present)} {verb} to schedule 'step' only, got schedule "
                             f"'{recipe['schedule']}'; set schedule: step or remove {', '.join(present)}")
        return
    missing = [name for name in STEP_KEYS if name not in recipe]
    if missing:
        raise ValueError(f"{head}schedule 'step' needs milestones (epochs) and gamma (the factor at each); "
                         f"missing: {', '.join(missing)}")
    milestones = recipe["milestones"]
    epochs_ok = (isinstance(milestones, Sequence) and not isinstance(milestones, str) and len(milestones) > 0
                 and all(isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in milestones)
                 and all(a < b for a, b in zip(milestones, list(milestones)[1:])))
    if not epochs_ok:
        shown = list(milestones) if isinstance(milestones, Sequence) and not isinstance(milestones, str) else milestones
        raise ValueError(f"{key}milestones must be a non-empty list of increasing epochs (integers >= 1), "
                         f"got {shown!r}")
    gamma = recipe["gamma"]
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 < gamma <= 1:
        raise ValueError(f"{key}gamma must be a number in (0, 1], got {gamma!r}")


def build_model(spec: TrainSpec, dataset: Dataset) -> ZooModel:
    """The untrained model of ``spec``; its ``model_args`` override the data's arguments (``mean`` and
    ``std``, for weights trained with other statistics)."""
    model = create_model(spec.model, size=spec.size, **{**dataset.model_config(), **plain(spec.model_args)})
    if getattr(model, "channels_last", False):  # faster convolutions for this family
        model = model.to(memory_format=torch.channels_last)
    return model


def multiply_accumulates(model: torch.nn.Module, input_size) -> int:
    """Multiply-accumulates of one forward pass of one image through convolutions and linears."""
    total = [0]

    def count(module: torch.nn.Module, _inputs, output: torch.Tensor) -> None:
        if isinstance(module, torch.nn.Conv2d):
            per_output = module.weight[0].numel()
            total[0] += per_output * output[0].numel()
        elif isinstance(module, torch.nn.Linear):
            total[0] += module.weight.numel()

    handles = [m.register_forward_hook(count) for m in model.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_size))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return total[0]


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Batched random crop (zero padding ``pad``) and horizontal flip of ``[B, C, H, W]``."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad)).permute(0, 2, 3, 1)  # [B, H + 2p, W + 2p, C]
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    rows = (dy.view(b, 1) + torch.arange(h)).view(b, h, 1)
    cols = (dx.view(b, 1) + torch.arange(w)).view(b, 1, w)
    out = padded[torch.arange(b).view(b, 1, 1), rows, cols].permute(0, 3, 1, 2)
    flip = (torch.rand(b, generator=generator) < 0.5).view(b, 1, 1, 1)
    return torch.where(flip, out.flip(-1), out)


def training_subset(split: Split, limit: Optional[int], seed: int) -> Split:
    """The first ``limit`` images of a seeded permutation (all images when ``limit`` is None)."""
    if limit is None or limit >= len(split):
        return split
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    return split.subset(order[:limit])


def learning_rate(recipe: Dict[str, Any], step: int, total_steps: int, steps_per_epoch: int) -> float:
    """The learning rate at optimiser ``step`` (counted from 0) of ``total_steps`` (see the module
    docstring for the schedules)."""
    warmup = int(recipe["warmup_epochs"] * steps_per_epoch)
    if step < warmup:
        return recipe["lr"] * (step + 1) / warmup
    if recipe["schedule"] == "constant":
        return recipe["lr"]
    if recipe["schedule"] == "step":
        passed = bisect.bisect_right(list(recipe["milestones"]), step // steps_per_epoch)
        return recipe["lr"] * recipe["gamma"] ** passed
    progress = (step - warmup) / max(1, total_steps - warmup)
    return recipe["lr"] * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: ZooModel, recipe: Dict[str, Any]) -> torch.optim.Optimizer:
    parameters = model.trainable_parameters()
    if not parameters:
        raise ValueError(f"{type(model).__name__} has no trainable parameters; its recipe needs epochs: 0")
    if recipe["optimizer"] == "adamw":
        return torch.optim.AdamW(parameters, lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    return torch.optim.SGD(
        parameters, lr=recipe["lr"], momentum=recipe["momentum"],
        nesterov=bool(recipe["nesterov"]) and recipe["momentum"] > 0,
        weight_decay=recipe["weight_decay"],
    )


@torch.no_grad()
def evaluate_accuracy(model: ZooModel, split: Split, device: torch.device, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` on ``split``."""
    model.eval()
    correct = 0
    for start in range(0, len(split), batch_size):
        x = to_float(split.images[start : start + batch_size].to(device))
        y = split.labels[start : start + batch_size].to(device)
        correct += int((model(x).argmax(dim=1) == y).sum())
    return correct / max(1, len(split))


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train_model(
    spec: TrainSpec,
    store: Path,
    device: str = "auto",
    progress: bool = True,
    stop_after_epochs: Optional[int] = None,
) -> Dict[str, Any]:
    """Train ``spec`` unless its checkpoint exists; return the checkpoint's record.

    ``stop_after_epochs`` ends the run early (as a preempted job would), leaving ``last.pt``
    for the next call to resume from. A corrupt checkpoint (``record.json`` off its schema,
    ``model.pt`` off its sha256) is quarantined and the model trained again.
    """
    if spec.weights is None:  # loaded from a file: no recipe runs
        check_recipe(spec.recipe)
    folder = spec.folder(store)
    record = trained_record(folder, Path(store))
    if record is not None:
        return record
    with training_lock(folder):  # one trainer per checkpoint; the others wait, then read it
        record = trained_record(folder, Path(store))
        if record is not None:
            return record
        return _train(spec, Path(store), folder, device, progress, stop_after_epochs)


@contextmanager
def training_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder`` (its ``train.lock`` file) held by one process at a time."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "train.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _train(spec: TrainSpec, store: Path, folder: Path, device: str, progress: bool,
           stop_after_epochs: Optional[int]) -> Dict[str, Any]:
    from tqdm import tqdm

    recipe = plain(spec.recipe)
    torch_device = resolve_device(device)
    dataset = load_dataset(spec.data)
    if spec.weights is not None:
        return _load_from_weights(spec, folder, dataset, torch_device)
    parent = None
    if spec.parent is not None:  # trained (or found) first; the derived model starts from it
        parent, _ = load_trained(spec.parent, store, dataset, device=device, progress=progress)
    torch.manual_seed(spec.seed)
    model = build_model(spec, dataset).to(torch_device)
    train_split = training_subset(dataset.train, recipe["max_train_images"], spec.seed)
    # a corrupt last.pt (off its sidecar's sha256, or not loading) is quarantined: no resume
    state = load_verified(folder / "last.pt", store, _load_last)
    resume = state is not None
    fit_seconds = 0.0  # converting or fitting the derived model on its parent (k-means: the whole fit)
    if parent is not None and not resume:
        began = time.time()
        model.init_from_parent(parent, train_split)
        fit_seconds = time.time() - began
    optimizer = make_optimizer(model, recipe) if int(recipe["epochs"]) > 0 else None  # 0: fitted only
    augment = dataset.augment if recipe["augment"] == "auto" else recipe["augment"]

    n, batch = len(train_split), int(recipe["batch_size"])
    steps_per_epoch = math.ceil(n / batch)
    total_steps = steps_per_epoch * int(recipe["epochs"])
    start_epoch, history, seconds = 0, [], 0.0
    resumed = []  # the epochs at which an interrupted run (preempted, timed out) went on
    if resume:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history, seconds = state["epoch"], state["history"], state["seconds"]
        resumed = state.get("resumed_at_epochs", []) + [start_epoch]
        print(f"{spec.model}: resuming after epoch {start_epoch} from {folder / 'last.pt'}", flush=True)

    for epoch in range(start_epoch, int(recipe["epochs"])):
        if stop_after_epochs is not None and epoch - start_epoch >= stop_after_epochs:
            return {"finished": False, "epoch": epoch, "folder": str(folder)}
        began = time.time()
        model.train()
        generator = torch.Generator().manual_seed(spec.seed * 100_003 + epoch)
        order = torch.randperm(n, generator=generator)
        loss_sum, correct, seen = 0.0, 0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"{spec.model} epoch {epoch + 1}/{recipe['epochs']}",
                   disable=not progress, leave=False, mininterval=1.0)
        for step in bar:
            index = order[step * batch : (step + 1) * batch]
            x = to_float(train_split.images[index])
            if augment == "crop_flip":
                x = random_crop_flip(x, generator)
            x, y = x.to(torch_device), train_split.labels[index].to(torch_device)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(recipe, epoch * steps_per_epoch + step, total_steps, steps_per_epoch)
            logits = model(x)
            loss = model.loss(logits, y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{spec.model}: loss became {float(loss)} at epoch {epoch + 1}, step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(index)
            correct += int((logits.argmax(dim=1) == y).sum())
            seen += len(index)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        bar.close()
        seconds += time.time() - began
        history.append({"epoch": epoch + 1, "loss": loss_sum / seen, "train_accuracy": correct / seen})
        atomic_torch_save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
             "history": history, "seconds": seconds, "resumed_at_epochs": resumed},
            folder / "last.pt",
        )
        write_sidecar(folder / "last.pt")  # after it: its size and sha256, checked on resume

    accuracy = evaluate_accuracy(model, dataset.test, torch_device)
    record = {
        "model": spec.model, "key": spec.key(), "spec": spec.identity(), "config": plain(model.config),
        "test_accuracy": accuracy, "test_images": len(dataset.test), "train_images": n,
        "history": history, "train_seconds": round(seconds, 1), "fit_seconds": round(fit_seconds, 1),
        "device": str(torch_device),
        "parameters": sum(p.numel() for p in model.parameters()),
        "trained_parameters": sum(p.numel() for p in model.trainable_parameters()), "finished": True,
        "resumed_at_epochs": resumed,
    }
    atomic_torch_save({"model": model.state_dict(), "record": record}, folder / "model.pt")
    record = {**record, "model_sha256": sha256_file(folder / "model.pt")}  # checked on every read
    atomic_write_json(folder / "record.json", record)  # last: marks the checkpoint complete
    remove_with_sidecar(folder / "last.pt")
    return record


def _load_from_weights(spec: TrainSpec, folder: Path, dataset: Dataset, device: torch.device) -> Dict[str, Any]:
    """No training: the model with the weights of ``spec.weights`` (checked against the hash the spec
    was planned with), its accuracy, and the record saying where they came from."""
    ref = weights_ref(spec.weights["path"])
    if ref["sha256"] != spec.weights["sha256"]:
        raise WeightsError(f"weights {ref['path']} changed since the sweep was planned (sha256 "
                           f"{ref['sha256'][:16]}, planned {spec.weights['sha256'][:16]}); run the sweep again")
    began = time.time()
    model = load_weights(build_model(spec, dataset), ref["path"], name=spec.model).to(device)
    accuracy = evaluate_accuracy(model, dataset.test, device)
    record = {
        "model": spec.model, "key": spec.key(), "spec": spec.identity(), "config": plain(model.config),
        "test_accuracy": accuracy, "test_images": len(dataset.test), "train_images": 0, "history": [],
        "train_seconds": 0.0, "device": str(device), "parameters": sum(p.numel() for p in model.parameters()),
        "trained_parameters": 0, "finished": True, "resumed_at_epochs": [], "weights": ref,
        "load_seconds": round(time.time() - began, 1),
    }
    atomic_torch_save({"model": model.state_dict(), "record": record}, folder / "model.pt")
    record = {**record, "model_sha256": sha256_file(folder / "model.pt")}
    atomic_write_json(folder / "record.json", record)
    return record


def _load_last(path: Path) -> Dict[str, Any]:
    """The state ``last.pt`` holds (on the CPU: loading it into the model and the optimizer moves it to
    their device); raises if it is not a training checkpoint."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    missing = [k for k in ("model", "optimizer", "epoch", "history", "seconds") if not isinstance(state, dict)
               or k not in state]
    if missing:
        raise ValueError(f"not a training checkpoint (no {', '.join(missing)})")
    return state


def load_trained(spec: TrainSpec, store: Path, dataset: Dataset, device: str = "auto",
                 progress: bool = False) -> Tuple[ZooModel, Dict[str, Any]]:
    """The trained model of ``spec`` (in eval mode) and its record; trains it first if needed."""
    record = train_model(spec, store, device=device, progress=progress)
    model = build_model(spec, dataset)
    state = torch.load(spec.folder(store) / "model.pt", map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    return model.to(resolve_device(device)).eval(), record


def default_recipe_name(model: str) -> str:
    return MODELS.info(model).get("recipe", "resnet_standard")
