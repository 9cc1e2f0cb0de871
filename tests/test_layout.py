"""The layers of docs/architecture.md hold at run time too: importing a layer loads nothing above it.

(Which module may import which is checked statically by `lint-imports`; argparse is left to it, since torch
itself imports argparse.)
"""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
{body}
print(json.dumps(sorted(m for m in sys.modules if m.startswith(("i3d_torch", "tensorflow")))))
"""


def modules_after(body: str, **kwargs) -> list:
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(body=body)], capture_output=True, text=True, timeout=300, **kwargs
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_importing_the_model_loads_no_backend_and_no_application():
    loaded = modules_after("import i3d_torch.core.model")
    assert not [m for m in loaded if m.startswith(("i3d_torch.backends", "i3d_torch.apps", "i3d_torch.weights"))]
    assert "i3d_torch.core.model" in loaded


def test_loading_a_model_imports_neither_verification_nor_tensorflow_nor_the_cli(tmp_path):
    from i3d_torch.core.model import InceptionI3d
    from i3d_torch.weights.registry import label_list, save_model

    path = tmp_path / "tiny.safetensors"
    save_model(InceptionI3d(num_classes=400), path, name="tiny", categories=label_list("kinetics400"))
    loaded = modules_after(f"import i3d_torch; i3d_torch.load_model({str(path)!r})")
    assert "i3d_torch.weights.registry" in loaded and "i3d_torch.backends.cpu" in loaded
    assert not [m for m in loaded if m.startswith(("i3d_torch.verification", "tensorflow", "i3d_torch.cli"))]
