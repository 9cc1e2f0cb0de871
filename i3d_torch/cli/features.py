"""``i3d-torch features``: TEMPORARY shim while the command moves here from i3d_torch.apps.features."""

from i3d_torch.apps.features import add_arguments, run  # noqa: F401
