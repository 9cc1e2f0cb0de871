"""Fine-tuning (i3d_torch.apps.finetune, i3d_torch.pipeline.data, i3d_torch.pipeline.distributed): data sets,
clip sampling, schedule, checkpoints and exact resume after a real SIGKILL, BatchNorm handling, the CLI's error
lines, and a tiny real fine-tune whose loss falls and whose accuracy rises.

Videos are encoded by the tests (tests/videogen.py). Small clips need the model's
``strict_tf_pooling=False`` (``--no-strict-tf-pooling``): the strict TF head needs 9x193x193 at least.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from i3d_torch.apps.finetune import FinetuneConfig
from i3d_torch.apps.finetune.checkpoint import load_checkpoint, rng_state, set_rng_state
from i3d_torch.apps.finetune.loop import epoch_order
from i3d_torch.apps.finetune.metrics import score
from i3d_torch.apps.finetune.network import freeze, set_train_mode
from i3d_torch.apps.finetune.optim import lr_at_step
from i3d_torch.core.errors import InputError
from i3d_torch.core.model import BatchNorm3dNoScale, InceptionI3d
from i3d_torch.pipeline.data import VideoClips, discover, read_csv, read_split_files
from i3d_torch.pipeline.distributed import SyncBatchNorm3dNoScale, convert_sync_batchnorm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from videogen import write_video  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread_subprocesses(monkeypatch):
    """Command-line runs (``run_cli``, Popen) use one thread each: the runs compared bitwise then share one
    reduction order, and parallel test processes do not fight over the cores."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


# -- synthetic videos ------------------------------------------------------------------------------------


def square_video(frames: int, size: int, speed: int, seed: int) -> np.ndarray:
    """A red square on a fixed gradient, moving vertically by ``speed`` px per frame (0: still).

    Vertical motion survives the random left-right flips of training, so flips stay on.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    background = np.stack([x * 255 // (size - 1), y * 255 // (size - 1), np.full_like(x, 96)], -1).astype(np.uint8)
    side = size // 4
    left, top0 = (int(v) for v in rng.integers(0, size - side, 2))
    direction = int(rng.choice([-1, 1]))
    out = np.empty((frames, size, size, 3), np.uint8)
    for i in range(frames):
        frame = background.copy()
        top = (top0 + direction * speed * i) % (size - side)
        frame[top : top + side, left : left + side] = (250, 40, 40)
        out[i] = frame
    return out


def make_dataset(root: Path, per_class: int, frames: int = 16, size: int = 64, seed: int = 0) -> Path:
    """``root/still/*.mp4`` and ``root/moving/*.mp4``: two classes that differ only in motion."""
    for name, speed in (("still", 0), ("moving", 6)):
        for k in range(per_class):
            video = square_video(frames, size, speed, seed + 2 * k + (speed > 0))
            write_video(root / name / f"{name}_{k}.mp4", video, fps=25)
    return root


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


# -- data sets -------------------------------------------------------------------------------------------


def test_folder_of_class_subfolders_gives_sorted_classes_and_labels(tmp_path):
    touch(tmp_path / "walk" / "a.mp4")
    touch(tmp_path / "run" / "b.avi")
    touch(tmp_path / "run" / "nested" / "c.mkv")
    touch(tmp_path / "run" / "notes.txt")
    videos = discover(tmp_path)
    assert videos.classes == ["run", "walk"]
    found = sorted((p.name, y) for p, y in zip(videos.paths, videos.labels))
    assert found == [("a.mp4", 1), ("b.avi", 0), ("c.mkv", 0)]


def test_csv_paths_are_relative_to_the_csv_and_header_is_optional(tmp_path):
    touch(tmp_path / "clips" / "x.mp4")
    touch(tmp_path / "clips" / "y.mp4")
    (tmp_path / "list.csv").write_text("path,label\nclips/x.mp4,jump\nclips/y.mp4,sit\n")
    videos = read_csv(tmp_path / "list.csv")
    assert videos.classes == ["jump", "sit"]
    assert videos.paths == [tmp_path / "clips" / "x.mp4", tmp_path / "clips" / "y.mp4"]
    (tmp_path / "bad.csv").write_text("clips/x.mp4,jump\nclips/missing.mp4,sit\n")
    with pytest.raises(InputError, match=r"bad\.csv.*1 listed video\(s\) do not exist.*missing\.mp4"):
        read_csv(tmp_path / "bad.csv")


def test_ucf101_split_files_with_class_index(tmp_path):
    root = tmp_path / "UCF-101"
    names = ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "Archery/v_Archery_g01_c01.avi",
             "Archery/v_Archery_g09_c02.avi")
    for name in names:
        touch(root / name)
    splits = tmp_path / "ucfTrainTestlist"
    splits.mkdir()
    (splits / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 ApplyLipstick\n3 Archery\n")
    (splits / "trainlist01.txt").write_text(
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\nArchery/v_Archery_g01_c01.avi 3\n"
    )
    (splits / "testlist01.txt").write_text("Archery/v_Archery_g09_c02.avi\n")
    train = read_split_files(root, [splits / "trainlist01.txt"])
    test = read_split_files(root, [splits / "testlist01.txt"], subset="test")
    assert train.classes == test.classes == ["ApplyEyeMakeup", "ApplyLipstick", "Archery"]
    assert train.labels == [0, 2] and test.labels == [2]
    (splits / "wrong.txt").write_text("Archery/v_Archery_g01_c01.avi 1\n")
    with pytest.raises(InputError, match="index 1 is 'ApplyEyeMakeup'.*'Archery'"):
        read_split_files(root, [splits / "wrong.txt"])


def test_hmdb51_split_files_pick_train_or_test_codes(tmp_path):
    root = tmp_path / "hmdb51"
    for name in ("brush_hair/a.avi", "brush_hair/b.avi", "brush_hair/c.avi", "cartwheel/d.avi", "cartwheel/e.avi"):
        touch(root / name)
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "brush_hair_test_split1.txt").write_text("a.avi 1 \nb.avi 2 \nc.avi 0 \n")
    (splits / "cartwheel_test_split1.txt").write_text("d.avi 1 \ne.avi 2 \n")
    files = sorted(splits.glob("*_test_split1.txt"))
    train = read_split_files(root, files, "train")
    test = read_split_files(root, files, "test")
    assert [p.name for p in train.paths] == ["a.avi", "d.avi"] and train.labels == [0, 1]
    assert [p.name for p in test.paths] == ["b.avi", "e.avi"] and test.labels == [0, 1]


def test_data_set_errors_name_the_file(tmp_path):
    touch(tmp_path / "only" / "a.mp4")
    with pytest.raises(InputError, match="need at least 2 classes"):
        discover(tmp_path, min_classes=2)
    with pytest.raises(InputError, match="not found"):
        discover(tmp_path / "nope")
    (tmp_path / "l.csv").write_text("just-one-column\n")
    with pytest.raises(InputError, match=r"l\.csv: line 1: expected 'path,label'"):
        read_csv(tmp_path / "l.csv")


def test_validation_set_is_relabelled_against_training_classes(tmp_path):
    touch(tmp_path / "train" / "a" / "1.mp4")
    touch(tmp_path / "train" / "b" / "2.mp4")
    touch(tmp_path / "val" / "b" / "3.mp4")
    val = discover(tmp_path / "val").with_classes(discover(tmp_path / "train").classes)
    assert val.labels == [1] and val.classes == ["a", "b"]
    touch(tmp_path / "val2" / "c" / "4.mp4")
    touch(tmp_path / "val2" / "a" / "5.mp4")
    with pytest.raises(InputError, match="classes not in the training set: c"):
        discover(tmp_path / "val2").with_classes(["a", "b"])


# -- clip sampling ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clips")
    return make_dataset(root, per_class=2, frames=12, size=48)


def test_training_clips_are_a_function_of_seed_epoch_and_index(small_videos):
    videos = discover(small_videos)
    clips = VideoClips(videos, 8, train=True, short_side=40, crop_size=32, seed=3)
    first, label, index = clips[1]
    assert first.shape == (3, 8, 32, 32) and first.dtype == torch.float32 and index == 1
    assert float(first.min()) >= -1 and float(first.max()) <= 1
    again = VideoClips(videos, 8, train=True, short_side=40, crop_size=32, seed=3)[1][0]
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    different = [VideoClips(videos, 8, train=True, short_side=40, crop_size=32, seed=3) for _ in range(4)]
    for epoch, ds in enumerate(different):
        ds.set_epoch(epoch + 1)
    assert any(not torch.equal(ds[1][0], first) for ds in different)


def test_eval_clips_are_centred_and_short_videos_loop(small_videos):
    videos = discover(small_videos)
    centre = VideoClips(videos, 20, train=False, short_side=40, crop_size=32)
    clip = centre[0][0]
    assert clip.shape == (3, 20, 32, 32)  # 12 frames looped to 20
    torch.testing.assert_close(clip[:, 12:], clip[:, :8], rtol=0, atol=0)
    windows = VideoClips(videos, 4, train=False, eval_windows="all", short_side=40, crop_size=32)[0][0]
    assert windows.shape == (3, 3, 4, 32, 32)  # 12 frames = 3 windows of 4


def test_epoch_order_shards_the_global_batch_like_a_single_process():
    single = epoch_order(10, epoch=2, seed=5, world=1, rank=0, per_step=2)
    rank0 = epoch_order(10, epoch=2, seed=5, world=2, rank=0, per_step=1)
    rank1 = epoch_order(10, epoch=2, seed=5, world=2, rank=1, per_step=1)
    assert single[0::2] == rank0 and single[1::2] == rank1
    assert sorted(single) == list(range(10))
    assert epoch_order(10, epoch=3, seed=5, world=1, rank=0, per_step=2) != single


# -- optimisation pieces ---------------------------------------------------------------------------------


def test_step_schedule_divides_by_ten_at_the_milestones_and_cosine_ends_at_zero():
    config = FinetuneConfig(data="d", out="o", lr=0.1, lr_milestones=[0.5, 0.75])
    lrs = [lr_at_step(config, s, 100) for s in (0, 49, 50, 74, 75, 99)]
    np.testing.assert_allclose(lrs, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-12)
    cosine = FinetuneConfig(data="d", out="o", lr=0.1, schedule="cosine", warmup_steps=10)
    np.testing.assert_allclose(
        [lr_at_step(cosine, s, 110) for s in (0, 9, 10, 60, 110)], [0.01, 0.1, 0.1, 0.05, 0.0], atol=1e-12
    )


def test_random_states_survive_a_weights_only_checkpoint(tmp_path):
    import random

    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    state = rng_state()
    torch.save({"rng": [state]}, tmp_path / "s.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(torch.load(tmp_path / "s.pt", weights_only=True)["rng"][0])
    torch.testing.assert_close(torch.rand(3), expected[0], rtol=0, atol=0)
    np.testing.assert_array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def test_checkpoints_of_the_released_format_still_resume(tmp_path):
    """The format name is data inside every checkpoint, not a module path: moving the code keeps it."""
    torch.save({"format": "i3d_torch.finetune/1", "step": 3}, tmp_path / "step-0000003.pt")
    assert load_checkpoint(tmp_path / "step-0000003.pt")["step"] == 3
    torch.save({"format": "i3d_torch.apps.finetune/1", "step": 3}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="not a checkpoint of this fine-tuning code"):
        load_checkpoint(tmp_path / "other.pt")


def test_freezing_stops_gradients_and_keeps_frozen_batchnorm_in_eval_mode():
    model = InceptionI3d(num_classes=2, strict_tf_pooling=False)
    frozen = freeze(model, "Mixed_4f")
    assert frozen[-1] == "Mixed_4f" and "Mixed_5b" not in frozen
    set_train_mode(model, frozen, freeze_bn=False)
    assert not model.Mixed_4f.Branch_0.Conv3d_0a_1x1.batch_norm.training
    assert model.Mixed_5b.Branch_0.Conv3d_0a_1x1.batch_norm.training
    model(torch.rand(2, 3, 8, 64, 64) * 2 - 1).sum().backward()
    assert model.Conv3d_1a_7x7.conv_3d.weight.grad is None
    assert model.Mixed_4f.Branch_0.Conv3d_0a_1x1.batch_norm.bias.grad is None
    assert model.Mixed_5b.Branch_0.Conv3d_0a_1x1.conv_3d.weight.grad is not None
    set_train_mode(model, frozen, freeze_bn=True)
    assert not model.Mixed_5c.Branch_3.Conv3d_0b_1x1.batch_norm.training
    assert model.Mixed_5c.Branch_3.Conv3d_0b_1x1.batch_norm.bias.requires_grad  # offsets still train


def test_sync_batchnorm_conversion_keeps_the_offset_and_statistics():
    torch.manual_seed(0)
    model = InceptionI3d(num_classes=3, final_endpoint="Mixed_3b")
    for module in model.modules():
        if isinstance(module, BatchNorm3dNoScale):
            module.bias.data.normal_()
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2)
    x = torch.rand(2, 3, 4, 32, 32) * 2 - 1
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected_eval = model.eval()(x)
    expected_train = model.train()(x)
    model.load_state_dict(before)
    convert_sync_batchnorm(model)
    bns = [m for m in model.modules() if isinstance(m, BatchNorm3dNoScale)]
    assert bns and all(type(m) is SyncBatchNorm3dNoScale for m in bns)
    assert set(model.state_dict()) == set(before)
    torch.testing.assert_close(model.eval()(x), expected_eval, rtol=0, atol=0)
    # In one process the synchronised layer is the plain one, batch statistics included.
    torch.testing.assert_close(model.train()(x), expected_train, rtol=0, atol=0)


def test_score_counts_top1_top5_per_class_and_confusion():
    logits = torch.tensor([[3.0, 1, 0], [0, 2, 1], [0, 3, 1], [1, 0, 2]])
    labels = torch.tensor([0, 1, 2, 2])
    result = score(logits, labels, ["a", "b", "c"])
    assert result.top1 == 0.75 and result.top5 == 1.0
    assert result.confusion == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    assert result.per_class_accuracy == {"a": 1.0, "b": 1.0, "c": 0.5}


# -- runs ------------------------------------------------------------------------------------------------

# Small scratch runs for the mechanics: random init, 8x32x32 clips, every layer training.
SCRATCH_ARGS = [
    "--weights", "none", "--clip-frames", "8", "--short-side", "40", "--crop-size", "32", "--batch-size", "2",
    "--no-strict-tf-pooling", "--num-workers", "0", "--no-progress", "--lr", "0.01", "--log-every", "1",
]


def final_state(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model.safetensors"))


def test_resume_after_sigkill_reproduces_the_uninterrupted_run(small_videos, tmp_path, run_cli):
    args = [*SCRATCH_ARGS, "--data", small_videos, "--epochs", "5", "--checkpoint-every", "1",
            "--keep-checkpoints", "2"]
    straight = run_cli("finetune", *args, "--out", tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr

    # The same run, killed with SIGKILL as soon as its first checkpoint is on disk.
    killed_dir = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "i3d_torch", "finetune", *map(str, args), "--out", str(killed_dir)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ),
    )
    deadline = time.monotonic() + 300
    while not list((killed_dir / "checkpoints").glob("step-*.pt")) and process.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not (killed_dir / "model.safetensors").exists(), "the run finished before the kill: nothing was tested"
    checkpoints = sorted((killed_dir / "checkpoints").glob("step-*.pt"))
    last_step = load_checkpoint(checkpoints[-1])["step"]  # every checkpoint on disk is whole (atomic writes)
    assert 1 <= last_step < 10

    # Resumed with 2 decoding workers (the others use none): clips depend on (seed, epoch, index) only.
    resumed = run_cli("finetune", *args, "--out", killed_dir, "--resume", "--num-workers", "2")
    assert resumed.returncode == 0, resumed.stderr
    expected, got = final_state(tmp_path / "straight"), final_state(killed_dir)
    assert expected.keys() == got.keys()
    for key in expected:  # bitwise: same ops, same order, same random streams on CPU
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=lambda m: f"{key}: {m}")
    # The metrics log reads as one run: one line per step, no duplicates from the killed attempt.
    steps = [json.loads(line)["step"] for line in (killed_dir / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "train"]
    assert steps == list(range(1, 11))


def test_cli_errors_are_one_line_without_traceback(small_videos, tmp_path, run_cli):
    missing = run_cli("finetune", "--data", tmp_path / "nope", "--out", tmp_path / "run", "--weights", "none")
    assert missing.returncode == 1
    assert "Traceback" not in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    assert "nope: data set not found" in missing.stderr

    nothing = run_cli("finetune", *SCRATCH_ARGS, "--data", small_videos, "--out", tmp_path / "empty", "--resume")
    assert nothing.returncode == 1 and "nothing to resume" in nothing.stderr and "Traceback" not in nothing.stderr

    bad = run_cli("finetune", *SCRATCH_ARGS, "--data", small_videos, "--out", tmp_path / "r",
                  "--freeze-until", "Logits")
    assert bad.returncode == 2  # argparse rejects an endpoint past Mixed_5c

    # A damaged video decoded in a DataLoader worker: the worker's message, not its traceback.
    damaged = shutil.copytree(small_videos, tmp_path / "damaged")
    victim = next(damaged.glob("still/*.mp4"))
    victim.write_bytes(victim.read_bytes()[:300])
    broken = run_cli("finetune", *SCRATCH_ARGS, "--data", damaged, "--out", tmp_path / "b", "--num-workers", "1")
    assert broken.returncode == 1 and len(broken.stderr.strip().splitlines()) == 1
    assert f"error: {victim}: " in broken.stderr and "Traceback" not in broken.stderr


def test_finished_run_refuses_a_second_start_and_a_changed_resume(small_videos, tmp_path, run_cli):
    out = tmp_path / "run"
    args = [*SCRATCH_ARGS, "--data", small_videos, "--out", out, "--epochs", "1"]
    assert run_cli("finetune", *args).returncode == 0
    again = run_cli("finetune", *args)
    assert again.returncode == 1 and "already holds a run; pass --resume" in again.stderr
    changed = run_cli("finetune", *args, "--resume", "--lr", "0.5")
    assert changed.returncode == 1 and "--resume with different settings: lr: 0.01 -> 0.5" in changed.stderr


def test_tiny_real_finetune_learns_motion(tmp_path_factory):
    """Kinetics-400 weights, backbone frozen up to Mixed_4f, two classes that differ only in motion."""
    import i3d_torch
    from i3d_torch.weights.registry import load_model

    try:
        load_model("rgb_kinetics400", progress=False)
    except Exception as exc:  # offline machine without the converted weights
        pytest.skip(f"Kinetics-400 weights unavailable: {exc}")
    root = tmp_path_factory.mktemp("motion")
    make_dataset(root / "train", per_class=4, seed=0)
    make_dataset(root / "val", per_class=2, seed=1000)
    out = root / "run"
    result = i3d_torch.finetune(
        root / "train", out, val=root / "val", epochs=FINETUNE_EPOCHS, clip_frames=12, batch_size=4,
        short_side=64, crop_size=56, strict_tf_pooling=False, freeze_until="Mixed_4f", freeze_bn=True,
        lr=FINETUNE_LR, schedule="constant", dropout_keep_prob=1.0, num_workers=0, progress=False, log_every=1,
        eval_every=FINETUNE_EPOCHS,
    )
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "train_epoch"]
    vals = [r for r in records if r["kind"] == "val"]
    assert len(epochs) == FINETUNE_EPOCHS and len(vals) == 1  # validated once, after the last epoch
    assert np.mean([r["loss"] for r in epochs[-2:]]) < 0.5 * np.mean([r["loss"] for r in epochs[:2]])
    assert np.mean([r["accuracy"] for r in epochs[-2:]]) > np.mean([r["accuracy"] for r in epochs[:2]])
    assert vals[-1]["top1"] >= 0.75  # chance is 0.5
    assert result.final_eval is not None and result.final_eval.top1 == vals[-1]["top1"]

    for name in ("model.safetensors", "labels.txt", "config.json", "confusion_matrix.png", "confusion_matrix.json"):
        assert (out / name).is_file(), name
    assert (out / "labels.txt").read_text().splitlines() == ["moving", "still"]
    assert (out / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The saved model is the trained one, with its own labels, through the public loader.
    reloaded = load_model(out / "model.safetensors", strict_tf_pooling=False)
    assert reloaded.weights_info.categories == ["moving", "still"]
    clip = VideoClips(discover(root / "val"), 12, train=False, short_side=64, crop_size=56)[0][0][None]
    head = reloaded.Logits.Conv3d_0c_1x1.conv_3d.weight
    assert head.shape == (2, 1024, 1, 1, 1)
    with torch.no_grad():
        assert reloaded(clip).shape == (1, 2)


# Measured: with lr 1e-3 validation reached 100% after 5 epochs (10 steps); 2e-3 and a constant rate get
# there sooner, so that 7 epochs leave a margin.
FINETUNE_EPOCHS = 7
FINETUNE_LR = 2e-3


@pytest.mark.slow  # bf16 convolutions are slow on CPU: ~40 s for these two tiny steps
def test_bf16_accumulation_clipping_and_window_evaluation_run_end_to_end(small_videos, tmp_path):
    """The options that change the step itself, on CPU: bf16 autocast, 2 micro-batches a step, clipping,
    AdamW with cosine schedule, and validation averaging all windows of each video. (Batch statistics of
    one 4x32x32 clip have one value per channel at Mixed_5c, so BatchNorm is frozen.)"""
    import i3d_torch

    result = i3d_torch.finetune(
        small_videos, tmp_path / "run", val=small_videos, weights="none", clip_frames=4, short_side=40,
        crop_size=32, strict_tf_pooling=False, batch_size=1, accumulate=2, amp="bf16", clip_grad=1.0,
        optimizer="adamw", schedule="cosine", lr=1e-3, eval_windows="all", epochs=1, num_workers=0, freeze_bn=True,
        progress=False, log_every=1,
    )
    assert result.steps == 2  # 4 videos / (1 clip x 2 micro-batches)
    assert result.final_eval.num_videos == 4
    assert all(torch.isfinite(v).all() for v in result.model.state_dict().values() if v.is_floating_point())
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["global_batch_size"] == 2 and config["total_steps"] == 2


def test_finetuned_model_is_usable_by_predict(small_videos, tmp_path, run_cli):
    out = tmp_path / "run"
    assert run_cli("finetune", *SCRATCH_ARGS, "--data", small_videos, "--out", out, "--epochs", "1").returncode == 0
    video = next(small_videos.glob("moving/*.mp4"))
    predicted = run_cli(
        "predict", "--weights", out / "model.safetensors", "--json", "--top", "2", "--quiet",
        "--clip-frames", "9", "--short-side", "193", "--crop-size", "193", video,
    )
    assert predicted.returncode == 0, predicted.stderr
    assert {"moving", "still"} <= set(predicted.stdout.replace('"', " ").split())
