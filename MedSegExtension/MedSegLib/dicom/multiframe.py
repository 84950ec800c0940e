"""Enhanced multi-frame CT/MR: read per-frame geometry, rescale and MR parameters from the functional groups.

Why: in enhanced objects the top-level ImagePositionPatient, RescaleSlope and EchoTime are absent or wrong; every
frame carries its own values in the Per-frame Functional Groups (5200,9230), falling back to the Shared
Functional Groups (5200,9229). pydicom's helpers read only top-level tags, so a naive reader stacks frames
unsorted and unscaled. Each frame becomes one independent 2D frame for the generic splitting and sorting code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class EnhancedFrame:
    """One frame's geometry, scaling and acquisition parameters."""

    index: int
    position: np.ndarray | None
    orientation: np.ndarray | None
    pixel_spacing: tuple[float, float] | None
    slope: float | None = None  # None: no PixelValueTransformationSequence, use the top-level rescale
    intercept: float | None = None
    windows: list[tuple[float, float, str]] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    frame_type: tuple[str, ...] = ()


def _group(item, shared, keyword: str):
    """Functional group ``keyword`` for a frame: per-frame item first, then the shared item."""
    for source in (item, shared):
        if source is not None and keyword in source and len(source[keyword].value):
            return source[keyword].value[0]
    return None


def _floats(value) -> list[float]:
    if value is None:
        return []
    if isinstance(value, (int, float, str)):
        return [float(value)]
    return [float(v) for v in value]


def is_enhanced(ds) -> bool:
    """True for objects with per-frame or shared functional groups (enhanced CT/MR/PET, legacy converted)."""
    return "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds


def enhanced_frames(ds) -> list[EnhancedFrame]:
    """Per-frame values of an enhanced multi-frame dataset, in stored frame order."""
    n_frames = int(ds.get("NumberOfFrames") or 1)
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence") or [])
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    frames = []
    for index in range(n_frames):
        item = per_frame[index] if index < len(per_frame) else None
        position = orientation = spacing = None
        plane = _group(item, shared, "PlanePositionSequence")
        if plane is not None and "ImagePositionPatient" in plane:
            position = np.array(_floats(plane.ImagePositionPatient))
        plane_orientation = _group(item, shared, "PlaneOrientationSequence")
        if plane_orientation is not None and "ImageOrientationPatient" in plane_orientation:
            orientation = np.array(_floats(plane_orientation.ImageOrientationPatient))
        measures = _group(item, shared, "PixelMeasuresSequence")
        if measures is not None and "PixelSpacing" in measures:
            values = _floats(measures.PixelSpacing)
            spacing = (values[0], values[1])
        frame = EnhancedFrame(index, position, orientation, spacing)
        transform = _group(item, shared, "PixelValueTransformationSequence")
        if transform is not None:
            frame.slope = float(transform.get("RescaleSlope", 1.0) or 1.0)
            frame.intercept = float(transform.get("RescaleIntercept", 0.0) or 0.0)
        voi = _group(item, shared, "FrameVOILUTSequence")
        if voi is not None and "WindowCenter" in voi and "WindowWidth" in voi:
            centers, widths = _floats(voi.WindowCenter), _floats(voi.WindowWidth)
            explanations = voi.get("WindowCenterWidthExplanation") or []
            explanations = [explanations] if isinstance(explanations, str) else list(explanations)
            for number, (center, width) in enumerate(zip(centers, widths)):
                text = str(explanations[number]) if number < len(explanations) else ""
                frame.windows.append((center, width, text))
        content = _group(item, shared, "FrameContentSequence")
        if content is not None:
            for keyword in (
                "DimensionIndexValues",
                "StackID",
                "InStackPositionNumber",
                "TemporalPositionIndex",
                "FrameAcquisitionNumber",
            ):
                if keyword in content and content[keyword].value is not None:
                    value = content[keyword].value
                    frame.params[keyword] = (
                        tuple(int(v) for v in value)
                        if keyword == "DimensionIndexValues" and not isinstance(value, int)
                        else value
                    )
        echo = _group(item, shared, "MREchoSequence")
        if echo is not None and echo.get("EffectiveEchoTime") is not None:
            frame.params["EchoTime"] = float(echo.EffectiveEchoTime)
        modifier = _group(item, shared, "MRModifierSequence")
        if modifier is not None and modifier.get("InversionTimes") is not None:
            values = _floats(modifier.InversionTimes)
            if values:
                frame.params["InversionTime"] = values[0]
        timing = _group(item, shared, "MRTimingAndRelatedParametersSequence")
        if timing is not None:
            if timing.get("RepetitionTime") is not None:
                frame.params["RepetitionTime"] = float(timing.RepetitionTime)
            if timing.get("FlipAngle") is not None:
                frame.params["FlipAngle"] = float(timing.FlipAngle)
        diffusion = _group(item, shared, "MRDiffusionSequence")
        if diffusion is not None and diffusion.get("DiffusionBValue") is not None:
            frame.params["DiffusionBValue"] = float(diffusion.DiffusionBValue)
            directions = diffusion.get("DiffusionGradientDirectionSequence")
            if directions and "DiffusionGradientOrientation" in directions[0]:
                frame.params["DiffusionGradientOrientation"] = tuple(
                    _floats(directions[0].DiffusionGradientOrientation)
                )
        cardiac = _group(item, shared, "CardiacSynchronizationSequence")
        if cardiac is not None and cardiac.get("NominalCardiacTriggerDelayTime") is not None:
            frame.params["TriggerTime"] = float(cardiac.NominalCardiacTriggerDelayTime)
        frame_type = _group(item, shared, "MRImageFrameTypeSequence")
        frame_type = frame_type or _group(item, shared, "CTImageFrameTypeSequence")
        if frame_type is not None and "FrameType" in frame_type:
            frame.frame_type = tuple(str(v) for v in frame_type.FrameType)
        frames.append(frame)
    return frames
