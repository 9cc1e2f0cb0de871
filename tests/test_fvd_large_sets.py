"""Large sets: a statistics run with a cache saves its progress and an interrupted run resumes where it stopped,
giving the statistics of an uninterrupted run; a finished run leaves no progress file behind."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from test_fvd import TinyEmbedder

from i3d_torch.apps.fvd import SmallSampleWarning, VideoSetStats, compute_stats
from i3d_torch.apps.fvd import api as fvd_api


class Interrupted(Exception):
    pass


class CountingEmbedder(TinyEmbedder):
    """TinyEmbedder that counts the videos it embeds and can stop (like Ctrl-C) after a number of them."""

    def __init__(self, stop_after=None):
        super().__init__()
        self.seen = 0
        self.stop_after = stop_after

    def forward(self, x):
        if self.stop_after is not None and self.seen + len(x) > self.stop_after:
            raise Interrupted
        self.seen += len(x)
        return super().forward(x)


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch):
    monkeypatch.setattr(fvd_api, "RESUME_EVERY", 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSampleWarning)
        yield


@pytest.mark.parametrize("protocol", ["tf", "cd-fvd"])
def test_an_interrupted_statistics_run_resumes_where_it_stopped(tmp_path, protocol):
    videos = np.random.default_rng(0).integers(0, 256, (11, 16, 12, 16, 3), dtype=np.uint8)
    cache = tmp_path / "stats.npz"
    with pytest.raises(Interrupted):
        compute_stats(videos, CountingEmbedder(stop_after=9), batch_size=2, cache=cache, protocol=protocol)
    partial = fvd_api.ResumeState.partial_path(cache)
    assert partial.exists() and not cache.exists()  # progress saved, no half-written cache
    resumed_model = CountingEmbedder()
    resumed = compute_stats(videos, resumed_model, batch_size=2, cache=cache, protocol=protocol)
    assert resumed_model.seen == 11 - 8  # two chunks of 4 were saved before the interruption
    assert not partial.exists() and cache.exists()
    whole = compute_stats(videos, TinyEmbedder(), batch_size=2, protocol=protocol)
    torch.testing.assert_close(resumed.embeddings, whole.embeddings, rtol=0, atol=1e-6)
    torch.testing.assert_close(VideoSetStats.load(cache).embeddings, whole.embeddings, rtol=0, atol=1e-6)


def test_progress_of_other_videos_or_another_protocol_is_not_resumed(tmp_path):
    rng = np.random.default_rng(1)
    videos = rng.integers(0, 256, (10, 16, 12, 16, 3), dtype=np.uint8)
    cache = tmp_path / "stats.npz"
    with pytest.raises(Interrupted):
        compute_stats(videos, CountingEmbedder(stop_after=5), batch_size=2, cache=cache)
    model = CountingEmbedder()
    compute_stats(videos, model, batch_size=2, cache=cache, protocol="videogpt")
    assert model.seen == 10  # the tf run's progress does not count for videogpt
    with pytest.raises(Interrupted):
        compute_stats(videos, CountingEmbedder(stop_after=5), batch_size=2, cache=tmp_path / "b.npz")
    other = videos.copy()
    other[0] //= 2
    model = CountingEmbedder()
    compute_stats(other, model, batch_size=2, cache=tmp_path / "b.npz")
    assert model.seen == 10  # other videos: started again


RANKED_SCRIPT = """
import sys, warnings
sys.path.insert(0, {tests!r})
import torch
from test_fvd_large_sets import CountingEmbedder, Interrupted
from i3d_torch.apps.fvd import SmallSampleWarning, compute_stats
from i3d_torch.apps.fvd import api as fvd_api
from i3d_torch.pipeline import distributed
warnings.simplefilter("ignore", SmallSampleWarning)
fvd_api.RESUME_EVERY = 2
with distributed.process_group("cpu"):
    model = CountingEmbedder(stop_after={stop_after})
    try:
        stats = compute_stats({source!r}, model, batch_size=1, cache={cache!r})
        print(f"rank {{distributed.rank()}} embedded {{model.seen}} of {{stats.n}}", flush=True)
    except Interrupted:  # like Ctrl-C on every rank; the barrier keeps torchrun from killing a slower rank early
        print(f"rank {{distributed.rank()}} interrupted after {{model.seen}}", flush=True)
        torch.distributed.barrier()
"""


def _torchrun_stats(tmp_path, source, cache, stop_after):
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "ranked.py"
    tests = str(Path(__file__).resolve().parent)
    script.write_text(RANKED_SCRIPT.format(tests=tests, source=str(source), cache=str(cache), stop_after=stop_after))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-port", str(29600 + os.getpid() % 1000), str(script)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.slow
def test_an_interrupted_run_under_torchrun_resumes_each_rank_where_it_stopped(tmp_path):
    from videogen import moving_shapes, write_video

    folder = tmp_path / "videos"
    for seed in range(10):  # 5 per rank: chunks of 2, 2, 1; interrupted in the third
        write_video(folder / f"clip{seed}.mkv", moving_shapes(9, 24, 32, seed=seed), fps=25)
    cache = tmp_path / "stats.npz"
    out = _torchrun_stats(tmp_path, folder, cache, stop_after=4)
    assert "rank 0 interrupted after 4" in out and "rank 1 interrupted after 4" in out
    progress = sorted(p.name for p in tmp_path.iterdir() if ".partial." in p.name)
    assert progress == ["stats.npz.partial.rank0of2.npz", "stats.npz.partial.rank1of2.npz"] and not cache.exists()

    out = _torchrun_stats(tmp_path, folder, cache, stop_after=None)
    assert "rank 0 embedded 1 of 10" in out and "rank 1 embedded 1 of 10" in out  # only the unsaved fifth video
    assert not [p for p in tmp_path.iterdir() if ".partial." in p.name]  # a finished run leaves no progress file
    whole = compute_stats(folder, TinyEmbedder(), batch_size=1)
    # another number of ranks cannot use these files (other shards); a finished run removes them all
    with pytest.raises(Interrupted):
        compute_stats(folder, CountingEmbedder(stop_after=5), batch_size=1, cache=tmp_path / "k.npz")
    (tmp_path / "k.npz.partial.rank1of2.npz").write_bytes(b"progress of an earlier run on 2 ranks")
    single = CountingEmbedder()
    compute_stats(folder, single, batch_size=1, cache=tmp_path / "k.npz")
    assert single.seen == 10 - 4  # its own progress (one chunk of RESUME_EVERY = 4) resumed, not the ranks'
    assert not [p for p in tmp_path.iterdir() if ".partial." in p.name]
    # Same rows in the same order; not bit-identical across processes and thread counts (see test_fvd's sharded
    # test), while rows of different videos are at least 0.1 apart, so a swapped or missing row still fails.
    np.testing.assert_allclose(VideoSetStats.load(cache).embeddings, whole.embeddings, rtol=0, atol=1e-5)
