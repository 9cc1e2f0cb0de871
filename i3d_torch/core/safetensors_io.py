"""Deterministic safetensors writing.

``safetensors.torch.save_file`` writes its metadata in hash-map order, so the same tensors give files with
different bytes from run to run, and a published sha256 could never be reproduced. This writer emits the
same format (8-byte little-endian header length, JSON header, raw little-endian data) with keys sorted,
so the same weights always give the same file; ``safetensors`` reads it as usual.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Dict, Optional

import torch

from i3d_torch.core.fileio import atomic_path

_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64", torch.int64: "I64"}


def save_safetensors(
    tensors: Dict[str, torch.Tensor], path: os.PathLike, metadata: Optional[Dict[str, str]] = None
) -> None:
    """Write ``tensors`` (sorted by name) with string ``metadata`` atomically to ``path``."""
    header: Dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in sorted(metadata.items())}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        if tensor.dtype not in _DTYPES:
            raise TypeError(f"unsupported dtype {tensor.dtype} for {name}")
        data = tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        header[name] = {
            "dtype": _DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    encoded = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # the format aligns the data section to 8 bytes
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(struct.pack("<Q", len(encoded)))
            fh.write(encoded)
            for blob in blobs:
                fh.write(blob)
