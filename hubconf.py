"""torch.hub entry points of i3d-torch.

    model = torch.hub.load("OWNER/i3d-torch", "i3d", weights="rgb_kinetics400")          # from GitHub
    model = torch.hub.load("/path/to/clone", "i3d", source="local", weights="rgb_kinetics400")
    x = model.transforms(frames)        # uint8 [T, H, W, 3] RGB -> [1, 3, T, 224, 224], DeepMind's preset
    logits = model(x)

The model comes from the weights registry (:func:`i3d_torch.load_model`: fetched, converted and verified
by checksum on first use, then cached), with the weights' description as ``model.weights_info`` and their
evaluation preset (``Weights.transforms()``: 25 fps, short side 256, centre crop 224, value range) as
``model.transforms``.
"""

# torch.hub checks that these import before calling an entry point.
dependencies = ["torch", "numpy", "safetensors", "cv2", "av"]


def i3d(weights="rgb_kinetics400", pretrained=True, **kwargs):
    """I3D with ``weights`` (a registry name such as ``rgb_kinetics400``, ``flow_kinetics400``, or a path to
    a converted ``.safetensors`` file); ``kwargs`` go to :func:`i3d_torch.load_model` (``device``, ``dtype``,
    ``num_classes``, ...). ``pretrained=False`` gives the same architecture with random weights."""
    from i3d_torch import InceptionI3d, get_weights, load_model

    entry = get_weights(weights)
    if pretrained:
        model = load_model(entry, **kwargs)
    else:
        model = InceptionI3d(num_classes=kwargs.get("num_classes") or entry.num_classes, in_channels=entry.in_channels)
        model.weights_info = entry
        model.eval()
    model.transforms = entry.transforms()
    return model
