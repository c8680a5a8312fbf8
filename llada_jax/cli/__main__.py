"""`python -m llada_jax.cli ...` runs the same entry point as the `llada-jax` console script."""
import sys

from llada_jax.cli import main

sys.exit(main())
