"""Load and save MRML nodes the same way in 3D Slicer and headless.

Everything goes through MRML storage nodes (``vtkMRMLVolumeArchetypeStorageNode``,
``vtkMRMLSegmentationStorageNode``, ``vtkMRMLMarkupsJsonStorageNode``, ``vtkMRMLTableStorageNode``),
which exist in both hosts, instead of ``slicer.util.loadVolume`` / ``saveNode`` that need the Qt
application. Every write is atomic: temp file in the target folder, then rename.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from MedSegLib.atomic import atomic_output
from MedSegLib.errors import UserInputError
from MedSegLib.runtime import boot, resolve_scene

PathLike = Union[str, "os.PathLike[str]"]

VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
SEGMENTATION_SUFFIXES = (".seg.nrrd", ".seg.nhdr")


def _lower_name(path: PathLike) -> str:
    return Path(path).name.lower()


def is_segmentation_file(path: PathLike) -> bool:
    return _lower_name(path).endswith(SEGMENTATION_SUFFIXES)


def is_volume_file(path: PathLike) -> bool:
    name = _lower_name(path)
    return name.endswith(VOLUME_SUFFIXES) and not is_segmentation_file(path)


def default_node_name(path: PathLike) -> str:
    """File name without its (possibly compound) extension, as Slicer names loaded nodes."""
    name = Path(path).name
    for suffix in SEGMENTATION_SUFFIXES + (".mrk.json", ".nii.gz") + VOLUME_SUFFIXES + (".csv", ".tsv", ".json"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def _require_file(path: PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise UserInputError("file not found", path)
    if not path.is_file():
        raise UserInputError("is not a file", path)
    return path


def _read_with_storage_node(node: Any, storage: Any, path: Path, scene: Any) -> Any:
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        scene.RemoveNode(storage)
        raise UserInputError(f"could not be read as {node.GetClassName().replace('vtkMRML', '')}", path)
    node.SetAndObserveStorageNodeID(storage.GetID())
    return node


def load_volume(path: PathLike, scene: Any = None, name: Optional[str] = None, label: bool = False) -> Any:
    """Load a scalar volume (or label map) file: .nrrd, .nii, .nii.gz, .mha, .mhd."""
    boot()
    path = _require_file(path)
    if not is_volume_file(path):
        raise UserInputError(f"unsupported volume format (expected one of {', '.join(VOLUME_SUFFIXES)})", path)
    scene = resolve_scene(scene)
    node_class = "vtkMRMLLabelMapVolumeNode" if label else "vtkMRMLScalarVolumeNode"
    node = scene.AddNewNodeByClass(node_class, name or default_node_name(path))
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetSingleFile(True)  # never pick up neighbouring files as a series
    _read_with_storage_node(node, storage, path, scene)
    node.CreateDefaultDisplayNodes()
    return node


def load_segmentation(path: PathLike, scene: Any = None, name: Optional[str] = None) -> Any:
    """Load a ``.seg.nrrd`` segmentation (segment names, colours, terminology kept)."""
    boot()
    path = _require_file(path)
    scene = resolve_scene(scene)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name or default_node_name(path))
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    _read_with_storage_node(node, storage, path, scene)
    node.CreateDefaultDisplayNodes()
    return node


def load_markups(path: PathLike, scene: Any = None) -> Any:
    """Load a ``.mrk.json`` markups file as the node class it declares (point list, line, curve, ROI...)."""
    boot()
    path = _require_file(path)
    scene = resolve_scene(scene)
    storage = scene.AddNewNodeByClass("vtkMRMLMarkupsJsonStorageNode")
    markups_types: List[str] = []
    storage.GetMarkupsTypesInFile(str(path), markups_types)
    if not markups_types:
        scene.RemoveNode(storage)
        raise UserInputError("holds no markups", path)
    # Markups node classes are named after the type in the file: "Line" -> vtkMRMLMarkupsLineNode.
    node = scene.AddNewNodeByClass(f"vtkMRMLMarkups{markups_types[0]}Node", default_node_name(path))
    if node is None:
        scene.RemoveNode(storage)
        raise UserInputError(f"unsupported markups type {markups_types[0]!r}", path)
    _read_with_storage_node(node, storage, path, scene)
    node.CreateDefaultDisplayNodes()
    return node


def load_table(path: PathLike, scene: Any = None) -> Any:
    """Load a ``.csv`` / ``.tsv`` table."""
    boot()
    path = _require_file(path)
    scene = resolve_scene(scene)
    node = scene.AddNewNodeByClass("vtkMRMLTableNode", default_node_name(path))
    storage = scene.AddNewNodeByClass("vtkMRMLTableStorageNode")
    return _read_with_storage_node(node, storage, path, scene)


def load_node(path: PathLike, scene: Any = None) -> Any:
    """Load any supported file, choosing the node type from the file name."""
    name = _lower_name(path)
    if is_segmentation_file(path):
        return load_segmentation(path, scene)
    if name.endswith(".mrk.json"):
        return load_markups(path, scene)
    if name.endswith((".csv", ".tsv")):
        return load_table(path, scene)
    if is_volume_file(path):
        return load_volume(path, scene)
    raise UserInputError("unsupported file type", path)


def save_node(node: Any, path: PathLike, compress: bool = True) -> Path:
    """Write a storable node to ``path`` atomically; the node keeps pointing at ``path``.

    The node's default storage node decides the format from the extension (e.g. NRRD, NIfTI,
    .seg.nrrd, .mrk.json, .csv).
    """
    path = Path(path)
    scene = node.GetScene()
    storage = node.GetStorageNode()
    if storage is None:
        storage = node.CreateDefaultStorageNode()
        if storage is None:
            raise UserInputError(f"node {node.GetName()!r} cannot be saved to a file", path)
        scene.AddNode(storage)
        node.SetAndObserveStorageNodeID(storage.GetID())
    if hasattr(storage, "SetUseCompression"):
        storage.SetUseCompression(1 if compress else 0)
    with atomic_output(path) as temp_path:
        storage.SetFileName(str(temp_path))
        if not storage.WriteData(node):
            raise UserInputError(f"could not write {node.GetName()!r}", path)
    storage.SetFileName(str(path))
    return path


def export_segmentation_to_labelmap(
    segmentation_node: Any, path: PathLike, reference_volume: Any = None, segment_ids: Optional[List[str]] = None
) -> Dict[str, Path]:
    """Write segments as one label map (.nii.gz / .nrrd) plus its label table (Slicer ``.ctbl``).

    Label value i+1 is segment i (in segment order); the colour table beside it lists
    ``value name R G B A`` so 3D Slicer and other tools recover names and colours.
    """
    import vtk

    boot()
    scene = segmentation_node.GetScene()
    path = Path(path)
    logic = boot().logic("Segmentations")
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{segmentation_node.GetName()}-label")
    try:
        ids = vtk.vtkStringArray()
        segmentation = segmentation_node.GetSegmentation()
        wanted = segment_ids if segment_ids is not None else list(segmentation.GetSegmentIDs())
        for segment_id in wanted:
            ids.InsertNextValue(segment_id)
        colors = scene.AddNewNodeByClass("vtkMRMLColorTableNode", f"{segmentation_node.GetName()}-labels")
        colors.SetTypeToUser()
        colors.SetNumberOfColors(len(wanted) + 1)
        colors.SetColor(0, "Background", 0.0, 0.0, 0.0, 0.0)
        for value, segment_id in enumerate(wanted, start=1):
            segment = segmentation.GetSegment(segment_id)
            r, g, b = segment.GetColor()
            colors.SetColor(value, segment.GetName(), r, g, b, 1.0)
        if reference_volume is not None:
            ok = logic.ExportSegmentsToLabelmapNode(segmentation_node, ids, labelmap, reference_volume)
        else:
            ok = logic.ExportSegmentsToLabelmapNode(segmentation_node, ids, labelmap)
        if not ok:
            raise UserInputError("could not export segments to a label map", path)
        labelmap.GetDisplayNode().SetAndObserveColorNodeID(colors.GetID())
        save_node(labelmap, path)
        table_path = label_table_path(path)
        save_node(colors, table_path)
        return {"labelmap": path, "label_table": table_path}
    finally:
        storage = labelmap.GetStorageNode()
        if storage is not None:
            scene.RemoveNode(storage)
        scene.RemoveNode(labelmap)


def label_table_path(labelmap_path: PathLike) -> Path:
    """``seg.nii.gz`` -> ``seg.ctbl``: the colour table written beside an exported label map."""
    path = Path(labelmap_path)
    return path.with_name(default_node_name(path) + ".ctbl")


def import_labelmap_as_segmentation(labelmap_path: PathLike, scene: Any = None, name: Optional[str] = None) -> Any:
    """Load a label map (+ its ``.ctbl`` if present) as a segmentation node, one segment per label."""
    scene = resolve_scene(scene)
    labelmap = load_volume(labelmap_path, scene, label=True)
    table_path = label_table_path(labelmap_path)
    colors = None
    if table_path.exists():
        colors = scene.AddNewNodeByClass("vtkMRMLColorTableNode", default_node_name(table_path))
        storage = scene.AddNewNodeByClass("vtkMRMLColorTableStorageNode")
        _read_with_storage_node(colors, storage, table_path, scene)
        labelmap.GetDisplayNode().SetAndObserveColorNodeID(colors.GetID())
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name or default_node_name(labelmap_path))
    segmentation.CreateDefaultDisplayNodes()
    if not boot().logic("Segmentations").ImportLabelmapToSegmentationNode(labelmap, segmentation):
        raise UserInputError("could not import the label map as segments", labelmap_path)
    scene.RemoveNode(labelmap)
    return segmentation


def save_scene_bundle(path: PathLike, scene: Any = None) -> Path:
    """Save the whole scene as an MRML bundle (``.mrb``) that 3D Slicer opens.

    Nodes without a storage node get one; the bundle holds ``<name>.mrml`` and ``Data/``.
    """
    runtime = boot()
    scene = resolve_scene(scene)
    path = Path(path)
    if path.suffix.lower() != ".mrb":
        raise UserInputError("a scene bundle must have the .mrb extension", path)
    with tempfile.TemporaryDirectory(prefix="medseg-mrb-") as work:
        bundle_dir = Path(work) / default_node_name(path)
        bundle_dir.mkdir()
        original_url = scene.GetURL()
        original_root = scene.GetRootDirectory()
        try:
            if not runtime.app_logic.SaveSceneToSlicerDataBundleDirectory(str(bundle_dir), None):
                raise UserInputError("could not save the scene bundle", path)
        finally:
            scene.SetURL(original_url)
            scene.SetRootDirectory(original_root)
        with atomic_output(path) as temp_path:
            if not runtime.app_logic.Zip(str(temp_path), str(bundle_dir)):
                raise UserInputError("could not write the zip archive", path)
    return path


def load_scene_bundle(path: PathLike, scene: Any = None, clear: bool = True) -> Any:
    """Open an ``.mrb`` bundle into the scene (cleared first unless ``clear`` is False)."""
    runtime = boot()
    scene = resolve_scene(scene)
    path = _require_file(path)
    extract_dir = Path(tempfile.mkdtemp(prefix="medseg-mrb-open-"))
    try:
        if clear:
            scene.Clear(0)
        scene_file = runtime.app_logic.UnpackSlicerDataBundle(str(path), str(extract_dir))
        if not scene_file:
            raise UserInputError("is not a valid MRML bundle (no .mrml inside)", path)
        scene.SetURL(scene_file)
        if not scene.Import():
            raise UserInputError("the scene in the bundle could not be read", path)
        _read_all_storable_nodes(scene)
    finally:
        shutil.rmtree(extract_dir, ignore_errors=True)
    return scene


def _read_all_storable_nodes(scene: Any) -> None:
    """Make sure bulk data is in memory before the extracted files are deleted."""
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        if not node.IsA("vtkMRMLStorableNode"):
            continue
        storage = node.GetStorageNode()
        if storage is None or not storage.GetFileName():
            continue
        if node.IsA("vtkMRMLVolumeNode") and node.GetImageData() is not None:
            continue
        storage.ReadData(node)
