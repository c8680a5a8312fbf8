"""Interop: Hugging Face checkpoints both ways, one module per format (official LLaDA, Llama) behind a
registry, safetensors I/O and an independent PyTorch reference model. Imports config, sharding, utils, models
and checkpoints."""
