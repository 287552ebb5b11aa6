"""Shared pieces of the curation steps: per-stage in/out counters and time accounting.

Every step counts ``in_docs``/``in_bytes`` and ``out_docs``/``out_bytes`` as datatrove stats, so the
report's funnel is read straight from datatrove's per-task stats files.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TypeVar

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

T = TypeVar("T")


def nbytes(doc: Document) -> int:
    return len(doc.text.encode("utf-8", "replace"))


def timed(items: Iterator[T], step: PipelineStep) -> Iterator[T]:
    """Charge the time spent producing each item (not the consumer's time) to ``step``."""
    it = iter(items)
    while True:
        t0 = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            step.stats.time_stats.update(time.perf_counter() - t0)
            return
        step.stats.time_stats.update(time.perf_counter() - t0)
        yield item


def count_in(step: PipelineStep, data: DocumentsPipeline) -> DocumentsPipeline:
    """Pass documents through, counting them as the step's input."""
    for doc in data:
        step.stat_update("in_docs")
        step.stat_update("in_bytes", value=nbytes(doc))
        yield doc


def count_out(step: PipelineStep, data: DocumentsPipeline) -> DocumentsPipeline:
    """Pass documents through, counting them as the step's output."""
    for doc in data:
        step.stat_update("out_docs")
        step.stat_update("out_bytes", value=nbytes(doc))
        yield doc


class DocStep(PipelineStep):
    """A one-document-at-a-time transform: ``process`` returns the document, or a reason to drop it."""

    def process(self, doc: Document) -> Document | str:
        raise NotImplementedError

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        self.rank = rank
        for doc in data:
            self.stat_update("in_docs")
            self.stat_update("in_bytes", value=nbytes(doc))
            with self.track_time():
                out = self.process(doc)
            if isinstance(out, str):
                self.stat_update(f"dropped_{out}")
                continue
            self.stat_update("out_docs")
            self.stat_update("out_bytes", value=nbytes(out))
            yield out
