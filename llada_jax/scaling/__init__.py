"""Scaling: IsoFLOP sweep grids, running a sweep with the trainer, and the scaling-law fits. Imports config,
sharding, utils, models, checkpoints and training (the FLOPs accounting itself is models/flops.py)."""
