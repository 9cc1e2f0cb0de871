"""The streaming FVD metric (i3d_torch.apps.fvd.metric.FrechetVideoDistance): equal to the batch fvd(), constant
memory, reset semantics, KVD only when asked, torchrun/gloo ranks equal one process, and its refusals.

The embedding network is test_fvd's TinyEmbedder: the metric's bookkeeping, not I3D, is under test here (the
batch fvd() it is compared with is itself checked against TensorFlow in test_fvd.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("torchmetrics")

from test_fvd import TinyEmbedder  # noqa: E402

from i3d_torch.apps.fvd import SmallSampleWarning, fvd, kernel_distance  # noqa: E402
from i3d_torch.apps.fvd.metric import FrechetVideoDistance  # noqa: E402
from i3d_torch.core.errors import InputError  # noqa: E402

RTOL = 1e-6  # the bound: the metric equals the batch fvd() within 1e-6 relative


@pytest.fixture(autouse=True)
def _quiet_small_sets():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSampleWarning)
        yield


def _sets(n=14, frames=10, seed=0):
    rng = np.random.default_rng(seed)
    real = rng.integers(0, 256, (n, frames, 20, 24, 3), dtype=np.uint8)
    noise = rng.integers(-50, 50, real.shape)
    fake = np.clip(real.astype(np.int64) + noise, 0, 255).astype(np.uint8)
    return real, fake


def _streamed(real, fake, chunk=4, **options):
    metric = FrechetVideoDistance(TinyEmbedder(), **options)
    for start in range(0, len(real), chunk):
        metric.update(torch.from_numpy(real[start : start + chunk]), real=True)
    for start in range(0, len(fake), chunk):
        metric.update(torch.from_numpy(fake[start : start + chunk]), real=False)
    return metric


@pytest.mark.parametrize("protocol", ["tf", "stylegan-v", "videogpt", "cd-fvd"])
def test_streaming_metric_equals_batch_fvd(protocol):
    real, fake = _sets(frames=16)
    expected = fvd(real, fake, model=TinyEmbedder(), protocol=protocol).fvd
    value = _streamed(real, fake, chunk=3, protocol=protocol).compute()
    assert value.dtype == torch.float64
    torch.testing.assert_close(value.item(), expected, rtol=RTOL, atol=0)


def test_uint8_float_and_channels_first_inputs_give_the_same_value():
    real, fake = _sets()
    from_uint8 = _streamed(real, fake).compute().item()
    from_float = _streamed(real.astype(np.float32) / 255, fake.astype(np.float32) / 255).compute().item()
    ncthw = FrechetVideoDistance(TinyEmbedder(), channels_first=True)
    ncthw.update(torch.from_numpy(real).permute(0, 4, 1, 2, 3), real=True)
    ncthw.update(torch.from_numpy(fake).permute(0, 4, 1, 2, 3), real=False)
    # uint8 -> float and float*255 differ by float32 rounding in the resize only.
    torch.testing.assert_close(from_float, from_uint8, rtol=1e-5, atol=0)
    torch.testing.assert_close(ncthw.compute().item(), from_uint8, rtol=RTOL, atol=0)


def test_state_size_does_not_grow_with_the_number_of_videos():
    real, fake = _sets(n=6)
    metric = FrechetVideoDistance(TinyEmbedder())
    sizes = []
    for _ in range(4):
        metric.update(torch.from_numpy(real), real=True)
        metric.update(torch.from_numpy(fake), real=False)
        sizes.append(sum(v.numel() for k, v in metric.metric_state.items()))
    assert len(set(sizes)) == 1 and sizes[0] == 2 * (1 + 8 + 8 * 8)
    assert all(v.dtype == torch.float64 for v in metric.metric_state.values())


def test_reset_forgets_both_sets_unless_real_features_are_kept():
    real, fake = _sets()
    _, other_fake = _sets(seed=5)
    keeping = _streamed(real, fake, reset_real_features=False)
    keeping.reset()
    assert keeping.fake_n.item() == 0 and keeping.real_n.item() == len(real)
    keeping.update(torch.from_numpy(other_fake), real=False)
    fresh = _streamed(real, other_fake)
    torch.testing.assert_close(keeping.compute().item(), fresh.compute().item(), rtol=RTOL, atol=0)
    forgetting = _streamed(real, fake)
    forgetting.reset()
    assert forgetting.real_n.item() == 0 and forgetting.fake_n.item() == 0


def test_kvd_keeps_embeddings_only_when_asked_and_equals_the_batch_kernel_distance():
    real, fake = _sets()
    plain = _streamed(real, fake)
    assert not any("embeddings" in name for name in plain.metric_state)
    with_kvd = _streamed(real, fake, kvd=True)
    out = with_kvd.compute()
    batch = fvd(real, fake, model=TinyEmbedder(), kvd=True)
    torch.testing.assert_close(out["fvd"].item(), batch.fvd, rtol=RTOL, atol=0)
    torch.testing.assert_close(out["kvd"].item(), batch.kvd, rtol=1e-6, atol=1e-9)
    rows = torch.cat(with_kvd.real_embeddings).double().numpy()
    assert rows.shape == (len(real), 8)
    torch.testing.assert_close(kernel_distance(rows, torch.cat(with_kvd.fake_embeddings).numpy())[0], batch.kvd)


def test_protocol_info_names_the_protocol_and_its_hash():
    metric = FrechetVideoDistance(TinyEmbedder(), protocol="stylegan-v")
    from i3d_torch.apps.fvd.protocols import PROTOCOLS

    assert metric.protocol_info == {"protocol": "stylegan-v", "protocol_hash": PROTOCOLS["stylegan-v"].spec_hash}


@pytest.mark.parametrize(
    "videos,message",
    [
        (torch.zeros(3, 10, 8, 8, 3, dtype=torch.int16), "neither uint8"),
        (torch.full((3, 10, 8, 8, 3), 2.0), "float frames must be in"),
        (torch.full((3, 10, 8, 8, 3), -0.5), "float frames must be in"),
        (torch.full((3, 10, 8, 8, 3), float("nan")), "NaN"),
        (torch.zeros(10, 8, 8, 3, dtype=torch.uint8), "one video"),
        (torch.zeros(3, 10, 3, 8, 8, dtype=torch.uint8), "channels look first"),
        (torch.zeros(0, 10, 8, 8, 3, dtype=torch.uint8), "empty update"),
        ([], "empty update"),
        ([torch.zeros(10, 8, 8, 3, dtype=torch.uint8), torch.zeros(12, 8, 8, 3, dtype=torch.uint8)], "mixed frame"),
        (torch.zeros(3, 8, 8, 8, 3, dtype=torch.uint8), "at least 9"),
    ],
)
def test_bad_updates_are_refused_with_the_problem_named(videos, message):
    metric = FrechetVideoDistance(TinyEmbedder())
    with pytest.raises(InputError, match=message):
        metric.update(videos, real=True)
    assert metric.real_n.item() == 0  # nothing half-added


def test_a_later_update_with_another_clip_length_is_refused():
    metric = FrechetVideoDistance(TinyEmbedder())
    metric.update(torch.zeros(2, 10, 8, 8, 3, dtype=torch.uint8), real=True)
    with pytest.raises(InputError, match="12 frames, earlier updates had 10"):
        metric.update(torch.zeros(2, 12, 8, 8, 3, dtype=torch.uint8), real=False)


def test_compute_before_updates_or_with_one_video_is_refused():
    metric = FrechetVideoDistance(TinyEmbedder())
    with pytest.raises(InputError, match="before any update of the real set"):
        metric.compute()
    real, fake = _sets(n=3)
    metric.update(torch.from_numpy(real), real=True)
    metric.update(torch.from_numpy(fake[:1]), real=False)
    with pytest.raises(InputError, match="fake set: 1 video"):
        metric.compute()


def test_unknown_protocol_is_refused_with_the_known_names():
    with pytest.raises(InputError, match="unknown FVD protocol 'fvd2048'.*stylegan-v"):
        FrechetVideoDistance(TinyEmbedder(), protocol="fvd2048")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_tensors_stream_on_the_gpu_and_equal_the_cpu_value():
    real, fake = _sets()
    metric = FrechetVideoDistance(TinyEmbedder()).to("cuda")
    metric.update(torch.from_numpy(real).cuda(), real=True)
    metric.update(torch.from_numpy(fake).cuda(), real=False)
    assert metric.real_sum.device.type == "cuda"
    torch.testing.assert_close(metric.compute().item(), _streamed(real, fake).compute().item(), rtol=1e-5, atol=0)


def test_lightning_logs_the_metric_from_a_validation_loop():
    lightning = pytest.importorskip("lightning", reason="lightning is not installed (not a dependency)")
    real, fake = _sets()

    class Module(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.fvd = FrechetVideoDistance(TinyEmbedder())

        def validation_step(self, batch, _):
            self.fvd.update(batch[0], real=True)
            self.fvd.update(batch[1], real=False)

        def on_validation_epoch_end(self):
            self.log("fvd", self.fvd.compute())
            self.fvd.reset()

    # One dataloader of (real, fake) batches (a plain list would be taken as several dataloaders).
    data = torch.utils.data.DataLoader(
        list(zip(torch.from_numpy(real).split(7), torch.from_numpy(fake).split(7))), batch_size=None
    )
    trainer = lightning.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False)
    out = trainer.validate(Module(), data, verbose=False)
    torch.testing.assert_close(out[0]["fvd"], float(_streamed(real, fake).compute()), rtol=1e-6, atol=0)


# -----------------------------------------------------------------------------------------------------------
# torchrun: two gloo ranks, each updating its half, equal one process
# -----------------------------------------------------------------------------------------------------------

RANKS_SCRIPT = """
import sys, warnings
sys.path.insert(0, {tests!r})
import numpy as np, torch, torch.distributed as dist
from test_fvd import TinyEmbedder
from i3d_torch.apps.fvd import SmallSampleWarning
from i3d_torch.apps.fvd.metric import FrechetVideoDistance
warnings.simplefilter("ignore", SmallSampleWarning)
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
real, fake = np.load({real!r}), np.load({fake!r})
metric = FrechetVideoDistance(TinyEmbedder())
for start in range(rank * 2, len(real), 2 * world):  # rank r takes videos of chunks r, r + K, ...
    metric.update(torch.from_numpy(real[start:start + 2]), real=True)
    metric.update(torch.from_numpy(fake[start:start + 2]), real=False)
value = metric.compute().item()
print(f"rank {{rank}} fvd={{value!r}};", flush=True)
dist.destroy_process_group()
"""


def test_two_gloo_ranks_equal_one_process(tmp_path):
    real, fake = _sets(n=13)
    np.save(tmp_path / "real.npy", real)
    np.save(tmp_path / "fake.npy", fake)
    script = tmp_path / "ranks.py"
    tests = str(Path(__file__).resolve().parent)
    paths = {"real": str(tmp_path / "real.npy"), "fake": str(tmp_path / "fake.npy")}
    script.write_text(RANKS_SCRIPT.format(tests=tests, **paths))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-port", str(30500 + os.getpid() % 1000), str(script)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    values = [float(v) for v in re.findall(r"fvd=([^;]+);", run.stdout)]  # the ranks' lines can interleave
    assert len(values) == 2
    single = _streamed(real, fake, chunk=2).compute().item()
    for value in values:  # both ranks get the summed states, hence the one-process value
        torch.testing.assert_close(value, single, rtol=RTOL, atol=0)


@pytest.mark.slow
def test_the_docs_streaming_example_runs(rgb_model, capsys):
    """The Python example of docs/fvd.md's "In a training loop" section, as written (real weights)."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "fvd.md").read_text()
    section = text.split("## In a training loop", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(code, "docs/fvd.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "'protocol': 'tf'" in printed and "protocol_hash" in printed
