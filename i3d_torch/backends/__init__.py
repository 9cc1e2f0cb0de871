"""Backends: engines applied to a built model from outside (the model file knows none of them)."""
