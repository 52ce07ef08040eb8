"""Training with a checkpoint cache keyed by everything that determines the weights.

A :class:`TrainSpec` names the model, its size, the data, the recipe and the seed; its hash is the
cache key. ``train_model`` returns at once on a cache hit, resumes from the last finished epoch
after an interruption, and otherwise trains with a progress bar, checkpointing every epoch and
recording the top-1 test accuracy with the final weights.
"""
from __future__ import annotations

import math
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn.functional as F

from bench.storage import atomic_torch_save, atomic_write_json, plain, read_json, stable_hash
from data import load_dataset
from data.base import Dataset, Split, to_float
from zoo import MODELS, ZooModel, create_model

RECIPE_KEYS = {
    "optimizer", "lr", "momentum", "nesterov", "weight_decay", "batch_size", "epochs", "schedule",
    "warmup_epochs", "augment", "max_train_images",
}
# "auto" takes the dataset's own choice (none for synthetic, crop_flip for CIFAR and folders).
AUGMENTS = ("auto", "none", "crop_flip")
# Data arguments that change where data is found or fetched, not what it is.
DATA_KEYS_NOT_IN_IDENTITY = {"download"}


@dataclass(frozen=True)
class TrainSpec:
    model: str
    data: Dict[str, Any]
    recipe: Dict[str, Any]
    size: str = "cpu"
    model_args: Dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    parent: Optional["TrainSpec"] = None  # derived models start from this trained model

    def identity(self) -> Dict[str, Any]:
        data = {k: v for k, v in plain(self.data).items() if k not in DATA_KEYS_NOT_IN_IDENTITY}
        identity = {"model": self.model, "size": self.size, "model_args": plain(self.model_args),
                    "data": data, "recipe": plain(self.recipe), "seed": self.seed}
        if self.parent is not None:
            identity["parent"] = self.parent.identity()
        return identity

    @property
    def depth(self) -> int:
        """0 for a model trained from scratch, 1 + the parent's depth for a derived one."""
        return 0 if self.parent is None else 1 + self.parent.depth

    def key(self) -> str:
        return stable_hash(self.identity())

    def folder(self, store: Path) -> Path:
        return Path(store) / "models" / f"{self.model}-{self.key()}"


def check_recipe(recipe: Dict[str, Any]) -> None:
    missing, unknown = RECIPE_KEYS - set(recipe), set(recipe) - RECIPE_KEYS
    if missing or unknown:
        raise ValueError(
            f"training recipe has missing keys {sorted(missing)} and unknown keys {sorted(unknown)}; "
            f"valid keys: {', '.join(sorted(RECIPE_KEYS))}"
        )
    if recipe["optimizer"] not in ("sgd", "adamw"):
        raise ValueError(f"unknown optimizer '{recipe['optimizer']}'; valid optimizers: sgd, adamw")
    if recipe["schedule"] not in ("constant", "cosine"):
        raise ValueError(f"unknown schedule '{recipe['schedule']}'; valid schedules: constant, cosine")
    if recipe["augment"] not in AUGMENTS:
        raise ValueError(f"unknown augment '{recipe['augment']}'; valid augments: {', '.join(AUGMENTS)}")


def build_model(spec: TrainSpec, dataset: Dataset) -> ZooModel:
    model = create_model(spec.model, size=spec.size, **dataset.model_config(), **plain(spec.model_args))
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
    warmup = int(recipe["warmup_epochs"] * steps_per_epoch)
    if step < warmup:
        return recipe["lr"] * (step + 1) / warmup
    if recipe["schedule"] == "constant":
        return recipe["lr"]
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
    for the next call to resume from.
    """
    check_recipe(spec.recipe)
    folder = spec.folder(store)
    if (folder / "record.json").exists():
        return read_json(folder / "record.json")
    with training_lock(folder):  # one trainer per checkpoint; the others wait, then read it
        if (folder / "record.json").exists():
            return read_json(folder / "record.json")
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
    parent = None
    if spec.parent is not None:  # trained (or found) first; the derived model starts from it
        parent, _ = load_trained(spec.parent, store, dataset, device=device, progress=progress)
    torch.manual_seed(spec.seed)
    model = build_model(spec, dataset).to(torch_device)
    train_split = training_subset(dataset.train, recipe["max_train_images"], spec.seed)
    resume = (folder / "last.pt").exists()
    if parent is not None and not resume:
        model.init_from_parent(parent, train_split)
    optimizer = make_optimizer(model, recipe) if int(recipe["epochs"]) > 0 else None  # 0: fitted only
    augment = dataset.augment if recipe["augment"] == "auto" else recipe["augment"]

    n, batch = len(train_split), int(recipe["batch_size"])
    steps_per_epoch = math.ceil(n / batch)
    total_steps = steps_per_epoch * int(recipe["epochs"])
    start_epoch, history, seconds = 0, [], 0.0
    resumed = []  # the epochs at which an interrupted run (preempted, timed out) went on
    if resume:
        state = torch.load(folder / "last.pt", map_location=torch_device, weights_only=False)
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

    accuracy = evaluate_accuracy(model, dataset.test, torch_device)
    record = {
        "model": spec.model, "key": spec.key(), "spec": spec.identity(), "config": plain(model.config),
        "test_accuracy": accuracy, "test_images": len(dataset.test), "train_images": n,
        "history": history, "train_seconds": round(seconds, 1), "device": str(torch_device),
        "parameters": sum(p.numel() for p in model.parameters()),
        "trained_parameters": sum(p.numel() for p in model.trainable_parameters()), "finished": True,
        "resumed_at_epochs": resumed,
    }
    atomic_torch_save({"model": model.state_dict(), "record": record}, folder / "model.pt")
    atomic_write_json(folder / "record.json", record)  # last: marks the checkpoint complete
    if (folder / "last.pt").exists():
        os.unlink(folder / "last.pt")
    return record


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


def train_only(cfg: Any) -> int:
    """Train (or find in the cache) every model the sweep ``cfg`` would use; print each one."""
    from bench.storage import work_dir
    from runners.sweep import plan_or_report

    plan = plan_or_report(cfg)
    if plan is None:
        return 2
    store = work_dir(cfg.store)
    for spec in plan.specs.values():
        record = train_model(spec, store, device=cfg.device, progress=bool(cfg.progress))
        print(f"{spec.model} (seed {spec.seed}): test accuracy {record['test_accuracy']:.4f}, "
              f"{record['train_seconds']} s training, {spec.folder(store)}")
    return 0


def main() -> None:
    """``python runners/train.py zoo=fa_cnn [data=... profile=... seeds=[0,1]]``: train only.

    Takes the sweep's config and arguments.
    """
    from runners.sweep import hydra_entry

    hydra_entry(train_only)


if __name__ == "__main__":
    from runners.train import main as package_main

    package_main()
