"""Training and calibration volumes: read, normalise and resample to the model grid once (MONAI CacheDataset)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..model.checkpoint import ModelConfig
from ..prep.preprocess import prepare


def load_volumes(paths: Sequence[str], cfg: ModelConfig, cache_workers: int = 0) -> list[tuple[np.ndarray, int]]:
    """Read + normalise + resample volumes through a MONAI CacheDataset; returns (model-grid array, stride)."""
    from monai.data import CacheDataset
    from monai.transforms import Lambda

    from ...io import read_volume

    def _load(item: dict) -> dict:
        arr, geom = read_volume(item["path"])
        prep = prepare(arr, geom.spacing, cfg, None)
        return {"image": prep.data, "stride": prep.stride}

    ds = CacheDataset([{"path": str(p)} for p in paths], transform=Lambda(_load),
                      num_workers=cache_workers, progress=False)
    return [(ds[i]["image"], int(ds[i]["stride"])) for i in range(len(ds))]
