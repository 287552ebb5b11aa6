"""The whole recipe as one command: curate -> annotate -> synthesize -> train -> evaluate -> report.

Each stage runs as its own command (``launch/<stage>.py`` with key=value overrides, under a launcher such
as ``deepspeed`` or ``sbatch --wait``), exactly as a person would run it, so the pipeline adds no code path
of its own to any stage; a stage whose completion file exists is skipped. Stages are never imported here.
"""

from arctic_pretrain.pipeline.runner import PipelineConfig, StageConfig, run_pipeline

__all__ = ["PipelineConfig", "StageConfig", "run_pipeline"]
