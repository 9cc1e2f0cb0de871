"""The project's defaults, in one place.

DeepMind's evaluation preset (kinetics-i3d README; Carreira & Zisserman 2017, section 4): frames at 25 fps,
the short side resized to 256 pixels, a 224x224 centre crop, values in [-1, 1]. Every application takes
these through :meth:`i3d_torch.weights.Weights.transforms` or from here, never as literals of its own.
"""

from __future__ import annotations

from pathlib import Path

#: Registry name of the weights used when none is given: DeepMind's Kinetics-400 RGB model (TF-Hub).
DEFAULT_WEIGHTS = "rgb_kinetics400"
#: Registry name of the flow stream's weights when a command adds it (``predict --flow``, ``features --streams``).
DEFAULT_FLOW_WEIGHTS = "flow_kinetics400"

#: Frame rate the Kinetics models were trained and evaluated at.
FPS = 25.0
#: Short side of the frames after resizing (bilinear), before the crop.
SHORT_SIDE = 256
#: Side of the square crop fed to the network.
CROP_SIZE = 224

#: Files shipped inside the package: label lists, the cricket clip, licenses.
ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
