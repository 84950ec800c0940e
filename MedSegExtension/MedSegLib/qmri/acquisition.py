"""Protocol values (TI, TE, flip angle, TR) for a fit, from DICOM per-volume parameters or given by the user.

A relaxometry acquisition may arrive as one multi-volume series or as one series per TI/TE (GE stores each TI of
the hazen phantom data as its own series): ``combine_volumes`` stacks any number of loaded volumes that share a
grid, keeping each image's parameters, so one fit sees the whole acquisition.

When a standard tag is empty, ``dataset_parameters`` looks in the other documented places
(``dicom_loading_facts.md``, "TI / TE / cardiac delay"): the enhanced-MR functional groups (per-frame first, then
shared) and, for the inversion time, the Siemens CSA series header's ASCII protocol ``alTI[0]`` (microseconds, as
dcm2niix reads it). ``combine_volumes`` uses it for loaded series whose per-volume parameters lack a value.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

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

# where each value lives in enhanced MR objects: functional group sequence -> attribute (dicom_loading_facts.md)
ENHANCED_PLACES = {
    "InversionTime": ("MRModifierSequence", "InversionTimes", "(0018,9115)>(0018,9079)"),
    "EchoTime": ("MREchoSequence", "EffectiveEchoTime", "(0018,9114)>(0018,9082)"),
    "RepetitionTime": ("MRTimingAndRelatedParametersSequence", "RepetitionTime", "(0018,9112)>(0018,0080)"),
    "FlipAngle": ("MRTimingAndRelatedParametersSequence", "FlipAngle", "(0018,9112)>(0018,1314)"),
    "TriggerTime": ("CardiacSynchronizationSequence", "NominalCardiacTriggerDelayTime", "(0018,9118)>(0020,9153)"),
}
SIEMENS_CSA_CREATOR = "SIEMENS CSA HEADER"
SIEMENS_CSA_SERIES_ELEMENT = 0x20  # CSA Series header: element 0x20 of the creator's block in group 0029
_ALTI = re.compile(rb"alTI\[0\]\s*=\s*([0-9]+(?:\.[0-9]*)?)")


def places(tag: str) -> str:
    """The places searched for ``tag``, for error messages."""
    where = [TAG_NUMBERS.get(tag, tag)]
    if tag in ENHANCED_PLACES:
        where.append(f"enhanced {ENHANCED_PLACES[tag][2]}")
    if tag == "InversionTime":
        where.append("Siemens CSA series header alTI[0] (0029,xx20)")
    return ", ".join(where)


def _enhanced_value(ds: Any, sequence: str, keyword: str) -> Optional[float]:
    """First value of ``keyword`` in the first frame's functional group ``sequence`` (per-frame, else shared)."""
    for groups_keyword in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        groups = ds.get(groups_keyword)
        if not groups:
            continue
        group = groups[0].get(sequence)
        if group:
            value = _number(group[0].get(keyword))
            if value is not None:
                return value
    return None


def _siemens_inversion_time(ds: Any) -> Optional[float]:
    """``alTI[0]`` of the Siemens CSA series header's ASCII protocol, in ms (stored in microseconds)."""
    try:
        block = ds.private_block(0x0029, SIEMENS_CSA_CREATOR)
        raw = block[SIEMENS_CSA_SERIES_ELEMENT].value
    except (KeyError, ValueError, AttributeError):
        return None
    if not isinstance(raw, (bytes, bytearray)):
        return None
    match = _ALTI.search(bytes(raw))
    return float(match.group(1)) / 1000.0 if match else None


def dataset_parameters(ds: Any) -> Dict[str, Tuple[float, str]]:
    """Protocol values of one pydicom dataset as ``{keyword: (value, where it was found)}``.

    The standard attribute wins; an empty or absent one falls back to the enhanced-MR functional groups and, for
    InversionTime, to the Siemens CSA series protocol. Values missing everywhere are left out.
    """
    found: Dict[str, Tuple[float, str]] = {}
    for tag, number in TAG_NUMBERS.items():
        value = _number(ds.get(tag))
        where = number
        if value is None and tag in ENHANCED_PLACES:
            sequence, keyword, where = ENHANCED_PLACES[tag]
            value = _enhanced_value(ds, sequence, keyword)
        if value is None and tag == "InversionTime":
            value, where = _siemens_inversion_time(ds), "Siemens CSA alTI[0]"
        if value is not None:
            found[tag] = (value, where)
    return found


def _fill_from_files(item: Any, parameters: List[Dict[str, Any]]) -> None:
    """Complete missing per-volume values of a loaded DICOM series from the vendor places of its first file.

    Only values that are constant over the series can be recovered this way (the CSA protocol holds one TI), so a
    value is filled in only where every volume of the item lacks it.
    """
    files = list(getattr(item, "files", None) or [])
    wanted = [tag for tag in TAG_NUMBERS if all(_number(p.get(tag)) is None for p in parameters)]
    if not files or not wanted:
        return
    try:
        import pydicom

        ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - an unreadable header leaves the values missing (reported when needed)
        return
    found = dataset_parameters(ds)
    for tag in wanted:
        if tag in found:
            value, where = found[tag]
            for p in parameters:
                p[tag] = value
                p[f"{tag}Source"] = where


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
    if not isinstance(value, (str, bytes)) and hasattr(value, "__len__"):  # list, tuple, pydicom MultiValue
        value = value[0] if len(value) else None
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
        parameters = [dict(p) for p in (getattr(item, "per_volume", None) or [])]
        if len(parameters) != len(volumes):
            parameters = [dict(parameters[0]) for _ in volumes] if len(parameters) == 1 else [{} for _ in volumes]
        _fill_from_files(item, parameters)
        per_volume.extend(parameters)
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
            found, tag = trigger, "TriggerTime"
    if found is None or None in found:
        missing = count if found is None else sum(v is None for v in found)
        raise UserInputError(
            f"series '{acquisition.name}': {tag} missing in {missing} of {count} image(s) (looked in {places(tag)}); "
            "give the values explicitly"
        )
    _check_values(acquisition, tag, found)
    if len(set(found)) < 2:
        raise UserInputError(f"series '{acquisition.name}': {tag} is the same ({found[0]:g}) in every image")
    return [float(v) for v in found]


def _check_values(acquisition: Acquisition, tag: str, values: Sequence[Optional[float]]) -> None:
    """Physical sanity of protocol values: finite, and positive (TI may be 0 for a saturation-free reference)."""
    for index, value in enumerate(values):
        if value is None:
            continue
        bad = (
            not np.isfinite(value)
            or value < 0
            or (value == 0 and tag != "InversionTime")
            or (tag == "FlipAngle" and value > 180)
        )
        if bad:
            raise UserInputError(
                f"series '{acquisition.name}': {tag} {TAG_NUMBERS.get(tag, '')} of image {index + 1} is {value:g}, "
                "which is not a valid value; give the values explicitly"
            )


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
    if found is None or all(v is None for v in found):
        return None
    if None in found:
        raise UserInputError(
            f"series '{acquisition.name}': RepetitionTime missing in {sum(v is None for v in found)} of {count} "
            f"image(s) but present in the others (looked in {places('RepetitionTime')}); give --tr explicitly"
        )
    _check_values(acquisition, "RepetitionTime", found)
    return [float(v) for v in found]
