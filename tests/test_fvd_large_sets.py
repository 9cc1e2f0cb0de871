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
