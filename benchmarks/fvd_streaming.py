"""FVD figures for docs/fvd.md (not tests): run from the repository root.

    python benchmarks/fvd_streaming.py speed [--videos 8] [--device cpu]   videos/s: streaming metric vs batch fvd()
    python benchmarks/fvd_streaming.py memory [--counts 100 1000]         peak RSS of a folder run, by set size
    python benchmarks/fvd_streaming.py protocols                            one pair of sets under every protocol

``speed`` embeds 16-frame 224x224 uint8 clips with the real ``rgb_kinetics400`` weights. ``memory`` writes N short
generated videos (9 frames of 32x32, MPEG-4) to a temporary folder and measures, in a fresh process per N, the
peak RSS of ``compute_stats`` over the folder (decode, resize to 224, embed, reduce) and of the streaming metric fed
the same videos in batches; the embedder is a cheap stand-in (the pipeline's memory is under test: I3D's
activations are per batch and the same for every N). ``protocols`` takes the bundled cricket clip, upscaled to a
4:3 256x340 frame so that the protocols' resizes differ, as 16 overlapping 24-frame clips, against copies with
Gaussian noise (sigma 20 grey levels) and a 3x3 box blur.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def _quiet():
    from i3d_torch.apps.fvd import SmallSampleWarning

    warnings.simplefilter("ignore", SmallSampleWarning)


def speed(args) -> None:
    from i3d_torch.apps.fvd import fvd
    from i3d_torch.apps.fvd.metric import FrechetVideoDistance
    from i3d_torch.weights.registry import load_model

    _quiet()
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (args.videos, 16, 224, 224, 3), dtype=np.uint8)
    fake = rng.integers(0, 256, (args.videos, 16, 224, 224, 3), dtype=np.uint8)
    model = load_model("rgb_kinetics400", device=args.device)
    fvd(real[:2], fake[:2], model=model, device=args.device)  # warm-up: first-call allocations and kernels

    def batch_run():
        return fvd(real, fake, model=model, device=args.device, batch_size=args.batch_size).fvd

    metric = FrechetVideoDistance(model, batch_size=args.batch_size).to(args.device)  # one per run, as in training

    def metric_run():
        metric.reset()
        for k in range(0, args.videos, args.batch_size):
            metric.update(torch.from_numpy(real[k : k + args.batch_size]).to(args.device), real=True)
            metric.update(torch.from_numpy(fake[k : k + args.batch_size]).to(args.device), real=False)
        return float(metric.compute())

    # Alternating repeats, best of each: the shared machine's load moves single timings by tens of percent.
    # CPU seconds too: under contention wall time counts the waiting, process time counts the work.
    times = {"batch": [], "metric": []}
    cpu = {"batch": [], "metric": []}
    values = {}
    for _ in range(args.repeats):
        for name, run in (("batch", batch_run), ("metric", metric_run)):
            start, start_cpu = time.perf_counter(), time.process_time()
            values[name] = run()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    batch, streamed = values["batch"], values["metric"]
    batch_s, stream_s = min(times["batch"]), min(times["metric"])
    total = 2 * args.videos
    print(json.dumps({
        "device": args.device, "threads": torch.get_num_threads(), "videos": total, "frames": 16, "size": 224,
        "batch_fvd_videos_per_s": round(total / batch_s, 3), "metric_videos_per_s": round(total / stream_s, 3),
        "batch_cpu_s_per_video": round(min(cpu["batch"]) / total, 3),
        "metric_cpu_s_per_video": round(min(cpu["metric"]) / total, 3),
        "wall_s": {k: [round(t, 2) for t in v] for k, v in times.items()},
        "relative_difference": abs(streamed - batch) / batch,
    }))


MEMORY_CHILD = """
import json, sys, warnings
sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
import numpy as np, torch
from test_fvd import TinyEmbedder
from i3d_torch.apps.fvd import SmallSampleWarning, compute_stats
warnings.simplefilter("ignore", SmallSampleWarning)
torch.set_num_threads(2)
mode, folder, n = {mode!r}, {folder!r}, {n}
if mode == "folder":
    stats = compute_stats(folder, TinyEmbedder(), batch_size=8)
    count = stats.n
else:
    from i3d_torch.apps.fvd.metric import FrechetVideoDistance
    from i3d_torch.core.video import iter_frames
    from i3d_torch.apps.fvd.videosets import FolderVideoSet
    videos = FolderVideoSet(folder)
    metric = FrechetVideoDistance(TinyEmbedder(), batch_size=8)
    for k in range(0, len(videos), 8):
        batch = [np.stack(list(iter_frames(p, fps=None, short_side=None))) for p in videos.paths[k:k + 8]]
        metric.update(torch.from_numpy(np.stack(batch)), real=(k // 8) % 2 == 0)
    count = int(metric.real_n + metric.fake_n)
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
peak = int(status["VmHWM"].split()[0]) / 1024  # this process's own peak (ru_maxrss carries the parent's)
print(json.dumps({{"mode": mode, "videos": count, "peak_rss_mib": round(peak, 1)}}))
"""


def memory(args) -> None:
    from videogen import moving_shapes, write_video

    with tempfile.TemporaryDirectory() as tmp:
        for n in args.counts:
            folder = Path(tmp) / f"set{n}"
            for k in range(n):
                write_video(folder / f"v{k:05d}.mkv", moving_shapes(9, 32, 32, seed=k), fps=25, codec="mpeg4")
            for mode in ("folder", "metric"):
                where = dict(repo=str(REPO), tests=str(REPO / "tests"), folder=str(folder))
                code = MEMORY_CHILD.format(mode=mode, n=n, **where)
                out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
                print(out.stdout.strip().splitlines()[-1], flush=True)


def protocols(args) -> None:
    import cv2
    from conftest import ASSETS, read_gif_frames

    from i3d_torch.apps.fvd import PROTOCOLS, compute_stats, distance_between
    from i3d_torch.weights.registry import load_model

    _quiet()
    frames = read_gif_frames(ASSETS / "v_CricketShot_g04_c01_rgb.gif")
    frames = np.stack([cv2.resize(f, (340, 256), interpolation=cv2.INTER_LINEAR) for f in frames])
    real = np.stack([frames[s : s + 24] for s in range(0, 16 * 3, 3)])  # 16 overlapping 24-frame clips
    rng = np.random.default_rng(0)
    noisy = np.clip(real + rng.normal(0, 20, real.shape), 0, 255).astype(np.uint8)
    blurred = np.stack([np.stack([cv2.blur(f, (3, 3)) for f in clip]) for clip in real])
    model = load_model("rgb_kinetics400")
    rows = []
    for name, protocol in PROTOCOLS.items():
        if protocol.clip_span is not None and protocol.clip_span > real.shape[1]:
            rows.append({"protocol": name, "note": f"needs {protocol.clip_span}-frame videos"})
            continue
        stats = {key: compute_stats(v, model, protocol=name, role="fake" if key != "real" else "real", batch_size=4)
                 for key, v in (("real", real), ("noisy", noisy), ("blurred", blurred))}
        row = {"protocol": name, "hash": protocol.spec_hash}
        for key in ("noisy", "blurred"):
            row[key] = distance_between(stats["real"], stats[key], protocol=name).fvd
        rows.append(row)
        print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("speed")
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=2)
    p = sub.add_parser("memory")
    p.add_argument("--counts", type=int, nargs="+", default=[100, 1000])
    sub.add_parser("protocols")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    {"speed": speed, "memory": memory, "protocols": protocols}[args.mode](args)


if __name__ == "__main__":
    main()
