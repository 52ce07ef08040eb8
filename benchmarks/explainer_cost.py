"""What each explainer costs to explain every class of a batch, per image.

For a few zoo models (randomly initialised, eval mode: the cost does not depend on the weights)
and CIFAR-sized synthetic images, every applicable explainer produces the maps of all ``K``
classes for each image, the way it does so most cheaply:

- methods whose passes serve every class at once (``class_maps``: RISE's masked passes,
  Score-CAM's channel-masked passes, occlusion's occluded passes; FA-CNN's native maps for every
  class come from one forward pass) run once;
- the others (Grad-CAM, Grad-CAM++, Integrated Gradients, the dynamic-linear models' native
  contributions) run once per class.

It prints, per model and explainer, the seconds per image and the forward and backward passes
per image (images through the model's forward, and gradients arriving at the logits; CAM
methods backpropagate from the logit to the CAM layer only, the others to the input). The
expensive methods (RISE, occlusion, Score-CAM, Integrated Gradients) are timed on fewer images
(``--heavy-images``) so that the default run takes about 100 s of CPU time (under two minutes
on an idle 2-core CPU; on a shared machine the wall time grows with the load average, which the
output records); their pass counts are per image and exact whatever the number timed.

    .venv/bin/python benchmarks/explainer_cost.py                      # writes results/benchmarks/explainer_cost.md
    .venv/bin/python benchmarks/explainer_cost.py --device cuda --images 64 --heavy-images 16 --out results/benchmarks/explainer_cost_gpu.md
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

from interpbench.data.base import to_float  # noqa: E402
from interpbench.data.synthetic import generate  # noqa: E402
from interpbench.explainers import EXPLAINERS  # noqa: E402
from interpbench.zoo import MODELS, create_model  # noqa: E402
from interpbench.zoo.base import ZooModel, upsample  # noqa: E402

HEAVY = ("rise", "occlusion", "scorecam", "integrated_gradients")
DEFAULT_MODELS = ("fa_cnn", "resnet18", "bcos_cnn")


class PassCounter:
    """Counts images through the network (at its CAM layer, which every forward pass runs once,
    FA-CNN's all-class native maps included) and image gradients arriving at the logits (at the
    CAM layer's output for passes that bypass ``model.forward``, as the contribution maps do)."""

    def __init__(self, model: ZooModel) -> None:
        self.forward = 0
        self.backward = 0
        self.inside_forward = False
        self.handles = [
            model.register_forward_pre_hook(self._enter),
            model.cam_layer.register_forward_hook(self._at_cam_layer),
            model.register_forward_hook(self._at_output),
        ]

    def _enter(self, module, inputs) -> None:
        self.inside_forward = True

    def _at_cam_layer(self, module, inputs, output) -> None:
        self.forward += output.shape[0]
        if not self.inside_forward and output.requires_grad:
            output.register_hook(self._count_backward)

    def _at_output(self, module, inputs, output) -> None:
        self.inside_forward = False
        if output.requires_grad:
            output.register_hook(self._count_backward)

    def _count_backward(self, grad: torch.Tensor) -> None:
        self.backward += grad.shape[0]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def all_class_maps(explainer, model: ZooModel, x: torch.Tensor) -> Tuple[torch.Tensor, str]:
    """``[B, K, H, W]`` maps of every class, and how the classes share passes."""
    if hasattr(explainer, "class_maps"):
        return explainer.class_maps(model, x), "one set of passes for all classes"
    if explainer.name == "native" and hasattr(model, "class_maps"):
        with torch.no_grad():
            return upsample(model.class_maps(x), x.shape[-2:]), "one forward pass for all classes"
    maps = [explainer(model, x, torch.full((x.shape[0],), c, dtype=torch.long, device=x.device))
            for c in range(model.num_classes)]
    return torch.stack(maps, dim=1), "no model passes" if explainer.name == "random" else "one call per class"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(model: ZooModel, name: str, x: torch.Tensor, device: torch.device) -> Dict[str, object]:
    explainer = EXPLAINERS.create(name)
    all_class_maps(explainer, model, x[:1])  # warm-up (first-call allocations, captum hooks), untimed
    counter = PassCounter(model)
    try:
        synchronize(device)
        start = time.perf_counter()
        maps, sharing = all_class_maps(explainer, model, x)
        synchronize(device)
        seconds = time.perf_counter() - start
    finally:
        counter.remove()
    b = x.shape[0]
    assert maps.shape == (b, model.num_classes, *x.shape[-2:]), maps.shape
    return {"images": b, "seconds": seconds / b, "forward": counter.forward / b,
            "backward": counter.backward / b, "sharing": sharing}


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = ", load average %.1f at the start" % os.getloadavg()[0] if hasattr(os, "getloadavg") else ""
    return (f"CPU {cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} "
            f"threads{load}")


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated zoo models")
    parser.add_argument("--explainers", default="all", help="comma-separated explainers, or all")
    parser.add_argument("--images", type=int, default=8, help="images timed for the cheap explainers")
    parser.add_argument("--heavy-images", type=int, default=1, help=f"images timed for {', '.join(HEAVY)}")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "explainer_cost.md"),
                        help="markdown file to write ('' to only print)")
    args = parser.parse_args(argv)

    models = [m for m in args.models.split(",") if m]
    for name in models:
        MODELS.check(name)
    names = EXPLAINERS.list() if args.explainers == "all" else [e for e in args.explainers.split(",") if e]
    for name in names:
        EXPLAINERS.check(name)
    if args.images < 1 or args.heavy_images < 1:
        parser.error("--images and --heavy-images must be at least 1")
    device = torch.device(args.device)

    started = time.perf_counter()
    torch.manual_seed(0)
    size = args.image_size
    images = to_float(generate(max(args.images, args.heavy_images), image_size=size, seed=0)["images"]).to(device)
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, ROOT), *argv])
    lines = [
        "# Explainer cost: every class of a batch",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine(device)}.",
        "",
        f"{args.num_classes} classes, {size}x{size} synthetic images, CPU-sized zoo models (randomly "
        f"initialised, eval mode), each explainer's defaults. Seconds and passes are per image for all "
        f"{args.num_classes} classes; {', '.join(HEAVY)} are timed on {args.heavy_images} image(s), the "
        f"others on {args.images}. Forward: images through the model; backward: image gradients at the "
        "logits (CAM methods stop at the CAM layer).",
        "",
    ]
    print("\n".join(lines), flush=True)
    for model_name in models:
        model = create_model(model_name, size="cpu", num_classes=args.num_classes,
                             input_size=(3, size, size)).to(device).eval()
        with torch.no_grad():
            model(images[: args.images])  # warm-up
        rows = [f"## {model_name}", "", "| explainer | images timed | s / image | forward / image | "
                "backward / image | classes share passes |", "|---|---|---|---|---|---|"]
        print("\n".join(rows), flush=True)
        for name in names:
            explainer = EXPLAINERS.create(name)
            if not explainer.applies_to(model):
                continue
            count = args.heavy_images if name in HEAVY else args.images
            result = measure(model, name, images[:count], device)
            row = (f"| {name} | {result['images']} | {result['seconds']:.4f} | {result['forward']:g} | "
                   f"{result['backward']:g} | {result['sharing']} |")
            rows.append(row)
            print(row, flush=True)
        lines += rows + [""]
    wall = time.perf_counter() - started
    usage = os.times()
    total = (f"Whole run: {wall:.0f} s wall, {usage.user + usage.system:.0f} s CPU (user + system, all threads)"
             + (", load average %.1f at the end." % os.getloadavg()[0] if hasattr(os, "getloadavg") else "."))
    print("\n" + total)
    lines += [total, ""]
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines))
        print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
