"""Structured configs: one dataclass per component, registered with Hydra so every YAML is type-checked."""

from arctic_pretrain.config.schema import (
    CheckpointConfig,
    CurriculumConfig,
    DataConfig,
    DataSourceConfig,
    DeepSpeedConfig,
    LoggingConfig,
    LRScheduleConfig,
    ModelConfig,
    OptimizerConfig,
    PhaseConfig,
    TrainConfig,
    TrainingConfig,
    register_configs,
)
from arctic_pretrain.config.validate import ConfigError, validate_config, validate_data_plan

__all__ = [
    "CheckpointConfig",
    "ConfigError",
    "CurriculumConfig",
    "DataConfig",
    "DataSourceConfig",
    "DeepSpeedConfig",
    "LRScheduleConfig",
    "LoggingConfig",
    "ModelConfig",
    "OptimizerConfig",
    "PhaseConfig",
    "TrainConfig",
    "TrainingConfig",
    "register_configs",
    "validate_config",
    "validate_data_plan",
]
