"""MedSeg Deep Learning: run a trained segmentation network on a volume (sliding-window inference).

Model loading, pre-processing, patch inference and label import live in
``MedSegLib.deep_learning.inference`` and are shared with the ``medseg deepseg infer`` command.
"""

import importlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any, List, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
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
# MedSegDeepLearning
#


class MedSegDeepLearning(ScriptedLoadableModule):
    """Module description shown in the Slicer module panel and the generic module tests."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedSeg Deep Learning")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "MedSeg")]
        self.parent.dependencies = ["Segmentations", "MedSegSegmentation"]
        self.parent.contributors = ["MedSeg developers (MedSeg project)"]
        self.parent.helpText = _("""
Segment a volume with a trained 3D network: the volume is resampled and normalised as the model expects,
processed patch by patch with a sliding window (the overlap sets how much neighbouring patches share),
and every label of the model becomes a segment of the output segmentation. Runs on the GPU (CUDA) when
available, else on the CPU; Cancel stops after the current patch.
<br><br>Command-line equivalent:
<code>medseg deepseg infer VOLUME --model MODEL --device cpu --overlap 0.25 -o seg.seg.nrrd</code>.
""")
        self.parent.acknowledgementText = _("""
Inference with PyTorch (and MONAI-style sliding-window inference); segmentations use 3D Slicer's
segmentation infrastructure.
""")
        _useSourceTreeIcon(self)


INFERENCE_DEVICES = ("auto", "cpu", "cuda", "mps")


#
# MedSegDeepLearningParameterNode
#


@parameterNodeWrapper
class MedSegDeepLearningParameterNode:
    """Panel state kept in the scene (model path, device and overlap are restored with it)."""

    inputVolume: vtkMRMLScalarVolumeNode
    modelPath: Path
    outputSegmentation: vtkMRMLSegmentationNode
    device: Annotated[str, Choice(list(INFERENCE_DEVICES))] = "auto"
    overlap: Annotated[float, WithinRange(0.0, 0.9)] = 0.25


#
# MedSegDeepLearningWidget
#


class MedSegDeepLearningWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Panel: inputs, Run/Cancel and a progress bar; inference itself runs in MedSegDeepLearningLogic."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[MedSegDeepLearningLogic] = None
        self._parameterNode: Optional[MedSegDeepLearningParameterNode] = None
        self._parameterNodeGuiTag = None
        self._cancelToken = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiPath = _resourceFile(self, "UI/MedSegDeepLearning.ui")
        uiWidget = slicer.util.loadUI(uiPath)
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = MedSegDeepLearningLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.runButton.connect("clicked(bool)", self.onRunButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.importModelButton.connect("clicked(bool)", self.onImportModelButton)
        self.ui.installedModelComboBox.connect("activated(int)", self.onInstalledModelChosen)
        self._refreshInstalledModels()

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.onCancelButton()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.onCancelButton()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def setParameterNode(self, inputParameterNode: Optional[MedSegDeepLearningParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtonStates)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtonStates)
        self._updateButtonStates()

    def _updateButtonStates(self, caller=None, event=None) -> None:
        running = self._cancelToken is not None
        ready = (self._parameterNode is not None and self._parameterNode.inputVolume is not None
                 and os.path.exists(str(self._parameterNode.modelPath)) and str(self._parameterNode.modelPath) != ".")
        self.ui.runButton.enabled = ready and not running
        self.ui.runButton.toolTip = _("Run the model on the input volume.") if ready else _(
            "Select an input volume and a model.")
        self.ui.cancelButton.enabled = running

    def _onProgress(self, fraction: float, message: str = "") -> None:
        self.ui.progressBar.value = int(round(100 * fraction))
        if message:
            self.ui.statusLabel.text = message
        slicer.app.processEvents()  # keeps the Cancel button responsive during inference

    def onRunButton(self) -> None:
        from MedSegLib.errors import OperationCancelled

        parameters = self._parameterNode
        self._cancelToken = self.logic.newCancelToken()
        self._updateButtonStates()
        self.ui.progressBar.value = 0
        try:
            with slicer.util.tryWithErrorDisplay(_("Inference failed."), waitCursor=True):
                segmentation = self.logic.ensureOutputSegmentation(parameters.inputVolume,
                                                                   parameters.outputSegmentation)
                parameters.outputSegmentation = segmentation
                try:
                    segmentIds = self.logic.run(parameters.inputVolume, parameters.modelPath, segmentation,
                                                device=parameters.device, overlap=parameters.overlap,
                                                progressCallback=self._onProgress, cancelToken=self._cancelToken)
                except OperationCancelled:
                    self.ui.statusLabel.text = _("Cancelled.")
                else:
                    self.ui.progressBar.value = 100
                    self.ui.statusLabel.text = _("{count} segment(s) written to {node}.").format(
                        count=len(segmentIds), node=segmentation.GetName())
        finally:
            self._cancelToken = None
            self._updateButtonStates()

    def _refreshInstalledModels(self) -> None:
        self.ui.installedModelComboBox.clear()
        try:
            models = self.logic.installedModels()
        except RuntimeError as error:  # torch / MONAI missing: the panel still opens
            self.ui.installedModelComboBox.toolTip = str(error)
            return
        for name, path in models:
            self.ui.installedModelComboBox.addItem(name, path)

    def onInstalledModelChosen(self, index: int) -> None:
        path = self.ui.installedModelComboBox.itemData(index)
        if path and self._parameterNode:
            self._parameterNode.modelPath = Path(path)

    def onImportModelButton(self) -> None:
        path = qt.QFileDialog.getExistingDirectory(
            self.parent, _("Model folder (MedSeg package, MONAI bundle, nnU-Net)"))
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("Model import failed."), waitCursor=True):
            installedPath = self.logic.importModel(path)
            self._refreshInstalledModels()
            if self._parameterNode:
                self._parameterNode.modelPath = Path(installedPath)
            self.ui.statusLabel.text = _("Installed {path}").format(path=installedPath)

    def onCancelButton(self) -> None:
        if self._cancelToken is not None:
            self._cancelToken.cancel()
            self.ui.statusLabel.text = _("Cancelling after the current patch...")


#
# MedSegDeepLearningLogic
#


class MedSegDeepLearningLogic(ScriptedLoadableModuleLogic):
    """Thin adapter from the panel to MedSegLib.deep_learning.inference."""

    def getParameterNode(self) -> MedSegDeepLearningParameterNode:
        return MedSegDeepLearningParameterNode(super().getParameterNode())

    @staticmethod
    def newCancelToken() -> Any:
        from MedSegLib.progress import CancelToken

        return CancelToken()

    @staticmethod
    def ensureOutputSegmentation(inputVolume, segmentation=None) -> Any:
        """Same output convention as the classical Segmentation module (new segmentation on the volume's grid)."""
        from MedSegSegmentation import MedSegSegmentationLogic

        return MedSegSegmentationLogic.ensureOutputSegmentation(inputVolume, segmentation)

    @staticmethod
    def installedModels() -> List[Any]:
        """(name, folder) of the models in the user model dir and the shipped ones."""
        packages = _importMedSegLib("MedSegLib.deep_learning.model_package")
        return [(package.name, str(package.root)) for package in packages.list_models()]

    @staticmethod
    def importModel(path: str) -> str:
        """Install a model folder or zip into the user model dir; returns the installed folder."""
        packages = _importMedSegLib("MedSegLib.deep_learning.model_package")
        return str(packages.install_model(path, overwrite=True).root)

    def run(self, inputVolume, modelPath: Path, outputSegmentation, device: str = "auto", overlap: float = 0.25,
            progressCallback=None, cancelToken=None) -> List[str]:
        """Sliding-window inference; one segment per model label. Returns the segment IDs.

        ``progressCallback(fraction, message)`` is called between patches; ``cancelToken.cancel()`` makes the
        run raise MedSegLib.errors.OperationCancelled.
        """
        if inputVolume is None or outputSegmentation is None:
            raise ValueError(_("Input volume and output segmentation are required."))
        if not os.path.exists(os.fspath(modelPath)) or os.fspath(modelPath) in ("", "."):
            raise ValueError(_("Model not found: {path}").format(path=modelPath))
        if device not in INFERENCE_DEVICES:
            raise ValueError(_("Unknown device: {device}").format(device=device))
        inference = _importMedSegLib("MedSegLib.deep_learning.inference")
        return inference.segment_volume_node(
            inputVolume, outputSegmentation, model_path=os.fspath(modelPath), device=device, overlap=overlap,
            progress=progressCallback, cancel=cancelToken)


#
# MedSegDeepLearningTest
#


class MedSegDeepLearningTest(ScriptedLoadableModuleTest):
    """Deep-learning panel logic in the application, plus MedSegLib's self-tests."""

    SELFTEST_MODULE = "MedSegLib.selftests.deep_learning_selftests"

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_MedSegDeepLearning_inputValidation()
        self.setUp()
        self.test_MedSegDeepLearning_selftests()

    def test_MedSegDeepLearning_inputValidation(self) -> None:
        import numpy as np

        volume = slicer.util.addVolumeFromArray(np.zeros((4, 5, 6), dtype=np.int16), name="ct")
        logic = MedSegDeepLearningLogic()
        segmentation = logic.ensureOutputSegmentation(volume)
        with self.assertRaises(ValueError):
            logic.run(volume, Path(tempfile.gettempdir()) / "no-such-model.pt", segmentation)
        token = logic.newCancelToken()
        token.cancel()
        self.assertTrue(token.cancelled)

    def test_MedSegDeepLearning_selftests(self) -> None:
        run_selftests(self, self.SELFTEST_MODULE, slicer.mrmlScene, self.delayDisplay)
