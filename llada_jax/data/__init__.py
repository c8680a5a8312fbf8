"""Data: vocabularies, sources, `prepare`, packing, SFT rows, mixtures and the Grain pipelines that feed the
train step. Imports only config."""
