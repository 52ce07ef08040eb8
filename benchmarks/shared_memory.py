"""How much memory parallel processes take for one decoded ImageFolder dataset.

The sweep's jobs each load the dataset from the decoded-array cache. The cached images are read-only
memory maps of ``.npy`` files, so that every process reads the same pages of the operating system's
page cache instead of holding a copy. This benchmark writes a small ImageFolder of 224-px JPEGs
(CIFAR-10 upsampled, ``benchmarks/make_imagefolder.py``; 500 training and 100 validation images per
class by default, 860 MB decoded; about 3 minutes on two cores), decodes it into a cache once, then
starts worker processes that each load the dataset and read all of it (the mean pixel over
training-style batches, ``to_float(images[batch])``), and measures each worker's memory from
``/proc/<pid>/smaps_rollup`` while all are alive:

- PSS (proportional set size: a page shared by ``k`` processes counts ``1/k`` in each), which adds up
  to the memory the processes take together, and RSS (every resident page in full);
- "total": after loading and reading; "data": the same less what the worker held before loading
  (Python, torch and the package imported, and one batch converted), which is what the dataset costs
  (the workers run with ``MALLOC_MMAP_THRESHOLD_=65536``, so that a freed batch leaves no heap behind).

It runs one worker alone, then two at once, and prints the ratios two-together / one-alone of the
summed PSS, total and data. The target is a data ratio below 1.3 (the second process adds little
memory for the data); the total ratio also counts each interpreter's own memory (about 0.3 GB with
torch), so it approaches the data ratio only as the data grows (860 MB: about 1.3; 2 GB: about 1.1).
``--copy`` runs the same with each worker reading the arrays into its own memory (``np.load``
without a memory map, as loading did before), for comparison: the data ratio is then close to 2.

    .venv/bin/python benchmarks/shared_memory.py
    .venv/bin/python benchmarks/shared_memory.py --per-class 100 --val-per-class 20 --copy
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]


def _sibling(name: str):
    """A script beside this one, loaded as a module (benchmarks/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_maker = _sibling("make_imagefolder")
ARCHIVE, write_imagefolder = _maker.ARCHIVE, _maker.write_imagefolder

SIZE = 224
BATCH = 64


def memory_kb(pid: int) -> Dict[str, int]:
    """``Pss`` and ``Rss`` (kB) of process ``pid`` from ``/proc/<pid>/smaps_rollup``."""
    values: Dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("Pss", "Rss", "Pss_Anon", "Pss_File", "Shared_Clean"):
            values[name] = int(rest.split()[0])
    return values


def worker(root: str, copy: bool) -> None:
    """Runs in a child: imports, says ``ready``; on ``load`` loads and reads the dataset, says
    ``done <mean>``; on ``exit`` ends. The parent measures between the steps."""
    import torch

    import interpbench.data.imagefolder  # noqa: F401 (everything loading imports, before measuring)
    import interpbench.integrity  # noqa: F401
    from interpbench.data import load_dataset
    from interpbench.images import to_float

    torch.set_num_threads(1)
    for _ in range(2):  # the allocator's heap grown to a batch's size, before measuring
        float(to_float(torch.zeros(BATCH, 3, SIZE, SIZE, dtype=torch.uint8)).sum(dtype=torch.float64))
    print("ready", flush=True)
    assert sys.stdin.readline().strip() == "load"
    dataset = load_dataset({"name": "imagefolder", "root": root, "image_size": SIZE})
    splits = [dataset.train, dataset.test]
    if copy:  # every process with its own copy, read into memory as loading did before memory maps
        from interpbench.data.base import Split, load_array
        from interpbench.storage import data_dir

        (folder,) = [p for p in data_dir().glob("imagefolder-*") if p.is_dir()]
        splits = [Split(torch.from_numpy(load_array(folder / f"{name}_images.npy", mapped=False)), split.labels)
                  for name, split in (("train", dataset.train), ("test", dataset.test))]
    total, count = 0.0, 0
    for split in splits:
        order = torch.randperm(len(split), generator=torch.Generator().manual_seed(0))
        for start in range(0, len(split), BATCH):
            x = to_float(split.images[order[start : start + BATCH]])
            total += float(x.sum(dtype=torch.float64))
            count += x.numel()
    print(f"done {total / count:.6f}", flush=True)
    sys.stdin.readline()


def run_workers(count: int, root: Path, home: Path, copy: bool) -> List[Dict[str, Dict[str, int]]]:
    """Start ``count`` workers at once; their memory before loading and after reading the data."""
    # glibc returns every freed batch of 64 kB or more to the system, so that the numbers count the
    # memory in use, not the heap kept for later batches (the same in both modes)
    env = {**os.environ, "INTERPBENCH_HOME": str(home), "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(root)] + (["--copy"] if copy else [])
    procs = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(count)]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready"
        before = [memory_kb(proc.pid) for proc in procs]
        for proc in procs:
            proc.stdin.write("load\n")
            proc.stdin.flush()
        means = [proc.stdout.readline().split() for proc in procs]
        assert all(m and m[0] == "done" for m in means), means
        after = [memory_kb(proc.pid) for proc in procs]
        for proc in procs:
            proc.stdin.write("exit\n")
            proc.stdin.flush()
        for proc in procs:
            proc.wait(timeout=60)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return [{"before": b, "after": a, "mean": float(m[1])} for b, a, m in zip(before, after, means)]


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    import numpy
    import torch

    return (f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} logical CPUs, "
            f"{mem_kb / 2**20:.1f} GiB RAM; Python {platform.python_version()}, torch {torch.__version__}, "
            f"numpy {numpy.__version__}; load average {os.getloadavg()[0]:.1f}")


def summed(results: List[Dict], key: str, stage: str = "after") -> float:
    return sum(r[stage][key] for r in results) / 1024


def data_mb(results: List[Dict], key: str) -> float:
    return sum(r["after"][key] - r["before"][key] for r in results) / 1024


def measure(root: Path, home: Path, copy: bool) -> Dict[str, float]:
    one = run_workers(1, root, home, copy)
    two = run_workers(2, root, home, copy)
    label = "copied into each process" if copy else "memory-mapped (shared)"
    print(f"\n{label}:")
    print("  processes   PSS total   PSS data   RSS total   RSS data   (MB; data = after loading less before)")
    for name, results in (("1 alone", one), ("2 at once", two)):
        print(f"  {name:<10}  {summed(results, 'Pss'):9.0f}  {data_mb(results, 'Pss'):9.0f}  "
              f"{summed(results, 'Rss'):10.0f}  {data_mb(results, 'Rss'):9.0f}")
    for k, r in enumerate(two):
        print(f"    process {k + 1}: PSS {r['after']['Pss'] / 1024:.0f} MB (anonymous "
              f"{r['after'].get('Pss_Anon', 0) / 1024:.0f}, file {r['after'].get('Pss_File', 0) / 1024:.0f}), "
              f"RSS {r['after']['Rss'] / 1024:.0f} MB, mean pixel {r['mean']:.4f}")
    ratio_total = summed(two, "Pss") / summed(one, "Pss")
    ratio_data = data_mb(two, "Pss") / data_mb(one, "Pss")
    print(f"  ratio 2 at once / 1 alone, PSS total: {ratio_total:.2f}; PSS data: {ratio_data:.2f}")
    return {"total": ratio_total, "data": ratio_data}


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=500, help="training images per class (default 500)")
    parser.add_argument("--val-per-class", type=int, default=100, help="validation images per class (default 100)")
    parser.add_argument("--archive", type=Path, default=ARCHIVE, help=f"CIFAR-10 JPEG archive (default {ARCHIVE})")
    parser.add_argument("--copy", action="store_true", help="also run with each process copying the arrays")
    parser.add_argument("--worker", metavar="ROOT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.copy)
    if not Path("/proc/self/smaps_rollup").exists():
        raise SystemExit("error: needs Linux's /proc/<pid>/smaps_rollup (kernel 4.14 or later)")

    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="interpbench-shared-memory-") as scratch:
        root, home = Path(scratch) / "imagefolder", Path(scratch) / "home"
        began = time.time()
        written = write_imagefolder(root, args.per_class, args.val_per_class, SIZE, args.archive)
        print(f"data: {written['train']} training and {written['val']} validation JPEGs of {SIZE}x{SIZE} "
              f"written in {time.time() - began:.0f} s")
        began = time.time()
        env = {**os.environ, "INTERPBENCH_HOME": str(home), "OMP_NUM_THREADS": "1"}
        built = subprocess.run([sys.executable, "-c", "from interpbench.data import load_dataset; "
                        f"load_dataset({{'name': 'imagefolder', 'root': {str(root)!r}, 'image_size': {SIZE}}})"],
                       env=env, capture_output=True, text=True, check=False)
        if built.returncode:
            raise SystemExit(f"error: decoding failed: {built.stderr.strip().splitlines()[-1:]}")
        decoded = sum(p.stat().st_size for p in home.rglob("*.npy")) / 2**20
        print(f"decoded into the cache in {time.time() - began:.0f} s: {decoded:.0f} MB of arrays")
        ratios = measure(root, home, copy=False)
        if args.copy:
            measure(root, home, copy=True)
    verdict = "below" if ratios["data"] < 1.3 else "not below"
    print(f"\nshared: PSS of two processes / one, the data: {ratios['data']:.2f} ({verdict} the 1.3 target); "
          f"total: {ratios['total']:.2f}")


if __name__ == "__main__":
    main()
