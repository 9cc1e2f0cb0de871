"""The CPU engine as a backend: applied from outside, it keeps the model's parameters, names, copies and
training, agrees with the plain modules in inference, is switched by a scoped context manager, and leaves
malloc alone unless asked.

Every comparison is against the plain modules (conv, BatchNorm, ReLU) of the same weights, whose TF parity is
proven elsewhere. Bound: the project's 1e-4 on outputs. Measured: endpoints 3e-7 to 3.6e-6 of peaks 0.9-2.2
and logits 6e-8 (peak 0.4) on these random models; logits 4.8e-6 to 8.6e-6 (peak 17) on the TF reference's
random weights; Winograd's extra rounding included.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import platform
import subprocess
import sys

import pytest
import torch
from models import random_clip as clip
from models import random_model

from i3d_torch.backends import cpu
from i3d_torch.backends.cpu import CpuMaxPool3dSame, CpuUnit3D
from i3d_torch.core.model import MaxPool3dSame, Unit3D
from i3d_torch.weights.registry import load_model, save_model

ATOL = 1e-4

needs_engine = pytest.mark.skipif(not cpu.is_available(), reason="this PyTorch build has no oneDNN fused convolution")




def units(model):
    return [m for m in model.modules() if isinstance(m, Unit3D)]


def plain_output(model, x):
    with cpu.flags(enabled=False), torch.inference_mode():
        return model(x)


# -- applied from outside ---------------------------------------------------------------------------


def test_optimize_swaps_units_and_branch_pools_only_and_is_idempotent():
    model = random_model("Mixed_3c")
    before = dict(model.named_modules())
    assert cpu.optimize(model) is model and cpu.is_optimized(model)
    after = dict(model.named_modules())
    assert list(after) == list(before)
    swapped = {name for name in after if after[name] is not before[name]}
    assert swapped == {n for n, m in before.items() if isinstance(m, Unit3D)} | {
        n for n, m in before.items() if isinstance(m, MaxPool3dSame) and m.stride == (1, 1, 1)
    }
    assert all(isinstance(after[n], (CpuUnit3D, CpuMaxPool3dSame)) for n in swapped)
    assert type(after["MaxPool3d_2a_3x3"]) is MaxPool3dSame  # strided pools stay as they are
    again = dict(cpu.optimize(model).named_modules())
    assert all(again[name] is after[name] for name in after)


def test_optimize_keeps_state_dict_keys_and_the_very_same_parameters():
    model = random_model()
    keys = list(model.state_dict())
    tensors = list(model.parameters()) + list(model.buffers())
    cpu.optimize(model)
    with torch.inference_mode():
        model(clip((1, 3, 9, 193, 193)))
    assert list(model.state_dict()) == keys
    assert all(a is b for a, b in zip(list(model.parameters()) + list(model.buffers()), tensors))


@needs_engine
def test_optimized_model_survives_deepcopy_and_pickle_after_inference():
    model = cpu.optimize(random_model("Mixed_4b"))
    x = clip((1, 3, 16, 64, 64))
    with torch.inference_mode():
        expected = model(x)
    assert cpu.plan_kind(model.Conv3d_1a_7x7) is not None
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert isinstance(twin.Conv3d_1a_7x7, CpuUnit3D)
        assert cpu.plan_kind(twin.Conv3d_1a_7x7) is None  # plans stay outside the module: not copied
        with torch.inference_mode():
            torch.testing.assert_close(twin(x), expected, rtol=0, atol=0)
        assert cpu.plan_kind(twin.Conv3d_1a_7x7) is not None


def test_training_gives_the_plain_model_gradients_exactly():
    plain = random_model("Mixed_3b").train()
    optimized = cpu.optimize(copy.deepcopy(plain))
    x = clip((2, 3, 8, 32, 32))
    for model in (plain, optimized):
        model(x).square().mean().backward()
    grads = dict(optimized.named_parameters())
    for name, parameter in plain.named_parameters():
        torch.testing.assert_close(grads[name].grad, parameter.grad, rtol=0, atol=0, msg=name)
    for name, buffer in plain.named_buffers():  # BatchNorm's running statistics moved alike
        torch.testing.assert_close(dict(optimized.named_buffers())[name], buffer, rtol=0, atol=0, msg=name)
    assert all(cpu.plan_kind(unit) is None for unit in units(optimized)), "the engine ran in training"


def test_eval_with_autograd_runs_the_plain_modules():
    plain = random_model("Mixed_3b")
    optimized = cpu.optimize(copy.deepcopy(plain))
    x = clip((1, 3, 8, 32, 32))
    torch.testing.assert_close(optimized(x), plain(x), rtol=0, atol=0)
    assert all(cpu.plan_kind(unit) is None for unit in units(optimized))


def test_other_dtypes_run_the_plain_modules():
    plain = random_model("Mixed_3b").double()
    optimized = cpu.optimize(copy.deepcopy(plain))
    x = clip((1, 3, 8, 32, 32)).double()
    with torch.inference_mode():
        torch.testing.assert_close(optimized(x), plain(x), rtol=0, atol=0)
    assert all(cpu.plan_kind(unit) is None for unit in units(optimized))


# -- inference agrees with the plain modules ---------------------------------------------------------


@needs_engine
def test_optimized_logits_agree_with_the_plain_model_and_the_engine_ran():
    plain = random_model()
    optimized = cpu.optimize(copy.deepcopy(plain))
    x = clip((1, 3, 32, 224, 224))
    with torch.inference_mode():
        expected = plain(x)
        got = optimized(x)
    assert all(cpu.plan_kind(unit) is not None for unit in units(optimized)), "some unit took the plain modules"
    assert cpu.plan_kind(optimized.Mixed_3b.Branch_1.Conv3d_0b_3x3) == "winograd"
    torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)


@needs_engine
@pytest.mark.parametrize("shape", [(1, 3, 8, 64, 64), (2, 3, 7, 45, 51)])
def test_engine_matches_plain_modules_on_every_endpoint(shape):
    model = cpu.optimize(random_model("Mixed_5c"))
    x = clip(shape)
    names = ["Conv3d_1a_7x7", "MaxPool3d_3a_3x3", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4f", "Mixed_5c"]
    with cpu.flags(enabled=False), torch.inference_mode():
        expected = model.extract_endpoints(x, names)
    assert cpu.plan_kind(model.Conv3d_1a_7x7) is None
    with torch.inference_mode():
        got = model.extract_endpoints(x, names)
    assert cpu.plan_kind(model.Conv3d_1a_7x7) is not None
    for name in names:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=ATOL, msg=name)
        assert got[name].is_contiguous(), f"{name} is handed out in a non-default memory layout"


@needs_engine
def test_fused_model_runs_on_the_engine_too():
    model = cpu.optimize(random_model(strict_tf_pooling=False))
    x = clip((1, 3, 16, 64, 64))
    expected = plain_output(model, x)
    fused = copy.deepcopy(model).fuse()
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), expected, rtol=0, atol=ATOL)
    assert cpu.plan_kind(fused.Conv3d_1a_7x7) is not None


@needs_engine
def test_plans_follow_in_place_parameter_changes():
    model = cpu.optimize(random_model("Mixed_3b"))
    x = clip((1, 3, 4, 32, 32))
    with torch.inference_mode():
        before = model(x)
    with torch.no_grad():  # what an optimizer step or load_state_dict does: in-place updates
        model.Conv3d_1a_7x7.conv_3d.weight.mul_(1.5)
        model.Mixed_3b.Branch_0.Conv3d_0a_1x1.batch_norm.running_mean.add_(0.25)
    with torch.inference_mode():
        after = model(x)
    assert (after - before).abs().max() > 1e-2, "the cached folded weights went stale"
    torch.testing.assert_close(after, plain_output(model, x), rtol=0, atol=ATOL)


@needs_engine
def test_model_built_under_inference_mode_follows_in_place_changes_too():
    # Parameters created under inference_mode have no version counter; the engine must not cache stale weights.
    x = clip((1, 3, 4, 32, 32))
    with torch.inference_mode():
        model = cpu.optimize(random_model("Mixed_3b").to(torch.float64).to(torch.float32))
        assert model.Conv3d_1a_7x7.conv_3d.weight.is_inference()
        before = model(x)
        model.Conv3d_1a_7x7.conv_3d.weight.mul_(1.5)
        after = model(x)
    assert (after - before).abs().max() > 1e-2
    torch.testing.assert_close(after, plain_output(model, x), rtol=0, atol=ATOL)


# -- working memory kept per model -----------------------------------------------------------------


@needs_engine
def test_winograd_working_memory_is_kept_per_model_and_gives_the_same_result():
    model = cpu.optimize(random_model("Mixed_3c"))
    x = clip((1, 3, 16, 64, 64))
    assert cpu.scratch_nbytes(model) == 0
    with torch.inference_mode():
        first = model(x)
        kept = cpu.scratch_nbytes(model)
        second = model(x)
    assert kept > 0 and cpu.scratch_nbytes(model) == kept
    twin = copy.deepcopy(model)  # no scratch: its Winograd buffers come from malloc on every call
    assert cpu.scratch_nbytes(twin) == 0
    with torch.inference_mode():
        from_malloc = twin(x)
    assert cpu.scratch_nbytes(twin) == 0
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    torch.testing.assert_close(from_malloc, first, rtol=0, atol=0)
    cpu.optimize(twin)
    with torch.inference_mode():
        twin(x)
    assert cpu.scratch_nbytes(twin) == kept
    cpu.release_scratch(model)
    assert cpu.scratch_nbytes(model) == 0


@needs_engine
def test_kept_working_memory_serves_inference_mode_then_no_grad():
    # The first forward under torch.inference_mode() must not leave an inference tensor behind that a later
    # forward under torch.no_grad() (also the engine's path) would have to write in place.
    model = cpu.optimize(random_model("Mixed_3c"))
    x = clip((1, 3, 16, 64, 64))
    with torch.inference_mode():
        first = model(x)
    with torch.no_grad():
        second = model(x)
    assert cpu.scratch_nbytes(model) > 0
    torch.testing.assert_close(second, first, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_autocast_runs_the_plain_modules_with_its_casts(dtype):
    # Under torch.autocast("cpu") the convolutions must see autocast's casts; the fused float32 engine would
    # receive a reduced-precision input and fail ("Input type ... should be the same").
    model = cpu.optimize(random_model("Mixed_3c"))
    x = clip((1, 3, 8, 64, 64))
    with torch.inference_mode():
        expected = model(x)
        with torch.autocast("cpu", dtype=dtype):
            got = model(x)
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), expected, rtol=0.05, atol=0.05 * float(expected.abs().max()))


@needs_engine
def test_threads_sharing_one_model_get_correct_results():
    import threading

    model = cpu.optimize(random_model("Mixed_3b"))
    clips = [clip((1, 3, 16, 48, 48), seed=seed) for seed in range(4)]
    expected = [plain_output(model, x) for x in clips]
    results = {}

    def run(index):
        with torch.inference_mode():
            for _ in range(3):
                results[index] = model(clips[index])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, want in enumerate(expected):
        torch.testing.assert_close(results[index], want, rtol=0, atol=ATOL)


# -- switches ---------------------------------------------------------------------------------------


def test_flags_set_the_switches_for_the_block_and_restore_them():
    enabled, winograd = cpu.is_enabled(), cpu.winograd_enabled()
    assert enabled == cpu.is_available() and winograd
    with cpu.flags(enabled=False):
        assert not cpu.is_enabled() and cpu.winograd_enabled() == winograd
        with cpu.flags(winograd=False):
            assert not cpu.is_enabled() and not cpu.winograd_enabled()
        assert cpu.winograd_enabled() == winograd
    assert (cpu.is_enabled(), cpu.winograd_enabled()) == (enabled, winograd)
    with pytest.raises(KeyError), cpu.flags(enabled=False, winograd=False):
        raise KeyError("restored on the way out of an error too")
    assert (cpu.is_enabled(), cpu.winograd_enabled()) == (enabled, winograd)


@needs_engine
def test_winograd_flag_chooses_the_direct_convolution():
    model = cpu.optimize(random_model("Conv3d_2c_3x3"))
    x = clip((1, 3, 16, 32, 32))
    with cpu.flags(winograd=False), torch.inference_mode():
        direct = model(x)
    assert cpu.plan_kind(model.Conv3d_2c_3x3) == "direct"
    with torch.inference_mode():
        winograd = model(x)
    assert cpu.plan_kind(model.Conv3d_2c_3x3) == "winograd"
    torch.testing.assert_close(winograd, direct, rtol=0, atol=ATOL)


def test_enabling_the_engine_without_onednn_is_an_error(monkeypatch):
    monkeypatch.setattr(cpu.switches, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no oneDNN"), cpu.flags(enabled=True):
        pass


# -- the default builder ----------------------------------------------------------------------------


def test_load_model_applies_the_engine_unless_asked_not_to(tmp_path):
    model = random_model(num_classes=3)
    path = save_model(model, tmp_path / "tiny.safetensors", categories=["a", "b", "c"], name="tiny")
    assert cpu.is_optimized(load_model(path))
    plain = load_model(path, backend=None)
    assert not cpu.is_optimized(plain)
    assert list(load_model(path).state_dict()) == list(plain.state_dict())


# -- memory: the library leaves malloc alone unless asked ------------------------------------------

# A fresh interpreter runs the engine's inference, then allocates, touches and frees a 1 GiB block, and
# reports how much of it the process's resident memory gave back to the OS.
MEMORY_PROBE = r"""
import json, os, sys, torch
from i3d_torch.backends import cpu
from i3d_torch.core.model import InceptionI3d

if sys.argv[1] == "opt-in":
    assert cpu.keep_freed_memory()
model = cpu.optimize(InceptionI3d(final_endpoint="Conv3d_2b_1x1").eval())
model.check_values = False
with torch.inference_mode():
    model(torch.zeros(1, 3, 16, 32, 32))
assert cpu.plan_kind(model.Conv3d_1a_7x7) is not None

def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

block = torch.ones(2**28)  # 1 GiB of float32, every page touched
held = resident()
del block
print(json.dumps({"returned_mib": (held - resident()) / 2**20}))
"""


def returned_mib(mode: str) -> float:
    env = {k: v for k, v in os.environ.items() if k != cpu.KEEP_FREED_MEMORY_ENV}
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, mode], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])["returned_mib"]


needs_glibc_linux = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc" or not os.path.exists("/proc/self/statm") or not cpu.is_available(),
    reason="needs Linux with glibc and a PyTorch build with oneDNN's fused convolution",
)


@needs_glibc_linux
def test_inference_leaves_malloc_alone_so_a_freed_gibibyte_goes_back_to_the_os():
    assert returned_mib("default") > 900


@needs_glibc_linux
def test_keep_freed_memory_opt_in_keeps_the_freed_gibibyte_for_reuse():
    assert returned_mib("opt-in") < 100
