"""Distributed fine-tuning: a real 2-process torchrun job over Gloo on CPU.

What must hold: both ranks end with identical weights (DDP keeps them in step), and the job equals a
single process that sees the same global batch. For the second property the two set-ups must compute the
same gradient, so the comparison removes what legitimately differs between them:

* dropout is off (keep-probability 1.0): masks are drawn per rank, so they cannot match one process's;
* BatchNorm uses fixed running statistics (``freeze_bn``).

Clips, crops and flips are a function of (seed, epoch, video index), and rank r takes items r, r+2, ... of
the same shuffled order, so each step's global batch is the same 2 videos in both set-ups. What remains
is floating-point summation order (DDP averages gradients across processes, one process averages over the
batch), hence a tolerance rather than bitwise equality.

Synchronised BatchNorm (``sync_bn``) over 2 ranks x 1 clip computes the batch statistics of one process's
batch of 2. It is checked where that is exact: the gradients of one step, in float64, against plain
BatchNorm on the whole batch. A multi-step float32 comparison of whole runs is not a usable test for it:
measured on this randomly initialised network with batch statistics over 2 clips, the float32 rounding
difference (our sums vs PyTorch's double accumulators) grows from ~1% of the update after one step to
the size of the update after two, while in float64 the two agree to 3e-6 after four steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from i3d_torch.apps.finetune import finetune

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_finetune import make_dataset  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

COMMON = dict(
    weights="none", clip_frames=8, short_side=64, crop_size=64, strict_tf_pooling=False, epochs=2,
    lr=0.01, dropout_keep_prob=1.0, num_workers=0, progress=False, log_every=1, seed=7,
)
# name -> options on top of COMMON
SETUPS = {"frozen_bn": {"freeze_bn": True}, "sync_bn": {"sync_bn": True}}

WORKER = textwrap.dedent(
    """
    import json, sys, torch
    import torch.nn.functional as F
    from i3d_torch.core.fileio import atomic_path
    from i3d_torch.apps.finetune import finetune
    import i3d_torch.pipeline.distributed as dist_env
    from i3d_torch.pipeline.distributed import convert_sync_batchnorm
    from test_finetune_distributed import sync_bn_problem

    torch.set_num_threads(1)
    data, out, setups, common = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
    # One process group for the whole worker: finetune() joins it instead of creating its own.
    with dist_env.process_group("cpu"):
        rank = dist_env.rank()
        for name, options in setups.items():
            result = finetune(data, f"{out}/{name}", batch_size=1, **common, **options)
            # Every rank's own copy, to check that the ranks agree (the product writes from rank 0 only).
            with atomic_path(f"{out}/{name}/rank{rank}.pt") as tmp:
                torch.save(result.model.state_dict(), tmp)

        # One float64 step of synchronised BatchNorm under DDP, clip r on rank r.
        model, clips, labels = sync_bn_problem()
        convert_sync_batchnorm(model).train()
        net = torch.nn.parallel.DistributedDataParallel(model)
        F.cross_entropy(net(clips[rank : rank + 1]), labels[rank : rank + 1]).backward()
        with atomic_path(f"{out}/sync_bn_grads_rank{rank}.pt") as tmp:
            torch.save({name: p.grad for name, p in model.named_parameters()}, tmp)
        dist_env.barrier()
    """
)


def sync_bn_problem():
    """A random-init I3D in float64 with random BatchNorm offsets, two clips and their labels."""
    from i3d_torch.core.model import InceptionI3d

    torch.manual_seed(0)
    model = InceptionI3d(num_classes=2, strict_tf_pooling=False).double()
    model.check_values = False
    for name, parameter in model.named_parameters():
        if name.endswith("batch_norm.bias"):
            parameter.data.normal_(0.0, 0.1)
    clips = torch.rand(2, 3, 8, 64, 64, dtype=torch.float64) * 2 - 1
    return model, clips, torch.tensor([0, 1])


@pytest.fixture(scope="module")
def two_process_job(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    data = make_dataset(root / "data", per_class=2, frames=10, size=64)
    (root / "worker.py").write_text(WORKER)
    job = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(root / "worker.py"), str(data), str(root / "runs"), json.dumps(SETUPS), json.dumps(COMMON)],
        capture_output=True, text=True, timeout=400, cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parent)},
    )
    assert job.returncode == 0, job.stderr[-3000:]
    return data, root / "runs"


def load_rank(run: Path, rank: int) -> dict:
    return torch.load(run / f"rank{rank}.pt", weights_only=True)


@pytest.mark.parametrize("setup", list(SETUPS))
def test_both_ranks_end_with_identical_weights(two_process_job, setup):
    _, runs = two_process_job
    rank0, rank1 = load_rank(runs / setup, 0), load_rank(runs / setup, 1)
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        torch.testing.assert_close(rank1[key], rank0[key], rtol=0, atol=0, msg=lambda m: f"{key}: {m}")
    # Training happened: the logits bias starts at zero.
    assert rank0["Logits.Conv3d_0c_1x1.conv_3d.bias"].abs().max() > 0


def test_two_processes_equal_one_process_with_the_same_global_batch(two_process_job, tmp_path):
    data, runs = two_process_job
    setup = "frozen_bn"
    single = finetune(data, tmp_path / setup, batch_size=2, **COMMON, **SETUPS[setup]).model.state_dict()
    job = load_rank(runs / setup, 0)
    config = json.loads((runs / setup / "config.json").read_text())
    assert config["world_size"] == 2 and config["global_batch_size"] == 2 and config["total_steps"] == 4
    for key, value in single.items():
        # float32 with 4 SGD steps: summation order differs (DDP's all-reduce vs a batch mean).
        torch.testing.assert_close(job[key], value, rtol=1e-4, atol=1e-5, msg=lambda m: f"{key}: {m}")


def test_only_rank_zero_writes_the_run(two_process_job):
    _, runs = two_process_job
    run = runs / "frozen_bn"
    lines = (run / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines if json.loads(line)["kind"] == "train"]
    assert steps == [1, 2, 3, 4]  # one line per step: rank 1 logged nothing
    assert (run / "model.safetensors").is_file() and (run / "labels.txt").is_file()


def test_sync_batchnorm_gradients_equal_plain_batchnorm_on_the_whole_batch(two_process_job):
    import torch.nn.functional as F

    _, runs = two_process_job
    model, clips, labels = sync_bn_problem()
    F.cross_entropy(model.train()(clips), labels).backward()
    rank0 = torch.load(runs / "sync_bn_grads_rank0.pt", weights_only=True)
    rank1 = torch.load(runs / "sync_bn_grads_rank1.pt", weights_only=True)
    for name, parameter in model.named_parameters():
        expected = parameter.grad
        torch.testing.assert_close(rank1[name], rank0[name], rtol=0, atol=0)
        # Relative to the tensor's largest gradient: BatchNorm offsets' gradients are sums that cancel.
        scale = float(expected.abs().max())
        torch.testing.assert_close(rank0[name], expected, rtol=1e-6, atol=1e-6 * scale, msg=lambda m: f"{name}: {m}")
