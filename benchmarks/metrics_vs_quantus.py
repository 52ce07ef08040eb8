"""Speed of the batched metric engine against Quantus 0.6, and against the forward-pass floor.

    .venv/bin/python benchmarks/metrics_vs_quantus.py [--images 16] [--repeats 3] [--data cifar10]

For every metric that has a Quantus counterpart (``metric.quantus_reference()``), both run in
this process on the same model (a quarter-width ResNet-18, randomly initialised: speed does not
depend on the weights), the same images (CIFAR-10 test images when ``$HOME/data/cifar10`` or
``--root`` holds them, else the synthetic shapes) and the same saliency (Grad-CAM). Printed per
metric: images per second of ours and of Quantus, their ratio, and the floor: the time of the
forward passes our engine makes for that metric (the same number of perturbed images, in the
same batches) alone. ``ours/floor`` near 1 means the metric costs what its forward passes
cost. Then the suite: all metrics on one shared batch context (forward passes of identical
perturbed images computed once) against the sum of the metrics run one by one.

Timings are the best of ``--repeats`` runs. Writes a markdown table to ``--out``. With
``--chunks``, first measures the forward throughput of a few zoo models at several images per
pass (the ``Batch.chunk`` the engine uses on this device was chosen from it).
"""
from __future__ import annotations

import argparse
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np  # noqa: E402
import torch  # noqa: E402


def best_time(fn, repeats: int):
    times, value = [], None
    for _ in range(repeats):
        began = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - began)
    return min(times), value


def load_images(args):
    from interpbench.data import load_dataset
    from interpbench.data.base import to_float

    root = args.root or os.path.expanduser("~/data/cifar10")
    if args.data == "cifar10" and Path(root).exists():
        dataset = load_dataset({"name": "cifar10", "root": root, "download": False})
    else:
        dataset = load_dataset({"name": "synthetic", "num_train": 100, "num_test": 200, "image_size": 32, "seed": 0})
    generator = torch.Generator().manual_seed(0)
    index = torch.randperm(len(dataset.test), generator=generator)[: args.images].sort().values
    split = dataset.test.subset(index)
    return dataset, to_float(split.images), split.labels, split.masks


def chunk_table(device: str, repeats: int) -> list:
    """Forward images per second of CPU-size zoo models at several images per pass."""
    from interpbench.zoo import create_model

    sizes = [16, 32, 64, 128, 256, 1024]
    config = {"num_classes": 10, "input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.25,) * 3}
    x = torch.rand(2048, 3, 32, 32, device=device)
    lines = ["| model | " + " | ".join(f"{c} / pass" for c in sizes) + " |", "|---|" + "---:|" * len(sizes)]
    for name in ["resnet18", "fa_cnn", "vanilla_cnn", "bcos_cnn"]:
        model = create_model(name, size="cpu", **config).eval().to(device)
        cells = []
        with torch.no_grad():
            for chunk in sizes:
                model(x[:chunk])
                seconds, _ = best_time(lambda: [model(x[s : s + chunk]) for s in range(0, len(x), chunk)], repeats)
                cells.append(f"{len(x) / seconds:.0f}")
        print(f"{name:12s} " + "  ".join(f"{c}:{v}" for c, v in zip(sizes, cells)) + " img/s", flush=True)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", default="cifar10", choices=["cifar10", "synthetic"])
    parser.add_argument("--root", default=None, help="CIFAR-10 folder (default: $HOME/data/cifar10)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--metrics", default="all", help="comma-separated metric names, or all")
    parser.add_argument("--out", default="results/benchmarks/metrics_vs_quantus.md")
    parser.add_argument("--chunks", action="store_true", help="also measure forward throughput per images per pass")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    import quantus

    from interpbench.explainers import EXPLAINERS
    from interpbench.metrics import METRICS
    from interpbench.metrics.base import Batch
    from interpbench.zoo import create_model

    chunk_lines = chunk_table(args.device, args.repeats) if args.chunks else []
    torch.manual_seed(0)
    dataset, x, y, masks = load_images(args)
    model = create_model("resnet18", size="cpu", **dataset.model_config()).eval().to(args.device)
    x, y = x.to(args.device), y.to(args.device)
    masks = masks.to(args.device) if masks is not None else None
    with torch.no_grad():
        target = model(x).argmax(1)
    saliency = EXPLAINERS.create("gradcam")(model, x, target).detach()
    n = x.shape[0]

    # every map explains the predicted class: the average metrics score that class too, and
    # deletion to black shares its perturbed images with pixel flipping to zero
    overrides = {"average_drop": {"target": "predicted"}, "average_gain": {"target": "predicted"},
                 "average_increase": {"target": "predicted"}, "deletion": {"baseline": "zero"}}

    def make(name):
        return METRICS.create(name, **overrides.get(name, {}))

    names = METRICS.list() if args.metrics == "all" else args.metrics.split(",")
    rows, suite_members = [], []
    for name in names:
        metric = make(name)
        if metric.needs_masks and masks is None:
            continue
        if metric.needs_explainer:
            continue
        context = lambda: Batch(model, x, y, saliency, target=target, masks=masks)  # noqa: E731
        run_ours = lambda: (lambda b: (metric.compute(b), b.forward_images))(context())  # noqa: E731
        ours_s, (_, forwards) = best_time(run_ours, args.repeats)
        suite_members.append(name)
        # the floor: the same number of images through the model, in the engine's chunks
        probe = context()
        fake = x[torch.arange(forwards, device=x.device) % n] if forwards else x[:0]
        floor_s, _ = best_time(lambda: probe.forward(fake), args.repeats)
        reference = getattr(metric, "quantus_reference", None)
        quantus_s = None
        if reference is not None:
            q, kwargs = reference()
            xs, ys, a = x.cpu().numpy(), target.cpu().numpy(), saliency[:, None].cpu().numpy()
            call = lambda: q(model=model, x_batch=xs, y_batch=ys, a_batch=a, device=args.device, **kwargs)  # noqa: E731
            if metric.needs_masks:
                s_batch = masks[:, None].cpu().numpy()
                call = lambda: q(model=model, x_batch=xs, y_batch=ys, a_batch=a, s_batch=s_batch,  # noqa: E731
                                 device=args.device, **kwargs)
            np.random.seed(0)
            quantus_s, _ = best_time(call, args.repeats)
        rows.append({"metric": name, "forwards": forwards, "ours_s": ours_s, "quantus_s": quantus_s,
                     "floor_s": floor_s})
        print(f"{name:28s} ours {n / ours_s:9.1f} img/s   quantus "
              + (f"{n / quantus_s:9.1f} img/s   speed-up {quantus_s / ours_s:6.2f}x" if quantus_s else "        –")
              + f"   ours/floor {ours_s / max(floor_s, 1e-9):5.2f}"
              + (f"   quantus/floor {quantus_s / max(floor_s, 1e-9):6.2f}" if quantus_s else ""), flush=True)

    def run_suite(members):
        batch = Batch(model, x, y, saliency, target=target, masks=masks)
        for name in members:
            make(name).compute(batch)
        return batch.forward_images

    # all metrics, then the family whose perturbed images coincide (removal in saliency order)
    family = [m for m in ("deletion", "pixel_flipping", "average_drop", "average_gain", "average_increase")
              if m in suite_members]
    suites = []
    for label, members in (("all", suite_members), ("removal family", family)):
        if len(members) < 2:
            continue
        suite_s, suite_forwards = best_time(lambda: run_suite(members), args.repeats)
        alone = [r for r in rows if r["metric"] in members]
        alone_s, alone_forwards = sum(r["ours_s"] for r in alone), sum(r["forwards"] for r in alone)
        suites.append((label, members, suite_s, suite_forwards, alone_s, alone_forwards))
        print(f"suite '{label}' of {len(members)} metrics: shared {suite_s:.3f} s ({suite_forwards} forward images), "
              f"one by one {alone_s:.3f} s ({alone_forwards} forward images): {alone_s / suite_s:.2f}x")

    header = (f"Command: `.venv/bin/python benchmarks/metrics_vs_quantus.py --images {args.images} "
              f"--repeats {args.repeats} --data {args.data} --device {args.device}"
              f"{' --chunks' if args.chunks else ''}`  \n"
              f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
              f"device {args.device}; torch {torch.__version__}, quantus {quantus.__version__}.  \n"
              f"Model: quarter-width ResNet-18 (random weights), {n} {args.data if masks is None or args.data == 'synthetic' else args.data} "
              f"test images, Grad-CAM saliency; best of {args.repeats}; the engine runs "
              f"{Batch(model, x, y, saliency).chunk} images per forward pass on this device.\n")
    lines = [header, "| metric | forward images | ours img/s | Quantus img/s | speed-up | ours / floor | Quantus / floor |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        q = r["quantus_s"]
        lines.append(f"| {r['metric']} | {r['forwards']} | {n / r['ours_s']:.1f} | "
                     + (f"{n / q:.1f} | {q / r['ours_s']:.2f}x | " if q else "– | – | ")
                     + f"{r['ours_s'] / max(r['floor_s'], 1e-9):.2f} | "
                     + (f"{q / max(r['floor_s'], 1e-9):.2f} |" if q else "– |"))
    lines += ["", "| suite (one shared batch) | metrics | shared: s | shared: forward images | one by one: s "
              "| one by one: forward images | one by one / shared |", "|---|---|---:|---:|---:|---:|---:|"]
    for label, members, suite_s, suite_forwards, alone_s, alone_forwards in suites:
        lines.append(f"| {label} | {len(members) if label == 'all' else ', '.join(members)} | {suite_s:.3f} | "
                     f"{suite_forwards} | {alone_s:.3f} | {alone_forwards} | {alone_s / suite_s:.2f}x |")
    if chunk_lines:
        lines += ["", f"Forward throughput (images per second, best of {args.repeats}) of randomly initialised "
                  f"CPU-size zoo models on 2048 random 32-pixel images, by images per pass, device {args.device}:",
                  ""] + chunk_lines
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
