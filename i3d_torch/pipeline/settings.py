"""Clip settings: the one object that says how a video becomes model inputs.

:class:`ClipSettings` holds the frame rate, the resize, the crop(s), the windowing, the streams and each
stream's minimum clip length; it is passed whole through the pipeline (and recorded in the features
manifest) instead of a list of keyword arguments. :func:`clip_settings` builds it in one place from the
weights' preset (``weights.transforms()``) and whatever the user chose to override.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple, Union

from i3d_torch.core.defaults import CROP_SIZE, FPS, SHORT_SIDE
from i3d_torch.core.errors import InputError
from i3d_torch.core.model import min_input_size
from i3d_torch.core.transforms import VideoClassification
from i3d_torch.pipeline.windows import DenseWindowing, Windowing

__all__ = ["CROP_MODES", "ClipSettings", "check_crop_for_logits", "clip_settings"]

#: ``ten`` (four corners, centre and their mirror images) is :mod:`i3d_torch.pipeline.crops`.
CROP_MODES = ("center", "three", "full", "ten")


@dataclass(frozen=True)
class ClipSettings:
    """Everything that turns a video into model inputs (recorded in the features manifest)."""

    fps: float = FPS
    short_side: int = SHORT_SIDE
    crop: str = "center"
    crop_size: int = CROP_SIZE
    windowing: Union[Windowing, DenseWindowing] = Windowing()
    streams: Tuple[str, ...] = ("rgb",)  # which inputs to build: "rgb" and/or "flow"
    min_frames: Dict[str, int] = field(default_factory=lambda: {"rgb": 9, "flow": 9})
    # A video file whose decoding ends well before its stated length fails instead of warning. Not part of
    # to_dict(): it decides whether a result is kept, not what the features are, so resuming may change it.
    strict: bool = False

    def __post_init__(self):
        if self.crop not in CROP_MODES:
            raise InputError(f"crop must be one of {', '.join(CROP_MODES)}, got {self.crop!r}")
        if self.fps <= 0:
            raise InputError(f"fps must be positive, got {self.fps}")
        if self.crop_size < 1 or self.short_side < 1:
            raise InputError(f"crop size and short side must be positive, got {self.crop_size}, {self.short_side}")
        if self.crop != "full" and self.crop_size > self.short_side:
            raise InputError(f"crop size {self.crop_size} is larger than the short side {self.short_side}")

    def to_dict(self) -> dict:
        return {
            "fps": self.fps,
            "short_side": self.short_side,
            "crop": self.crop,
            "crop_size": self.crop_size,
            "windowing": self.windowing.to_dict(),
            "streams": list(self.streams),
            "flow": "TV-L1 (OpenCV Dual TV-L1, grayscale), clipped to +-20 px, /20" if "flow" in self.streams else None,
            "value_range": "[-1, 1]",
        }


def clip_settings(
    preset: VideoClassification,
    *,
    streams: Sequence[str],
    min_frames: Dict[str, int],
    fps: Optional[float] = None,
    short_side: Optional[int] = None,
    crop: str = "center",
    crop_size: Optional[int] = None,
    clip_frames: Optional[int] = None,
    stride: Optional[int] = None,
    dense: Optional[DenseWindowing] = None,
    strict: bool = False,
) -> ClipSettings:
    """The settings of one run: the user's choices where given, else the weights' ``preset``
    (``weights.transforms()``: DeepMind's evaluation preset of fps, short side and crop size). ``dense``
    replaces the clip windows (``clip_frames``/``stride``) with dense windows."""
    if dense is not None and (clip_frames is not None or stride is not None):
        raise InputError("--window/--step (dense windows) and --clip-frames/--stride exclude each other; use one pair")
    return ClipSettings(
        fps=float(fps or preset.fps),
        short_side=int(short_side or preset.short_side),
        crop=crop,
        crop_size=int(crop_size or preset.crop_size),
        windowing=dense if dense is not None else Windowing(clip_frames, stride),
        streams=tuple(streams),
        min_frames=dict(min_frames),
        strict=strict,
    )


def check_crop_for_logits(settings: ClipSettings, what: str, advice: str) -> None:
    """Refuse, before decoding anything, a crop smaller than TF's logits head accepts (193 pixels)."""
    smallest = min_input_size("Logits")[1]
    if settings.crop != "full" and settings.crop_size < smallest:
        raise InputError(
            f"crop size {settings.crop_size} is too small for {what} (needs >= {smallest} pixels, as in TF); {advice}"
        )
