"""``i3d-torch bench``: TEMPORARY shim while the command moves here from i3d_torch.apps.bench."""

from i3d_torch.apps.bench import add_arguments, run  # noqa: F401
