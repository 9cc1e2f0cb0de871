"""FVD as a streaming torchmetrics ``Metric``, for training and evaluation loops.

``FrechetVideoDistance`` keeps, per set, float64 running sums (count, Σx, Σxxᵀ) of the I3D embeddings, summed
across ranks by torchmetrics (``dist_reduce_fx="sum"``): memory is O(d²) (400² floats) whatever the number of videos,
and averaging per-batch FVDs (which is wrong: FVD is not a mean over batches) is never needed. Only KVD, which needs
the embeddings themselves, keeps them, and only when asked (``kvd=True``). The value equals the batch
:func:`i3d_torch.apps.fvd.fvd` on the same videos (see tests/test_fvd_metric.py). Same design as torchmetrics'
``image/fid.py``: states added with ``add_state``, ``reset_real_features=False`` keeps the real set across resets.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

try:
    from torchmetrics import Metric
except ImportError as exc:  # an extra, not a dependency: the batch fvd() and the CLI do not need it
    raise ImportError(
        "FrechetVideoDistance needs torchmetrics: pip install 'i3d-torch[metrics]' (or pip install torchmetrics)"
    ) from exc

from i3d_torch.apps.fvd.protocols import Protocol, covariance_from_sums, get_protocol, protocol_distance
from i3d_torch.apps.fvd.resize import pixels_0_255
from i3d_torch.apps.fvd.stats import check_set_size, kernel_distance
from i3d_torch.apps.fvd.videosets import check_video_array
from i3d_torch.core.defaults import DEFAULT_WEIGHTS
from i3d_torch.core.errors import InputError
from i3d_torch.core.transforms import trusted_input

_ROLES = ("real", "fake")


class FrechetVideoDistance(Metric):
    """Streaming FVD (and KVD when ``kvd=True``) between a real and a generated set of videos.

    Args:
        model: the embedding network (``[N, 3, T, 224, 224]`` in [-1, 1] -> ``[N, d]``); default: the
            ``weights`` model from the registry (I3D Kinetics-400, the TF-Hub model's weights).
        weights: registry name or path, used when ``model`` is None.
        protocol: a protocol name (``tf``, ``stylegan-v``, ``videogpt``, ``tats``, ``cd-fvd``, ...) or a
            :class:`~i3d_torch.apps.fvd.protocols.Protocol`: how frames are sampled and resized, how the
            covariance is normalised and its square root taken. The metric does not cap the set sizes
            (``max_real``/``max_fake``): it takes every video it is given.
        reset_real_features: ``False`` keeps the real set's sums (and embeddings) across :meth:`reset`.
        kvd: also keep the embeddings and report KVD: :meth:`compute` then returns a dict.
        channels_first: ``update`` takes ``[N, C, T, H, W]`` instead of ``[N, T, H, W, C]``.
        batch_size: videos per forward pass inside one ``update`` (bounds activation memory).

    ``update(videos, real)`` takes uint8 (0..255) or floats in [0, 1], on any device; the metric's device (move
    it with ``.to``) is where the model runs and the sums live.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(
        self,
        model: Optional[torch.nn.Module] = None,
        *,
        weights: str = DEFAULT_WEIGHTS,
        protocol: Union[str, Protocol] = "tf",
        reset_real_features: bool = True,
        kvd: bool = False,
        channels_first: bool = False,
        batch_size: int = 8,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.protocol = get_protocol(protocol)
        if batch_size < 1:
            raise InputError(f"batch size must be at least 1, got {batch_size}")
        if model is None:
            from i3d_torch.weights.registry import load_model

            # Our own copy, not the registry's per-process cache: ``metric.to(device)`` moves it.
            model = load_model(weights)
        self.model = model.eval().requires_grad_(False)
        self.reset_real_features = bool(reset_real_features)
        self.kvd = bool(kvd)
        self.channels_first = bool(channels_first)
        self.batch_size = int(batch_size)
        self._frames: Optional[int] = None  # clip length of the first update: every later one must match
        dim = int(getattr(model, "num_classes", 0) or 0) or None
        self._dim = dim
        for role in _ROLES:
            self.add_state(f"{role}_n", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
            # Sized on first update when the model does not say its embedding size.
            self.add_state(f"{role}_sum", torch.zeros(dim or 0, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{role}_outer", torch.zeros(dim or 0, dim or 0, dtype=torch.float64), dist_reduce_fx="sum")
            if self.kvd:
                self.add_state(f"{role}_embeddings", [], dist_reduce_fx="cat")

    # -----------------------------------------------------------------------------------------------

    def update(self, videos: Union[torch.Tensor, np.ndarray, Sequence[torch.Tensor]], real: bool) -> None:
        """Embed a batch of videos of the real (``real=True``) or the generated set and add them to its sums."""
        role = "real" if real else "fake"
        clips, frames = self._checked_clips(videos, role)
        embeddings = self._embed(clips)
        # Only now that the update cannot fail: its clip length and its videos count.
        self._frames = frames
        seen = getattr(self, "_seen", {"real": 0, "fake": 0})
        seen[role] += int(clips.shape[0])
        self._seen = seen
        if self._dim is None or getattr(self, f"{role}_sum").numel() == 0:
            self._size_states(embeddings.shape[1])
        if embeddings.shape[1] != getattr(self, f"{role}_sum").shape[0]:
            raise InputError(f"the model gave {embeddings.shape[1]}-d embeddings, earlier ones were {self._dim}-d")
        x = embeddings.to(self.device, torch.float64)
        setattr(self, f"{role}_n", getattr(self, f"{role}_n") + x.shape[0])
        setattr(self, f"{role}_sum", getattr(self, f"{role}_sum") + x.sum(0))
        setattr(self, f"{role}_outer", getattr(self, f"{role}_outer") + x.T @ x)
        if self.kvd:
            getattr(self, f"{role}_embeddings").append(embeddings.to(self.device, torch.float32))

    def compute(self) -> Union[torch.Tensor, Dict[str, torch.Tensor]]:
        """FVD (float64 scalar tensor); with ``kvd=True`` a dict ``{"fvd", "kvd", "kvd_std"}``."""
        stats = []
        for role in _ROLES:
            n = float(getattr(self, f"{role}_n"))
            if n == 0:
                raise InputError(f"compute() before any update of the {role} set: call update(videos, real=...)")
            total = getattr(self, f"{role}_sum").detach().cpu().numpy()
            check_set_size(int(n), f"{role} set", total.shape[0])
            outer = getattr(self, f"{role}_outer").detach().cpu().numpy()
            stats.append(covariance_from_sums(n, total, outer, self.protocol.covariance))
        distance = protocol_distance(stats[0][0], stats[0][1], stats[1][0], stats[1][1], self.protocol)
        value = torch.tensor(distance, dtype=torch.float64, device=self.device)
        if not self.kvd:
            return value
        sets = [_concatenated(getattr(self, f"{role}_embeddings")) for role in _ROLES]
        kvd, kvd_std = kernel_distance(sets[0], sets[1])
        as_tensor = lambda v: torch.tensor(v, dtype=torch.float64, device=self.device)  # noqa: E731
        return {"fvd": value, "kvd": as_tensor(kvd), "kvd_std": as_tensor(kvd_std)}

    def reset(self) -> None:
        """Forget the generated set, and the real one unless ``reset_real_features=False``."""
        seen = getattr(self, "_seen", {"real": 0, "fake": 0})
        if self.reset_real_features:
            super().reset()
            self._frames = None
            self._seen = {"real": 0, "fake": 0}
            return
        kept = {name: getattr(self, name) for name in self._defaults if name.startswith("real_")}
        super().reset()
        for name, value in kept.items():
            setattr(self, name, value)
        self._seen = {"real": seen["real"], "fake": 0}

    @property
    def protocol_info(self) -> Dict[str, str]:
        """What a logged value should carry: the protocol's name and the short hash of its spec."""
        return {"protocol": self.protocol.name, "protocol_hash": self.protocol.spec_hash}

    # -----------------------------------------------------------------------------------------------

    def _size_states(self, dim: int) -> None:
        self._dim = dim
        for role in _ROLES:
            if getattr(self, f"{role}_sum").numel() == 0:
                setattr(self, f"{role}_sum", torch.zeros(dim, dtype=torch.float64, device=self.device))
                setattr(self, f"{role}_outer", torch.zeros(dim, dim, dtype=torch.float64, device=self.device))
                self._defaults[f"{role}_sum"] = torch.zeros(dim, dtype=torch.float64)
                self._defaults[f"{role}_outer"] = torch.zeros(dim, dim, dtype=torch.float64)

    def _checked_clips(self, videos: Any, role: str) -> Tuple[torch.Tensor, int]:
        """The update's videos, checked, as the protocol's clips ``[N, T', H, W, 3]`` (as given: uint8 or float),
        and the videos' frame count T."""
        if isinstance(videos, (list, tuple)):
            if not videos:
                raise InputError("empty update: no videos")
            lengths = sorted({int(v.shape[1 if self.channels_first else 0]) for v in videos})
            if len(lengths) > 1:
                raise InputError(f"mixed frame counts in one update ({lengths}); every video of a set needs the same")
            videos = torch.stack([torch.as_tensor(v) for v in videos])
        if isinstance(videos, np.ndarray):
            videos = torch.from_numpy(np.ascontiguousarray(videos))
        if not isinstance(videos, torch.Tensor):
            raise InputError(f"update takes a tensor of videos, got {type(videos).__name__}")
        if self.channels_first:
            if videos.ndim != 5 or videos.shape[1] != 3:
                shape = tuple(videos.shape)
                raise InputError(f"expected [N, 3, T, H, W] videos (channels_first=True), got shape {shape}")
            videos = videos.permute(0, 2, 3, 4, 1)
        if videos.ndim == 5 and videos.shape[0] == 0:
            raise InputError("empty update: 0 videos")
        check_video_array(videos, f"{role} videos")
        frames = int(videos.shape[1])
        if self._frames is not None and frames != self._frames:
            raise InputError(
                f"{role} videos have {frames} frames, earlier updates had {self._frames}; FVD compares clips of one "
                f"length"
            )
        first = self._first_index(role)
        indices = [self.protocol.clip_indices(frames, role, first + k * self._world()) for k in range(len(videos))]
        if self.protocol.frames is None:
            return videos, frames
        index = torch.tensor(indices, device=videos.device)
        return torch.stack([videos[k].index_select(0, index[k]) for k in range(len(videos))]), frames

    def _world(self) -> int:
        dist = torch.distributed
        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    def _first_index(self, role: str) -> int:
        """Index of the update's first video in its set, for the per-video clip seed: on K ranks, rank r's k-th
        video is video r + K k (how a distributed sampler deals them out)."""
        dist = torch.distributed
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        return rank + getattr(self, "_seen", {"real": 0, "fake": 0})[role] * self._world()

    @torch.inference_mode()
    def _embed(self, clips: torch.Tensor) -> torch.Tensor:
        out = []
        with trusted_input():
            for start in range(0, clips.shape[0], self.batch_size):
                chunk = clips[start : start + self.batch_size].to(self.device)
                out.append(self.model(self.protocol.model_input(pixels_0_255(chunk))).float())
        return torch.cat(out).clone()  # out of inference mode: a normal tensor


def _concatenated(value: Any) -> np.ndarray:
    if isinstance(value, (list, tuple)):
        value = torch.cat(list(value)) if value else torch.zeros(0, 0)
    return value.detach().cpu().double().numpy()
