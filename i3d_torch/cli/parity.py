"""``i3d-torch parity``: TEMPORARY shim while the command moves here from i3d_torch.verification.parity."""

from i3d_torch.verification.parity import add_arguments, run  # noqa: F401
