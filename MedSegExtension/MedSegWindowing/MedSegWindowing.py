"""MedSeg Windowing: window/level presets and sliders for scalar volumes.

Window/level is display state of the volume's ``vtkMRMLScalarVolumeDisplayNode``; the logic turns
automatic window/level off before setting values, otherwise Slicer recomputes and overwrites them.
"""

import glob
import importlib
import importlib.util
import json
import logging
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any, Dict, List, Optional, Tuple

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


def _ensureMedSegLibImportable() -> None:
    """Installed, MedSegLib sits next to this file (already on sys.path); in a source checkout it is one folder up."""
    if importlib.util.find_spec("MedSegLib") is None:
        extensionSourceDir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if os.path.isdir(os.path.join(extensionSourceDir, "MedSegLib")):
            sys.path.insert(0, extensionSourceDir)


_ensureMedSegLibImportable()


def _resourceFile(owner: Any, relativePath: str) -> str:
    """``owner.resourcePath`` (installed layout) if the file is there, else the source tree's top-level Resources/."""
    installedPath = owner.resourcePath(relativePath)
    if os.path.isfile(installedPath):
        return installedPath
    from MedSegLib.resources import resource_path

    return str(resource_path(*relativePath.split("/")))


def _useSourceTreeIcon(module: Any) -> None:
    """ScriptedLoadableModule finds the icon only when installed; from a source checkout take Resources/Icons."""
    if module.parent.icon.isNull():
        iconPath = _resourceFile(module, f"Icons/{module.moduleName}.png")
        if os.path.isfile(iconPath):
            module.parent.icon = qt.QIcon(iconPath)


#
# MedSegWindowing
#


class MedSegWindowing(ScriptedLoadableModule):
    """Module description shown in the Slicer module panel and the generic module tests."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedSeg Windowing")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "MedSeg")]
        self.parent.dependencies = ["Volumes"]
        self.parent.contributors = ["MedSeg developers (MedSeg project)"]
        self.parent.helpText = _("""
Set the display window/level of a scalar volume from presets (CT bone, lung, brain, abdomen, air and any
preset file in Resources/Presets) or with the WW/WL sliders. Values are stored on the volume's display
node, so they are saved with the scene and shown in every slice view.
<br><br>Command-line equivalent: <code>medseg window VOLUME --preset CT_LUNG -o slices.png</code>
(or <code>--window W --level L</code>).
""")
        self.parent.acknowledgementText = _("""
Preset values follow 3D Slicer's Volumes module (VolumeDisplayPresets.json) so that MedSeg and Slicer
show the same image for the same preset name.
""")
        _useSourceTreeIcon(self)


#
# MedSegWindowingParameterNode
#


@parameterNodeWrapper
class MedSegWindowingParameterNode:
    """Panel state; ``window``/``level`` mirror the selected volume's display node."""

    inputVolume: vtkMRMLScalarVolumeNode
    window: Annotated[float, WithinRange(1.0, 65536.0)] = 400.0
    level: Annotated[float, WithinRange(-32768.0, 65536.0)] = 40.0


#
# MedSegWindowingWidget
#


class MedSegWindowingWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Panel: preset buttons and WW/WL sliders; the display node is changed only through the logic."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[MedSegWindowingLogic] = None
        self._parameterNode: Optional[MedSegWindowingParameterNode] = None
        self._parameterNodeGuiTag = None
        self._observedDisplayNode = None
        self._switchingVolume = False
        self._presetButtons: List[qt.QPushButton] = []

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiPath = _resourceFile(self, "UI/MedSegWindowing.ui")
        uiWidget = slicer.util.loadUI(uiPath)
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = MedSegWindowingLogic()
        self._createPresetButtons()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.autoButton.connect("clicked(bool)", self.onAutoButton)

        self.initializeParameterNode()

    def _createPresetButtons(self) -> None:
        layout = qt.QGridLayout(self.ui.presetButtonsFrame)
        layout.setContentsMargins(0, 0, 0, 0)
        for index, preset in enumerate(self.logic.presets()):
            button = qt.QPushButton(preset["name"])
            button.toolTip = _("WW {window:g}, WL {level:g}").format(window=preset["window"], level=preset["level"])
            button.enabled = False
            button.connect("clicked(bool)", lambda checked, presetId=preset["id"]: self.onPresetButton(presetId))
            layout.addWidget(button, index // 3, index % 3)
            self._presetButtons.append(button)

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def setParameterNode(self, inputParameterNode: Optional[MedSegWindowingParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._observeDisplayNode(None)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        """A new volume: show its current window/level. Same volume: push slider values to it."""
        if self._switchingVolume:
            return
        volume = self._parameterNode.inputVolume if self._parameterNode else None
        for button in self._presetButtons + [self.ui.autoButton]:
            button.enabled = volume is not None
        if volume is None:
            self._observeDisplayNode(None)
            return
        displayNode = self.logic.displayNode(volume)
        if displayNode is not self._observedDisplayNode:
            # Slider range changes and value rounding while switching must not write back to the new volume.
            self._switchingVolume = True
            try:
                self._observeDisplayNode(displayNode)
                self._fitSliderRanges(volume)
                self._onDisplayNodeModified()
            finally:
                self._switchingVolume = False
            return
        sliderValues = (self._parameterNode.window, self._parameterNode.level)
        # Echoes of the volume's own values (selection, rounding) must not switch it to fixed W/L.
        if not self.logic.sameWindowLevel(self.logic.windowLevel(volume), sliderValues):
            self.logic.setWindowLevel(volume, *sliderValues)

    def _observeDisplayNode(self, displayNode) -> None:
        if self._observedDisplayNode is not None:
            self.removeObserver(self._observedDisplayNode, vtk.vtkCommand.ModifiedEvent, self._onDisplayNodeModified)
        self._observedDisplayNode = displayNode
        if displayNode is not None:
            self.addObserver(displayNode, vtk.vtkCommand.ModifiedEvent, self._onDisplayNodeModified)

    def _onDisplayNodeModified(self, caller=None, event=None) -> None:
        """Window/level changed elsewhere (slice view drag, another module): follow it in the sliders."""
        if not self._parameterNode or not self._parameterNode.inputVolume:
            return
        window, level = self.logic.windowLevel(self._parameterNode.inputVolume)
        if self.logic.sameWindowLevel((window, level), (self._parameterNode.window, self._parameterNode.level)):
            return
        wasModified = self._parameterNode.StartModify()  # one Modified event, so W and L are applied together
        self._parameterNode.window = window
        self._parameterNode.level = level
        self._parameterNode.EndModify(wasModified)

    def _fitSliderRanges(self, volume) -> None:
        """Slider ranges follow the volume's intensities (and include its current W/L), for usable resolution."""
        low, high = volume.GetImageData().GetScalarRange() if volume.GetImageData() else (0.0, 1.0)
        span = max(high - low, 1.0)
        window, level = self.logic.windowLevel(volume)
        self.ui.windowSliderWidget.setRange(1.0, min(max(2.0 * span, 1.5 * window), 65536.0))
        self.ui.levelSliderWidget.setRange(max(min(low - 0.5 * span, level), -32768.0),
                                           min(max(high + 0.5 * span, level), 65536.0))

    def onPresetButton(self, presetId: str) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to apply the preset."), waitCursor=True):
            window, level = self.logic.applyPreset(self._parameterNode.inputVolume, presetId)
            self.ui.statusLabel.text = _("{preset}: WW {window:g}, WL {level:g}").format(
                preset=presetId, window=window, level=level)

    def onAutoButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to set automatic window/level."), waitCursor=True):
            self.logic.setAutoWindowLevel(self._parameterNode.inputVolume)
            self.ui.statusLabel.text = _("Automatic window/level")


#
# MedSegWindowingLogic
#


class MedSegWindowingLogic(ScriptedLoadableModuleLogic):
    """Preset table plus the three display-node operations the panel needs."""

    # Slicer's VolumeDisplayPresets.json CT presets (id, name, window, level): same names, same image.
    BUILTIN_PRESETS: Tuple[Tuple[str, str, float, float], ...] = (
        ("CT_ABDOMEN", "CT-Abdomen", 350.0, 40.0),
        ("CT_BRAIN", "CT-Brain", 100.0, 50.0),
        ("CT_BONE", "CT-Bone", 1000.0, 400.0),
        ("CT_LUNG", "CT-Lung", 1400.0, -500.0),
        ("CT_AIR", "CT-Air", 1000.0, -426.0),
    )

    # Differences below the sliders' resolution (1 decimal) are not changes: rounding in the GUI
    # must not switch a volume from automatic to fixed window/level.
    TOLERANCE = 0.05

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._presets: Optional[List[Dict[str, Any]]] = None

    def getParameterNode(self) -> MedSegWindowingParameterNode:
        return MedSegWindowingParameterNode(super().getParameterNode())

    def presets(self) -> List[Dict[str, Any]]:
        """Built-in presets, then those of every Resources/Presets/*.json in Slicer's volumeDisplayPresets format.

        A file preset with a built-in id replaces it; files in other formats are ignored.
        """
        if self._presets is None:
            byId = {presetId: {"id": presetId, "name": name, "window": window, "level": level}
                    for presetId, name, window, level in self.BUILTIN_PRESETS}
            for path in self._presetFiles():
                try:
                    with open(path, encoding="utf-8") as file:
                        entries = json.load(file).get("volumeDisplayPresets", [])
                    for entry in entries:
                        byId[entry["id"]] = {"id": entry["id"], "name": entry.get("name", entry["id"]),
                                             "window": float(entry["window"]), "level": float(entry["level"])}
                except (OSError, ValueError, KeyError, AttributeError, TypeError) as error:
                    logging.warning(f"MedSegWindowing: skipping preset file {path}: {error}")
            self._presets = list(byId.values())
        return self._presets

    @staticmethod
    def _presetFiles() -> List[str]:
        try:
            from MedSegLib.resources import resource_path

            presetDir = resource_path("Presets")
        except (ImportError, FileNotFoundError):
            return []
        return sorted(glob.glob(os.path.join(str(presetDir), "*.json")))

    def preset(self, presetId: str) -> Dict[str, Any]:
        for preset in self.presets():
            if preset["id"] == presetId:
                return preset
        raise ValueError(_("Unknown window/level preset: {preset}").format(preset=presetId))

    @staticmethod
    def displayNode(volumeNode) -> Any:
        """The volume's scalar display node, created if the volume has none yet."""
        if volumeNode.GetDisplayNode() is None:
            volumeNode.CreateDefaultDisplayNodes()
        return volumeNode.GetDisplayNode()

    def windowLevel(self, volumeNode) -> Tuple[float, float]:
        displayNode = self.displayNode(volumeNode)
        return displayNode.GetWindow(), displayNode.GetLevel()

    @classmethod
    def sameWindowLevel(cls, first: Tuple[float, float], second: Tuple[float, float]) -> bool:
        return all(math.isclose(a, b, abs_tol=cls.TOLERANCE) for a, b in zip(first, second))

    def setWindowLevel(self, volumeNode, window: float, level: float) -> None:
        """Fixed window/level; auto W/L is switched off first or Slicer would overwrite the values."""
        displayNode = self.displayNode(volumeNode)
        wasModified = displayNode.StartModify()
        displayNode.SetAutoWindowLevel(0)
        displayNode.SetWindowLevel(window, level)
        displayNode.EndModify(wasModified)

    def applyPreset(self, volumeNode, presetId: str) -> Tuple[float, float]:
        preset = self.preset(presetId)
        self.setWindowLevel(volumeNode, preset["window"], preset["level"])
        return preset["window"], preset["level"]

    def setAutoWindowLevel(self, volumeNode) -> None:
        self.displayNode(volumeNode).SetAutoWindowLevel(1)


#
# MedSegWindowingTest
#


class MedSegWindowingTest(ScriptedLoadableModuleTest):
    """Window/level logic in the application, plus MedSegLib's runtime self-tests."""

    SELFTEST_MODULE = "MedSegLib.selftests.runtime_selftests"

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_MedSegWindowing_presets()
        self.setUp()
        self.test_MedSegWindowing_selftests()

    def test_MedSegWindowing_presets(self) -> None:
        import numpy as np

        voxels = np.random.default_rng(0).integers(-1000, 1000, size=(4, 5, 6)).astype(np.int16)
        volume = slicer.util.addVolumeFromArray(voxels, name="windowing")
        logic = MedSegWindowingLogic()
        window, level = logic.applyPreset(volume, "CT_LUNG")
        displayNode = volume.GetDisplayNode()
        self.assertEqual((window, level), (1400.0, -500.0))
        self.assertEqual((displayNode.GetWindow(), displayNode.GetLevel()), (1400.0, -500.0))
        self.assertFalse(displayNode.GetAutoWindowLevel(), "auto W/L must be off after a preset")
        logic.setAutoWindowLevel(volume)
        self.assertTrue(displayNode.GetAutoWindowLevel())
        with self.assertRaises(ValueError):
            logic.applyPreset(volume, "NO_SUCH_PRESET")

    def test_MedSegWindowing_selftests(self) -> None:
        try:
            selftests = importlib.import_module(self.SELFTEST_MODULE)
        except ImportError as error:
            self.fail(f"{self.SELFTEST_MODULE} cannot be imported: {error}")
        checks = getattr(selftests, "ALL_CHECKS", None) or {
            name: value for name, value in vars(selftests).items() if name.startswith("check_") and callable(value)}
        self.assertTrue(checks, f"{self.SELFTEST_MODULE} defines no check_* functions")
        for name, check in sorted(checks.items()):
            with self.subTest(check=name), tempfile.TemporaryDirectory(prefix="MedSegWindowingTest-") as workDir:
                self.delayDisplay(f"Running {name}")
                slicer.mrmlScene.Clear()
                check(slicer.mrmlScene, Path(workDir))
