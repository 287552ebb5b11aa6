"""Micro-batches read and copied to the device in a background thread, ahead of the step loop.

The step loop draws a step's samples (cheap: counters and a permutation) and ``submit``s them; one
worker thread reads the windows (memory-mapped shards), stacks them into pinned host tensors and
starts their host-to-device copies on a side CUDA stream; ``get`` hands them out in submission order,
making the compute stream wait for that copy only. So the reads of micro-batch m+1.. overlap the
forward/backward of micro-batch m, and the loop's own data time is what ``get`` waited.

One worker keeps the order identical to reading synchronously. An exception in the worker is raised
again by the ``get`` that would have returned its micro-batch; ``close`` (or leaving the ``with``
block) stops and joins the worker even while it is blocked on a full queue.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

_STOP = object()


@dataclass
class DeviceBatch:
    input_ids: torch.Tensor  # [B, L] int64 on the device
    position_ids: torch.Tensor  # [B, L] int64, 0 at every document start
    source_ids: torch.Tensor  # [B] int64
    read_seconds: float  # worker time: shard reads, stacking, pinning, copy launch
    wait_seconds: float  # consumer time blocked in get(): the data time the step actually paid


@dataclass
class _Failure:
    error: BaseException


class Prefetcher:
    """``submit(samples, micro_batch)`` per step, then ``get()`` once per micro-batch.

    ``read`` is ``MixtureSampler.read`` (samples -> Batch of numpy arrays). ``depth`` bounds how many
    prepared micro-batches wait on the device (memory: depth x micro x seq_len x 3 int64s)."""

    def __init__(self, read: Callable[[Sequence[Any]], Any], device: torch.device | str, depth: int = 2) -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self.read = read
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self._jobs: queue.Queue = queue.Queue()
        self._ready: queue.Queue = queue.Queue(maxsize=depth)
        self._closed = threading.Event()
        self._pending = 0  # micro-batches submitted and not yet taken
        self._stream = torch.cuda.Stream(self.device) if self.cuda else None
        self._thread = threading.Thread(target=self._work, name="arctic-prefetch", daemon=True)
        self._thread.start()

    # ---- consumer side -----------------------------------------------------------------------
    def submit(self, samples: Sequence[Any], micro_batch: int) -> int:
        """Queue a step's samples as micro-batches of ``micro_batch``; returns how many."""
        if self._closed.is_set():
            raise RuntimeError("prefetcher is closed")
        count = 0
        for start in range(0, len(samples), micro_batch):
            self._jobs.put(list(samples[start:start + micro_batch]))
            count += 1
        self._pending += count
        return count

    def get(self, timeout: float | None = None) -> DeviceBatch:
        """The next micro-batch in submission order (blocks until the worker has it)."""
        if self._pending == 0:
            raise RuntimeError("get() without a submitted micro-batch")
        start = time.perf_counter()
        deadline = None if timeout is None else start + timeout
        while True:
            try:
                item = self._ready.get(timeout=0.1)
                break
            except queue.Empty:
                if not self._thread.is_alive():
                    raise RuntimeError("prefetch worker stopped") from None
                if deadline is not None and time.perf_counter() > deadline:
                    raise TimeoutError(f"no micro-batch within {timeout} s") from None
        self._pending -= 1
        if isinstance(item, _Failure):
            self.close()
            raise RuntimeError(f"reading a micro-batch failed: {item.error!r}") from item.error
        tensors, event, read_seconds = item
        if event is not None:  # compute waits for this batch's copy only, not for the whole side stream
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            for t in tensors:
                t.record_stream(current)  # the allocator must not reuse them before compute is done
        return DeviceBatch(*tensors, read_seconds=read_seconds, wait_seconds=time.perf_counter() - start)

    def close(self) -> None:
        """Stop and join the worker; pending micro-batches are dropped. Idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._jobs.put(_STOP)
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):  # a worker blocked on a full queue gets room and leaves
                self._ready.get_nowait()
            self._thread.join(timeout=0.05)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- worker side -------------------------------------------------------------------------
    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        host = torch.from_numpy(np.ascontiguousarray(array))
        if not self.cuda:
            return host
        return host.pin_memory().to(self.device, non_blocking=True)

    def _prepare(self, samples: list[Any]):
        start = time.perf_counter()
        batch = self.read(samples)
        arrays = (batch.input_ids, batch.position_ids, batch.source_ids)
        if self.cuda:
            with torch.cuda.stream(self._stream):
                tensors = tuple(self._to_device(a) for a in arrays)
                event = torch.cuda.Event()
                event.record(self._stream)
        else:
            tensors, event = tuple(self._to_device(a) for a in arrays), None
        return tensors, event, time.perf_counter() - start

    def _put(self, item) -> bool:
        while not self._closed.is_set():
            try:
                self._ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        while not self._closed.is_set():
            job = self._jobs.get()
            if job is _STOP:
                return
            try:
                item = self._prepare(job)
            except BaseException as error:  # handed to the consumer, which raises it
                self._put(_Failure(error))
                return
            if not self._put(item):
                return
