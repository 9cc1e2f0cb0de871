"""The GPU table of ``i3d-torch bench``: I3D's forward on one CUDA device, in every precision and layout worth
knowing, and ``features`` end to end with decoding on the CPU.

For clips of 64 x 224 x 224 (``gpu_frames``) at batch 1, 8, 32 and 64 (``gpu_batch``) each variant below is
timed after warm-up calls (the first call autotunes cuDNN's algorithms, ``cudnn.benchmark``, and compiles
where it compiles): float32 with TF32 off (the parity yardstick of every other row), TF32, bf16 and fp16
(the model cast, as ``--dtype`` does), channels-last-3d, BatchNorm folded into the convolutions
(:meth:`~i3d_torch.core.model.InceptionI3d.fuse`), ``torch.compile`` (inductor with weight freezing) and
CUDA graphs (one forward captured and replayed: what removes the per-kernel launch cost at small batches).

Each row gives clips/s, TFLOP/s on the model's FLOPs (2 per multiply-add, convolutions only, as the CPU table
counts), that rate as a fraction of the H200's measured bf16 matmul rate (:data:`H200_BF16_MEASURED`) and of
a matmul of the row's own dtype measured in the same run, the GPU memory one forward adds per clip, and the
largest |difference| of the logits from the float32 row. Nothing here runs without CUDA except what the
CPU tests exercise through ``device="cpu"`` (the table's mechanics, not its numbers).
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from i3d_torch.apps.bench import TimedRow, clip_input, forward_flops, write_sample_video
from i3d_torch.core.defaults import CROP_SIZE, FPS, SHORT_SIDE
from i3d_torch.core.model import InceptionI3d

#: The bf16 matmul rate of the H200 this project's device runs measure against: an 8192^3 bf16 product on
#: random data ran at 769 to 798 TFLOP/s there (the device tool's KINDS.md, 2026-10-28 and 2026-11-04), below
#: the datasheet's 989 dense; a measured ceiling says what is attainable, a datasheet's does not.
H200_BF16_MEASURED = 790e12
#: The issue's goal for the fastest row: this fraction of :data:`H200_BF16_MEASURED` at 64 x 224 x 224.
GOAL_FRACTION = 0.25
GPU_FRAMES = 64
GPU_BATCHES = (1, 8, 32, 64)
#: Timed calls per row at least (GPU calls are short; medians of fewer are noise).
MIN_REPEATS = 5
#: Seconds kept for the end-to-end run when a time budget is set (writing 8 videos, two extractions, decoding).
END_TO_END_S = 60
#: Side of the matmuls whose rates the table's "% of matmul" column divides by.
MATMUL_SIZE = 8192


@dataclass(frozen=True)
class GpuVariant:
    """How one row runs the model."""

    name: str
    dtype: str = "float32"  # float32 | bfloat16 | float16: the model and input cast to it
    tf32: bool = False  # float32 convolutions and matmuls on the tensor cores (10-bit mantissa)
    channels_last: bool = False  # NDHWC memory layout of weights and input
    fused: bool = False  # BatchNorm folded into the convolutions
    compiled: bool = False  # torch.compile (inductor; freezing folds BN and constant-folds the weights)
    cuda_graph: bool = False  # one warm forward captured and replayed

    @property
    def needs_cuda(self) -> bool:
        return self.compiled or self.cuda_graph or self.dtype != "float32" or self.tf32


REFERENCE = GpuVariant("float32, TF32 off")
#: Most telling first (after the yardstick): a device run cut short at its time limit keeps the rows it finished.
GPU_VARIANTS = (
    REFERENCE,
    GpuVariant("bf16, channels-last-3d, torch.compile", "bfloat16", channels_last=True, compiled=True),
    GpuVariant("bf16, channels-last-3d, torch.compile, CUDA graph", "bfloat16", channels_last=True, compiled=True,
               cuda_graph=True),
    GpuVariant("bf16, channels-last-3d, BN folded, CUDA graph", "bfloat16", channels_last=True, fused=True,
               cuda_graph=True),
    GpuVariant("bf16, channels-last-3d, BN folded", "bfloat16", channels_last=True, fused=True),
    GpuVariant("bf16, channels-last-3d", "bfloat16", channels_last=True),
    GpuVariant("fp16, channels-last-3d", "float16", channels_last=True),
    GpuVariant("bf16", "bfloat16"),
    GpuVariant("fp16", "float16"),
    GpuVariant("TF32", tf32=True),
)
#: What runs without CUDA (the CPU tests of the table's mechanics).
CPU_VARIANTS = tuple(v for v in GPU_VARIANTS if not v.needs_cuda)


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """TF32 for float32 convolutions (cuDNN) and matmuls (cuBLAS) inside the block; restores both after.

    PyTorch's defaults differ (cuDNN convolutions allow TF32, matmuls do not), so "float32" on a GPU is not
    float32 unless both are off: the parity rows and tests switch both explicitly.
    """
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@contextlib.contextmanager
def cudnn_benchmark() -> Iterator[None]:
    """cuDNN picks the fastest algorithm per convolution shape on its first call (fixed shapes: worth it).
    Only this switch: ``torch.backends.cudnn.flags`` would also reset the TF32 and precision settings."""
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


def variant_model(model: InceptionI3d, variant: GpuVariant, device: str) -> InceptionI3d:
    """A copy of ``model`` prepared as ``variant`` says, on ``device`` (the CPU engine steps aside there)."""
    prepared = copy.deepcopy(model).eval()
    prepared.check_values = False  # the input is ours, in range by construction
    if variant.fused:
        prepared.fuse()  # in float32, before the cast: the folded weights are rounded once
    prepared = prepared.to(device, getattr(torch, variant.dtype))
    if variant.channels_last:
        prepared = prepared.to(memory_format=torch.channels_last_3d)
    return prepared


def variant_input(x: torch.Tensor, variant: GpuVariant) -> torch.Tensor:
    x = x.to(getattr(torch, variant.dtype))
    return x.contiguous(memory_format=torch.channels_last_3d) if variant.channels_last else x.contiguous()


def compiled_forward(model: InceptionI3d) -> Callable[[torch.Tensor], torch.Tensor]:
    """``torch.compile`` with weight freezing, one object for every batch size: the default dynamic=None
    compiles batch 1 statically and the next size once with a symbolic batch, so four sizes cost two
    compilations instead of four."""
    import torch._inductor.config as inductor_config

    compiled = torch.compile(model)

    def forward(x: torch.Tensor) -> torch.Tensor:
        with inductor_config.patch(freezing=True):
            return compiled(x)

    return forward


def graphed_forward(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[], torch.Tensor]:
    """``forward(x)`` captured once as a CUDA graph; the returned call replays it (same input buffer, same
    output buffer). Warm-up runs on a side stream first, as capture requires (cuDNN autotuning included)."""
    static_x = x.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            forward(static_x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = forward(static_x)

    def replay() -> torch.Tensor:
        graph.replay()
        return static_out

    return replay


@dataclass
class GpuRow(TimedRow):
    variant: str
    dtype: str
    frames: int
    batch: int
    times_s: List[float]
    flops: int
    first_call_s: float  # cuDNN autotuning, compilation or capture: paid once per shape
    max_abs_diff: Optional[float]  # logits against the float32 (TF32 off) row on the same input
    same_top1: Optional[float]  # share of the batch whose top-1 class equals the float32 row's
    peak_mb: Optional[float] = None  # device memory at the forward's peak, weights and input included
    per_clip_mb: Optional[float] = None  # what one forward adds to the device memory, per clip


@dataclass
class GpuEndToEnd:
    """``extract_features`` on a folder of encoded videos with the model on the GPU, against decoding alone."""

    videos: int
    frames: int  # decoded frames, all videos
    windows: int
    batch_size: int
    dtype: str
    wall_s: float
    decode_only_s: float  # the same videos decoded and resized on one CPU thread, as the prefetcher does

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.wall_s

    @property
    def bound_by(self) -> str:
        # The prefetcher overlaps decoding with the model: when decoding alone takes most of the wall time,
        # a faster GPU path cannot make features faster.
        return "decoding (CPU)" if self.decode_only_s >= 0.8 * self.wall_s else "the model (GPU) and overheads"


@dataclass
class GpuSection:
    status: str
    device_name: str = ""
    matmul_tflops: Dict[str, float] = field(default_factory=dict)
    rows: List[GpuRow] = field(default_factory=list)
    failures: List[str] = field(default_factory=list)
    end_to_end: Optional[GpuEndToEnd] = None
    end_to_end_status: str = ""

    def best(self, where: Callable[[GpuRow], bool] = lambda row: True) -> Optional[GpuRow]:
        return max((r for r in self.rows if where(r)), key=lambda r: r.flops_per_s, default=None)

    def _table(self) -> List[str]:
        rates = ", ".join(f"{k} {v:.0f}" for k, v in self.matmul_tflops.items())
        out = [f"Device: {self.device_name}. Matmul rates this run ({MATMUL_SIZE}^3, TFLOP/s): {rates}. "
               f"Fractions are of the H200's measured bf16 matmul rate, {H200_BF16_MEASURED / 1e12:.0f} TFLOP/s "
               "(the device tool's KINDS.md), and of this run's matmul in the row's dtype. FLOPs: 2 per "
               "multiply-add, convolutions only. cudnn.benchmark on; first call = autotuning, compiling or "
               "capturing, not in the timings.", ""]
        header = ["variant", "frames", "batch", "latency ms (median)", "clips/s", "TFLOP/s",
                  "% of H200 bf16 (790)", "% of matmul (same dtype)", "first call s", "peak MiB",
                  "MiB per clip", "max abs diff vs fp32", "same top-1"]
        out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in self.rows:
            key = "tf32" if r.variant.startswith("TF32") else r.dtype
            matmul = self.matmul_tflops.get(key)
            cells = [r.variant, str(r.frames), str(r.batch), f"{r.median_s * 1e3:.2f}", f"{r.clips_per_s:.1f}",
                     f"{r.flops_per_s / 1e12:.1f}", f"{100 * r.flops_per_s / H200_BF16_MEASURED:.1f}",
                     "n/a" if not matmul else f"{100 * r.flops_per_s / (matmul * 1e12):.1f}",
                     f"{r.first_call_s:.1f}", _optional(r.peak_mb, "{:.0f}"), _optional(r.per_clip_mb, "{:.0f}"),
                     _optional(r.max_abs_diff, "{:.1e}"), _optional(r.same_top1, "{:.0%}")]
            out.append("| " + " | ".join(cells) + " |")
        best = self.best()
        out += ["", f"Fastest: {best.variant} at batch {best.batch}, {best.clips_per_s:.0f} clips/s, "
                f"{100 * best.flops_per_s / H200_BF16_MEASURED:.1f}% of the bf16 rate."]
        compiled = self.best(lambda r: r.dtype == "bfloat16" and "torch.compile" in r.variant)
        if compiled is not None:
            fraction = compiled.flops_per_s / H200_BF16_MEASURED
            goal_clips = GOAL_FRACTION * H200_BF16_MEASURED / (compiled.flops / compiled.batch)
            out.append(f"Goal, bf16 + torch.compile at {GOAL_FRACTION:.0%} of the bf16 rate ({goal_clips:.0f} clips/s "
                       f"at {compiled.frames} frames): {compiled.variant} at batch {compiled.batch}, "
                       f"{100 * fraction:.1f}%: {'met' if fraction >= GOAL_FRACTION else 'NOT met'}.")
        return out

    def markdown(self) -> List[str]:
        out = [f"### GPU: {self.status}", ""]
        if self.rows:
            out += self._table()
        if self.failures:
            out += ["", "Not measured:", ""] + [f"- {f}" for f in self.failures]
        if self.end_to_end is not None:
            e = self.end_to_end
            out += ["", "#### features end to end on the GPU, decoding on the CPU", "",
                    f"`extract_features` on {e.videos} H.264 videos (320x256, {FPS:g} fps), 64-frame windows, "
                    f"{e.dtype}, batch {e.batch_size}; decode only = the same videos decoded and resized "
                    f"(short side {SHORT_SIDE}) on one thread.", "",
                    "| videos | frames | windows | wall s | frames/s | decode only s | bound by |",
                    "|---|---|---|---|---|---|---|",
                    f"| {e.videos} | {e.frames} | {e.windows} | {e.wall_s:.2f} | {e.frames_per_s:.0f} "
                    f"| {e.decode_only_s:.2f} | {e.bound_by} |"]
        elif self.end_to_end_status:
            out += ["", f"features end to end: {self.end_to_end_status}"]
        return out


def _optional(value: Optional[float], fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value)


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def gpu_input(frames: int, batch: int, device: str, size: int = CROP_SIZE) -> torch.Tensor:
    """The benchmark's clip in [-1, 1], made where it is used (a 64-clip batch is 2.4 GB in float32)."""
    if not device.startswith("cuda"):
        return clip_input(frames, batch, size)
    generator = torch.Generator(device=device).manual_seed(frames * 1000 + batch)
    return torch.rand((batch, 3, frames, size, size), generator=generator, device=device) * 2 - 1


def measure_row(model: InceptionI3d, variant: GpuVariant, x: torch.Tensor, reference: Optional[torch.Tensor],
                device: str, repeats: int, warmup: int,
                compiled: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> Tuple[GpuRow, torch.Tensor]:
    """Time one variant on one input; ``compiled`` is the variant's compiled forward when it compiles.
    Returns the row and the logits (float32)."""
    cuda = device.startswith("cuda")
    xv = variant_input(x, variant)
    run = compiled or model
    if cuda:
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    with tf32(variant.tf32), torch.inference_mode():
        start = time.perf_counter()
        if variant.cuda_graph:
            forward = graphed_forward(run, xv)
        else:
            def forward() -> torch.Tensor:
                return run(xv)
        out = forward()
        _sync(device)
        first = time.perf_counter() - start
        for _ in range(warmup - 1):  # the first call was one
            forward()
        _sync(device)
        times = []
        for _ in range(max(repeats, MIN_REPEATS)):
            start = time.perf_counter()
            forward()
            _sync(device)
            times.append(time.perf_counter() - start)
        out = out.float()
        diff = same = None
        if reference is not None:
            diff = float((out - reference).abs().max())
            same = float((out.argmax(1) == reference.argmax(1)).float().mean())
    frames, batch = x.shape[2], x.shape[0]
    row = GpuRow(variant.name, variant.dtype, frames, batch, times, forward_flops(frames, batch), first, diff, same)
    if cuda:
        row.peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
        row.per_clip_mb = (torch.cuda.max_memory_allocated(device) - base) / 2**20 / batch
    return row, out


def matmul_tflops(device: str, size: int = MATMUL_SIZE) -> Dict[str, float]:
    """This run's matmul rates (best of a few) in each dtype of the table, TF32 apart from float32."""
    rates = {}
    for key, dtype, allow in (("float32", torch.float32, False), ("tf32", torch.float32, True),
                              ("bfloat16", torch.bfloat16, False), ("float16", torch.float16, False)):
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        best = float("inf")
        with tf32(allow), torch.inference_mode():
            for _ in range(4):
                _sync(device)
                start = time.perf_counter()
                a @ b
                _sync(device)
                best = min(best, time.perf_counter() - start)
        rates[key] = 2 * size**3 / best / 1e12
        del a, b
    return rates


def run_gpu_rows(model: InceptionI3d, section: GpuSection, *, frames: int, batches: Sequence[int],
                 variants: Sequence[GpuVariant], device: str, repeats: int, warmup: int,
                 log: Callable[[str], None], deadline: Optional[float] = None) -> None:
    """Every variant at every batch size, into ``section`` (a variant that fails is listed, not fatal).

    Variant by variant (not batch by batch), so that a compiled variant compiles for the batch sizes once.
    Past ``deadline`` (``time.monotonic()``) no new measurement starts: the rest is listed as not run, so that
    a run with a time limit still ends with its report."""
    if variants[0] != REFERENCE:
        raise ValueError("the float32 reference variant must come first")
    inputs = {batch: gpu_input(frames, batch, device) for batch in batches}
    references: Dict[int, torch.Tensor] = {}
    # A compiled model is shared by the variants that differ only in CUDA graphs: one compilation serves both.
    shared: Dict[tuple, tuple] = {}
    for variant in variants:
        key = (variant.dtype, variant.channels_last, variant.fused, variant.compiled)
        if deadline is not None and time.monotonic() > deadline:
            section.failures.append(f"{variant.name}: not run (time budget spent)")
            continue
        try:
            if variant.compiled and key in shared:
                prepared, compiled = shared[key]
            else:
                prepared = variant_model(model, variant, device)
                compiled = compiled_forward(prepared) if variant.compiled else None
                if variant.compiled:
                    shared[key] = prepared, compiled
        except Exception as exc:  # one variant failing must not sink the table
            section.failures.append(f"{variant.name}: {_one_line(exc)}")
            continue
        for batch in batches:
            if deadline is not None and time.monotonic() > deadline:
                section.failures.append(f"{variant.name}, batch {batch}: not run (time budget spent)")
                continue
            log(f"  GPU {variant.name}, {frames} frames, batch {batch}")
            try:
                row, out = measure_row(prepared, variant, inputs[batch], references.get(batch), device, repeats,
                                       warmup, compiled)
            except torch.cuda.OutOfMemoryError as exc:
                section.failures.append(f"{variant.name}, batch {batch}: out of GPU memory ({_one_line(exc)[:120]})")
                torch.cuda.empty_cache()
                continue
            except Exception as exc:
                section.failures.append(f"{variant.name}, batch {batch}: {_one_line(exc)}")
                continue
            if variant == REFERENCE:
                references[batch] = out
            section.rows.append(row)
            log(f"    {row.clips_per_s:.1f} clips/s, {row.flops_per_s / 1e12:.1f} TFLOP/s, "
                f"{_optional(row.per_clip_mb, '{:.0f}')} MiB/clip, diff {_optional(row.max_abs_diff, '{:.1e}')}")
        del prepared, compiled
        if not any(v.compiled and (v.dtype, v.channels_last, v.fused, v.compiled) == key
                   for v in variants[variants.index(variant) + 1:]):
            shared.pop(key, None)
        if device.startswith("cuda"):
            torch.cuda.empty_cache()


def features_end_to_end(model: InceptionI3d, *, device: str, dtype: str, videos: int, frames: int, batch_size: int,
                        log: Callable[[str], None]) -> GpuEndToEnd:
    """``extract_features`` over ``videos`` generated H.264 videos of ``frames`` frames each, the model on
    ``device`` in ``dtype``, against decoding the same videos alone. Needs PyAV (to write the videos)."""
    from i3d_torch.apps.features import extract_features
    from i3d_torch.core.video import iter_frames

    prepared = variant_model(model, GpuVariant("features", dtype), device)
    with tempfile.TemporaryDirectory(prefix="i3d_bench_gpu_") as directory:
        folder = Path(directory) / "videos"
        folder.mkdir()
        log(f"  features end to end: writing {videos} videos of {frames} frames")
        paths = [write_sample_video(folder / f"clip{i:02d}.mp4", frames) for i in range(videos)]
        options = dict(model=prepared, device=device, dtype=dtype, batch_size=batch_size, clip_frames=64, stride=64)
        # A first run on one video: cuDNN autotuning and the allocator's first growth are not the pipeline's rate.
        extract_features(paths[:1], Path(directory) / "warm", **options)
        start = time.perf_counter()
        summary = extract_features(folder, Path(directory) / "features", **options)
        _sync(device)
        wall = time.perf_counter() - start
        if summary.failed:
            raise RuntimeError(f"features failed on {summary.failed} videos: {summary.errors}")
        start = time.perf_counter()
        counts = [sum(1 for _ in iter_frames(p, fps=FPS, short_side=SHORT_SIDE)) for p in paths]
        decode_only = time.perf_counter() - start
        windows = sum(int(np.load(f, mmap_mode="r").shape[0])
                      for f in (Path(directory) / "features").rglob("*.windows.npy"))
    return GpuEndToEnd(videos, sum(counts), windows, batch_size, dtype, wall, decode_only)


def gpu_section(model: InceptionI3d, *, frames: int = GPU_FRAMES, batches: Sequence[int] = GPU_BATCHES,
                repeats: int = MIN_REPEATS, warmup: int = 2, end_to_end: bool = True, compile: bool = True,
                budget_s: Optional[float] = None, log: Callable[[str], None] = print) -> GpuSection:
    """The GPU table on ``cuda:0``, or a section that says why it was skipped (``compile=False``: no
    torch.compile rows, which take a minute or more to compile). ``budget_s``: seconds after which no new
    measurement starts (the end-to-end run needs :data:`END_TO_END_S` of them)."""
    deadline = None if budget_s is None else time.monotonic() + budget_s
    if not torch.cuda.is_available():
        return GpuSection("skipped: no CUDA device (torch.cuda.is_available() is False)")
    device = "cuda"
    section = GpuSection("ran on " + torch.cuda.get_device_name(0), torch.cuda.get_device_name(0))
    with cudnn_benchmark():
        section.matmul_tflops = matmul_tflops(device)
        variants = [v for v in GPU_VARIANTS if compile or not v.compiled]
        run_gpu_rows(model, section, frames=frames, batches=batches, variants=variants, device=device,
                     repeats=repeats, warmup=warmup, log=log,
                     deadline=None if deadline is None else deadline - (END_TO_END_S if end_to_end else 0))
        if end_to_end and deadline is not None and time.monotonic() > deadline - END_TO_END_S:
            section.end_to_end_status = "not run (time budget spent)"
        elif end_to_end:
            try:
                section.end_to_end = features_end_to_end(model, device=device, dtype="bfloat16", videos=8,
                                                         frames=250, batch_size=8, log=log)
            except Exception as exc:  # e.g. no PyAV on the machine: the table stands without it
                section.end_to_end_status = f"not measured ({_one_line(exc)})"
    return section
