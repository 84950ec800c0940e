"""Protocol values (TI, TE, flip angle, TR) for a fit, from DICOM per-volume parameters or given by the user.

A relaxometry acquisition may arrive as one multi-volume series or as one series per TI/TE (GE stores each TI of
the hazen phantom data as its own series): ``combine_volumes`` stacks any number of loaded volumes that share a
grid, keeping each image's parameters, so one fit sees the whole acquisition.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from MedSegLib.errors import UserInputError

PER_VOLUME_ATTRIBUTE = "MedSeg.perVolumeParameters"

# model -> the DICOM attribute that varies between its images
VARYING_TAG = {
    "ir": "InversionTime",
    "molli": "InversionTime",
    "vfa": "FlipAngle",
    "t2": "EchoTime",
    "epg": "EchoTime",
    "t2star": "EchoTime",
}
TAG_NUMBERS = {
    "InversionTime": "(0018,0082)",
    "EchoTime": "(0018,0081)",
    "FlipAngle": "(0018,1314)",
    "RepetitionTime": "(0018,0080)",
    "TriggerTime": "(0018,1060)",
}


@dataclass
class Acquisition:
    """Images (N, k, j, i) of one relaxometry acquisition with their geometry and per-image parameters."""

    array: np.ndarray
    ijk_to_ras: np.ndarray
    per_volume: List[Dict[str, Any]] = field(default_factory=list)
    name: str = "qMRI"

    def values(self, tag: str) -> Optional[List[Optional[float]]]:
        if not self.per_volume:
            return None
        return [_number(item.get(tag)) for item in self.per_volume]


def _number(value: Any) -> Optional[float]:
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
        if value is None:
            return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def combine_volumes(items: Sequence[Any], name: Optional[str] = None) -> Acquisition:
    """Stack loader results (``LoadedVolume``-like: ``array``, ``ijk_to_ras``, ``per_volume``) into one acquisition.

    3D items count as one image each, 4D items as their volumes; all must share the voxel grid.
    """
    arrays: List[np.ndarray] = []
    per_volume: List[Dict[str, Any]] = []
    reference = None
    for item in items:
        array = np.asarray(item.array)
        matrix = np.asarray(item.ijk_to_ras, dtype=np.float64)
        volumes = array if array.ndim == 4 else array[None]
        if reference is None:
            reference = (volumes.shape[1:], matrix, getattr(item, "name", "qMRI"))
        elif volumes.shape[1:] != reference[0] or not np.allclose(matrix, reference[1], atol=1e-3):
            raise UserInputError(
                f"series '{getattr(item, 'name', '?')}' is not on the same voxel grid as '{reference[2]}' "
                f"({volumes.shape[1:]} vs {reference[0]}); one acquisition must share position and matrix"
            )
        arrays.extend(volumes)
        parameters = list(getattr(item, "per_volume", None) or [])
        if len(parameters) != len(volumes):
            parameters = parameters[:1] * len(volumes) if len(parameters) == 1 else [{} for _ in volumes]
        per_volume.extend(dict(p) for p in parameters)
    if reference is None:
        raise UserInputError("no images to fit")
    return Acquisition(np.stack(arrays), reference[1], per_volume, name or reference[2])


def acquisition_from_sequence(sequence: Any) -> Acquisition:
    """Arrays and per-volume DICOM parameters of a ``vtkMRMLSequenceNode`` of scalar volumes."""
    from MedSegLib.volume_nodes import array_and_ijk_to_ras

    count = sequence.GetNumberOfDataNodes()
    arrays = []
    matrix = None
    for index in range(count):
        array, ijk_to_ras = array_and_ijk_to_ras(sequence.GetNthDataNode(index), copy=True)
        arrays.append(array)
        matrix = ijk_to_ras if matrix is None else matrix
    text = sequence.GetAttribute(PER_VOLUME_ATTRIBUTE)
    per_volume = json.loads(text) if text else []
    if len(per_volume) != count:
        # no DICOM parameters: the sequence index values are the acquisition values
        index_name = sequence.GetIndexName() or "value"
        per_volume = [{index_name: _number(sequence.GetNthIndexValue(i))} for i in range(count)]
    return Acquisition(np.stack(arrays), matrix, per_volume, sequence.GetName())


def protocol_values(acquisition: Acquisition, model: str, explicit: Optional[Sequence[float]] = None) -> List[float]:
    """The varying acquisition value of each image (TI, FA or TE); explicit values win over DICOM."""
    count = acquisition.array.shape[0]
    tag = VARYING_TAG[model]
    if explicit is not None:
        values = [float(v) for v in explicit]
        if len(values) != count:
            raise UserInputError(f"{len(values)} {tag} values given for {count} images of '{acquisition.name}'")
        return values
    found = acquisition.values(tag)
    if model == "molli" and (found is None or None in found or len(set(found)) < count):
        trigger = acquisition.values("TriggerTime")
        if trigger is not None and None not in trigger and len(set(trigger)) == count:
            found = trigger
    if found is None or None in found:
        raise UserInputError(
            f"series '{acquisition.name}': {tag} {TAG_NUMBERS.get(tag, '')} missing in "
            f"{'all' if found is None else sum(v is None for v in found)} image(s); give the values explicitly"
        )
    if len(set(found)) < 2:
        raise UserInputError(f"series '{acquisition.name}': {tag} is the same ({found[0]:g}) in every image")
    return [float(v) for v in found]


def repetition_times(
    acquisition: Acquisition, explicit: Optional[Sequence[float] | float] = None
) -> Optional[List[float]]:
    """TR per image (explicit value(s) or DICOM); None when unknown."""
    count = acquisition.array.shape[0]
    if explicit is not None:
        values = np.atleast_1d(np.asarray(explicit, dtype=np.float64)).tolist()
        if len(values) == 1:
            return values * count
        if len(values) != count:
            raise UserInputError(f"{len(values)} TR values given for {count} images of '{acquisition.name}'")
        return values
    found = acquisition.values("RepetitionTime")
    if found is None or None in found:
        return None
    return [float(v) for v in found]
