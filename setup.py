"""Packaging for llada_jax: the `llada-jax` console script and the JAX/TPU stack it runs on."""
from setuptools import find_packages, setup

setup(
    name="llada-jax",
    version="0.1.0",
    description="Pretrain, fine-tune, sample and evaluate LLaDA-style masked diffusion language models in JAX.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["llada_jax", "llada_jax.*"]),
    install_requires=[
        "jax>=0.6.0",
        "flax>=0.12.0",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11.0",
        "tensorstore>=0.1.70",
        "seqio>=0.0.19",
        "grain>=0.2.10",
        "array-record>=0.5.0",
        "sentencepiece>=0.1.99",
        "tokenizers>=0.15",
        "pyarrow>=14.0",
        "ml-collections>=1.0.0",
        "numpy>=1.26",
    ],
    extras_require={
        # 2.13.0 is the CPU build this project's machines have on disk; any later 2.x works too. transformers below
        # 5: the official LLaDA modeling code (trust_remote_code) that exports are loaded with fails under 5.x.
        "torch": ["torch>=2.4", "transformers>=4.56,<5", "safetensors>=0.4"],
        "sweep": ["matplotlib>=3.7"],  # plots of scaling fits
        "eval": ["lm_eval>=0.4"],  # llada-jax eval: the lm-evaluation-harness model and runner
        # TensorBoard event files (written through its light event-file writer, no TensorFlow) and the viewer
        "tensorboard": ["tensorboard>=2.14"],
        "dev": ["pytest>=8.0", "pytest-xdist>=3.5", "matplotlib>=3.7", "tensorboard>=2.14"],
        # Ahead-of-time TPU compiles from any machine (llada-jax preflight --topology=v5p:4x4x4) and TPU runs.
        # The libtpu that jax 0.10.2 pins: 0.0.52 also compiles but crashes jax.profiler on CPU hosts.
        "tpu": ["libtpu==0.0.42.*"],
    },
    entry_points={"console_scripts": ["llada-jax=llada_jax.cli:main"]},
)
