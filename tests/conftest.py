"""Every test process sees 8 simulated CPU devices, so sharded code paths run here as on a pod slice."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("LLADA_JAX_COMPILATION_CACHE", "off")  # CLI tests must not write to ~/.cache

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
