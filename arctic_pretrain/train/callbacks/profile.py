"""``profile.steps=[from,to]``: a torch.profiler window over training steps, as torchtitan's
``profiling.enable_profiling`` and OLMo-core's ProfilerCallback offer.

On the ranks of ``profile.ranks`` (rank 0 by default) steps ``from``..``to`` (1-based, inclusive, the step
numbers of metrics.jsonl) run under ``torch.profiler.profile`` (CPU, and CUDA when present; shapes and memory
recorded). When the window closes, each such rank writes to ``<run dir>/profile/steps_<a>-<b>/``:

    rank<r>.trace.json        Chrome trace (chrome://tracing, https://ui.perfetto.dev, TensorBoard)
    rank<r>.top_ops.txt       key_averages table, the top ops by self time (also logged)
    rank<r>.memory.pickle     CUDA only: torch.cuda.memory's allocation history (https://pytorch.org/memory_viz)

``<a>-<b>`` are the steps actually profiled: a run resumed inside the window profiles its remaining steps, and a
run that ends inside it (max_steps, a stop signal) writes what it has. Files are published by rename.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from arctic_pretrain.train import distributed as dist
from arctic_pretrain.train.callbacks import Callback

log = logging.getLogger(__name__)
SNAPSHOT_ENTRIES = 100_000  # allocation events kept in the CUDA memory history (torch's own example value)


def peak_tensor_bytes(prof: torch.profiler.profile, device: str = "cpu") -> int:
    """The high-water mark of tensor memory on ``device`` while ``prof`` recorded, above where it started: the
    running sum of the allocator's alloc/free events (``profile_memory=True``). Exact and independent of machine
    load, unlike RSS; on CPU the only allocator peak torch reports."""
    kind = getattr(torch._C._autograd.DeviceType, device.upper())
    events = sorted((e for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]" and e.device_type() == kind), key=lambda e: e.start_ns())
    total = peak = 0
    for event in events:
        total += event.nbytes()
        peak = max(peak, total)
    return peak


class StepProfiler(Callback):
    name = "profile"

    def __init__(self, root: Path, steps: Sequence[int], ranks: Sequence[int] = (0,), memory_snapshot: bool = True,
                 top: int = 15) -> None:
        self.root = Path(root)
        self.first, self.last = int(steps[0]), int(steps[1])
        self.ranks = set(ranks)
        self.memory_snapshot = memory_snapshot
        self.top = top
        self.prof: torch.profiler.profile | None = None
        self.span: torch.profiler.record_function | None = None
        self.start_step = 0
        self.cuda = torch.cuda.is_available()

    def pre_step(self, trainer, phase) -> None:
        step = trainer.step + 1
        if self.prof is None and self.first <= step <= self.last and dist.rank() in self.ranks:
            self.start(step)
        if self.prof is not None:  # a span per step, named as torch's schedule names them (TensorBoard reads it)
            self.span = torch.profiler.record_function(f"ProfilerStep#{step}")
            self.span.__enter__()

    def start(self, step: int) -> None:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.cuda:
            activities.append(torch.profiler.ProfilerActivity.CUDA)
            if self.memory_snapshot:
                torch.cuda.memory._record_memory_history(max_entries=SNAPSHOT_ENTRIES)
        self.prof = torch.profiler.profile(activities=activities, record_shapes=True, profile_memory=True)
        self.prof.start()
        self.start_step = step
        log.info("profiling steps %d-%d on rank %d", step, self.last, dist.rank())

    def post_step(self, trainer, phase, lr, result) -> None:
        if self.prof is None:
            return
        self.span.__exit__(None, None, None)
        if trainer.step >= self.last:
            self.finish(trainer.step)

    def post_train(self, trainer, result) -> None:
        if self.prof is not None:  # the run ended inside the window
            self.finish(trainer.step)

    def finish(self, step: int) -> Path:
        """Stop, write the trace, the summary and (CUDA) the memory snapshot; log the top ops."""
        prof, self.prof = self.prof, None
        prof.stop()
        out = self.root / f"steps_{self.start_step}-{step}"
        out.mkdir(parents=True, exist_ok=True)
        rank = dist.rank()
        publish(out / f"rank{rank}.trace.json", prof.export_chrome_trace)
        if self.cuda and self.memory_snapshot:
            publish(out / f"rank{rank}.memory.pickle", torch.cuda.memory._dump_snapshot)
            torch.cuda.memory._record_memory_history(enabled=None)
        by = "self_device_time_total" if self.cuda else "self_cpu_time_total"
        averages = prof.key_averages()
        table = averages.table(sort_by=by, row_limit=self.top)
        publish(out / f"rank{rank}.top_ops.txt", lambda path: Path(path).write_text(table + "\n"))
        ranked = sorted(averages, key=lambda a: getattr(a, by), reverse=True)
        top = ranked[0].key if ranked else "none"
        peak = peak_tensor_bytes(prof, "cuda" if self.cuda else "cpu")
        log.info("profile of steps %d-%d (rank %d): top op by %s: %s; tensor memory peak +%.1f MiB over the "
                 "window's start; files in %s\n%s", self.start_step, step, rank, by.replace("_", " "), top,
                 peak / 2**20, out, table)
        return out


def publish(path: Path, write) -> None:
    """``write(tmp)`` then rename: a reader never sees a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(str(tmp))
    os.replace(tmp, path)
