"""``i3d-torch finetune``: TEMPORARY shim while the command moves here from i3d_torch.apps.finetune."""

from i3d_torch.apps.finetune import add_arguments, run  # noqa: F401
