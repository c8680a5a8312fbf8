"""Models: the networks as pure functions of params (the dense LLaDA transformer, shared layers, attention
kernels, the chunked output head) and the registry keyed by model.family. Imports only config and sharding."""
