"""llada_jax: pretrain, fine-tune, sample and evaluate LLaDA-style masked diffusion language models in JAX."""
__version__ = "0.1.0"
