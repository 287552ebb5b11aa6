"""A tqdm progress bar over the curriculum's steps (rank 0)."""

from __future__ import annotations

from arctic_pretrain.train.callbacks import Callback


class ProgressBar(Callback):
    name = "progress"

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar = None

    def pre_train(self, trainer, resumed: bool) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=trainer.curriculum.total_steps, initial=trainer.step, disable=not self.enabled,
                        unit="step", dynamic_ncols=True)

    def post_step(self, trainer, phase, lr, result) -> None:
        self.bar.update(1)
        self.bar.set_postfix(phase=phase.name, loss=f"{result.loss:.3f}", lr=f"{lr:.2e}")

    def post_train(self, trainer, result) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
