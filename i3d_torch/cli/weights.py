"""``i3d-torch weights``: TEMPORARY shim while the command moves here from i3d_torch.weights.registry."""

from i3d_torch.weights.registry import add_arguments, run  # noqa: F401
