"""Checkpoints: params exports and a run's checkpoints (save, verify, rotate, restore), read by training,
inference, interop and eval alike. Imports config, sharding, utils and models."""
