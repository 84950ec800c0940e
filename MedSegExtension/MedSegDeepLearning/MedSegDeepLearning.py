"""MedSeg Deep Learning: run a trained segmentation network on a volume (sliding-window inference).

Model loading, pre-processing, patch inference and label import live in
``MedSegLib.deep_learning.inference`` and are shared with the ``medseg deepseg infer`` command.
"""

import importlib
import importlib.util
import os
import shutil
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
available, else on the CPU. Inference and training run in a background process, so Slicer stays responsive;
Cancel stops that process at once. The Train tab trains a 3D U-Net from the segmentations of this scene
(each with its reference volume) or from a folder of labelled volumes.
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
    compileNetwork: bool = False


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
        self._inferenceJob = None  # BackgroundJob while a background inference runs
        self._trainingJob = None
        self._pollTimer = None

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
        self.ui.trainButton.connect("clicked(bool)", self.onTrainButton)
        self.ui.trainingCancelButton.connect("clicked(bool)", self.onTrainingCancelButton)
        self.ui.trainingFromSceneCheckBox.connect("toggled(bool)", self._updateTrainingWidgets)
        self._refreshInstalledModels()
        self._updateTrainingWidgets()

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(200)
        self._pollTimer.connect("timeout()", self._pollBackgroundJobs)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.onCancelButton()
        self.onTrainingCancelButton()
        if self._pollTimer is not None:
            self._pollTimer.stop()
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
        running = self._cancelToken is not None or self._inferenceJob is not None
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
        """Export the volume, run ``medseg deepseg infer`` in a background process, poll it from a timer."""
        parameters = self._parameterNode
        self.ui.progressBar.value = 0
        with slicer.util.tryWithErrorDisplay(_("Could not start inference."), waitCursor=True):
            segmentation = self.logic.ensureOutputSegmentation(parameters.inputVolume, parameters.outputSegmentation)
            parameters.outputSegmentation = segmentation
            self._inferenceJob = self.logic.startInference(parameters.inputVolume, parameters.modelPath,
                                                           device=parameters.device, overlap=parameters.overlap,
                                                           compileNetwork=parameters.compileNetwork)
            self.ui.statusLabel.text = _("Starting (loading the model in a background process)...")
            self._pollTimer.start()
        self._updateButtonStates()

    def _pollBackgroundJobs(self) -> None:
        """Timer slot: progress of the background jobs; results are imported when a job ends."""
        if not self._pollJob(self._inferenceJob, self.ui.progressBar, self.ui.statusLabel):
            job, self._inferenceJob = self._inferenceJob, None
            if job is not None:
                self._finishInference(job)
        if not self._pollJob(self._trainingJob, self.ui.trainingProgressBar, self.ui.trainingStatusLabel):
            job, self._trainingJob = self._trainingJob, None
            if job is not None:
                self._finishTraining(job)
        if self._inferenceJob is None and self._trainingJob is None:
            self._pollTimer.stop()

    @staticmethod
    def _pollJob(job, progressBar, statusLabel) -> bool:
        """Show a background job's progress; whether it is still running (False when there is none)."""
        if job is None:
            return False
        progressBar.value = int(round(100 * job.run.fraction))
        if job.run.message:
            statusLabel.text = job.run.message
        return job.run.running

    def _finishInference(self, job) -> None:
        try:
            if job.run.cancelled:
                self.ui.statusLabel.text = _("Cancelled.")
                return
            with slicer.util.tryWithErrorDisplay(_("Inference failed."), waitCursor=True):
                segmentation = self._parameterNode.outputSegmentation if self._parameterNode else None
                segmentIds = self.logic.finishInference(job, segmentation)
                self.ui.progressBar.value = 100
                self.ui.statusLabel.text = _("{count} segment(s) written to {node}.").format(
                    count=len(segmentIds), node=segmentation.GetName())
        finally:
            job.cleanup()
            self._updateButtonStates()

    def onTrainButton(self) -> None:
        fromScene = self.ui.trainingFromSceneCheckBox.checked
        labels = [name.strip() for name in self.ui.trainingLabelsLineEdit.text.split(",") if name.strip()]
        with slicer.util.tryWithErrorDisplay(_("Could not start training."), waitCursor=True):
            pairs = self.logic.scenePairs() if fromScene else None
            self._trainingJob = self.logic.startTraining(
                self.ui.trainingOutputPathLineEdit.currentPath, labels=labels,
                epochs=self.ui.trainingEpochsSpinBox.value, pairs=pairs,
                dataDir=None if fromScene else self.ui.trainingDataPathLineEdit.currentPath)
            self.ui.trainingProgressBar.value = 0
            self.ui.trainingStatusLabel.text = _("Training in a background process...")
            self._pollTimer.start()
        self._updateTrainingWidgets()

    def _finishTraining(self, job) -> None:
        try:
            if job.run.cancelled:
                self.ui.trainingStatusLabel.text = _("Training cancelled (run it again to resume).")
            elif job.run.returncode != 0:
                slicer.util.errorDisplay(_("Training failed: {message}").format(message=job.run.error_message()))
                self.ui.trainingStatusLabel.text = job.run.error_message()
            else:
                summary = job.run.summary() or {}
                self.ui.trainingProgressBar.value = 100
                self.ui.trainingStatusLabel.text = _("Model written to {path} (best mean Dice {dice}).").format(
                    path=summary.get("model_dir", job.outputDir), dice=summary.get("best_mean_dice", "-"))
                self._refreshInstalledModels()
        finally:
            job.cleanup()
            self._updateTrainingWidgets()

    def onTrainingCancelButton(self) -> None:
        if self._trainingJob is not None:
            self._trainingJob.run.cancel()
            self.ui.trainingStatusLabel.text = _("Training stopped.")

    def _updateTrainingWidgets(self, *args) -> None:
        running = self._trainingJob is not None
        self.ui.trainingDataPathLineEdit.enabled = not self.ui.trainingFromSceneCheckBox.checked
        self.ui.trainButton.enabled = not running
        self.ui.trainingCancelButton.enabled = running

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
        if self._inferenceJob is not None:
            self._inferenceJob.run.cancel()  # the timer then reports "Cancelled."
            self.ui.statusLabel.text = _("Cancelling...")


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

    # --- background process (the panel): Slicer stays responsive, Cancel terminates the process ---------

    @staticmethod
    def pythonExecutable() -> str:
        """Slicer's ``PythonSlicer`` (sets up Slicer's Python environment), else this interpreter."""
        name = "PythonSlicer.exe" if sys.platform == "win32" else "PythonSlicer"
        home = getattr(slicer.app, "slicerHome", "") if hasattr(slicer, "app") else ""
        candidate = os.path.join(home, "bin", name) if home else ""
        if candidate and os.path.isfile(candidate):
            return candidate
        return shutil.which(name) or sys.executable

    @staticmethod
    def _exportNode(node, path: str) -> None:
        """Write a node to a file without re-pointing its storage node at the temporary file."""
        if hasattr(slicer.util, "exportNode"):
            slicer.util.exportNode(node, path)
        elif not slicer.util.saveNode(node, path):
            raise RuntimeError(_("Could not write {node} to {path}").format(node=node.GetName(), path=path))

    def startInference(self, inputVolume, modelPath: Path, device: str = "auto", overlap: float = 0.25,
                       python: Optional[str] = None, compileNetwork: bool = False) -> "BackgroundJob":
        """Write the volume to a temporary NRRD and start ``medseg deepseg infer`` on it in a child process."""
        if inputVolume is None:
            raise ValueError(_("An input volume is required."))
        if not os.path.exists(os.fspath(modelPath)) or os.fspath(modelPath) in ("", "."):
            raise ValueError(_("Model not found: {path}").format(path=modelPath))
        if device not in INFERENCE_DEVICES:
            raise ValueError(_("Unknown device: {device}").format(device=device))
        background = _importMedSegLib("MedSegLib.deep_learning.background")
        workDir = tempfile.mkdtemp(prefix="MedSegDeepLearning-")
        inputPath = os.path.join(workDir, "input.nrrd")
        outputPath = os.path.join(workDir, "output.seg.nrrd")
        self._exportNode(inputVolume, inputPath)
        run = background.start_inference(inputPath, os.fspath(modelPath), outputPath, device=device,
                                         overlap=overlap, python=python or self.pythonExecutable(),
                                         extra=["--compile"] if compileNetwork else [])
        return BackgroundJob(run, workDir, outputPath, inputVolume)

    @staticmethod
    def finishInference(job: "BackgroundJob", outputSegmentation) -> List[str]:
        """Import the finished job's segmentation into ``outputSegmentation``; returns the segment IDs."""
        if job.run.returncode != 0:
            raise RuntimeError(job.run.error_message() or _("Inference failed (exit status {code}).").format(
                code=job.run.returncode))
        loaded = slicer.util.loadSegmentation(job.outputPath)
        try:
            outputSegmentation.GetSegmentation().DeepCopy(loaded.GetSegmentation())
            if job.inputVolume is not None:
                outputSegmentation.SetReferenceImageGeometryParameterFromVolumeNode(job.inputVolume)
            outputSegmentation.CreateDefaultDisplayNodes()
        finally:
            slicer.mrmlScene.RemoveNode(loaded)
        return list(outputSegmentation.GetSegmentation().GetSegmentIDs())

    @staticmethod
    def scenePairs() -> List[Any]:
        """(reference volume, segmentation) of every segmentation in the scene that names its volume."""
        pairs = []
        for segmentation in slicer.util.getNodesByClass("vtkMRMLSegmentationNode"):
            volume = segmentation.GetNodeReference(segmentation.GetReferenceImageGeometryReferenceRole())
            if volume is not None and volume.IsA("vtkMRMLScalarVolumeNode"):
                pairs.append((volume, segmentation))
        return pairs

    def startTraining(self, outputDir: str, labels: Optional[List[str]] = None, epochs: int = 20, pairs=None,
                      dataDir: Optional[str] = None, python: Optional[str] = None,
                      extra: Optional[List[str]] = None) -> "BackgroundJob":
        """Start ``medseg deepseg train`` in a child process on a data folder or on scene (volume, segmentation)
        pairs, which are written as ``caseN.nrrd`` + ``caseN_label.nrrd`` (segment order = label values)."""
        if not outputDir:
            raise ValueError(_("Choose a model folder to write."))
        workDir = tempfile.mkdtemp(prefix="MedSegTraining-")
        if pairs is not None:
            if not pairs:
                raise ValueError(_("No segmentation with a reference volume in the scene."))
            names = self.exportTrainingPairs(pairs, workDir)
            labels = labels or names
            dataDir = workDir
        elif not dataDir or not os.path.isdir(dataDir):
            raise ValueError(_("Training data folder not found: {path}").format(path=dataDir))
        if not labels:
            raise ValueError(_("Enter the label names (values 1..N)."))
        background = _importMedSegLib("MedSegLib.deep_learning.background")
        run = background.start_training(dataDir, labels, epochs, outputDir, python=python or self.pythonExecutable(),
                                        extra=extra or [])
        return BackgroundJob(run, workDir, outputDir, None)

    def exportTrainingPairs(self, pairs, folder: str) -> List[str]:
        """Write each (volume, segmentation) as a case; returns the segment names of the first (label names)."""
        names: List[str] = []
        segmentationsLogic = slicer.modules.segmentations.logic()
        for index, (volume, segmentation) in enumerate(pairs):
            ids = vtk.vtkStringArray()
            segmentation.GetSegmentation().GetSegmentIDs(ids)
            if index == 0:
                names = [segmentation.GetSegmentation().GetSegment(ids.GetValue(i)).GetName()
                         for i in range(ids.GetNumberOfValues())]
            labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__medseg_training_label")
            try:
                segmentationsLogic.ExportSegmentsToLabelmapNode(segmentation, ids, labelmap, volume)
                self._exportNode(volume, os.path.join(folder, f"case{index}.nrrd"))
                self._exportNode(labelmap, os.path.join(folder, f"case{index}_label.nrrd"))
            finally:
                slicer.mrmlScene.RemoveNode(labelmap)
        return names

    # --- in-process (scripts, self-tests) -------------------------------------------------------------

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


class BackgroundJob:
    """A running ``medseg deepseg`` child (``run``: MedSegLib.deep_learning.background.BackgroundRun) and the
    temporary folder it reads from / writes into, removed by :meth:`cleanup`."""

    def __init__(self, run, workDir: str, outputPath: str, inputVolume) -> None:
        self.run = run
        self.workDir = workDir
        self.outputPath = outputPath
        self.outputDir = outputPath
        self.inputVolume = inputVolume

    def cleanup(self) -> None:
        if self.run.running:
            self.run.cancel()
        shutil.rmtree(self.workDir, ignore_errors=True)


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
