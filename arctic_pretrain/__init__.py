"""arctic-pretrain: the Arctic-SnowCoder data-efficient code LLM recipe on DeepSpeed."""

__version__ = "0.1.0"
