"""Sensor registry: the 18 sensors of the original SpaceNit, their bands and geometry.

Everything that depends on a sensor (band order, spectral groups, pixel pitch, how many
tokens it produces) is read from here, so a new sensor is one `register(SensorSpec(...))`.
Band order within a sensor is the concatenation of its spectral groups: this is the
channel order of stored arrays, of normalisation statistics and of the model's inputs.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence

FINEST_PIXEL_PITCH = 0.625  # metres; every pitch is an integer multiple of this
TILE_EDGE_PIXELS = 256
MISSING_VALUE = -99999  # pixel value of missing raster cells / timesteps (never written to disk)
MAX_TEMPORAL_DEPTH = 12
REFERENCE_GSD = 10.0  # metres
SAR_NODATA = -32768
TEMPORAL_FIELDS = ("day", "month", "year")  # month stored 0-based


class SensorKind(enum.Enum):
    SPACE_TIME = "space+time"
    SPACE = "space"
    TIME = "time"
    CONSTANT = "constant"


@dataclasses.dataclass(frozen=True)
class SpectralGroup:
    """Bands sampled at one native resolution; the unit of tokenization."""

    bands: tuple[str, ...]
    scale_factor: int  # native pixel pitch = 0.625 m * scale_factor

    @property
    def pixel_pitch(self) -> float:
        return FINEST_PIXEL_PITCH * self.scale_factor


@dataclasses.dataclass(frozen=True)
class SensorSpec:
    label: str
    coverage_scale: int  # a tile covers 256 px * 0.625 m * coverage_scale
    groups: tuple[SpectralGroup, ...]
    temporal: bool
    skip_csv_parsing: bool = False
    tile_size_multiplier: int = 1  # stored edge = 256*m (m > 0) or 256 // |m| (m < 0)

    @property
    def bands(self) -> tuple[str, ...]:
        return tuple(b for g in self.groups for b in g.bands)

    @property
    def num_channels(self) -> int:
        return len(self.bands)

    @property
    def num_groups(self) -> int:
        return len(self.groups)

    @property
    def group_channel_indices(self) -> tuple[tuple[int, ...], ...]:
        out, start = [], 0
        for g in self.groups:
            out.append(tuple(range(start, start + len(g.bands))))
            start += len(g.bands)
        return tuple(out)

    @property
    def coverage_pitch(self) -> float:
        return FINEST_PIXEL_PITCH * self.coverage_scale

    @property
    def stored_tile_edge(self) -> int:
        m = self.tile_size_multiplier
        return TILE_EDGE_PIXELS * m if m > 0 else TILE_EDGE_PIXELS // abs(m)

    @property
    def pixels_per_base_pixel(self) -> int:
        """Stored pixels per 10 m base-grid pixel along one axis (4 for naip_10)."""
        return max(self.tile_size_multiplier, 1)

    @property
    def stored_pixel_pitch(self) -> float:
        """Metres per stored pixel (all groups are resampled to the sensor grid on disk)."""
        return self.coverage_pitch / self.pixels_per_base_pixel

    @property
    def kind(self) -> SensorKind:
        in_space = self.coverage_pitch > 0 and self.stored_tile_edge > 1
        if in_space:
            return SensorKind.SPACE_TIME if self.temporal else SensorKind.SPACE
        return SensorKind.TIME if self.temporal else SensorKind.CONSTANT

    @property
    def is_spatial(self) -> bool:
        return self.kind in (SensorKind.SPACE_TIME, SensorKind.SPACE)


_REGISTRY: dict[str, SensorSpec] = {}


def register(spec: SensorSpec) -> SensorSpec:
    if spec.label in _REGISTRY:
        raise ValueError(f"sensor {spec.label!r} is already registered")
    if not spec.groups or any(not g.bands for g in spec.groups):
        raise ValueError(f"sensor {spec.label!r} needs at least one non-empty spectral group")
    if len(set(spec.bands)) != len(spec.bands):
        raise ValueError(f"sensor {spec.label!r} has duplicate band names")
    _REGISTRY[spec.label] = spec
    return spec


def get(label: str) -> SensorSpec:
    try:
        return _REGISTRY[label]
    except KeyError:
        raise KeyError(
            f"unknown sensor {label!r}; known sensors: {', '.join(_REGISTRY)}"
        ) from None


def all_labels() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def _g(bands: Sequence[str], scale: int) -> SpectralGroup:
    return SpectralGroup(tuple(bands), scale)


_S2_10M = ("B02", "B03", "B04", "B08")
_S2_20M = ("B05", "B06", "B07", "B8A", "B11", "B12")
OSM_CLASSES = (
    "aerialway_pylon", "aerodrome", "airstrip", "amenity_fuel", "building", "chimney",
    "communications_tower", "crane", "flagpole", "fountain", "generator_wind", "helipad",
    "highway", "leisure", "lighthouse", "obelisk", "observatory", "parking",
    "petroleum_well", "power_plant", "power_substation", "power_tower", "river", "runway",
    "satellite_dish", "silo", "storage_tank", "taxiway", "water_tower", "works",
)  # fmt: skip
ERA5_VARIABLES = (
    "2m-temperature", "2m-dewpoint-temperature", "surface-pressure",
    "10m-u-component-of-wind", "10m-v-component-of-wind", "total-precipitation",
)  # fmt: skip
WORLDCEREAL_BANDS = (
    "tc-annual-temporarycrops-classification", "tc-maize-main-irrigation-classification",
    "tc-maize-main-maize-classification", "tc-maize-second-irrigation-classification",
    "tc-maize-second-maize-classification", "tc-springcereals-springcereals-classification",
    "tc-wintercereals-irrigation-classification", "tc-wintercereals-wintercereals-classification",
)  # fmt: skip

# Registration order of the original (this index is not the model's sensor id).
SENTINEL2_L2A = register(SensorSpec(
    "sentinel2_l2a", 16, (_g(_S2_10M, 16), _g(_S2_20M, 32), _g(("B01", "B09"), 64)), True))
SENTINEL1 = register(SensorSpec("sentinel1", 16, (_g(("vv", "vh"), 16),), True))
SENTINEL2 = register(SensorSpec(
    "sentinel2", 16, (_g(_S2_10M, 16), _g(_S2_20M, 32), _g(("B01", "B09", "B10"), 64)), True))
LANDSAT = register(SensorSpec("landsat", 16, (
    _g(("B8",), 16),
    _g(("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B9", "B10", "B11"), 32)), True))
NAIP = register(SensorSpec("naip", 1, (_g(("R", "G", "B", "IR"), 1),), False))
NAIP_10 = register(SensorSpec(
    "naip_10", 16, (_g(("R", "G", "B", "IR"), 1),), False, tile_size_multiplier=4))
WORLDCOVER = register(SensorSpec("worldcover", 16, (_g(("B1",), 16),), False))
WORLDCEREAL = register(SensorSpec("worldcereal", 16, (_g(WORLDCEREAL_BANDS, 16),), False))
SRTM = register(SensorSpec("srtm", 16, (_g(("srtm",), 16),), False))
OPENSTREETMAP = register(SensorSpec(
    "openstreetmap", 16, (_g(OSM_CLASSES, 1),), False, skip_csv_parsing=True))
OPENSTREETMAP_RASTER = register(SensorSpec(
    "openstreetmap_raster", 16, (_g(OSM_CLASSES, 4),), False))
ERA5 = register(SensorSpec("era5", 256, (_g(ERA5_VARIABLES, 256),), True, skip_csv_parsing=True))
ERA5_10 = register(SensorSpec(
    "era5_10", 16, (_g(ERA5_VARIABLES, 4096),), True, tile_size_multiplier=-256))
LATLON = register(SensorSpec("latlon", 0, (_g(("lat", "lon"), 0),), False, skip_csv_parsing=True))
GSE = register(SensorSpec("gse", 16, (_g(tuple(f"A{i:02d}" for i in range(64)), 16),), False))
CDL = register(SensorSpec("cdl", 16, (_g(("cdl",), 16),), False))
WORLDPOP = register(SensorSpec("worldpop", 16, (_g(("B1",), 16),), False))
WRI_CANOPY_HEIGHT_MAP = register(SensorSpec("wri_canopy_height_map", 16, (_g(("B1",), 16),), False))

# The official training sensor set; its order defines sensor ids and token order.
OFFICIAL_SENSORS = (
    "sentinel2_l2a", "sentinel1", "landsat", "worldcover", "srtm",
    "openstreetmap_raster", "wri_canopy_height_map", "cdl", "worldcereal",
)  # fmt: skip
# Sensors the official masking decodes only (map-like products).
OFFICIAL_DECODE_ONLY = (
    "worldcover", "srtm", "openstreetmap_raster", "wri_canopy_height_map", "cdl", "worldcereal",
)  # fmt: skip
