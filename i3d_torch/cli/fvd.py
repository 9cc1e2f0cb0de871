"""``i3d-torch fvd``: TEMPORARY shim while the command moves here from i3d_torch.apps.fvd."""

from i3d_torch.apps.fvd import add_arguments, run  # noqa: F401
