"""MedSeg Segmentation: classical (non-learning) segmentation of a scalar volume into segments.

Methods (thresholds, region growing, grow from seeds, watershed, fast marching, level set, CT presets)
and segment statistics live in ``MedSegLib.segmentation`` / ``MedSegLib.statistics`` and are shared with
the ``medseg segment`` and ``medseg stats`` commands; the panel's method options are built from the same
parameter declarations as the command-line options.
"""

import importlib
import importlib.util
import os
import sys
from typing import Annotated, Any, Dict, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
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
Segment a CT or MR volume with a classical method: threshold (manual, Otsu, multi-Otsu, percentile),
region growing or confidence connected from seed points, grow from seeds (competing seed groups),
watershed, fast marching, level set, or a CT preset (body, lungs, airway, bone, fat, muscle). Seeds are
markups fiducials; the result is written as named, coloured, terminology-tagged segments that can be edited
further in the Segment Editor. Preview writes into a separate segmentation; Statistics fills a table with
Segment Statistics' measurements.
<br><br>Command-line equivalent: <code>medseg segment VOLUME --method bone -o bone.seg.nrrd</code>,
<code>medseg stats VOLUME bone.seg.nrrd -o stats.csv</code>.
""")
        self.parent.acknowledgementText = _("""
Segmentation filters from SimpleITK/ITK and VTK; segmentations are stored with 3D Slicer's segmentation
infrastructure so they open in the Segment Editor and Segment Statistics.
""")
        _useSourceTreeIcon(self)


def _methodNames() -> list:
    """Method names from MedSegLib's registry (the same list ``medseg segment --list-methods`` prints)."""
    try:
        return list(_importMedSegLib("MedSegLib.segmentation.api").methods())
    except RuntimeError:
        return ["threshold"]


METHOD_NAMES = _methodNames()


#
# MedSegSegmentationParameterNode
#


@parameterNodeWrapper
class MedSegSegmentationParameterNode:
    """Panel state kept in the scene. Method options live in the wrapped node as ``param.<name>`` strings,
    because each method declares its own (MedSegLib.segmentation.params)."""

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    seeds: vtkMRMLMarkupsFiducialNode
    otherSeeds: vtkMRMLMarkupsFiducialNode
    method: Annotated[str, Choice(METHOD_NAMES)] = "threshold"
    keepLargestIsland: bool = False
    fillHoles: bool = False


#
# MedSegSegmentationWidget
#


class MedSegSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Panel: inputs, method, method options (built from the method's declarations), seeds, preview,
    apply and a statistics table. Every computation is MedSegSegmentationLogic -> MedSegLib."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[MedSegSegmentationLogic] = None
        self._parameterNode: Optional[MedSegSegmentationParameterNode] = None
        self._parameterNodeGuiTag = None
        self._optionWidgets: Dict[str, Any] = {}
        self._shownMethod: Optional[str] = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiPath = _resourceFile(self, "UI/MedSegSegmentation.ui")
        uiWidget = slicer.util.loadUI(uiPath)
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.statisticsTableView.setMRMLScene(slicer.mrmlScene)

        self.logic = MedSegSegmentationLogic()
        self.ui.methodComboBox.clear()
        for name in METHOD_NAMES:
            self.ui.methodComboBox.addItem(name)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.previewButton.connect("clicked(bool)", lambda: self.onApplyButton(preview=True))
        self.ui.applyButton.connect("clicked(bool)", lambda: self.onApplyButton(preview=False))
        self.ui.statisticsButton.connect("clicked(bool)", self.onStatisticsButton)
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
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        parameters = self._parameterNode
        if parameters is not None and parameters.method != self._shownMethod:
            self._buildOptionWidgets(parameters.method)
        volume = parameters.inputVolume if parameters else None
        for button in (self.ui.applyButton, self.ui.previewButton):
            button.enabled = volume is not None
        self.ui.applyButton.toolTip = _("Run the selected method.") if volume else _("Select an input volume.")

    def _buildOptionWidgets(self, methodName: str) -> None:
        """One widget per declared parameter of the method (same declarations as the CLI options)."""
        layout = self.ui.optionsFrame.layout()
        while layout.count():
            item = layout.takeAt(0)
            if item.widget():
                item.widget().deleteLater()
        self._optionWidgets = {}
        self._shownMethod = methodName
        method = self.logic.method(methodName)
        self.ui.methodDescriptionLabel.text = method.description
        stored = self.logic.storedOptions(self._parameterNode.parameterNode, method)
        for param in method.params:
            widget = _optionWidget(param, stored.get(param.name))
            widget.toolTip = param.help
            layout.addRow(param.label + ":", widget)
            self._optionWidgets[param.name] = widget

    def _optionValues(self) -> Dict[str, Any]:
        values = {}
        for name, widget in self._optionWidgets.items():
            value = _widgetValue(widget)
            if value is not None:
                values[name] = value
        return values

    def onApplyButton(self, preview: bool = False) -> None:
        with slicer.util.tryWithErrorDisplay(_("Segmentation failed."), waitCursor=True):
            parameters = self._parameterNode
            options = self._optionValues()
            self.logic.storeOptions(parameters.parameterNode, options)
            options["keep_largest_island"] = parameters.keepLargestIsland
            options["fill_holes"] = parameters.fillHoles
            target = None if preview else parameters.outputSegmentation
            result = self.logic.segment(
                parameters.inputVolume,
                target,
                parameters.method,
                options,
                seeds=[node for node in (parameters.seeds, parameters.otherSeeds) if node is not None],
                preview=preview,
            )
            if not preview:
                parameters.outputSegmentation = result.segmentation
            names = ", ".join(result.segmentation.GetSegmentation().GetSegment(s).GetName() for s in result.segment_ids)
            self.ui.statusLabel.text = _("{segments} in {node} ({seconds:.1f} s).").format(
                segments=names, node=result.segmentation.GetName(), seconds=sum(result.seconds.values())
            )

    def onStatisticsButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Statistics failed."), waitCursor=True):
            parameters = self._parameterNode
            table = self.logic.statisticsTable(parameters.outputSegmentation, parameters.inputVolume)
            self.ui.statisticsTableView.setMRMLTableNode(table)


def _optionWidget(param: Any, value: Any) -> Any:
    """A Qt editor for one declared parameter, showing ``value`` (or the default)."""
    current = param.default if value is None else value
    if param.choices:
        widget = qt.QComboBox()
        for choice in param.choices:
            widget.addItem(choice)
        widget.currentText = str(current)
    elif param.kind is bool:
        widget = qt.QCheckBox()
        widget.checked = bool(current)
    elif param.kind in (int, float):
        widget = qt.QDoubleSpinBox() if param.kind is float else qt.QSpinBox()
        if param.kind is float:
            widget.decimals = 2
        widget.minimum = param.minimum if param.minimum is not None else -1e6
        widget.maximum = param.maximum if param.maximum is not None else 1e6
        widget.specialValueText = _("auto") if param.default is None else ""
        if current is None:
            widget.value = widget.minimum  # shows "auto"
        else:
            widget.value = current
        if param.unit:
            widget.suffix = " " + param.unit
    else:
        widget = qt.QLineEdit()
        widget.text = "" if current is None else str(current)
    widget.setProperty("MedSegParameterAuto", param.default is None)
    return widget


def _widgetValue(widget: Any) -> Any:
    """The value of an option widget; None for an "auto" spin box left at its minimum."""
    if isinstance(widget, qt.QComboBox):
        return widget.currentText
    if isinstance(widget, qt.QCheckBox):
        return bool(widget.checked)
    if isinstance(widget, (qt.QDoubleSpinBox, qt.QSpinBox)):
        if widget.property("MedSegParameterAuto") and widget.value == widget.minimum:
            return None
        return widget.value
    text = widget.text.strip()
    return text if text else None


#
# MedSegSegmentationLogic
#


class MedSegSegmentationLogic(ScriptedLoadableModuleLogic):
    """Thin adapter from the panel to MedSegLib.segmentation / MedSegLib.statistics (no Qt here)."""

    OPTION_PREFIX = "param."

    def getParameterNode(self) -> MedSegSegmentationParameterNode:
        return MedSegSegmentationParameterNode(super().getParameterNode())

    @staticmethod
    def method(name: str) -> Any:
        return _importMedSegLib("MedSegLib.segmentation.api").get_method(name)

    def storedOptions(self, node: Any, method: Any) -> Dict[str, Any]:
        """Options of ``method`` saved in the scripted module node (strings, converted by the declaration)."""
        values = {}
        for param in method.params:
            text = node.GetParameter(self.OPTION_PREFIX + param.name) if node is not None else ""
            if text:
                try:
                    values[param.name] = param.validate(text, method.name)
                except Exception:  # stale value of another type: fall back to the default
                    pass
        return values

    def storeOptions(self, node: Any, options: Dict[str, Any]) -> None:
        for name, value in options.items():
            node.SetParameter(self.OPTION_PREFIX + name, "" if value is None else str(value))

    @staticmethod
    def ensureOutputSegmentation(inputVolume, segmentation=None) -> Any:
        """The given segmentation, or a new one named after the volume, on the volume's geometry."""
        output = _importMedSegLib("MedSegLib.segmentation.output")
        return output.ensure_segmentation_node(inputVolume, segmentation)

    def segment(
        self,
        inputVolume,
        outputSegmentation,
        method: str,
        options: Optional[Dict[str, Any]] = None,
        seeds=None,
        preview: bool = False,
    ) -> Any:
        """Run a MedSegLib method; returns its SegmentationResult. ``preview`` writes into a separate
        "<volume> preview" segmentation that is replaced on every preview."""
        if inputVolume is None:
            raise ValueError(_("An input volume is required."))
        api = _importMedSegLib("MedSegLib.segmentation.api")
        if method not in api.methods():
            raise ValueError(_("Unknown segmentation method: {method}").format(method=method))
        if preview:
            scene = inputVolume.GetScene()
            name = f"{inputVolume.GetName()} preview"
            outputSegmentation = scene.GetFirstNodeByName(name)
            if outputSegmentation is not None:
                outputSegmentation.GetSegmentation().RemoveAllSegments()
            else:
                outputSegmentation = self.ensureOutputSegmentation(inputVolume)
                outputSegmentation.SetName(name)
        segmentation = self.ensureOutputSegmentation(inputVolume, outputSegmentation)
        return api.segment_volume_node(inputVolume, segmentation, method, seeds=seeds or None, parameters=options or {})

    @staticmethod
    def statisticsTable(segmentation, volume=None) -> Any:
        """Segment statistics as a vtkMRMLTableNode (column titles as Slicer's Segment Statistics)."""
        if segmentation is None:
            raise ValueError(_("Select or create a segmentation first."))
        statistics = _importMedSegLib("MedSegLib.statistics")
        table = statistics.compute_statistics(segmentation, volume)
        scene = segmentation.GetScene()
        node = scene.GetFirstNodeByName(f"{segmentation.GetName()} statistics")
        if node is None:
            node = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{segmentation.GetName()} statistics")
        node.RemoveAllColumns()
        keys = table.keys()
        names = node.AddColumn()
        names.SetName("Segment")
        columns = []
        for key in keys:
            column = node.AddColumn()
            column.SetName(table.column_title(key))
            columns.append(column)
        for sid in table.segment_ids:
            row = node.AddEmptyRow()
            node.SetCellText(row, 0, table.names[sid])
            for index, key in enumerate(keys, start=1):
                value = table.values[sid].get(key)
                text = (
                    " ".join(f"{v:.4g}" for v in value)
                    if isinstance(value, (list, tuple))
                    else ("" if value is None else f"{value:.6g}")
                )
                node.SetCellText(row, index, text)
        return node


#
# MedSegSegmentationTest
#


class MedSegSegmentationTest(ScriptedLoadableModuleTest):
    """Segmentation logic in the application, plus MedSegLib's segmentation self-tests."""

    SELFTEST_MODULE = "MedSegLib.selftests.segmentation_selftests"

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_MedSegSegmentation_logic()
        self.setUp()
        self.test_MedSegSegmentation_selftests()

    def test_MedSegSegmentation_logic(self) -> None:
        import numpy as np

        voxels = np.full((8, 20, 20), -1000, dtype=np.int16)
        voxels[2:6, 5:15, 5:15] = 400
        volume = slicer.util.addVolumeFromArray(voxels, name="ct")
        logic = MedSegSegmentationLogic()
        segmentation = logic.ensureOutputSegmentation(volume)
        self.assertIsNotNone(segmentation)
        self.assertIs(logic.ensureOutputSegmentation(volume, segmentation), segmentation)
        with self.assertRaises(ValueError):
            logic.segment(volume, segmentation, "No such method")
        result = logic.segment(volume, segmentation, "threshold", {"lower": 300, "segment_name": "bone"})
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, result.segment_ids[0], volume)
        self.assertEqual(int(mask.sum()), 4 * 10 * 10)
        preview = logic.segment(volume, None, "otsu", {}, preview=True)
        self.assertIsNot(preview.segmentation, segmentation)
        table = logic.statisticsTable(segmentation, volume)
        self.assertEqual(table.GetCellText(0, 0), "bone")
        self.assertEqual(logic.method("otsu").name, "otsu")

    def test_MedSegSegmentation_selftests(self) -> None:
        run_selftests(self, self.SELFTEST_MODULE, slicer.mrmlScene, self.delayDisplay)
