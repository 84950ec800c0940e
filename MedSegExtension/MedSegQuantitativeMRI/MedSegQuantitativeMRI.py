"""MedSeg Quantitative MRI: voxel-wise relaxometry fits (T1 by IR, VFA or Look-Locker; T2; T2*).

The signal models and fitting live in ``MedSegLib.qmri`` and are shared with ``medseg qmri t1|t2|t2star``.
"""

import importlib
import importlib.util
import os
import sys
from typing import Annotated, Any, List, Optional, Tuple

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLSequenceNode
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
# MedSegQuantitativeMRI
#


class MedSegQuantitativeMRI(ScriptedLoadableModule):
    """Module description shown in the Slicer module panel and the generic module tests."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedSeg Quantitative MRI")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "MedSeg")]
        self.parent.dependencies = ["Sequences", "Segmentations"]
        self.parent.contributors = ["MedSeg developers (MedSeg project)"]
        self.parent.helpText = _("""
Fit a relaxation model in every voxel of a multi-volume MR series (a sequence node with one volume per
inversion time, flip angle or echo time): inversion recovery T1 (with polarity restoration), variable flip angle
T1 (needs TR; linear or nonlinear, optional B1 map), MOLLI/Look-Locker T1, spin-echo T2 (mono-exponential, or EPG
with B1 fitted or taken from a B1 map, refocusing angle and assumed T1) and T2*. Acquisition values
are read from the sequence (DICOM) unless typed in. An optional mask segment restricts the fit (default: Otsu).
Outputs: the parameter map in ms, M0, R^2 (quality), RMSE and a fit-status map (0 = fitted; bit flags for masked,
invalid input, at search bound, not converged, degenerate, polarity ambiguous, outside physical range).
With a mask segment, a table of the map's mean, SD, median and IQR in every segment of that segmentation is added.
<br><br>Command-line equivalent: <code>medseg qmri t1 --method ir SERIES_DIR -o OUT_DIR</code>.
""")
        self.parent.acknowledgementText = _("""
Signal models follow the qMRI literature (Barral et al. 2010 for IR; Deoni et al. 2003 for VFA/DESPOT1;
Messroghli et al. 2004 for MOLLI; Hennig 1988 and Weigel 2015 for EPG); fits are vectorised variable projection.
""")
        _useSourceTreeIcon(self)


# Panel label -> model id used by MedSegLib and the command line.
QMRI_MODELS = {
    "IR": "ir",
    "VFA": "vfa",
    "MOLLI": "molli",
    "T2 SE": "t2",
    "T2 EPG": "epg",
    "T2*": "t2star",
}


#
# MedSegQuantitativeMRIParameterNode
#


@parameterNodeWrapper
class MedSegQuantitativeMRIParameterNode:
    """Panel state kept in the scene, so a saved scene records how its maps were fitted."""

    inputSequence: vtkMRMLSequenceNode
    model: Annotated[str, Choice(list(QMRI_MODELS))] = "IR"
    acquisitionValues: str = ""
    repetitionTime: Annotated[float, WithinRange(0.0, 100000.0)] = 0.0
    maskSegmentation: vtkMRMLSegmentationNode
    maskSegmentID: str = ""
    offsetTerm: bool = False
    dropFirstEcho: bool = False
    b1Map: vtkMRMLScalarVolumeNode
    vfaMethod: Annotated[str, Choice(["nonlinear", "linear"])] = "nonlinear"
    epgRefocusingAngle: Annotated[float, WithinRange(1.0, 180.0)] = 180.0
    epgT1: Annotated[float, WithinRange(1.0, 10000.0)] = 1000.0
    outputMap: vtkMRMLScalarVolumeNode
    outputQuality: vtkMRMLScalarVolumeNode


#
# MedSegQuantitativeMRIWidget
#


class MedSegQuantitativeMRIWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Panel: sequence, model, protocol values, mask and outputs; Fit hands them to the logic."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[MedSegQuantitativeMRILogic] = None
        self._parameterNode: Optional[MedSegQuantitativeMRIParameterNode] = None
        self._parameterNodeGuiTag = None
        self._cancelToken = None
        self._updatingMaskSelector = False

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiPath = _resourceFile(self, "UI/MedSegQuantitativeMRI.ui")
        uiWidget = slicer.util.loadUI(uiPath)
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = MedSegQuantitativeMRILogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        # The segment selector has no parameter-node connector: keep node and segment ID in sync by hand.
        self.ui.maskSegmentSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._onMaskSelectionChanged)
        self.ui.maskSegmentSelector.connect("currentSegmentChanged(QString)", self._onMaskSelectionChanged)
        self.ui.fitButton.connect("clicked(bool)", self.onFitButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)

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
        if not self._parameterNode.inputSequence:
            self._parameterNode.inputSequence = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSequenceNode")

    def setParameterNode(self, inputParameterNode: Optional[MedSegQuantitativeMRIParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtonStates)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtonStates)
            self._updatingMaskSelector = True
            try:
                self.ui.maskSegmentSelector.setCurrentNode(self._parameterNode.maskSegmentation)
                self.ui.maskSegmentSelector.setCurrentSegmentID(self._parameterNode.maskSegmentID)
            finally:
                self._updatingMaskSelector = False
        self._updateButtonStates()

    def _onMaskSelectionChanged(self, *args) -> None:
        if self._parameterNode is None or self._updatingMaskSelector:
            return
        wasModified = self._parameterNode.StartModify()
        self._parameterNode.maskSegmentation = self.ui.maskSegmentSelector.currentNode()
        self._parameterNode.maskSegmentID = self.ui.maskSegmentSelector.currentSegmentID() or ""
        self._parameterNode.EndModify(wasModified)

    def _updateButtonStates(self, caller=None, event=None) -> None:
        running = self._cancelToken is not None
        ready = self._parameterNode is not None and self._parameterNode.inputSequence is not None
        self.ui.fitButton.enabled = ready and not running
        self.ui.fitButton.toolTip = _("Fit the model in every (masked) voxel.") if ready else _(
            "Select an input sequence.")
        self.ui.cancelButton.enabled = running
        model = self._parameterNode.model if self._parameterNode is not None else ""
        self.ui.repetitionTimeSpinBox.enabled = model == "VFA"
        self.ui.offsetCheckBox.enabled = model in ("T2 SE", "T2*")
        self.ui.dropFirstEchoCheckBox.enabled = model == "T2 SE"
        self.ui.b1MapSelector.enabled = model in ("VFA", "T2 EPG")
        self.ui.vfaMethodComboBox.enabled = model == "VFA"
        self.ui.epgRefocusingSpinBox.enabled = model == "T2 EPG"
        self.ui.epgT1SpinBox.enabled = model == "T2 EPG"

    def _onProgress(self, fraction: float, message: str = "") -> None:
        self.ui.progressBar.value = int(round(100 * fraction))
        if message:
            self.ui.statusLabel.text = message
        slicer.app.processEvents()  # keeps the Cancel button responsive during the fit

    def onFitButton(self) -> None:
        from MedSegLib.errors import OperationCancelled

        parameters = self._parameterNode
        self._cancelToken = self.logic.newCancelToken()
        self._updateButtonStates()
        self.ui.progressBar.value = 0
        try:
            with slicer.util.tryWithErrorDisplay(_("Fit failed."), waitCursor=True):
                try:
                    outputMap, outputQuality = self.logic.fit(
                        parameters.inputSequence, parameters.model,
                        outputMap=parameters.outputMap, outputQuality=parameters.outputQuality,
                        acquisitionValues=self.logic.parseAcquisitionValues(parameters.acquisitionValues),
                        repetitionTime=parameters.repetitionTime,
                        maskSegmentation=parameters.maskSegmentation, maskSegmentID=parameters.maskSegmentID,
                        offsetTerm=parameters.offsetTerm, dropFirstEcho=parameters.dropFirstEcho,
                        b1Map=parameters.b1Map, vfaMethod=parameters.vfaMethod,
                        epgRefocusingAngle=parameters.epgRefocusingAngle, epgT1=parameters.epgT1,
                        progressCallback=self._onProgress, cancelToken=self._cancelToken)
                except OperationCancelled:
                    self.ui.statusLabel.text = _("Cancelled.")
                else:
                    parameters.outputMap = outputMap
                    parameters.outputQuality = outputQuality
                    self.ui.progressBar.value = 100
                    self.ui.statusLabel.text = _("Fitted: {node}").format(node=outputMap.GetName())
                    slicer.util.setSliceViewerLayers(background=outputMap)
        finally:
            self._cancelToken = None
            self._updateButtonStates()

    def onCancelButton(self) -> None:
        if self._cancelToken is not None:
            self._cancelToken.cancel()
            self.ui.statusLabel.text = _("Cancelling...")


#
# MedSegQuantitativeMRILogic
#


class MedSegQuantitativeMRILogic(ScriptedLoadableModuleLogic):
    """Input checks and output nodes for the panel; the fitting itself is MedSegLib.qmri.pipeline."""

    def getParameterNode(self) -> MedSegQuantitativeMRIParameterNode:
        return MedSegQuantitativeMRIParameterNode(super().getParameterNode())

    @staticmethod
    def newCancelToken() -> Any:
        from MedSegLib.progress import CancelToken

        return CancelToken()

    @staticmethod
    def parseAcquisitionValues(text: str) -> Optional[List[float]]:
        """'100, 400 1200' -> [100.0, 400.0, 1200.0]; blank -> None (values then come from the sequence)."""
        tokens = text.replace(",", " ").replace(";", " ").split()
        if not tokens:
            return None
        try:
            return [float(token) for token in tokens]
        except ValueError:
            raise ValueError(_("Acquisition values must be numbers separated by commas: {text}").format(
                text=text)) from None

    def fit(self, inputSequence, model: str, outputMap=None, outputQuality=None,
            acquisitionValues: Optional[List[float]] = None, repetitionTime: float = 0.0,
            maskSegmentation=None, maskSegmentID: str = "", offsetTerm: bool = False,
            dropFirstEcho: bool = False, b1Map=None, vfaMethod: str = "nonlinear",
            epgRefocusingAngle: float = 180.0, epgT1: float = 1000.0,
            progressCallback=None, cancelToken=None) -> Tuple[Any, Any]:
        """Fit ``model`` (panel label or MedSegLib id); creates the parameter map volume if none is given.

        ``b1Map`` (VFA, T2 EPG): flip-angle scale volume on the sequence grid; VFA corrects its angles with it, EPG
        takes B1 from it instead of fitting it. Returns (parameter map, goodness-of-fit map or None).
        """
        if inputSequence is None:
            raise ValueError(_("Select an input sequence."))
        modelId = QMRI_MODELS.get(model, model)
        if modelId not in QMRI_MODELS.values():
            raise ValueError(_("Unknown model: {model}").format(model=model))
        count = inputSequence.GetNumberOfDataNodes()
        if count < 2:
            raise ValueError(_("The sequence needs at least two volumes, it has {count}.").format(count=count))
        if acquisitionValues is not None and len(acquisitionValues) != count:
            raise ValueError(_("{given} acquisition values given for {count} volumes.").format(
                given=len(acquisitionValues), count=count))
        if modelId == "vfa" and repetitionTime <= 0:
            raise ValueError(_("The VFA model needs the repetition time TR (ms)."))
        if modelId == "vfa" and vfaMethod not in ("nonlinear", "linear"):
            raise ValueError(_("Unknown VFA fit: {method}").format(method=vfaMethod))
        if modelId == "epg" and not (0.0 < epgRefocusingAngle <= 180.0 and epgT1 > 0.0):
            raise ValueError(_("EPG needs a refocusing angle in (0, 180] degrees and a positive T1."))
        pipeline = _importMedSegLib("MedSegLib.qmri.pipeline")
        mask = (maskSegmentation, maskSegmentID) if maskSegmentation is not None and maskSegmentID else None
        primary = {"ir": "T1", "vfa": "T1", "molli": "T1", "t2": "T2", "epg": "T2", "t2star": "T2star"}[modelId]
        reuse = {name: node for name, node in ((primary, outputMap), ("R2", outputQuality)) if node is not None}
        options = {}
        if modelId in ("t2", "t2star"):
            options["offset"] = bool(offsetTerm)
        if modelId == "t2":
            options["drop_first_echo"] = bool(dropFirstEcho)
        if modelId == "vfa":
            options["method"] = vfaMethod
        if modelId == "epg":
            options["refocusing_deg"] = float(epgRefocusingAngle)
            options["t1_ms"] = float(epgT1)
        result, nodes = pipeline.fit_sequence_node(
            inputSequence, modelId, acquisition_values=acquisitionValues,
            repetition_time_ms=repetitionTime or None, mask=mask, options=options, output_nodes=reuse,
            b1=b1Map if modelId in ("vfa", "epg") else None, progress=progressCallback, cancel=cancelToken)
        self.lastResult = result
        if maskSegmentation is not None:  # per-segment mean/SD/median/IQR of the map, as a table node
            self.lastStatistics = pipeline.segment_statistics_table(
                result, maskSegmentation, nodes[primary], inputSequence.GetScene() or slicer.mrmlScene)
        return nodes[primary], nodes["R2"]


#
# MedSegQuantitativeMRITest
#


class MedSegQuantitativeMRITest(ScriptedLoadableModuleTest):
    """Input checks of the qMRI panel logic in the application, plus MedSegLib's self-tests."""

    SELFTEST_MODULE = "MedSegLib.selftests.qmri_selftests"

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_MedSegQuantitativeMRI_inputChecks()
        self.setUp()
        self.test_MedSegQuantitativeMRI_selftests()

    def test_MedSegQuantitativeMRI_inputChecks(self) -> None:
        import numpy as np

        logic = MedSegQuantitativeMRILogic()
        self.assertEqual(logic.parseAcquisitionValues("100, 400 1200"), [100.0, 400.0, 1200.0])
        self.assertIsNone(logic.parseAcquisitionValues("  "))
        with self.assertRaises(ValueError):
            logic.parseAcquisitionValues("100, abc")
        sequence = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceNode", "vfa")
        for flipAngle in (3, 15):
            volume = slicer.util.addVolumeFromArray(np.ones((2, 3, 4), dtype=np.float32), name=f"fa{flipAngle}")
            sequence.SetDataNodeAtValue(volume, str(flipAngle))
        with self.assertRaises(ValueError):
            logic.fit(sequence, "VFA", repetitionTime=0.0)  # VFA without TR
        with self.assertRaises(ValueError):
            logic.fit(sequence, "IR", acquisitionValues=[100.0])  # one value for two volumes

    def test_MedSegQuantitativeMRI_selftests(self) -> None:
        run_selftests(self, self.SELFTEST_MODULE, slicer.mrmlScene, self.delayDisplay)
