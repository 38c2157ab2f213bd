"""Training: LoRA adapters per task, and task samplers for multi-task training."""
