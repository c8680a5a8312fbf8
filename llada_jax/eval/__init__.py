"""Evaluation with lm-evaluation-harness: the `llada_jax` harness model, its settings and presets, and the
runner behind `llada-jax eval`. lm_eval (the [eval] extra) is imported only by harness_model.py and runner.py."""
