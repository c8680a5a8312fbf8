"""Inference: the loader every consumer uses, the jitted reverse-process decoder (rules, KV caches, stored
traces), the Monte Carlo likelihood and serving weights. Imports config, sharding, utils, data, models and
checkpoints."""
