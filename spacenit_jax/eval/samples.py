"""The sample format shared by every evaluation dataset (GeoBench reader, synthetic set).

One sensor image per sample, channel-last (H, W, T=1, C) float32 in the SpaceNit band order of
that sensor (see `spacenit_jax.sensors`), already normalised; a label (int class, a multi-hot
vector for multilabel tasks, or an (H, W) class map for segmentation, -1 = ignore); and timestamps (T, 3) = [day, month index (0-based), year]. The
reference stamps single-date benchmark images [1, 6, 2020] (day 1, month index 6 = July,
2020), and so do we.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

DEFAULT_TIMESTAMPS = np.array([[1, 6, 2020]], np.int32)


@dataclasses.dataclass(frozen=True)
class EvalSample:
    image: np.ndarray  # (H, W, 1, C) float32
    label: int | np.ndarray  # class index, (num_classes,) multi-hot, or (H, W) class map
    sensor: str
    name: str = ""
    timestamps: np.ndarray = dataclasses.field(default_factory=DEFAULT_TIMESTAMPS.copy)

    def __post_init__(self):
        if self.image.ndim != 4 or self.image.shape[2] != 1:
            raise ValueError(f"EvalSample {self.name!r}: image must be (H, W, 1, C), "
                             f"got {self.image.shape}")
        if self.image.dtype != np.float32:
            raise ValueError(f"EvalSample {self.name!r}: image must be float32, "
                             f"got {self.image.dtype}")


def stack_samples(samples: Sequence[EvalSample]) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, H, W, 1, C), labels (N,) or (N, C)) of a list or dataset of samples."""
    if len(samples) == 0:
        raise ValueError("stack_samples: no samples")
    items = [samples[i] for i in range(len(samples))]
    images = np.stack([s.image for s in items])
    labels = np.stack([np.asarray(s.label) for s in items])
    return images, labels.astype(np.int32 if labels.ndim == 1 else labels.dtype)
