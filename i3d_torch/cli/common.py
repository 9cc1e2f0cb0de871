"""Options shared by ``i3d-torch predict`` and ``i3d-torch features``: weights, device, decoding, windows, crops.

:func:`add_clip_arguments` declares them once; :func:`clip_options` turns the parsed values into the keyword
arguments that :func:`i3d_torch.classify` and :func:`i3d_torch.extract_features` both take.
"""

from __future__ import annotations

import argparse

from i3d_torch.core.defaults import CROP_SIZE, DEFAULT_WEIGHTS, FPS, SHORT_SIDE
from i3d_torch.core.errors import InputError
from i3d_torch.pipeline.settings import CROP_MODES
from i3d_torch.pipeline.windows import LONG_VIDEO_STRIDE, LONG_VIDEO_WINDOW, WHOLE_VIDEO_MAX_FRAMES
from i3d_torch.weights.registry import DTYPES, resolve_device

__all__ = ["add_clip_arguments", "check_device", "clip_options"]


def add_clip_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``predict`` and ``features``: weights, device, decoding, windows, crops."""
    parser.add_argument(
        "--weights", default=DEFAULT_WEIGHTS, help="registry name or .safetensors path (default: %(default)s)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument(
        "--dtype", default="float32", choices=sorted(DTYPES), help="model precision (default: %(default)s)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="windows per forward pass (default: 1 on CPU, 8 on CUDA)"
    )
    parser.add_argument(
        "--clip-frames",
        type=int,
        default=None,
        help=f"frames per window (default: the whole video up to {WHOLE_VIDEO_MAX_FRAMES} frames, else "
        f"{LONG_VIDEO_WINDOW}-frame windows every {LONG_VIDEO_STRIDE})",
    )
    parser.add_argument(
        "--stride", type=int, default=None, help="frames between window starts (default: half a window)"
    )
    parser.add_argument(
        "--crop",
        default="center",
        choices=CROP_MODES,
        help="spatial crop(s): center, three along the long side, full frame, or ten (corners, centre and their "
        "mirror images) (default: %(default)s)",
    )
    parser.add_argument(
        "--fps", type=float, default=None, help=f"decode at this frame rate (default: the weights', {FPS:g})"
    )
    parser.add_argument(
        "--short-side", type=int, default=None, help=f"resize the short side to this (default: {SHORT_SIDE})"
    )
    parser.add_argument("--crop-size", type=int, default=None, help=f"crop size in pixels (default: {CROP_SIZE})")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="fail a video whose decoding ends well before the length its container states (a file cut short) "
        "instead of warning",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def clip_options(args: argparse.Namespace) -> dict:
    """The parsed shared options as keyword arguments of ``classify_many`` / ``extract_features`` (all but
    ``--quiet``, which each command uses in its own way)."""
    for option in ("batch_size", "clip_frames", "stride", "crop_size", "short_side", "fps"):
        value = getattr(args, option)
        # A 0 would otherwise read as "not given" further down (`value or default`) and run with the default.
        if value is not None and not value > 0:
            raise InputError(f"--{option.replace('_', '-')} must be positive, got {value:g}")
    return {
        "weights": args.weights,
        "clip_frames": args.clip_frames,
        "stride": args.stride,
        "crop": args.crop,
        "crop_size": args.crop_size,
        "short_side": args.short_side,
        "fps": args.fps,
        "device": args.device,
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "strict": args.strict,
    }


def check_device(device: str) -> None:
    """Refuse a ``--device`` this machine does not have (``tpu``, ``cuda`` without CUDA, ``cuda:9``) with one
    line before any work: the process group and the per-rank device mapping would raise torch's multi-line
    RuntimeError (or an AssertionError) otherwise. ``auto`` (finetune) is resolved later."""
    if device != "auto":
        resolve_device(device)
