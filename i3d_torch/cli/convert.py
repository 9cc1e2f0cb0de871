"""``i3d-torch convert``: TEMPORARY shim while the command moves here from i3d_torch.weights.convert."""

from i3d_torch.weights.convert import add_arguments, run  # noqa: F401
