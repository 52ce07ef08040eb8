"""The explainer interface and batched explanation of a whole image set.

Every explainer receives the model in ``__call__``, ``class_maps`` or ``applies_to``; each of these,
in every subclass, first checks that it is a zoo model (:func:`interpbench.zoo.base.require_zoo_model`),
so a plain ``nn.Module`` stops with one line that points to ``interpbench.wrap``.

Batches that fit in memory. :meth:`Explainer.explain_all` (and :meth:`Explainer.explain_batches`,
which yields the maps batch by batch) takes ``batch_size`` as a maximum. Unless ``fit_memory`` is
off, it first measures what a batch needs on a probe of one image (and of two, when one image's
cost times ``batch_size`` does not fit; the two measurements separate a fixed cost from the cost
per image) and takes the largest batch whose estimate fits in ``MEMORY_FRACTION`` of the memory
available (:func:`fit_batch_size`). The probe's maps are thrown away, so the batches are the same
whether or not a probe ran before. A batch that still runs out of memory is halved and the same
images are explained again (:func:`is_out_of_memory`); the halved size is kept for the rest.

- Memory needed (:class:`MemoryMeter`): on CUDA the allocator's peak
  (``torch.cuda.max_memory_allocated``) during the probe. On the CPU, which keeps no such count,
  the peak of the bytes held by the tensor storages the probe's ops create, each counted until it
  is freed (:class:`LiveStorages`: measured on a CPU-size FA-CNN at 224 px, 87 MiB per image for
  Grad-CAM and 41 MiB for the native maps, against 98 and 41 MiB of peak resident memory), and at
  least an estimate from the sizes of the modules' outputs (the activations, twice where autograd
  records them).
- Memory available: on CUDA free device memory plus what torch's allocator holds unused
  (``torch.cuda.mem_get_info``); on the CPU ``MemAvailable`` of ``/proc/meminfo`` (psutil's
  figure where there is none), less where the process's memory cgroup (a SLURM job's or a
  container's limit) leaves less room (:func:`available_memory`). Where neither is known the
  configured batch size is used, and only halving adapts it.

The maps of an image do not depend on the other images of its batch, so any batch size gives
the same maps up to float rounding: the kernels may sum in another order for another batch
size. Measured on a random FA-CNN at 32 px, 40 images in batches of 40, 7 and 1, as a share of
the largest value: Grad-CAM, Grad-CAM++, Score-CAM, the native maps and occlusion equal bit for
bit in batches of 40 and 7 and differ by at most 3e-7 (occlusion 7e-6) in batches of one; RISE
and Integrated Gradients, whose inner forward batches follow the batch size, by at most 8e-7;
``random`` is bit-identical. The same sequence of batch sizes gives bit-identical maps;
explainers that draw random numbers seed them per image (``random``) or share one draw between
all batches (``rise``).
"""
from __future__ import annotations

import functools
import gc
import weakref
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, Iterator, List, Optional, Tuple, Union

import torch

from interpbench.zoo.base import ZooModel, require_zoo_model

# The methods that receive the model; subclasses' definitions are wrapped with the check.
MODEL_METHODS = ("__call__", "class_maps", "applies_to")

# Share of the available memory a batch's estimate may take; the rest is headroom for what the
# estimate misses (allocator fragmentation, the CPU estimate's approximations, other processes).
MEMORY_FRACTION = 0.5
# CPU estimate: a leaf module's output counted this many times when autograd records it.
GRAD_FACTOR = 2
# Messages of out-of-memory errors that are not torch.cuda.OutOfMemoryError or MemoryError
# (torch's CPU allocator: "DefaultCPUAllocator: can't allocate memory: ...").
OUT_OF_MEMORY_TEXTS = ("out of memory", "can't allocate")
CGROUP_ROOT = Path("/sys/fs/cgroup")
UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a number near 2**63

Device = Union[str, torch.device]


# --- memory -----------------------------------------------------------------------------------------

def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says memory ran out: ``torch.cuda.OutOfMemoryError``, any ``MemoryError``,
    or a ``RuntimeError`` whose message says ``out of memory`` or ``can't allocate``."""
    cuda_error = getattr(torch.cuda, "OutOfMemoryError", None)
    if (cuda_error is not None and isinstance(error, cuda_error)) or isinstance(error, MemoryError):
        return True
    if isinstance(error, RuntimeError):
        text = str(error).lower()
        return any(phrase in text for phrase in OUT_OF_MEMORY_TEXTS)
    return False


def release_memory(device: Device) -> None:
    """Free what a failed batch left: Python's garbage, and on CUDA the allocator's cached blocks."""
    gc.collect()
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def halving_batches(run: Callable[[int, int], Any], total: int, size: int, device: Device, start: int = 0
                    ) -> Iterator[Tuple[int, int, Any, int]]:
    """Run ``run(first, stop)`` over ``[start, total)`` in consecutive batches of at most ``size``,
    yielding ``(first, stop, its value, the batch size in use)``. A batch that runs out of memory
    (:func:`is_out_of_memory`) is run again in half the size, which is kept for the rest; a
    one-image batch's error, or any other error, is raised."""
    position = start
    while position < total:
        stop = min(total, position + size)
        short_of_memory = False
        try:
            value = run(position, stop)
        except Exception as error:
            if not is_out_of_memory(error) or stop - position == 1:
                raise
            short_of_memory = True  # released below, once the traceback's references are gone
        if short_of_memory:
            release_memory(device)
            size = max(1, (stop - position) // 2)
            continue
        yield position, stop, value, size
        position = stop


def _read_int(path: Path) -> Optional[int]:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # cgroup v2 writes "max" for no limit


def _stat_value(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return 0


def cgroup_memory_room(root: Path = CGROUP_ROOT, cgroup_file: Path = Path("/proc/self/cgroup")) -> Optional[int]:
    """Bytes the process's memory cgroups still allow (limit less usage, plus the inactive file
    cache, which the kernel reclaims first), the smallest over the cgroup and its parents, for
    cgroup v2 (``memory.max``) and v1 (``memory.limit_in_bytes``); ``None`` when no limit is set or
    none can be read."""
    try:
        lines = cgroup_file.read_text().splitlines()
    except OSError:
        return None
    rooms: List[int] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and not controllers:
            base, names = root, ("memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):
            base, names = root / "memory", ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
        else:
            continue
        folder = base / path.strip("/")
        while True:
            limit, usage = _read_int(folder / names[0]), _read_int(folder / names[1])
            if limit is not None and usage is not None and limit < UNLIMITED:
                rooms.append(max(0, limit - usage + _stat_value(folder / "memory.stat", names[2])))
            if folder == base or len(folder.parts) <= len(base.parts):
                break
            folder = folder.parent
    return min(rooms) if rooms else None


def host_available_memory(meminfo: Path = Path("/proc/meminfo")) -> Optional[int]:
    """Bytes of host memory available to this process: ``MemAvailable`` of ``/proc/meminfo`` (else
    psutil's ``available``, if psutil is installed), or less where a memory cgroup leaves less;
    ``None`` when nothing can be read."""
    available = None
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            import psutil

            available = int(psutil.virtual_memory().available)
        except Exception:  # not installed, or no figure on this platform
            pass
    room = cgroup_memory_room()
    if room is not None:
        available = room if available is None else min(available, room)
    return available


def available_memory(device: Device) -> Optional[int]:
    """Bytes a batch on ``device`` may use: on CUDA free device memory plus what torch's allocator
    holds unused; on the CPU :func:`host_available_memory`; ``None`` for other devices."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
        except RuntimeError:  # a device that does not say
            return None
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type == "cpu":
        return host_available_memory()
    return None


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _storage_bytes(value: Any) -> int:
    """Bytes of the storages behind the tensors in ``value``, each storage once (a slice of a large
    stack of perturbed images counts the stack)."""
    seen: Dict[int, int] = {}
    for tensor in _tensors(value):
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


class LiveStorages:
    """Counts, while active, the bytes of the tensor storages that ops create or return (each storage
    once), and drops them when the storage is freed; ``peak`` is the largest sum. Ops are seen
    through a torch dispatch mode (backward passes included); a storage is seen as freed when its
    Python object is, which torch keeps alive as long as the storage. A view of a tensor made before
    counts its whole storage (the stack of perturbed images a slice belongs to)."""

    def __init__(self) -> None:
        self.live: Dict[int, int] = {}
        self.now = 0
        self.peak = 0
        self._mode: Any = None

    def _free(self, key: int) -> None:
        self.now -= self.live.pop(key, 0)

    def _saw(self, output: Any) -> None:
        for tensor in _tensors(output):
            try:
                storage = tensor.untyped_storage()
                key = id(storage)
                if key in self.live:
                    continue
                weakref.finalize(storage, self._free, key)
            except (TypeError, RuntimeError, NotImplementedError):  # no storage (sparse), no weak reference
                continue
            self.live[key] = storage.nbytes()
            self.now += self.live[key]
            self.peak = max(self.peak, self.now)

    def __enter__(self) -> "LiveStorages":
        try:
            from torch.utils._python_dispatch import TorchDispatchMode
        except ImportError:  # a torch without dispatch modes: the module-call estimate alone
            return self
        meter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
                output = func(*args, **(kwargs or {}))
                meter._saw(output)
                return output

        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._mode is not None:
            self._mode.__exit__(*exc)
            self._mode = None


class MemoryMeter:
    """``with MemoryMeter(device) as meter: work()`` -> ``meter.peak``: the bytes the work needed at
    most. On CUDA the allocator's peak above what was allocated when the block began. On the CPU
    the larger of two estimates: :class:`LiveStorages`'s peak, and one from module calls (per
    outermost module call, the storage bytes of its inputs plus every leaf module's output bytes,
    ``GRAD_FACTOR`` times where autograd records them; leaf modules called outside any module call
    summed over the block), which bounds it from below where storages cannot be followed."""

    def __init__(self, device: Device) -> None:
        self.device = torch.device(device)
        self.peak = 0
        self.module_peak = 0
        self._depth = 0
        self._call = 0  # bytes of the current outermost module call
        self._loose = 0  # bytes of leaf modules called outside any module call
        self._base = 0
        self._handles: List[Any] = []
        self._live: Optional[LiveStorages] = None

    def __enter__(self) -> "MemoryMeter":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

            self._handles = [register_module_forward_pre_hook(self._before), register_module_forward_hook(self._after)]
            self._live = LiveStorages().__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = max(0, torch.cuda.max_memory_allocated(self.device) - self._base)
            return
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._live is not None:
            self._live.__exit__(*exc)
            self.peak = max(self.module_peak, self._live.peak)
            self._live = None

    def _before(self, module: torch.nn.Module, inputs: Any) -> None:
        if self._depth == 0:
            self._call = _storage_bytes(inputs)
        self._depth += 1

    def _after(self, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        self._depth = max(0, self._depth - 1)
        if next(module.children(), None) is None:  # a leaf: its outputs are activations
            recorded = torch.is_grad_enabled() and any(t.requires_grad for t in _tensors(output))
            size = sum(t.numel() * t.element_size() for t in _tensors(output)) * (GRAD_FACTOR if recorded else 1)
            if self._depth == 0:
                self._loose += size
            else:
                self._call += size
        if self._depth == 0:
            self.module_peak = max(self.module_peak, self._call + self._loose)


def measure_memory(run: Callable[[int], Any], size: int, device: Device) -> int:
    """The peak bytes of ``run(size)`` on ``device`` (:class:`MemoryMeter`); its result is dropped."""
    with MemoryMeter(device) as meter:
        run(size)
    return meter.peak


def fit_batch_size(run: Callable[[int], Any], limit: int, device: Device, available: Optional[int] = None,
                   fraction: float = MEMORY_FRACTION) -> int:
    """The largest batch size up to ``limit`` whose memory fits in ``fraction`` of ``available``
    (default: :func:`available_memory` of ``device``). ``run(n)`` does the work on the first ``n``
    items. The peak of ``run(1)`` bounds the cost per item; when ``limit`` times it does not fit,
    ``run(2)`` separates the fixed cost from the cost per item (``per = m2 - m1``, ``fixed = m1 -
    per``) and the size is ``(fraction * available - fixed) // per``, at least 1. ``limit`` itself
    when the memory available is unknown, when two items cost no more than one, or when a probe
    raises something else than an out-of-memory error (which the work itself will raise again);
    1 when a probe runs out of memory."""
    if limit <= 1:
        return max(1, limit)
    available = available_memory(device) if available is None else available
    if available is None:
        return limit
    budget = fraction * available
    try:
        one = measure_memory(run, 1, device)
        if one * limit <= budget:
            return limit
        two = measure_memory(run, 2, device)
    except Exception as error:  # out of memory: one at a time; anything else shows in the real run
        release_memory(device)
        return 1 if is_out_of_memory(error) else limit
    per = two - one
    if per <= 0:
        return limit
    fixed = max(0, one - per)
    return int(max(1, min(limit, (budget - fixed) // per)))


# --- the interface ----------------------------------------------------------------------------------

def checks_model(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method(self, model, ...)`` that first checks ``model`` is a zoo model."""
    if getattr(method, "checks_model", False):
        return method

    @functools.wraps(method)
    def checked(self: "Explainer", *args: Any, **kwargs: Any) -> Any:
        require_zoo_model(args[0] if args else kwargs.get("model"), f"explainer '{self.name or type(self).__name__}'")
        return method(self, *args, **kwargs)

    checked.checks_model = True  # type: ignore[attr-defined]
    return checked


def check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


class Explainer:
    """``explainer(model, x, target) -> [B, H, W]``: ``x`` in ``[0, 1]``, ``target`` class indices ``[B]``."""

    name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for method in MODEL_METHODS:
            if method in cls.__dict__ and callable(cls.__dict__[method]):
                setattr(cls, method, checks_model(cls.__dict__[method]))

    @checks_model
    def applies_to(self, model: ZooModel) -> bool:
        """Whether this method can explain ``model`` (``native`` needs an intrinsic explanation)."""
        return True

    def __call__(self, model: ZooModel, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _explain(self, model: ZooModel, images: torch.Tensor, targets: torch.Tensor, device: torch.device
                 ) -> torch.Tensor:
        return self(model, images.to(device), targets.to(device)).detach().float().cpu()

    def fit_batch_size(self, model: ZooModel, images: torch.Tensor, targets: torch.Tensor, batch_size: int
                       ) -> int:
        """The batch size, at most ``batch_size``, whose memory fits (:func:`fit_batch_size`), measured
        on the first images of ``images``."""
        device = next(model.parameters()).device
        limit = min(check_batch_size(batch_size), images.shape[0])
        return fit_batch_size(lambda n: self._explain(model, images[:n], targets[:n], device), limit, device)

    def explain_batches(
        self, model: ZooModel, images: torch.Tensor, targets: torch.Tensor, batch_size: int = 250,
        start: int = 0, fit_memory: bool = True,
    ) -> Iterator[Tuple[int, torch.Tensor, int]]:
        """Explain ``images[start:]`` batch by batch: yields ``(first image, maps [b, H, W] on the CPU,
        batch size in use)``. ``batch_size`` is the largest batch; with ``fit_memory`` the size is
        first fitted to the memory available; a batch that runs out of memory is halved and
        explained again (the module docstring)."""
        require_zoo_model(model, f"explainer '{self.name or type(self).__name__}'")
        size = check_batch_size(batch_size)
        device = next(model.parameters()).device
        total = images.shape[0]
        if fit_memory and total - start > 1:
            size = self.fit_batch_size(model, images[start:], targets[start:], size)
        def explain(first: int, stop: int) -> torch.Tensor:
            return self._explain(model, images[first:stop], targets[first:stop], device)

        for first, _, maps, used in halving_batches(explain, total, size, device, start):
            yield first, maps, used

    def explain_all(
        self, model: ZooModel, images: torch.Tensor, targets: torch.Tensor, batch_size: int = 250,
        progress: bool = False, fit_memory: bool = True,
    ) -> torch.Tensor:
        """Explain ``images`` ``[N, 3, H, W]`` (float, ``[0, 1]``) in batches of at most ``batch_size``
        that fit in memory (:meth:`explain_batches`) -> ``[N, H, W]`` on the CPU."""
        from tqdm import tqdm

        maps = []
        with tqdm(total=images.shape[0], desc=f"explaining ({self.name})", disable=not progress,
                  leave=False) as bar:
            for _, part, _ in self.explain_batches(model, images, targets, batch_size, fit_memory=fit_memory):
                maps.append(part)
                bar.update(part.shape[0])
        if not maps:
            return torch.zeros(0, *images.shape[-2:])
        return torch.cat(maps)
