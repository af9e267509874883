"""The sample format shared by every evaluation dataset (GeoBench, GEO-Bench-2, synthetic).

A sample holds one image per sensor, channel-last (H, W, T, C) float32 in the SpaceNit band
order of that sensor (see `spacenit_jax.sensors`), already normalised, with pixels of missing
timesteps set to `sensors.MISSING_VALUE`: `image` of the primary `sensor` and `extra`
{sensor: image} for the others. Every sensor of a sample shares one timeline: `timestamps`
(T, 3) = [day, month index (0-based), year]. Single-date benchmark images are stamped
[1, 6, 2020] (day 1, month index 6, 2020), as the reference does. The label is an int
class, a multi-hot vector (multilabel), an (H, W) class map (segmentation, -1 = ignore),
or float regression targets (K,) or (H, W, K).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

DEFAULT_TIMESTAMPS = np.array([[1, 6, 2020]], np.int32)


@dataclasses.dataclass(frozen=True)
class EvalSample:
    image: np.ndarray  # (H, W, T, C) float32 of `sensor`
    label: int | np.ndarray  # class, multi-hot, (H, W) class map, or regression targets
    sensor: str
    name: str = ""
    timestamps: np.ndarray = dataclasses.field(default_factory=DEFAULT_TIMESTAMPS.copy)
    extra: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        t = np.shape(self.timestamps)[0] if np.ndim(self.timestamps) == 2 else None
        if np.shape(self.timestamps) != (t, 3):
            raise ValueError(f"EvalSample {self.name!r}: timestamps must be (T, 3) [day, "
                             f"month index, year], got {np.shape(self.timestamps)}")
        for sensor, image in self.images.items():
            if image.ndim != 4 or image.shape[2] != t:
                raise ValueError(f"EvalSample {self.name!r}: {sensor} image must be "
                                 f"(H, W, T={t}, C), got {image.shape}")
            if image.dtype != np.float32:
                raise ValueError(f"EvalSample {self.name!r}: {sensor} image must be float32, "
                                 f"got {image.dtype}")
        if self.sensor in self.extra:
            raise ValueError(f"EvalSample {self.name!r}: sensor {self.sensor!r} is both the "
                             "primary image and an extra one")

    @property
    def images(self) -> dict[str, np.ndarray]:
        """Every sensor's image, the primary one first."""
        return {self.sensor: self.image, **self.extra}


def stack_samples(samples: Sequence[EvalSample]) -> tuple[np.ndarray, np.ndarray]:
    """(primary-sensor images (N, H, W, T, C), labels (N, ...)) of a list or dataset."""
    if len(samples) == 0:
        raise ValueError("stack_samples: no samples")
    items = [samples[i] for i in range(len(samples))]
    images = np.stack([s.image for s in items])
    labels = np.stack([np.asarray(s.label) for s in items])
    integer = np.issubdtype(labels.dtype, np.integer) and labels.ndim == 1
    return images, labels.astype(np.int32) if integer else labels
