"""Pipeline: windows, clip settings, decoding ahead of the model, datasets and the distributed runtime."""
