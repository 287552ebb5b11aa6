"""Training on DeepSpeed: the step loop, checkpoints, exports, metrics."""
