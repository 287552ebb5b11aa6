"""Side concerns of the step loop, as callbacks: the base class and the events are in
``arctic_pretrain/common/callbacks.py`` (shared with other stages); this package holds train's own
(speed.py, progress.py, export.py, faults.py)."""

from arctic_pretrain.common.callbacks import EVENTS, Callback

__all__ = ["EVENTS", "Callback"]
