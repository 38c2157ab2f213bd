"""adaptforge: adapt one foundation model to many tasks and manage the resulting LoRA adapters."""

__version__ = "0.1.0"
