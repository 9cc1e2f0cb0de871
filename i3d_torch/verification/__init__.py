"""Verification against TensorFlow: DeepMind's graph rebuilt in raw TF ops, and per-endpoint parity."""
