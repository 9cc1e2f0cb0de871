"""``i3d-torch predict``: TEMPORARY shim while the command moves here from i3d_torch.apps.classify."""

from i3d_torch.apps.classify import add_arguments, run  # noqa: F401
