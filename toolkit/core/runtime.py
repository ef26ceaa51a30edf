"""Device, precision and distribution as a service (in the spirit of Lightning Fabric): the training
loop, evaluation and prediction call it; nobody inherits from it.

- device: CUDA, then MPS, then CPU (``trainer.device`` overrides);
- precision: bf16 autocast (CUDA or CPU), fp16 autocast with a GradScaler (CUDA), or fp32;
- channels-last memory format for 2D and 3D convolutions;
- DDP under ``torchrun`` (gloo on CPU, NCCL on CUDA): rank, world size, reduction, gathering.

The CUDA and CPU paths share every line but the device string, the backend name and the scaler.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psutil
import torch
import torch.distributed as dist
from torch import nn

from medsight.errors import ConfigError


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            local_rank = int(os.environ.get("LOCAL_RANK", 0))
            return torch.device("cuda", local_rank)
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={requested} but CUDA is not available here (use auto or cpu)")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"trainer.device={requested} but MPS is not available here")
    return device


@dataclass(frozen=True)
class _CpuSample:
    """CPU seconds of all CPUs since boot (idle, total), this process's own (every thread), and the clock."""

    idle_s: float
    total_s: float
    own_s: float
    clock_s: float


def _cpu_sample() -> _CpuSample | None:
    """The machine's and this process's CPU times now (psutil); None where psutil cannot read them."""
    try:
        machine = psutil.cpu_times()._asdict()
        own = psutil.Process().cpu_times()
    except (psutil.Error, OSError, NotImplementedError):
        return None
    # Linux counts a guest's time in user and nice as well: summing it again would count it twice
    total = sum(seconds for field, seconds in machine.items() if field not in ("guest", "guest_nice"))
    idle = machine["idle"] + machine.get("iowait", 0.0)
    return _CpuSample(idle, total, own.user + own.system, time.monotonic())


#: the previous sample: busy_cores measures from it (the first is taken at import), so a command learns what
#: else runs from the time it spent starting up instead of sleeping for it
_LAST_SAMPLE = _cpu_sample()


def busy_cores(interval: float = 0.1, stale: float = 15.0) -> float | None:
    """How many of the machine's cores other processes kept busy (None: unknown). Measured over the time
    since the previous call (or import), less this process's own CPU time; when that is under ``interval``
    or over ``stale`` seconds ago, over a fresh ``interval``."""
    global _LAST_SAMPLE
    first, second = _LAST_SAMPLE, _cpu_sample()
    if second is None:
        return None
    if first is None or not interval <= second.clock_s - first.clock_s <= stale:
        time.sleep(interval)
        first, second = second, _cpu_sample()
        if second is None:
            return None
    _LAST_SAMPLE = second
    total = second.total_s - first.total_s
    if total <= 0:
        return None
    # CPU seconds of every process but this one
    busy = (total - (second.idle_s - first.idle_s)) - (second.own_s - first.own_s)
    return min(max(busy / total, 0.0), 1.0) * (os.cpu_count() or 1)


#: torch's own thread count for this process, before medsight changed it
_DEFAULT_THREADS = torch.get_num_threads()


def set_threads(requested: int | None, deterministic: bool = False) -> int:
    """Compute threads for this process (``trainer.threads``). An integer is taken as given. null (auto):
    torch's default (one per core this process may use), less the cores other processes keep busy when
    the run starts, at least 1: a compute-bound PyTorch process on every core besides ours makes each
    OpenMP parallel region wait for a descheduled thread, and a CPU epoch 5-6x slower instead of 2x
    (``bench/cpu_contention.py``). Deterministic runs (exact resume) keep torch's default."""
    if requested:
        torch.set_num_threads(requested)
        return requested
    threads = _DEFAULT_THREADS
    busy = None if deterministic or threads <= 1 or os.environ.get("OMP_NUM_THREADS") else busy_cores()
    if busy is None:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        return threads
    free = max(1, int((os.cpu_count() or threads) - busy + 0.5))
    if free < threads:
        import logging

        logging.getLogger(__name__).info(
            f"{busy:.1f} of {os.cpu_count()} cores busy with other work: {free} compute thread(s) instead of "
            f"{threads} (trainer.threads=N fixes the number)")
        threads = free
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc's ``malloc_trim``; nothing elsewhere). A big
    volume's freed buffers stay mapped in the heap otherwise and count in the process's memory while the
    next full-size buffers are made beside them: 90 MB on a BraTS case before its inversion."""
    global _TRIM
    if _TRIM is None:
        import ctypes
        import ctypes.util

        try:
            _TRIM = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM = None


def cpu_has_native_bf16() -> bool:
    """oneDNN runs bf16 natively here (AVX512-BF16 or AMX); elsewhere bf16 on CPU is emulated and slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_capability() -> str:
    """What this CPU offers the kernels, for a bench's first line: the vector extension PyTorch dispatches to
    (AVX2, AVX512), AVX512-BF16 and AMX from the CPU's flags, and whether oneDNN runs bf16 natively."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as info:
            flags = set(next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), []))
    except OSError:
        pass
    vector = torch.backends.cpu.get_cpu_capability()
    extras = [name for flag, name in (("avx512_bf16", "AVX512-BF16"), ("amx_bf16", "AMX")) if flag in flags]
    return (f"{vector}{' + ' + ' + '.join(extras) if extras else ''}; native bf16: "
            f"{'yes' if cpu_has_native_bf16() else 'no (emulated, slow)'}; {torch.get_num_threads()} threads")


def pick_precision(requested: str, device: torch.device) -> str:
    if requested == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if device.type == "cpu" and cpu_has_native_bf16():
            return "bf16"
        return "fp32"
    if requested == "fp16" and device.type != "cuda":
        raise ConfigError(f"trainer.precision=fp16 needs CUDA (device is {device.type}); use bf16 or fp32")
    return requested


def channels_last_(module: nn.Module) -> nn.Module:
    """Put 4-D (2D conv) weights in channels_last and 5-D (3D conv) weights in channels_last_3d.

    ``Tensor.to(memory_format=...)``, not ``.contiguous(...)``: a 1x1 kernel or a 1-channel tensor is
    contiguous in both layouts, and ``.contiguous`` keeps its NCHW strides, so oneDNN treats the
    weight as NCHW and reorders on every call (DenseNet121 on CPU, bf16: 32 instead of 22 ms/picture).
    """
    for tensor in list(module.parameters()) + list(module.buffers()):
        tensor.data = to_channels_last(tensor.data)
    return module


def channels_last_format(module: nn.Module) -> torch.memory_format | None:
    """The channels-last format ``module``'s convolution weights were put in (``channels_last_``), or None.
    A network fed views of a channels-last tensor (sliding-window windows) gets them reordered inside
    every convolution; one reorder per window, before the network, is cheaper."""
    for weight in module.parameters():
        if weight.dim() in (4, 5) and weight.shape[1] > 1 and weight.shape[2:].numel() > 1:
            layout = torch.channels_last if weight.dim() == 4 else torch.channels_last_3d
            return layout if weight.is_contiguous(memory_format=layout) and not weight.is_contiguous() else None
    return None


def to_channels_last(tensor: torch.Tensor) -> torch.Tensor:
    """A 4-D or 5-D tensor with unambiguous channels-last strides (other tensors unchanged)."""
    if tensor.dim() == 4:
        return tensor.to(memory_format=torch.channels_last)
    if tensor.dim() == 5:
        return tensor.to(memory_format=torch.channels_last_3d)
    return tensor


class Runtime:
    def __init__(self, device: str = "auto", precision: str = "fp32", channels_last: bool = False,
                 compile: bool = False, distributed: bool | None = None):
        self.distributed = _launched_by_torchrun() if distributed is None else distributed
        if self.distributed and not dist.is_initialized():
            probe = pick_device(device)
            backend = "nccl" if probe.type == "cuda" else "gloo"
            if probe.type == "cuda":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
            dist.init_process_group(backend=backend)
        self.rank = dist.get_rank() if self.distributed else 0
        self.world_size = dist.get_world_size() if self.distributed else 1
        self.device = pick_device(device)
        self.precision = pick_precision(precision, self.device)
        self.channels_last = channels_last
        #: inference: the layout is left to ``--engine auto``'s per-network timing (fp32 chosen by precision auto)
        self.layout_auto = False
        self.compile = compile
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- model ------------------------------------------------------------------------------------
    def setup_model(self, model: nn.Module, train: bool = True, find_unused_parameters: bool = False) -> nn.Module:
        """Move to the device, apply channels-last; wrap in DDP (training under torchrun) and compile."""
        model = model.to(self.device)
        if self.channels_last:
            channels_last_(model)
        if train and self.distributed:
            model = nn.parallel.DistributedDataParallel(
                model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=find_unused_parameters,
            )
        if self.compile:
            model = torch.compile(model)
        return model

    def autocast(self):
        if self.precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            return torch.autocast(device_type=self.device.type, dtype=dtype)
        return contextlib.nullcontext()

    def to_device(self, batch: Any, layout: bool = True) -> Any:
        """Move every tensor in a nested batch to the device (channels-last for 4-D/5-D float tensors, unless
        ``layout`` is false: inputs cut into windows that are each put in the layout, where a channels-last
        copy of the whole volume would only cost its memory)."""
        if isinstance(batch, torch.Tensor):
            tensor = batch.to(self.device, non_blocking=True)
            if layout and self.channels_last and tensor.is_floating_point():
                tensor = to_channels_last(tensor)
            return tensor
        if isinstance(batch, Mapping):
            return {k: self.to_device(v, layout) for k, v in batch.items()}
        if isinstance(batch, (list, tuple)):
            return type(batch)(self.to_device(v, layout) for v in batch)
        return batch

    # -- optimisation -----------------------------------------------------------------------------
    def backward(self, loss: torch.Tensor) -> None:
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def step(self, optimizer: torch.optim.Optimizer, parameters, clip_norm: float | None) -> bool:
        """Clip (after unscaling) and step; returns False when fp16 overflow made the scaler skip it."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(parameters, clip_norm)
        if self.scaler is not None:
            scale = self.scaler.get_scale()
            self.scaler.step(optimizer)
            self.scaler.update()
            return self.scaler.get_scale() >= scale
        optimizer.step()
        return True

    @contextlib.contextmanager
    def no_sync(self, model: nn.Module, skip_sync: bool):
        """Skip DDP's gradient all-reduce on accumulation micro-steps."""
        if skip_sync and isinstance(model, nn.parallel.DistributedDataParallel):
            with model.no_sync():
                yield
        else:
            yield

    # -- distribution -----------------------------------------------------------------------------
    def all_reduce_sum(self, values: Sequence[float]) -> list[float]:
        if not self.distributed:
            return [float(v) for v in values]
        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()

    def all_reduce_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum of a device tensor over ranks (the tensor itself when not distributed)."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def any(self, flag: bool) -> bool:
        """True on every rank if it is True on any rank (stop requests, non-finite losses)."""
        return self.all_reduce_sum([1.0 if flag else 0.0])[0] > 0

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (picklable objects)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()

    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def describe(self) -> str:
        parts = [f"device {self.device}", f"precision {self.precision}"]
        if self.channels_last:
            parts.append("channels-last")
        if self.compile:
            parts.append("torch.compile")
        if self.distributed:
            parts.append(f"DDP {self.world_size} processes ({dist.get_backend()})")
        return ", ".join(parts)


def launched_rank() -> tuple[int, int]:
    """(rank, world size) of this process as ``torchrun`` launched it (its RANK and WORLD_SIZE), else (0, 1);
    read from the environment, without a process group (predict's sharding, cv's rank-0 work)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0, 1
    return (rank, world) if world > 1 and 0 <= rank < world else (0, 1)


def _launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


class DeviceSums:
    """Losses and logged values summed on the device (weighted by batch size), read only when asked."""

    def __init__(self, device: torch.device):
        self.device = device
        self.dtype = torch.float32 if device.type == "mps" else torch.float64
        self.values: dict[str, torch.Tensor] = {}
        self.samples = 0
        self.nonfinite = torch.zeros((), device=device, dtype=self.dtype)

    def add(self, logs: dict[str, Any], batch_size: int) -> None:
        for key, value in logs.items():
            value = value.detach() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
            value = value.to(self.device, self.dtype) * batch_size
            self.values[key] = self.values[key] + value if key in self.values else value
        self.samples += batch_size

    def flag_nonfinite(self, loss: torch.Tensor) -> None:
        self.nonfinite = self.nonfinite + (~torch.isfinite(loss.detach())).any().to(self.dtype)

    def means(self, totals: list[float], samples: float) -> dict[str, float]:
        return {key: totals[i] / max(samples, 1.0) for i, key in enumerate(sorted(self.values))}

    def packed(self, stop: bool) -> torch.Tensor:
        """[non-finite count, stop flag, samples, sums by key] in one tensor: one sync, one all-reduce."""
        head = torch.tensor([float(stop), float(self.samples)], device=self.device, dtype=self.dtype)
        return torch.cat([self.nonfinite.reshape(1), head, *[self.values[k].reshape(1) for k in sorted(self.values)]])
