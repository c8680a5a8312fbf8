"""Objectives: the forward process and losses as pure functions (masked diffusion, SFT, the AR baseline, block
diffusion) and the registry keyed by train.objective. Imports only config, sharding and models."""
