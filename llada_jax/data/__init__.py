"""Input side of llada_jax: vocabularies and the batches that feed the train step."""
