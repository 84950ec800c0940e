"""Windowed renderings -> DICOM Secondary Capture (highdicom), in the study of the source series.

A rendered slice or montage (uint8 grey or RGB, e.g. from ``MedSegLib.windowing``) is a picture, not a measurement:
Secondary Capture is the object every PACS viewer displays, and placing it in the source study keeps it next to
the images it shows.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Union

import numpy as np

from MedSegLib.errors import UserInputError
from MedSegLib.export.reference import ReferenceSeries, equipment, mark_laterality_unknown

PathLike = Union[str, Path]


def write_secondary_capture(
    image: np.ndarray,
    reference: ReferenceSeries,
    out_path: PathLike,
    series_description: str = "MedSeg rendering",
    series_number: int = 903,
    instance_number: int = 1,
    deidentify: Any = None,
) -> Path:
    """Write a (rows, cols) grey or (rows, cols, 3) RGB uint8 image as a Secondary Capture in the source study."""
    import highdicom as hd

    from MedSegLib.atomic import atomic_output

    pixels = np.asarray(image)
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise UserInputError(
            f"a Secondary Capture needs a uint8 (rows, cols) or (rows, cols, 3) image, got "
            f"{pixels.dtype} {pixels.shape}"
        )
    photometric = "RGB" if pixels.ndim == 3 else "MONOCHROME2"
    with warnings.catch_warnings():  # source names like "HEAD" draw a person-name style warning
        warnings.filterwarnings("ignore", message=".*intended person name")
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=reference.datasets[0],
            pixel_array=np.ascontiguousarray(pixels),
            photometric_interpretation=photometric,
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=hd.UID(),
            series_number=series_number,
            sop_instance_uid=hd.UID(),
            instance_number=instance_number,
            manufacturer=equipment()["manufacturer"],
            patient_orientation=("L", "P"),
            transfer_syntax_uid="1.2.840.10008.1.2.1",
        )
    sc.SeriesDescription = series_description[:64]
    mark_laterality_unknown(sc)
    if deidentify is not None:
        deidentify.apply(sc)
    with atomic_output(out_path) as temp:
        sc.save_as(temp)
    return Path(out_path)
