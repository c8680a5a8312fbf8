"""llada_jax: pretrain, fine-tune, sample and evaluate LLaDA-style masked diffusion language models in JAX.

Each subpackage is one stage of the data flow and imports only the stages below it (tests/test_layout.py):
config, sharding -> utils -> data, models -> objectives, checkpoints -> training -> inference, interop,
scaling -> eval -> cli.
"""
__version__ = "0.1.0"
