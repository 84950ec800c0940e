"""MedSeg Windowing: window/level presets and sliders for scalar volumes.

Window/level is display state of the volume's ``vtkMRMLScalarVolumeDisplayNode``; the logic turns
automatic window/level off before setting values, otherwise Slicer recomputes and overwrites them.
"""

import importlib
import importlib.util
import math
import os
import sys
from pathlib import Path
from typing import Annotated, Any, List, Optional, Tuple

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


from MedSegLib.slicer_support import import_part, resource_file, run_selftests  # noqa: E402


def _importMedSegLib(moduleName: str) -> Any:
    """Import a MedSegLib module lazily; a part that is not in this build becomes one readable error."""
    return import_part(moduleName, _)


def _resourceFile(owner: Any, relativePath: str) -> str:
    """``owner.resourcePath`` (installed layout) if the file is there, else the source tree's top-level Resources/."""
    return resource_file(owner.resourcePath(relativePath), relativePath)


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
Set the display window/level of a scalar volume from presets or with the WW/WL sliders. Presets are
3D Slicer's CT presets, published clinical CT windows and volume-adaptive (percentile) windows, plus
those of an optional user preset file (same JSON schema as Resources/Presets/window_presets.json).
Values are stored on the volume's display node, so they are saved with the scene and shown in every view.
<br><br>Command-line equivalent: <code>medseg window VOLUME --preset CT-Lung -o slice.png</code>
(or <code>--ww W --wl L</code>; <code>--presets FILE</code> adds a user preset file).
""")
        self.parent.acknowledgementText = _("""
Preset values follow 3D Slicer's Volumes module (VolumeDisplayPresets.json) so that MedSeg and Slicer
show the same image for the same preset name.
""")
        _useSourceTreeIcon(self)


#
# MedSegWindowingParameterNode
#


# Parameter bounds: wide enough for CT (HU), MR and float maps (e.g. 0..1); the sliders' visible range is
# narrowed to each volume's intensities (3 decimals, so WINDOW_MIN is representable).
WINDOW_MIN, WINDOW_MAX, LEVEL_MAX = 1e-3, 1e6, 1e6


@parameterNodeWrapper
class MedSegWindowingParameterNode:
    """Panel state; ``window``/``level`` mirror the selected volume's display node."""

    inputVolume: vtkMRMLScalarVolumeNode
    userPresetFile: Path
    window: Annotated[float, WithinRange(WINDOW_MIN, WINDOW_MAX)] = 400.0
    level: Annotated[float, WithinRange(-LEVEL_MAX, LEVEL_MAX)] = 40.0


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
        self._presetFile: Optional[Path] = None  # user preset file the buttons were built for

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiPath = _resourceFile(self, "UI/MedSegWindowing.ui")
        uiWidget = slicer.util.loadUI(uiPath)
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = MedSegWindowingLogic()
        qt.QGridLayout(self.ui.presetButtonsFrame).setContentsMargins(0, 0, 0, 0)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.autoButton.connect("clicked(bool)", self.onAutoButton)

        self.initializeParameterNode()

    def _createPresetButtons(self) -> None:
        """One button per preset of the library and the user's preset file (rebuilt when that file changes)."""
        layout = self.ui.presetButtonsFrame.layout()
        for button in self._presetButtons:
            layout.removeWidget(button)
            button.deleteLater()
        self._presetButtons = []
        userFile = self._parameterNode.userPresetFile
        self._presetFile = userFile
        presets = []
        for presetFile in (userFile, None):  # a broken user file: say why, and still offer the library
            try:
                presets = self.logic.presets(presetFile)
                break
            except Exception as error:
                self.ui.statusLabel.text = str(error)
        for index, preset in enumerate(presets):
            button = qt.QPushButton(preset.name)
            values = (_("computed from the volume") if preset.is_percentile else
                      _("WW {window:g}, WL {level:g}").format(window=preset.window, level=preset.level))
            button.toolTip = "\n".join(filter(None, [values, preset.description, preset.source]))
            button.connect("clicked(bool)", lambda checked, name=preset.name: self.onPresetButton(name))
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
        if self._parameterNode and (self._parameterNode.userPresetFile != self._presetFile or not self._presetButtons):
            self._createPresetButtons()
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
        window, level = min(max(window, WINDOW_MIN), WINDOW_MAX), min(max(level, -LEVEL_MAX), LEVEL_MAX)
        if self.logic.sameWindowLevel((window, level), (self._parameterNode.window, self._parameterNode.level)):
            return
        wasModified = self._parameterNode.StartModify()  # one Modified event, so W and L are applied together
        self._parameterNode.window = window
        self._parameterNode.level = level
        self._parameterNode.EndModify(wasModified)

    def _fitSliderRanges(self, volume) -> None:
        """Slider ranges follow the volume's intensities (and include its current W/L), for usable resolution."""
        low, high = volume.GetImageData().GetScalarRange() if volume.GetImageData() else (0.0, 1.0)
        span = max(high - low, WINDOW_MIN)
        window, level = self.logic.windowLevel(volume)
        self.ui.windowSliderWidget.setRange(WINDOW_MIN, min(max(2.0 * span, 1.5 * window), WINDOW_MAX))
        self.ui.levelSliderWidget.setRange(max(min(low - 0.5 * span, level), -LEVEL_MAX),
                                           min(max(high + 0.5 * span, level), LEVEL_MAX))

    def onPresetButton(self, presetName: str) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to apply the preset."), waitCursor=True):
            parameters = self._parameterNode
            window, level = self.logic.applyPreset(parameters.inputVolume, presetName, parameters.userPresetFile)
            self.ui.statusLabel.text = _("{preset}: WW {window:g}, WL {level:g}").format(
                preset=presetName, window=window, level=level)

    def onAutoButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to set automatic window/level."), waitCursor=True):
            self.logic.setAutoWindowLevel(self._parameterNode.inputVolume)
            self.ui.statusLabel.text = _("Automatic window/level")


#
# MedSegWindowingLogic
#


class MedSegWindowingLogic(ScriptedLoadableModuleLogic):
    """Presets come from MedSegLib.windowing.presets (shared with the command line); this class applies them."""

    # Differences below the sliders' resolution (3 decimals) are not changes: rounding in the GUI
    # must not switch a volume from automatic to fixed window/level.
    TOLERANCE = 0.0005

    def getParameterNode(self) -> MedSegWindowingParameterNode:
        return MedSegWindowingParameterNode(super().getParameterNode())

    @staticmethod
    def presets(userPresetFile: Optional[Path] = None) -> List[Any]:
        """The preset library plus the presets of ``userPresetFile`` (and of ``$MEDSEG_PRESETS``)."""
        presetsModule = _importMedSegLib("MedSegLib.windowing.presets")
        userFile = os.fspath(userPresetFile) if userPresetFile and os.fspath(userPresetFile) not in ("", ".") else None
        return presetsModule.load_presets([userFile] if userFile else None)

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

    def setWindowLevel(self, volumeNode, window: float, level: float, colorNodeID: Optional[str] = None) -> None:
        """Fixed window/level; auto W/L is switched off first or Slicer would overwrite the values."""
        displayNode = self.displayNode(volumeNode)
        wasModified = displayNode.StartModify()
        displayNode.SetAutoWindowLevel(0)
        displayNode.SetWindowLevel(window, level)
        if colorNodeID:
            displayNode.SetAndObserveColorNodeID(colorNodeID)
        displayNode.EndModify(wasModified)

    def applyPreset(self, volumeNode, presetName: str, userPresetFile: Optional[Path] = None) -> Tuple[float, float]:
        """Apply a preset by name, id or alias; percentile presets are computed from this volume's voxels."""
        presetsModule = _importMedSegLib("MedSegLib.windowing.presets")
        preset = presetsModule.find_preset(presetName, self.presets(userPresetFile))
        values = slicer.util.arrayFromVolume(volumeNode) if preset.is_percentile else None
        window, level = preset.window_level(values)
        self.setWindowLevel(volumeNode, window, level, preset.color)
        return window, level

    def setAutoWindowLevel(self, volumeNode) -> None:
        self.displayNode(volumeNode).SetAutoWindowLevel(1)


#
# MedSegWindowingTest
#


class MedSegWindowingTest(ScriptedLoadableModuleTest):
    """Window/level logic in the application, plus MedSegLib's windowing self-tests."""

    SELFTEST_MODULE = "MedSegLib.selftests.windowing_selftests"

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
        self.assertIn("CT-Lung", [preset.name for preset in logic.presets()])
        window, level = logic.applyPreset(volume, "CT_LUNG")  # Slicer's CT-Lung: W 1400, L -500
        displayNode = volume.GetDisplayNode()
        self.assertEqual((window, level), (1400.0, -500.0))
        self.assertEqual((displayNode.GetWindow(), displayNode.GetLevel()), (1400.0, -500.0))
        self.assertFalse(displayNode.GetAutoWindowLevel(), "auto W/L must be off after a preset")
        logic.setAutoWindowLevel(volume)
        self.assertTrue(displayNode.GetAutoWindowLevel())
        from MedSegLib.errors import UserInputError

        with self.assertRaises(UserInputError):
            logic.applyPreset(volume, "NO_SUCH_PRESET")

    def test_MedSegWindowing_selftests(self) -> None:
        run_selftests(self, self.SELFTEST_MODULE, slicer.mrmlScene, self.delayDisplay)
