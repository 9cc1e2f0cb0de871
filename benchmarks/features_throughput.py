"""Throughput of ``features`` (not a test): videos per second end to end against the model alone, for 1 and 10
crops, RGB and RGB+flow, and the share of TV-L1 flow with OpenCV on one thread and on its own threading.

    python benchmarks/features_throughput.py [--videos 4] [--frames 32] [--short-side 128] [--crop-size 112]
                                             [--window 16] [--step 8] [--batch-size B] [--rgb-only]
                                             [--device cpu] [--json]

Videos are generated (moving shapes, H.264, 4:3) into a temporary folder; the models are random-weights RGB and
flow I3Ds (speed does not depend on the values; ``--weights``/``--flow-weights`` take real ones). *Model only*
is the same number of forward passes on inputs of the same shapes and batch size, without decoding, cropping or
flow: the ceiling the pipeline approaches when decoding is hidden behind the model (the prefetch thread).
``--batch-size`` (default: the pipeline's, 1 on CPU and 8 on CUDA) is the number of windows per forward pass;
the pipeline fills batches across videos, so short videos (``--frames`` equal to ``--window``: one window each)
still make full batches. Both sides are timed warm (one untimed run first), in a process that keeps freed
memory as the command line does (:func:`i3d_torch.backends.cpu.keep_freed_memory`). The TV-L1 rows time
:func:`i3d_torch.core.flow.video_flow` on the decoded frames of every video, with ``cv2.setNumThreads(1)`` and
with OpenCV's default threading (``--rgb-only`` skips them and the RGB+flow rows).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # videogen writes the videos

from videogen import moving_shapes, write_video  # noqa: E402

from i3d_torch.apps.features import MANIFEST, extract_features, read_records  # noqa: E402
from i3d_torch.backends import cpu  # noqa: E402
from i3d_torch.core.flow import video_flow  # noqa: E402
from i3d_torch.core.model import InceptionI3d  # noqa: E402
from i3d_torch.core.video import read_video  # noqa: E402
from i3d_torch.pipeline.running import default_batch_size, run_model  # noqa: E402
from i3d_torch.weights.registry import cached_model, label_list, save_model  # noqa: E402


def random_weights(folder: Path) -> tuple:
    torch.manual_seed(0)
    rgb, flow = folder / "rgb.safetensors", folder / "flow.safetensors"
    save_model(InceptionI3d().eval(), rgb, categories=label_list("kinetics400"), name="rgb", modality="rgb")
    save_model(InceptionI3d(in_channels=2).eval(), flow, categories=label_list("kinetics400"), name="flow",
               modality="flow")  # fmt: skip
    return rgb, flow


def model_only_s(models: dict, windows: int, crops: int, frames: int, size: int, device: str, batch: int) -> float:
    """Seconds for the forward passes of ``windows`` windows of ``crops`` views per stream, ``batch`` windows per
    pass (the last pass takes the rest), inputs made up front."""
    sizes = [batch] * (windows // batch) + ([windows % batch] if windows % batch else [])

    def inputs(count: int) -> dict:
        return {
            name: torch.rand(count * crops, 3 if name == "rgb" else 2, frames if name == "rgb" else frames - 1, size,
                             size, device=device) * 2 - 1  # fmt: skip
            for name in models
        }

    made = {count: inputs(count) for count in set(sizes)}
    for x in made.values():  # warm up (the CPU engine prepares its kernels per shape)
        for name, model in models.items():
            run_model(model, x[name], ["Mixed_5c"])
    started = time.perf_counter()
    for count in sizes:
        for name, model in models.items():  # the call the pipeline makes, results back on the CPU
            run_model(model, made[count][name], ["Mixed_5c"])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--short-side", type=int, default=128)
    parser.add_argument("--crop-size", type=int, default=112)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--step", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=None, help="windows per forward pass (pipeline default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--flow-weights", default=None)
    parser.add_argument("--rgb-only", action="store_true", help="skip the RGB+flow rows and the TV-L1 timing")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cpu.keep_freed_memory()  # as the command line does (i3d-torch features), see docs/performance.md

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rgb, flow = random_weights(tmp)
        rgb, flow = args.weights or rgb, args.flow_weights or flow
        height = args.short_side
        width = height * 4 // 3 // 2 * 2
        for i in range(args.videos):
            write_video(tmp / "videos" / f"v{i}.mp4", moving_shapes(args.frames, height, width, seed=i), 25)
        batch = args.batch_size or default_batch_size(args.device)
        options = dict(window=args.window, step=args.step, short_side=args.short_side, crop_size=args.crop_size,
                       device=args.device, batch_size=batch)  # fmt: skip
        videos = sorted((tmp / "videos").iterdir())
        for crop in ("center", "ten"):
            for streams in ("rgb",) if args.rgb_only else ("rgb", "rgb,flow"):
                # untimed: the first forward of each input shape prepares the CPU engine's kernels and buffers,
                # as model_only_s's warm-up does; enough videos to fill one batch
                extract_features(videos[:batch], tmp / f"warm-{crop}-{streams}", weights=rgb, flow_weights=flow,
                                 streams=streams, crop=crop, keep_crops=True, **options)  # fmt: skip
                out = tmp / f"out-{crop}-{streams}"
                started = time.perf_counter()
                extract_features(videos, out, weights=rgb, flow_weights=flow, streams=streams, crop=crop,
                                 keep_crops=True, **options)  # fmt: skip
                end_to_end = time.perf_counter() - started
                windows = sum(len(r["windows"]) for r in read_records(out / MANIFEST)[0])
                models = {"rgb": cached_model(rgb, args.device)}
                if "flow" in streams:
                    models["flow"] = cached_model(flow, args.device)
                crops = 10 if crop == "ten" else 1
                alone = model_only_s(models, windows, crops, args.window, args.crop_size, args.device, batch)
                rows.append({
                    "crops": crops, "streams": streams, "windows": windows,
                    "videos_per_s": round(args.videos / end_to_end, 3),
                    "model_only_videos_per_s": round(args.videos / alone, 3),
                    "pipeline_share_of_model_speed": round(alone / end_to_end, 3),
                })  # fmt: skip
        decoded = [read_video(p, fps=25, short_side=args.short_side)[0] for p in sorted((tmp / "videos").iterdir())]
        threads = cv2.getNumThreads()
        tvl1 = {}
        settings = [] if args.rgb_only else [("1 thread", 1), (f"OpenCV default ({threads} threads)", threads)]
        for label, count in settings:
            cv2.setNumThreads(count)
            started = time.perf_counter()
            for frames in decoded:
                video_flow(frames)
            tvl1[label] = round(args.videos / (time.perf_counter() - started), 3)
        cv2.setNumThreads(threads)

    if args.json:
        print(json.dumps({"settings": vars(args), "rows": rows, "tvl1_videos_per_s": tvl1}, indent=2))
        return
    print(f"{args.videos} videos of {args.frames} frames, short side {args.short_side}, crop {args.crop_size}, "
          f"{args.window}-frame windows every {args.step}, {batch} per forward pass, {args.device}, "
          f"torch threads {torch.get_num_threads()}")  # fmt: skip
    print(f"{'crops':>5}  {'streams':<9} {'windows':>7}  {'videos/s':>9}  {'model only':>10}  {'share':>6}")
    for r in rows:
        print(f"{r['crops']:>5}  {r['streams']:<9} {r['windows']:>7}  {r['videos_per_s']:>9.3f}  "
              f"{r['model_only_videos_per_s']:>10.3f}  {r['pipeline_share_of_model_speed']:>6.2f}")  # fmt: skip
    for label, speed in tvl1.items():
        print(f"TV-L1 flow alone, {label}: {speed:.3f} videos/s")


if __name__ == "__main__":
    main()
