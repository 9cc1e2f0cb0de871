"""Windows batched across videos: short videos fill one forward pass together, every video's windows reach the
consumer before its end, ends come in input order, a failed video's waiting windows are dropped, and batched
results equal one-window-at-a-time results (``predict`` and ``features``) within float tolerance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from videogen import moving_shapes, write_video

from i3d_torch.apps.classify import classify_many
from i3d_torch.apps.features import MANIFEST, extract_features, read_records
from i3d_torch.core.errors import VideoError
from i3d_torch.core.transforms import rgb_to_model_input
from i3d_torch.pipeline import batches
from i3d_torch.pipeline.batches import VideoDone, VideoFailed, WindowBatch, produce_batches
from i3d_torch.pipeline.settings import ClipSettings
from i3d_torch.pipeline.windows import DenseWindowing, Windowing

#: 8-frame windows every 8 frames on 40x56 frames cropped to 32: the network's cost stays in milliseconds.
SETTINGS = ClipSettings(short_side=40, crop_size=32, windowing=Windowing(8, 8), min_frames={"rgb": 8})
#: Batched and one-window forward passes may sum in another order; random-init features are ~1e-6, so the
#: comparison is relative to the largest value.
RELATIVE_TOL = 1e-4


def frames(count: int, seed: int) -> np.ndarray:
    return moving_shapes(count, 40, 56, seed=seed)


def events_of(sources, batch_size: int):
    return list(produce_batches(sources, SETTINGS, rgb_to_model_input, batch_size))


def check_order(events) -> None:
    """Each video's windows come before its end, ends come in input order, nothing of a video after its end."""
    ended = []
    for event in events:
        if isinstance(event, WindowBatch):
            assert not set(event.videos) & set(ended), "a window arrived after its video ended"
            assert event.videos == sorted(event.videos), "a batch's windows are not in video order"
        else:
            ended.append(event.index)
    assert ended == sorted(ended)


def test_short_videos_fill_one_batch_across_their_boundaries():
    # 8, 16 and 8 frames: 1 + 2 + 1 windows of 8 frames, one batch of 4 instead of three small ones
    events = events_of([frames(8, 0), frames(16, 1), frames(8, 2)], batch_size=4)
    check_order(events)
    batch = [e for e in events if isinstance(e, WindowBatch)]
    assert len(batch) == 1
    assert batch[0].videos == [0, 1, 1, 2]
    assert batch[0].spans == [(0, 8), (0, 8), (8, 16), (0, 8)]
    assert [(index, (rows.start, rows.stop)) for index, rows in batch[0].by_video()] == [(0, (0, 1)), (1, (1, 3)),
                                                                                        (2, (3, 4))]  # fmt: skip
    assert batch[0].inputs["rgb"].shape == (4, 3, 8, 32, 32)
    assert [type(e) for e in events[1:]] == [VideoDone] * 3


def test_batch_size_one_gives_one_window_per_batch_in_order():
    events = events_of([frames(16, 0), frames(8, 1)], batch_size=1)
    check_order(events)
    assert [e.videos if isinstance(e, WindowBatch) else e.index for e in events] == [[0], [0], 0, [1], 1]


def test_a_shape_change_closes_the_batch():
    # a 4-frame video is looped to 8 frames (same shape); one of 12 frames makes an 8- and a last 8-frame window,
    # all 8 frames; frames of another size make another input shape and so another batch
    other = moving_shapes(8, 48, 64, seed=3)  # 48x64 frames: the centre crop is still 32x32, so use "full"
    settings = ClipSettings(short_side=40, crop="full", windowing=Windowing(8, 8), min_frames={"rgb": 8})
    events = list(produce_batches([frames(8, 0), other, frames(8, 1)], settings, rgb_to_model_input, 8))
    check_order(events)
    shapes = [tuple(e.inputs["rgb"].shape) for e in events if isinstance(e, WindowBatch)]
    assert shapes == [(1, 3, 8, 40, 56), (1, 3, 8, 48, 64), (1, 3, 8, 40, 56)]


def test_a_video_failing_midway_drops_its_waiting_windows_and_ends_in_order(monkeypatch):
    real = batches._frames_of

    def breaks_after_16(source, settings, report=None):
        if len(source) == 40:  # the second source: two good windows, then a decoding error
            yield from source[:16]
            raise VideoError("corrupt packet at frame 16", "broken.mp4")
        yield from real(source, settings, report)

    monkeypatch.setattr(batches, "_frames_of", breaks_after_16)
    events = events_of([frames(8, 0), frames(40, 1), frames(8, 2)], batch_size=8)
    check_order(events)
    assert [e.videos for e in events if isinstance(e, WindowBatch)] == [[0, 2]]
    ends = [e for e in events if not isinstance(e, WindowBatch)]
    assert [(type(e), e.index) for e in ends] == [(VideoDone, 0), (VideoFailed, 1), (VideoDone, 2)]
    assert "corrupt packet" in str(ends[1].error)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """Five real encoded clips of 8 to 24 frames (one to three 8-frame windows each) and one broken file."""
    folder = tmp_path_factory.mktemp("clips")
    for i, count in enumerate([8, 24, 12, 16, 8]):
        write_video(folder / f"v{i}.mkv", frames(count, seed=i), 25, codec="ffv1")
    (folder / "v5_broken.mp4").write_bytes(b"not a video at all" * 10)
    return folder


def test_features_batched_across_videos_equal_one_window_at_a_time(clips, rgb_weights, tmp_path):
    options = dict(weights=rgb_weights, short_side=40, crop_size=32, clip_frames=8, stride=8)
    one = extract_features(clips, tmp_path / "one", batch_size=1, **options)
    many = extract_features(clips, tmp_path / "many", batch_size=5, **options)
    assert (one.done, one.failed) == (many.done, many.failed) == (5, 1)
    records = {r["input"]: r for r in read_records(tmp_path / "many" / MANIFEST)[0]}
    expected = {r["input"]: r for r in read_records(tmp_path / "one" / MANIFEST)[0]}
    assert records["v5_broken.mp4"]["status"] == "error"
    for i, windows in enumerate([1, 3, 2, 2, 1]):
        a = np.load(tmp_path / "one" / f"v{i}.mkv.windows.npy")
        b = np.load(tmp_path / "many" / f"v{i}.mkv.windows.npy")
        assert a.shape == b.shape == (windows, 1024)
        assert np.abs(a - b).max() <= RELATIVE_TOL * np.abs(a).max()
        assert records[f"v{i}.mkv"]["windows"] == expected[f"v{i}.mkv"]["windows"]
        assert records[f"v{i}.mkv"]["windows"][0] == [0, 8]


def test_predict_batched_across_videos_equals_one_window_at_a_time(clips, rgb_weights):
    sources = sorted(clips.iterdir())
    options = dict(weights=rgb_weights, short_side=224, crop_size=224, clip_frames=8, stride=8)
    one = dict(classify_many(sources, batch_size=1, **options))
    many = dict(classify_many(sources, batch_size=4, **options))
    assert list(many) == list(range(len(sources)))  # results in input order
    assert isinstance(many[5], VideoError) and "v5_broken" in str(many[5])
    for index in range(5):
        a, b = one[index], many[index]
        assert [(w.start, w.end) for w in a.windows] == [(w.start, w.end) for w in b.windows]
        torch.testing.assert_close(torch.from_numpy(b.logits), torch.from_numpy(a.logits), rtol=0, atol=2e-5)
        assert b.timing.model_s > 0


# -- the decoding thread computes with numpy ---------------------------------------------------------------


def test_numpy_input_maps_to_the_model_range_bit_for_bit_as_torch_input():
    from i3d_torch.core.transforms import flow_to_model_input

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (2, 5, 9, 11, 3), dtype=np.uint8)  # odd sizes: no vector-width luck
    unit = rng.random((5, 9, 11, 3))  # float64 in [0, 1]
    flow = (rng.standard_normal((4, 9, 11, 2)) * 30).astype(np.float32)  # beyond the +-20 clip
    flow[0, 0, 0, 0] = np.nan
    cases = [
        (rgb_to_model_input, (pixels,)),
        (lambda x: rgb_to_model_input(x, "unit"), (unit,)),
        (flow_to_model_input, (flow,)),
    ]
    for convert, (array,) in cases:
        from_numpy, from_torch = convert(array), convert(torch.from_numpy(array))
        assert from_numpy.dtype == from_torch.dtype == torch.float32 and from_numpy.is_contiguous()
        assert from_numpy.shape == from_torch.shape
        assert torch.equal(from_numpy.nan_to_num(7.0), from_torch.nan_to_num(7.0))  # bit for bit, NaN kept
    assert torch.isnan(flow_to_model_input(flow)).sum() == 1


def test_the_decoding_thread_makes_batches_without_torch_compute(monkeypatch):
    # torch ops in the decoding thread start a second OpenMP team competing with the model's (1.3x slower end
    # to end on 2 cores): every tensor the pipeline hands over must come from numpy, so any torch op that would
    # compute here fails this test
    def forbidden(*args, **kwargs):
        raise AssertionError("a torch op ran in the decoding pipeline")

    for name in ("cat", "stack", "zeros", "arange", "clamp"):
        monkeypatch.setattr(torch, name, forbidden)
    monkeypatch.setattr(torch.Tensor, "float", forbidden)
    monkeypatch.setattr(torch.Tensor, "contiguous", forbidden)
    settings = ClipSettings(short_side=40, crop="ten", crop_size=32, windowing=Windowing(8, 8),
                            streams=("rgb", "flow"), min_frames={"rgb": 8, "flow": 8})  # fmt: skip
    events = list(produce_batches([frames(12, 0), frames(4, 1)], settings, rgb_to_model_input, 3))
    check_order(events)
    batch = [e for e in events if isinstance(e, WindowBatch)]
    assert [e.inputs["rgb"].shape[0] for e in batch] == [30]  # 3 windows of 10 crops, across the two videos
    assert batch[0].inputs["flow"].shape == (30, 2, 8, 32, 32)
    for pad in ("edge", "zeros"):  # dense windows padded at both ends of the video
        dense = ClipSettings(short_side=40, crop_size=32, windowing=DenseWindowing(8, 4, centre=True, pad=pad),
                             streams=("rgb", "flow"), min_frames={"rgb": 8, "flow": 8})  # fmt: skip
        events = list(produce_batches([frames(10, 2)], dense, rgb_to_model_input, 2))
        assert [e.inputs["rgb"].shape for e in events if isinstance(e, WindowBatch)] == [(2, 3, 8, 32, 32)] + [
            (1, 3, 8, 32, 32)
        ]
