"""Training: the jitted step (TrainState, optimizer, schedule), the Trainer that shards it, the loop and its
hooks, preemption, the multi-host runtime, metrics and preflight. Imports config, sharding, utils, data,
models, objectives and checkpoints."""
