"""One code path, two hosts: the running 3D Slicer application, or slicer-core headless.

Inside 3D Slicer the application already provides ``slicer.mrmlScene``, ``slicer.app`` and
``slicer.modules.<name>.logic()``; :func:`boot` then only records them. Headless, :func:`boot`
builds the same objects from the real MRML libraries shipped by the PyPI package ``slicer-core``
(as trame-slicer does): a ``vtkMRMLScene``, a ``vtkSlicerApplicationLogic`` with the default
colour nodes, and the module logics that batch work needs. It then publishes
``slicer.mrmlScene`` and a ``slicer.modules`` namespace so that ``slicer.util`` helpers
(``arrayFromVolume``, ``updateSegmentBinaryLabelmapFromArray``, ...) work unchanged.

Boot is lazy (nothing happens on import) and idempotent (a second call returns the same runtime).
"""

from __future__ import annotations

import os
import sys
import threading
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from MedSegLib.resources import resource_path


def _volume_presets_share_dir() -> Path:
    """Slicer's built-in display presets plus MedSeg's window preset library, in Slicer's format."""
    from MedSegLib.windowing.display import library_volume_display_presets_folder

    return library_volume_display_presets_folder()


def _terminologies_share_dir() -> Path:
    """MedSeg's SNOMED CT subset, under the file names the Terminologies logic loads by default."""
    return resource_path("Terminologies")


# Module name (as Slicer's ``slicer.modules.<lowercase>`` uses it) -> (logic class name, share-folder provider).
_HEADLESS_MODULE_LOGICS: Dict[str, Tuple[str, Optional[Callable[[], Path]]]] = {
    "Volumes": ("vtkSlicerVolumesLogic", _volume_presets_share_dir),
    "Segmentations": ("vtkSlicerSegmentationsModuleLogic", None),
    "SubjectHierarchy": ("vtkSlicerSubjectHierarchyModuleLogic", None),
    "Terminologies": ("vtkSlicerTerminologiesModuleLogic", _terminologies_share_dir),
    "Markups": ("vtkSlicerMarkupsLogic", None),
    "Sequences": ("vtkSlicerSequencesLogic", None),
    "Tables": ("vtkSlicerTablesLogic", None),
    "Transforms": ("vtkSlicerTransformLogic", None),
    "Models": ("vtkSlicerModelsLogic", None),
    "Data": ("vtkSlicerDataModuleLogic", None),
    "CropVolume": ("vtkSlicerCropVolumeLogic", None),
}


class _HeadlessModule:
    """What ``slicer.modules.<name>`` offers headless: the module's name and its logic."""

    def __init__(self, name: str, logic: Any) -> None:
        self.name = name
        self.title = name
        self._logic = logic

    def logic(self) -> Any:
        return self._logic

    def __repr__(self) -> str:
        return f"<headless Slicer module {self.name}>"


@dataclass
class SlicerRuntime:
    """The MRML scene and logics that MedSeg code works with, whichever host provides them."""

    scene: Any
    app_logic: Any
    in_application: bool
    slicer_version: str
    logics: Dict[str, Any] = field(default_factory=dict)

    def logic(self, module_name: str) -> Any:
        """Logic of a Slicer module by its name ("Volumes", "Segmentations", ...)."""
        if self.in_application:
            import slicer

            return getattr(slicer.modules, module_name.lower()).logic()
        try:
            return self.logics[module_name]
        except KeyError:
            raise KeyError(f"module logic {module_name!r} is not available headless") from None

    @property
    def host_description(self) -> str:
        if self.in_application:
            return f"3D Slicer {self.slicer_version}"
        return f"headless slicer-core {self.slicer_version}"


_runtime: Optional[SlicerRuntime] = None
_boot_lock = threading.Lock()


def in_slicer_application() -> bool:
    """True when running inside the 3D Slicer application (``slicer.app`` exists)."""
    slicer_module = sys.modules.get("slicer")
    if slicer_module is None:
        try:
            import slicer as slicer_module  # noqa: F811
        except ImportError:
            return False
    return getattr(slicer_module, "app", None) is not None and hasattr(slicer_module, "mrmlScene")


def slicer_core_version() -> str:
    """Version of the slicer-core wheel (headless host)."""
    from importlib import metadata

    try:
        return metadata.version("slicer-core")
    except metadata.PackageNotFoundError:
        return "unknown"


def boot() -> SlicerRuntime:
    """Return the runtime, booting slicer-core headless on first use."""
    global _runtime
    if _runtime is not None:
        return _runtime
    with _boot_lock:
        if _runtime is None:
            _runtime = _attach_to_application() if in_slicer_application() else _boot_headless()
    return _runtime


def get_scene() -> Any:
    """The scene logic should work on: ``slicer.mrmlScene`` in both hosts."""
    return boot().scene


def resolve_scene(scene: Any = None) -> Any:
    """``scene`` if given, else the runtime's scene (booting it when needed)."""
    return scene if scene is not None else get_scene()


def _attach_to_application() -> SlicerRuntime:
    import slicer

    version = f"{slicer.app.majorVersion}.{slicer.app.minorVersion}.{slicer.app.patchVersion}"
    return SlicerRuntime(
        scene=slicer.mrmlScene,
        app_logic=slicer.app.applicationLogic(),
        in_application=True,
        slicer_version=version,
    )


def _silence_vtk_output_window() -> None:
    """Route VTK warnings to stderr text instead of a popup/stdout so CLI output stays clean."""
    import vtk

    output = vtk.vtkFileOutputWindow()
    output.SetFileName(os.devnull if os.environ.get("MEDSEG_VTK_QUIET", "1") == "1" else "/dev/stderr")
    vtk.vtkOutputWindow.SetInstance(output)


def _boot_headless() -> SlicerRuntime:
    import slicer
    import vtk

    _silence_vtk_output_window()
    scene = slicer.vtkMRMLScene()
    crosshair = slicer.vtkMRMLCrosshairNode()
    crosshair.SetName("Crosshair")
    crosshair.SetSingletonTag("default")
    scene.AddNode(crosshair)

    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    color_logic = app_logic.GetColorLogic()
    color_logic.SetMRMLScene(scene)
    color_logic.AddDefaultColorNodes()
    app_logic.SetSliceLogics(vtk.vtkCollection())
    app_logic.SetViewLogics(vtk.vtkCollection())

    logics: Dict[str, Any] = {"Colors": color_logic}
    app_logic.SetModuleLogic("Colors", color_logic)
    for module_name, (class_name, share_dir) in _HEADLESS_MODULE_LOGICS.items():
        logic_class = getattr(slicer, class_name, None)
        if logic_class is None:
            continue
        logic = logic_class()
        if share_dir is not None:  # before the scene, which makes some logics read their share folder
            logic.SetModuleShareDirectory(str(share_dir()))
        logic.SetMRMLApplicationLogic(app_logic)
        logic.SetMRMLScene(scene)
        app_logic.SetModuleLogic(module_name, logic)
        logics[module_name] = logic

    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene, True)

    # Publish what the application would, so slicer.util works unchanged.
    slicer.mrmlScene = scene
    modules = types.SimpleNamespace()
    for module_name, logic in logics.items():
        setattr(modules, module_name.lower(), _HeadlessModule(module_name, logic))
    slicer.modules = modules
    return SlicerRuntime(
        scene=scene,
        app_logic=app_logic,
        in_application=False,
        slicer_version=slicer_core_version(),
        logics=logics,
    )


def clear_scene(scene: Any = None) -> None:
    """Empty the scene the way Slicer's File > Close Scene does (keeps singletons and colours)."""
    resolve_scene(scene).Clear(0)


def module_logic(module_name: str) -> Any:
    """Logic of a Slicer module in either host."""
    return boot().logic(module_name)


def shared_temp_dir() -> Path:
    """Scratch folder for intermediate files (never inside user input folders)."""
    import tempfile

    path = Path(tempfile.gettempdir()) / "medseg"
    path.mkdir(parents=True, exist_ok=True)
    return path
