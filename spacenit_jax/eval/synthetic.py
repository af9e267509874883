"""A labelled synthetic classification set: the built-in default for evaluation runs.

Real benchmarks need downloads; this set needs nothing and still has a learnable answer, so
the evaluation path (features -> kNN / probe -> scores) can run end to end anywhere. Samples
are sentinel2_l2a-like images in the same format as the GeoBench reader ((H, W, 1, 12)
float32, values around [0, 1] as after COMPUTED normalisation, timestamps [[1, 6, 2020]]).

Each class has a spectral signature (12 band levels) and a spatial texture (stripes of a
class-specific orientation and frequency); a sample is its class's signature modulated by the
texture at a random phase, with random brightness and per-pixel noise. The class is therefore
recoverable from the mean spectrum alone and also from the texture. Everything is a pure
function of (seed, split, index): class prototypes depend on the seed only, and sample i of
a split is the same however the set is accessed.
"""

from __future__ import annotations

import numpy as np

from spacenit_jax import sensors
from spacenit_jax.eval.samples import DEFAULT_TIMESTAMPS, EvalSample, stack_samples

SPLIT_SIZES = {"train": 300, "valid": 100, "test": 100}
_SPLIT_IDS = {"train": 0, "valid": 1, "test": 2}


class SyntheticClassification:
    """Deterministic labelled sentinel2_l2a-like images (see module docstring)."""

    sensor = "sentinel2_l2a"

    def __init__(self, split: str = "train", *, num_samples: int | None = None,
                 num_classes: int = 10, image_size: int = 32, seed: int = 0,
                 noise: float = 0.05):
        split = {"val": "valid", "validation": "valid"}.get(split, split)
        if split not in _SPLIT_IDS:
            raise ValueError(f"split must be one of {sorted(_SPLIT_IDS)}, got {split!r}")
        if num_classes < 2 or image_size < 4:
            raise ValueError(f"need num_classes >= 2 and image_size >= 4, got {num_classes}, "
                             f"{image_size}")
        self.split, self.num_classes, self.image_size = split, num_classes, image_size
        self.seed, self.noise = seed, noise
        self.num_samples = SPLIT_SIZES[split] if num_samples is None else num_samples
        channels = sensors.get(self.sensor).num_channels
        proto = np.random.default_rng([seed, 7919])
        self.signatures = proto.uniform(0.15, 0.85, (num_classes, channels))
        self.angles = proto.uniform(0.0, np.pi, num_classes)
        self.frequencies = proto.uniform(1.0, 4.0, num_classes) / image_size

    def __len__(self) -> int:
        return self.num_samples

    def label(self, index: int) -> int:
        """Classes cycle through the split so every split is balanced."""
        return index % self.num_classes

    def render(self, classes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(H, W, 1, C) float32 image whose pixel (y, x) shows class classes[y, x]."""
        yy, xx = np.mgrid[0 : self.image_size, 0 : self.image_size].astype(np.float64)
        proj = xx * np.cos(self.angles[classes]) + yy * np.sin(self.angles[classes])
        texture = np.sin(2 * np.pi * self.frequencies[classes] * proj + rng.uniform(0, 2 * np.pi))
        brightness = rng.uniform(0.9, 1.1)
        image = self.signatures[classes] * brightness * (1.0 + 0.25 * texture[..., None])
        image = image + rng.normal(0.0, self.noise, image.shape)
        return image[:, :, None, :].astype(np.float32)

    def _rng(self, index: int) -> np.random.Generator:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} outside [0, {self.num_samples})")
        return np.random.default_rng([self.seed, _SPLIT_IDS[self.split], index])

    def __getitem__(self, index: int) -> EvalSample:
        rng = self._rng(index)
        c = self.label(index)
        classes = np.full((self.image_size, self.image_size), c)
        return EvalSample(self.render(classes, rng), c, self.sensor,
                          f"synthetic_{self.split}_{index}", DEFAULT_TIMESTAMPS.copy())

    def load_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All samples stacked: images (N, H, W, 1, 12) and labels (N,)."""
        return stack_samples(self)


class SyntheticSegmentation(SyntheticClassification):
    """Per-pixel labels: the image is a grid of block x block tiles, each showing one class
    (the classification set's signature and texture); the label is the (H, W) int32 map of
    tile classes. A pure function of (seed, split, index) like the classification set."""

    def __init__(self, split: str = "train", *, block: int = 8, **kwargs):
        super().__init__(split, **kwargs)
        if block < 1 or self.image_size % block:
            raise ValueError(f"block {block} must divide image_size {self.image_size}")
        self.block = block

    def label(self, index: int) -> np.ndarray:
        tiles = self.image_size // self.block
        classes = self._rng(index).integers(0, self.num_classes, (tiles, tiles))
        return np.kron(classes, np.ones((self.block, self.block), np.int64)).astype(np.int32)

    def __getitem__(self, index: int) -> EvalSample:
        labels = self.label(index)
        image = self.render(labels, np.random.default_rng([self.seed, _SPLIT_IDS[self.split],
                                                           index, 1]))
        return EvalSample(image, labels, self.sensor, f"synthetic_seg_{self.split}_{index}",
                          DEFAULT_TIMESTAMPS.copy())
