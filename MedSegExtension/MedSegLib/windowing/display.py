"""Window presets on MRML display nodes and in 3D Slicer's Volumes module preset list.

- :func:`apply_window` / :func:`apply_preset` set a ``vtkMRMLScalarVolumeDisplayNode``: auto W/L off
  first (otherwise the node's own Modified event recomputes auto W/L and overwrites the values), then
  window/level and colour node, in one modify batch (one render in the app).
- :func:`add_display_node_presets` registers presets on the display node itself
  (``AddWindowLevelPreset``): Slicer's subject-hierarchy "Window/level presets" menu lists them.
- :func:`register_volume_display_presets` writes a ``VolumeDisplayPresets.json`` (Slicer's own format,
  ``@schema`` key so 5.6+ read it) holding Slicer's presets followed by MedSeg's, and points the Volumes
  logic's share directory at it, so the presets appear as buttons in the Volumes module and work with
  ``ApplyVolumeDisplayPreset``. The logic reads that file only once: call this at startup (headless, an
  already initialised logic is replaced by a fresh one; in the app it returns False and the display-node
  presets remain).
- :func:`series_presets` turns the DICOM WindowCenter/Width pairs a loader put on the display node
  into presets named by their WindowCenterWidthExplanation.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from MedSegLib.windowing.presets import DEFAULT_COLOR, WindowPreset, library_path, load_presets, read_preset_file

SLICER_PRESETS_FILE = "VolumeDisplayPresets.json"
SLICER_SCHEMA_URL = (
    "https://raw.githubusercontent.com/Slicer/Slicer/main/Modules/Loadable/Volumes/Resources/Schema/"
    "volumes-display-presets-schema-v1.0.0.json#"
)
MEDSEG_ID_PREFIX = "MEDSEG_"
# Slicer's own preset icons (Qt resources of the Volumes widgets), reused so MedSeg's buttons are not blank.
_ICONS = {
    "LUNG": ":/Icons/WindowLevelPreset-Lung.png",
    "BONE": ":/Icons/WindowLevelPreset-CT-bone.png",
    "TEMPORAL_BONE": ":/Icons/WindowLevelPreset-CT-bone.png",
    "BRAIN": ":/Icons/WindowLevelPreset-Brain.png",
    "SUBDURAL": ":/Icons/WindowLevelPreset-Brain.png",
    "STROKE": ":/Icons/WindowLevelPreset-Brain.png",
}
_DEFAULT_ICON = ":/Icons/WindowLevelPreset-Abdomen.png"
# Attributes a loader may set with the WindowCenterWidthExplanation values (first found wins).
EXPLANATION_ATTRIBUTES = ("DICOM.WindowCenterWidthExplanation", "MedSeg.windowExplanations")


def apply_window(display_node: Any, window: float, level: float, color_node_id: Optional[str] = None) -> None:
    """Set W/L on a scalar volume display node so that it sticks (auto W/L off first)."""
    if window <= 0:
        raise ValueError(f"window must be > 0, got {window}")
    was_modifying = display_node.StartModify()
    try:
        display_node.SetAutoWindowLevel(0)
        display_node.SetWindowLevel(float(window), float(level))
        if color_node_id:
            display_node.SetAndObserveColorNodeID(color_node_id)
    finally:
        display_node.EndModify(was_modifying)


def apply_preset(volume_node: Any, preset: WindowPreset) -> Tuple[float, float]:
    """Apply a preset to a volume's display node (percentile presets read the voxels); returns (W, L)."""
    display = _display_node(volume_node)
    values = None
    if preset.is_percentile:
        import slicer

        values = slicer.util.arrayFromVolume(volume_node)
    window, level = preset.window_level(values)
    apply_window(display, window, level, preset.color or DEFAULT_COLOR)
    return window, level


def _display_node(volume_node: Any) -> Any:
    display = volume_node.GetScalarVolumeDisplayNode() if hasattr(volume_node, "GetScalarVolumeDisplayNode") else None
    if display is None:
        volume_node.CreateDefaultDisplayNodes()
        display = volume_node.GetScalarVolumeDisplayNode()
    if display is None:
        raise ValueError(f"{volume_node.GetName()!r} has no scalar volume display node")
    return display


def add_display_node_presets(volume_node: Any, presets: Sequence[WindowPreset]) -> int:
    """Add fixed presets to the display node's own preset list (skips pairs already there); returns count added."""
    display = _display_node(volume_node)
    existing = {
        (display.GetWindowPreset(i), display.GetLevelPreset(i)) for i in range(display.GetNumberOfWindowLevelPresets())
    }
    added = 0
    for preset in presets:
        if preset.is_percentile:
            continue
        pair = (float(preset.window), float(preset.level))
        if pair not in existing:
            display.AddWindowLevelPreset(*pair)
            existing.add(pair)
            added += 1
    return added


def _explanations(volume_node: Any) -> List[str]:
    for name in EXPLANATION_ATTRIBUTES:
        text = volume_node.GetAttribute(name)
        if not text:
            continue
        try:
            value = json.loads(text)
            if isinstance(value, list):
                return [str(v) for v in value]
        except json.JSONDecodeError:
            pass
        return [part.strip() for part in text.split("\\")]
    return []


def _series_aliases(index: int, explanation: str) -> Tuple[str, ...]:
    """``dicom:N``; ``dicom`` for the first pair; the explanation text (e.g. ``SOFT_TISSUE``)."""
    aliases = [f"dicom:{index + 1}"] + (["dicom"] if index == 0 else []) + ([explanation] if explanation else [])
    return tuple(aliases)


def series_presets(volume_node: Any) -> List[WindowPreset]:
    """The DICOM window pairs on the volume's display node as presets (in file order; the first is applied)."""
    display = volume_node.GetScalarVolumeDisplayNode() if volume_node is not None else None
    if display is None:
        return []
    explanations = _explanations(volume_node)
    presets = []
    for index in range(display.GetNumberOfWindowLevelPresets()):
        window, level = display.GetWindowPreset(index), display.GetLevelPreset(index)
        explanation = explanations[index] if index < len(explanations) else ""
        presets.append(
            WindowPreset(
                name=f"DICOM {index + 1}" + (f" ({explanation})" if explanation else ""),
                id=f"DICOM_{index + 1}",
                window=float(window),
                level=float(level),
                source="DICOM WindowCenter/WindowWidth of the series"
                + (f", WindowCenterWidthExplanation {explanation!r}" if explanation else ""),
                description=explanation,
                modality="any",
                group="dicom",
                aliases=_series_aliases(index, explanation),
            )
        )
    return presets


def slicer_preset_entries(presets: Sequence[WindowPreset]) -> List[Dict[str, Any]]:
    """MedSeg fixed presets as Slicer VolumeDisplayPresets entries (ids prefixed ``MEDSEG_``)."""
    entries = []
    for preset in presets:
        if preset.is_percentile:
            continue
        entries.append(
            {
                "id": medseg_slicer_preset_id(preset),
                "name": preset.name,
                "description": (preset.description or preset.name) + f" (MedSeg; {preset.source})",
                "window": float(preset.window),
                "level": float(preset.level),
                "color": preset.color or DEFAULT_COLOR,
                "icon": _ICONS.get(preset.id, _DEFAULT_ICON),
            }
        )
    return entries


def combined_presets_document(presets: Sequence[WindowPreset], base: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Slicer's presets (``base``: the JSON Slicer ships) followed by MedSeg's, skipping exact duplicates."""
    base_entries = list((base or {}).get("volumeDisplayPresets", []))
    known = {(e.get("name"), float(e.get("window", 0)), float(e.get("level", 0))) for e in base_entries}
    known_ids = {e.get("id") for e in base_entries}
    entries = list(base_entries)
    for entry in slicer_preset_entries(presets):
        if entry["id"] not in known_ids and (entry["name"], entry["window"], entry["level"]) not in known:
            entries.append(entry)
    return {"@schema": SLICER_SCHEMA_URL, "volumeDisplayPresets": entries}


def _read_base_document(share_dir: Optional[str]) -> Dict[str, Any]:
    if share_dir:
        path = Path(share_dir) / SLICER_PRESETS_FILE
        if path.is_file():
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                pass
    return {"volumeDisplayPresets": []}


def write_volume_display_presets(folder: Path, document: Dict[str, Any]) -> Path:
    """Write the combined JSON atomically into ``folder`` (which becomes the logic's share dir)."""
    from MedSegLib.atomic import atomic_output

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SLICER_PRESETS_FILE
    text = json.dumps(document, indent=2)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        with atomic_output(path) as temp_path:
            temp_path.write_text(text, encoding="utf-8")
    return path


def library_volume_display_presets_folder() -> Path:
    """Slicer's presets plus MedSeg's library, as a Volumes-logic share folder (written once per content).

    The headless runtime boots its Volumes logic on this folder, so MedSeg presets are in the
    Volumes preset list from the start (the logic reads its preset file only once).
    """
    from MedSegLib.resources import resource_path
    from MedSegLib.runtime import shared_temp_dir

    base_dir = str(resource_path("VolumeDisplayPresets"))
    document = combined_presets_document(read_preset_file(library_path(), library=True), _read_base_document(base_dir))
    digest = hashlib.sha1(json.dumps(document, sort_keys=True).encode()).hexdigest()[:12]
    folder = shared_temp_dir() / f"VolumeDisplayPresets-{digest}"
    if not (folder / "VolumeDisplayPresets.json").is_file():
        write_volume_display_presets(folder, document)
        (folder / ".medseg-base").write_text(base_dir, encoding="utf-8")
    return folder


def register_volume_display_presets(
    presets: Optional[Sequence[WindowPreset]] = None, logic: Any = None, folder: Optional[Path] = None
) -> bool:
    """Make MedSeg presets appear in the Volumes module's preset list; True when the logic now lists them."""
    from MedSegLib.runtime import boot, shared_temp_dir

    runtime = boot()
    logic = logic if logic is not None else runtime.logic("Volumes")
    presets = list(presets) if presets is not None else load_presets()
    current_dir = logic.GetModuleShareDirectory()
    base_dir = current_dir
    marker = Path(current_dir or "") / ".medseg-base"
    if marker.is_file():  # already a MedSeg folder: start again from Slicer's own file
        base_dir = marker.read_text(encoding="utf-8").strip()
    document = combined_presets_document(presets, _read_base_document(base_dir))
    digest = hashlib.sha1(json.dumps(document, sort_keys=True).encode()).hexdigest()[:12]
    folder = folder or shared_temp_dir() / f"VolumeDisplayPresets-{digest}"
    write_volume_display_presets(folder, document)
    (folder / ".medseg-base").write_text(base_dir or "", encoding="utf-8")
    wanted = {entry["id"] for entry in document["volumeDisplayPresets"]}
    logic.SetModuleShareDirectory(str(folder))
    if wanted <= set(logic.GetVolumeDisplayPresetIDs()):
        return True
    if runtime.in_application:
        return False  # the app's logic read its presets already; display-node presets still work
    _replace_headless_volumes_logic(runtime, str(folder))
    return wanted <= set(runtime.logic("Volumes").GetVolumeDisplayPresetIDs())


def _replace_headless_volumes_logic(runtime: Any, share_dir: str) -> None:
    """Headless only: a fresh Volumes logic reading ``share_dir`` replaces the initialised one everywhere."""
    import slicer

    logic = slicer.vtkSlicerVolumesLogic()
    logic.SetModuleShareDirectory(share_dir)
    logic.SetMRMLApplicationLogic(runtime.app_logic)
    logic.SetMRMLScene(runtime.scene)
    runtime.app_logic.SetModuleLogic("Volumes", logic)
    runtime.logics["Volumes"] = logic
    module = getattr(getattr(slicer, "modules", None), "volumes", None)
    if module is not None and hasattr(module, "_logic"):
        module._logic = logic


def medseg_slicer_preset_id(preset: WindowPreset) -> str:
    """The id a preset has in the Volumes logic (Slicer's own id for Slicer's presets)."""
    return preset.id if preset.group == "slicer" else MEDSEG_ID_PREFIX + preset.id


def current_window_level(volume_node: Any) -> Tuple[float, float]:
    """(window, level) now on the volume's display node."""
    display = _display_node(volume_node)
    return float(display.GetWindow()), float(display.GetLevel())


def window_level_range(values: np.ndarray) -> Tuple[float, float]:
    """Finite (min, max) of a volume: the natural range of the panel's W/L sliders."""
    array = np.asarray(values)
    if array.dtype.kind == "f":
        array = array[np.isfinite(array)]
    if array.size == 0:
        return 0.0, 1.0
    return float(array.min()), float(array.max())
