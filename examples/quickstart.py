"""Quickstart: classify a video and extract its I3D features, top to bottom.

Run it from anywhere (the first run downloads and converts the Kinetics-400 weights, about 50 MB):

    python examples/quickstart.py --out quickstart_out

It writes, under --out:
  model_input.gif          the 224x224 frames the network sees, as an animated GIF
  features/                the 1024-d features of the clip (.npy) and their manifest.jsonl
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

import i3d_torch
from i3d_torch.core.video import center_crop, read_video

# The clip DeepMind used to demonstrate I3D (UCF101 v_CricketShot_g04_c01), bundled with the package.
CRICKET = Path(i3d_torch.__file__).parent / "assets" / "v_CricketShot_g04_c01_rgb.gif"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("quickstart_out"), help="folder for the outputs")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    # 1. Load the model once. "rgb_kinetics400" is DeepMind's RGB I3D trained on Kinetics-400; the weights
    #    are fetched and converted on first use, then cached (~/.cache/i3d_torch).
    model = i3d_torch.load_model("rgb_kinetics400", device=args.device)
    weights = model.weights_info
    print(f"model: {weights.name}, {weights.num_classes} classes, input {weights.transforms()}")

    # 2. Decode the video the way the weights were trained: 25 fps, short side resized to 256 pixels.
    #    Frames are uint8 RGB [T, H, W, 3].
    frames, info = read_video(CRICKET, fps=25, short_side=256)
    print(f"video: {CRICKET.name}, {len(frames)} frames of {frames.shape[2]}x{frames.shape[1]} at 25 fps "
          f"(source: {info.fps:g} fps)")

    # 3. The network sees the centre 224x224 crop. Save it as a GIF to look at what the model looks at.
    seen = center_crop(frames, 224)
    gif = args.out / "model_input.gif"
    images = [Image.fromarray(frame) for frame in seen]
    images[0].save(gif, save_all=True, append_images=images[1:], duration=40, loop=0)  # 40 ms = 25 fps
    print(f"wrote {gif}")

    # 4. Classify. classify() takes a path or frames; frames are used as given (already 25 fps, resized)
    #    and centre-cropped. A clip of up to 256 frames is scored in one pass, as DeepMind evaluated.
    result = i3d_torch.classify(frames, model=model, top_k=5)
    print("top 5:")
    for p in result.top:
        print(f"  {p.prob:6.3f}  {p.label}")

    # 5. Features for retrieval, clustering or a linear probe: the 1024-d average of the last feature map
    #    (Mixed_5c). extract_features() writes .npy files and a manifest, and skips what is already done.
    summary = i3d_torch.extract_features(CRICKET, args.out / "features", model=model, device=args.device)
    feature = np.load(args.out / "features" / f"{CRICKET.name}.npy")
    print(f"features: {summary.done} extracted, {summary.skipped} already done; "
          f"{feature.shape[0]}-d vector, norm {np.linalg.norm(feature):.2f}, in {args.out / 'features'}")


if __name__ == "__main__":
    main()
