"""Segment statistics (voxel count, volume, intensity summary) as CSV or JSON, for reports that travel with a SEG.

Computed on the reference grid, the same sampling the SEG export uses, so the numbers describe exactly the
exported voxels.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

PathLike = Union[str, Path]
COLUMNS = ("segment", "voxels", "volume_mm3", "volume_ml", "mean", "std", "min", "max", "median")


def segment_statistics(masks: Sequence[Any], values: Optional[np.ndarray], voxel_volume_mm3: float) -> List[Dict]:
    """One row per segment (``SegmentData``-like objects with ``name`` and ``mask``)."""
    rows = []
    for segment in masks:
        mask = np.asarray(segment.mask) >= 0.5
        count = int(mask.sum())
        row: Dict[str, Any] = {
            "segment": segment.name,
            "voxels": count,
            "volume_mm3": round(count * voxel_volume_mm3, 4),
            "volume_ml": round(count * voxel_volume_mm3 / 1000.0, 6),
        }
        if values is not None and count:
            inside = np.asarray(values)[mask].astype(np.float64)
            row.update(
                mean=float(inside.mean()),
                std=float(inside.std()),
                min=float(inside.min()),
                max=float(inside.max()),
                median=float(np.median(inside)),
            )
        rows.append(row)
    return rows


def write_statistics(rows: List[Dict], out_path: PathLike) -> Path:
    """``.json`` -> JSON list; anything else -> CSV with a fixed column order."""
    from MedSegLib.atomic import atomic_output

    out_path = Path(out_path)
    with atomic_output(out_path) as temp:
        if out_path.suffix.lower() == ".json":
            temp.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
        else:
            with open(temp, "w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)
    return out_path
