"""The curriculum: phases with token budgets, mixtures and LR schedules, as pure functions of tokens."""

from arctic_pretrain.curriculum.schedule import Curriculum, Phase, lr_in_phase

__all__ = ["Curriculum", "Phase", "lr_in_phase"]
