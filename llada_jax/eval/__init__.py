"""Evaluation: the lm-evaluation-harness model `llada_jax`, its settings, presets and runner behind `llada-jax
eval`, and the generated tasks' exact-match scoring of the demo. Imports every stage but cli; lm_eval (the
[eval] extra) is imported only by harness_model.py and runner.py."""
