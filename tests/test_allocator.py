"""The inference path keeps freed CPU memory for reuse (glibc), once per process, unless told not to."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from i3d_torch.core import model as model_module

pytestmark = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc" or not model_module.ONEDNN_INFERENCE,
    reason="needs glibc and a PyTorch build with oneDNN's fused convolution",
)

# A fresh interpreter: one small inference, then a 64 MiB block is allocated. glibc serves blocks that large
# with mmap by default (fresh pages each time, unmapped on free); from the heap once the setting is in
# effect. mallinfo2().hblkhd is the number of bytes glibc holds in mmap-ed blocks.
PROBE = r"""
import ctypes, json, torch
from i3d_torch import InceptionI3d
from i3d_torch.backends.cpu import allocator

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost"
    )]

model = InceptionI3d(final_endpoint="Conv3d_2b_1x1").eval()
model.check_values = False
with torch.inference_mode():
    model(torch.zeros(1, 3, 4, 32, 32))
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = MallInfo2
before = libc.mallinfo2().hblkhd
block = libc.malloc(64 * 2**20)
mmapped = libc.mallinfo2().hblkhd - before
libc.free(block)
print(json.dumps({"applied": allocator.keep_freed_memory(), "mmapped_mb": mmapped / 2**20}))
"""


def run_probe(env_value):
    env = {k: v for k, v in os.environ.items() if k != "I3D_TORCH_KEEP_FREED_MEMORY"}
    if env_value is not None:
        env["I3D_TORCH_KEEP_FREED_MEMORY"] = env_value
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_first_inference_serves_large_blocks_from_the_heap():
    assert run_probe(None) == {"applied": True, "mmapped_mb": 0.0}


def test_environment_switch_leaves_glibc_defaults_alone():
    result = run_probe("0")
    assert result["applied"] is False
    assert result["mmapped_mb"] >= 64  # the block and glibc's page of bookkeeping
