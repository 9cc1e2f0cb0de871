"""features under torchrun: the sorted inputs are sharded over ranks, parts merged by rank 0, and the
result equals a single-process run (2 CPU processes over Gloo)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.testing import assert_close
from videogen import moving_shapes, write_video

from i3d_torch.apps.features import MANIFEST, read_records
from i3d_torch.core.model import InceptionI3d
from i3d_torch.pipeline import distributed
from i3d_torch.weights.registry import label_list, save_model

REPO = Path(__file__).resolve().parents[1]
SMALL_ARGS = ["--short-side", "32", "--crop-size", "32", "--clip-frames", "8", "--quiet"]


def test_shard_gives_every_item_to_exactly_one_rank_round_robin():
    items = list(range(10))
    shards = [distributed.shard(items, r, 3) for r in range(3)]
    assert shards == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert sorted(sum(shards, [])) == items
    with pytest.raises(ValueError, match="rank 3"):
        distributed.shard(items, 3, 3)


def test_single_process_defaults_without_torchrun(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert (distributed.rank(), distributed.world_size(), distributed.is_distributed()) == (0, 1, False)
    assert distributed.shard([1, 2, 3]) == [1, 2, 3]
    distributed.barrier()  # a no-op, must not hang
    with distributed.process_group("cpu") as active:
        assert active is False


def _npy_files(out: Path) -> dict:
    return {str(p.relative_to(out)): np.load(p) for p in sorted(out.rglob("*.npy"))}


@pytest.mark.slow
def test_two_rank_torchrun_equals_a_single_process_run(tmp_path, run_cli):
    torch.manual_seed(0)
    weights = tmp_path / "random_rgb.safetensors"
    save_model(InceptionI3d().eval(), weights, categories=label_list("kinetics400"), name="random_rgb", modality="rgb")
    videos = tmp_path / "videos"
    for i, count in enumerate([9, 12, 8, 10]):
        write_video(videos / f"clip{i}.mp4", moving_shapes(count, 40, 48, seed=i), 25)
    args = ["features", str(videos), "--weights", str(weights), *SMALL_ARGS]

    single = run_cli(*args, "--out", tmp_path / "single")
    assert single.returncode == 0, single.stderr
    multi = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "i3d_torch", *args, "--out", str(tmp_path / "multi")],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip
    assert multi.returncode == 0, multi.stderr

    # Each rank did its own half: rank r takes items r, r + 2 of the sorted list.
    assert "(rank 0 of 2): 2 extracted" in multi.stderr and "(rank 1 of 2): 2 extracted" in multi.stderr
    out = tmp_path / "multi"
    assert not list(out.glob("manifest.rank*.jsonl")), "rank parts must be merged and removed"
    records, torn = read_records(out / MANIFEST)
    assert torn == 0 and sorted(r["input"] for r in records) == [f"clip{i}.mp4" for i in range(4)]
    expected, actual = _npy_files(tmp_path / "single"), _npy_files(out)
    assert list(actual) == list(expected) and len(actual) == 8
    for name in expected:  # same CPU, same code path: equal up to thread-scheduling rounding
        assert_close(actual[name], expected[name], rtol=1e-5, atol=1e-6)
    single_records = {r["input"]: r for r in read_records(tmp_path / "single" / MANIFEST)[0]}
    for record in records:
        assert record == single_records[record["input"]]
