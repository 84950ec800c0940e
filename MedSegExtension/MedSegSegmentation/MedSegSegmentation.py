"""MedSeg Segmentation: classical (non-learning) segmentation of a scalar volume into a segment.

Methods (threshold, Otsu, region growing, watershed, level set) are implemented in
``MedSegLib.segmentation.classical`` and shared with the ``medseg segment`` command.
"""

import importlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any, Dict, Optional, Tuple

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, Default, FloatRange, RangeBounds, parameterNodeWrapper
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


def _importMedSegLib(moduleName: str) -> Any:
    """Import a MedSegLib module lazily; a part that is not in this build becomes one readable error."""
    try:
        return importlib.import_module(moduleName)
    except ModuleNotFoundError as error:
        if error.name and error.name.split(".")[0] == "MedSegLib":
            message = _("{module} is not available in this MedSeg build (missing {missing}).").format(
                module=moduleName, missing=error.name)
        else:
            message = _("{module} needs the Python package '{package}'.").format(module=moduleName, package=error.name)
        raise RuntimeError(message) from error


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
# MedSegSegmentation
#


class MedSegSegmentation(ScriptedLoadableModule):
    """Module description shown in the Slicer module panel and the generic module tests."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedSeg Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "MedSeg")]
        self.parent.dependencies = ["Segmentations"]
        self.parent.contributors = ["MedSeg developers (MedSeg project)"]
        self.parent.helpText = _("""
Segment a structure of a CT or MR volume with a classical method: intensity threshold, Otsu threshold,
region growing, watershed or level set. The threshold range gives the intensities of the structure
(Hounsfield units for CT); the result is written as one segment of the output segmentation and can be
edited further in the Segment Editor.
<br><br>Command-line equivalent: <code>medseg segment VOLUME --method threshold --range 200 3000 -o seg.seg.nrrd</code>.
""")
        self.parent.acknowledgementText = _("""
Segmentation filters from SimpleITK/ITK and VTK; segmentations are stored with 3D Slicer's segmentation
infrastructure so they open in the Segment Editor and Segment Statistics.
""")
        _useSourceTreeIcon(self)


# Panel label -> method id used by MedSegLib and the command line.
SEGMENTATION_METHODS: Dict[str, str] = {
    "Threshold": "threshold",
    "Otsu": "otsu",
    "Region growing": "region_growing",
    "Watershed": "watershed",
    "Level set": "level_set",
}


#
# MedSegSegmentationParameterNode
#


@parameterNodeWrapper
class MedSegSegmentationParameterNode:
    """Panel state kept in the scene, so the last method and range are restored with it."""

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    method: Annotated[str, Choice(list(SEGMENTATION_METHODS))] = "Threshold"
    thresholdRange: Annotated[FloatRange, RangeBounds(-32768.0, 65536.0),
                              Default(generator=lambda: FloatRange(200.0, 3000.0))]
    keepLargestIsland: bool = True
    segmentName: str = "Segment"


#
# MedSegSegmentationWidget
#


class MedSegSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Panel: inputs, method and range; Apply hands them to MedSegSegmentationLogic."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[MedSegSegmentationLogic] = None
        self._parameterNode: Optional[MedSegSegmentationParameterNode] = None
        self._parameterNodeGuiTag = None
        self._rangeFittedVolume = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiPath = _resourceFile(self, "UI/MedSegSegmentation.ui")
        uiWidget = slicer.util.loadUI(uiPath)
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = MedSegSegmentationLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)

        self.initializeParameterNode()

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

    def setParameterNode(self, inputParameterNode: Optional[MedSegSegmentationParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        self._rangeFittedVolume = None
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        volume = self._parameterNode.inputVolume if self._parameterNode else None
        if volume is not None and volume is not self._rangeFittedVolume and volume.GetImageData() is not None:
            # Range slider bounds follow the volume's intensities (and keep the current range reachable).
            self._rangeFittedVolume = volume
            low, high = volume.GetImageData().GetScalarRange()
            current = self._parameterNode.thresholdRange
            self.ui.thresholdRangeWidget.setRange(min(low, current.minimum), max(high, current.maximum))
        self.ui.applyButton.enabled = volume is not None
        self.ui.applyButton.toolTip = _("Run the selected method.") if volume else _("Select an input volume.")

    def onApplyButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Segmentation failed."), waitCursor=True):
            parameters = self._parameterNode
            segmentation = self.logic.ensureOutputSegmentation(parameters.inputVolume, parameters.outputSegmentation)
            parameters.outputSegmentation = segmentation
            segmentId = self.logic.segment(
                parameters.inputVolume, segmentation, parameters.method,
                (parameters.thresholdRange.minimum, parameters.thresholdRange.maximum),
                keepLargestIsland=parameters.keepLargestIsland, segmentName=parameters.segmentName)
            self.ui.statusLabel.text = _("Segment '{segment}' updated in {node}.").format(
                segment=segmentId, node=segmentation.GetName())


#
# MedSegSegmentationLogic
#


class MedSegSegmentationLogic(ScriptedLoadableModuleLogic):
    """Thin adapter from the panel to MedSegLib.segmentation.classical."""

    def getParameterNode(self) -> MedSegSegmentationParameterNode:
        return MedSegSegmentationParameterNode(super().getParameterNode())

    @staticmethod
    def ensureOutputSegmentation(inputVolume, segmentation=None) -> Any:
        """The given segmentation, or a new one named after the volume, on the volume's geometry."""
        if segmentation is None:
            scene = inputVolume.GetScene() or slicer.mrmlScene
            segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{inputVolume.GetName()} segmentation")
            segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(inputVolume)
        return segmentation

    def segment(self, inputVolume, outputSegmentation, method: str, thresholdRange: Tuple[float, float],
                keepLargestIsland: bool = True, segmentName: str = "Segment") -> str:
        """Run one classical method; ``method`` is a panel label or a MedSegLib id. Returns the segment ID."""
        if inputVolume is None or outputSegmentation is None:
            raise ValueError(_("Input volume and output segmentation are required."))
        methodId = SEGMENTATION_METHODS.get(method, method)
        if methodId not in SEGMENTATION_METHODS.values():
            raise ValueError(_("Unknown segmentation method: {method}").format(method=method))
        classical = _importMedSegLib("MedSegLib.segmentation.classical")
        return classical.segment_volume_node(
            inputVolume, outputSegmentation, method=methodId, threshold_range=tuple(thresholdRange),
            keep_largest_island=keepLargestIsland, segment_name=segmentName)


#
# MedSegSegmentationTest
#


class MedSegSegmentationTest(ScriptedLoadableModuleTest):
    """Segmentation logic in the application, plus MedSegLib's self-tests."""

    SELFTEST_MODULE = "MedSegLib.selftests.runtime_selftests"

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_MedSegSegmentation_outputSegmentation()
        self.setUp()
        self.test_MedSegSegmentation_selftests()

    def test_MedSegSegmentation_outputSegmentation(self) -> None:
        import numpy as np

        volume = slicer.util.addVolumeFromArray(np.zeros((4, 5, 6), dtype=np.int16), name="ct")
        logic = MedSegSegmentationLogic()
        segmentation = logic.ensureOutputSegmentation(volume)
        self.assertIsNotNone(segmentation)
        self.assertIs(logic.ensureOutputSegmentation(volume, segmentation), segmentation)
        with self.assertRaises(ValueError):
            logic.segment(volume, segmentation, "No such method", (0.0, 1.0))

    def test_MedSegSegmentation_selftests(self) -> None:
        try:
            selftests = importlib.import_module(self.SELFTEST_MODULE)
        except ImportError as error:
            self.fail(f"{self.SELFTEST_MODULE} cannot be imported: {error}")
        checks = getattr(selftests, "ALL_CHECKS", None) or {
            name: value for name, value in vars(selftests).items() if name.startswith("check_") and callable(value)}
        self.assertTrue(checks, f"{self.SELFTEST_MODULE} defines no check_* functions")
        for name, check in sorted(checks.items()):
            with self.subTest(check=name), tempfile.TemporaryDirectory(prefix="MedSegSegmentationTest-") as workDir:
                self.delayDisplay(f"Running {name}")
                slicer.mrmlScene.Clear()
                check(slicer.mrmlScene, Path(workDir))
