"""MedSeg DICOM: import DICOM folders into a MedSeg database and load series as volumes.

The panel is a thin front end: indexing, series sorting and volume creation live in
``MedSegLib.dicom`` so that ``medseg dicom import|list|load`` runs the very same code headless.
"""

import importlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import parameterNodeWrapper
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
# MedSegDICOM
#


class MedSegDICOM(ScriptedLoadableModule):
    """Module description shown in the Slicer module panel and the generic module tests."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedSeg DICOM")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "MedSeg")]
        self.parent.dependencies = []
        self.parent.contributors = ["MedSeg developers (MedSeg project)"]
        self.parent.helpText = _("""
Import a folder of DICOM files into a MedSeg DICOM database, browse patients, studies and series,
and load the selected series as volumes (CT in Hounsfield units, MR as stored), with warnings for
series that need attention (missing slices, irregular spacing, mixed geometry).
<br><br>Command-line equivalent: <code>medseg dicom import FOLDER --db DATABASE [--copy]</code>,
<code>medseg dicom list --db DATABASE</code> and <code>medseg dicom load SERIES_UID --db DATABASE -o volume.nrrd</code>.
""")
        self.parent.acknowledgementText = _("""
Built on 3D Slicer (slicer.org) and the slicer-core Python package; DICOM parsing with pydicom.
The database layout follows CTK's ctkDICOMDatabase.
""")
        _useSourceTreeIcon(self)


#
# MedSegDICOMParameterNode
#


@parameterNodeWrapper
class MedSegDICOMParameterNode:
    """Panel state kept in the scene, so a saved scene reopens with the same folders."""

    importFolder: Path
    databaseFolder: Path
    copyFiles: bool = False


#
# MedSegDICOMWidget
#


class MedSegDICOMWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Panel: folder pickers, series table and buttons; all work is delegated to MedSegDICOMLogic."""

    # Column title -> key of the rows returned by MedSegDICOMLogic.seriesRows.
    COLUMNS = {"Patient": "patient", "Study": "study", "Series": "series", "Modality": "modality",
               "Instances": "instances", "Warnings": "warnings"}

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[MedSegDICOMLogic] = None
        self._parameterNode: Optional[MedSegDICOMParameterNode] = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(_resourceFile(self, "UI/MedSegDICOM.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = MedSegDICOMLogic()

        self.ui.seriesTable.setColumnCount(len(self.COLUMNS))
        self.ui.seriesTable.setHorizontalHeaderLabels([_(title) for title in self.COLUMNS])

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.importButton.connect("clicked(bool)", self.onImportButton)
        self.ui.refreshButton.connect("clicked(bool)", self.onRefreshButton)
        self.ui.loadButton.connect("clicked(bool)", self.onLoadButton)
        self.ui.seriesTable.connect("itemSelectionChanged()", self._updateButtonStates)

        try:
            self.ui.pacsNodeComboBox.addItems([""] + self.logic.pacsNodeNames())
        except Exception as error:  # a broken settings file must not break the panel: say so and go on
            self._setStatus(str(error))
        self.ui.pacsNodeComboBox.connect("currentIndexChanged(int)", self.onPacsNodeChanged)
        self.ui.pacsEchoButton.connect("clicked(bool)", self.onPacsEchoButton)
        self.ui.queryButton.connect("clicked(bool)", self.onQueryButton)
        self.ui.retrieveButton.connect("clicked(bool)", self.onRetrieveButton)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        if self.logic:
            self.logic.closeDatabase()

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
        if str(self._parameterNode.databaseFolder) in ("", "."):
            self._parameterNode.databaseFolder = self.logic.defaultDatabaseFolder()
        # Quiet refresh: opening the module must neither create the folder nor pop up error dialogs.
        if os.path.isdir(str(self._parameterNode.databaseFolder)):
            try:
                self._refreshTable()
            except Exception as error:  # shown in the panel; the Refresh button reports it loudly
                self._setStatus(str(error))

    def setParameterNode(self, inputParameterNode: Optional[MedSegDICOMParameterNode]) -> None:
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
        hasDatabase = self._parameterNode is not None and str(self._parameterNode.databaseFolder) not in ("", ".")
        hasImportFolder = self._parameterNode is not None and os.path.isdir(str(self._parameterNode.importFolder))
        self.ui.importButton.enabled = hasDatabase and hasImportFolder
        self.ui.refreshButton.enabled = hasDatabase
        self.ui.loadButton.enabled = hasDatabase and bool(self._selectedSeriesUIDs())

    def _setStatus(self, text: str) -> None:
        self.ui.statusLabel.text = text

    def _seriesUIDOfRow(self, row: int) -> str:
        """Series UIDs are kept as item data of the first column (the table shows readable names)."""
        return self.ui.seriesTable.item(row, 0).data(qt.Qt.UserRole)

    def _selectedSeriesUIDs(self) -> List[str]:
        rows = sorted({index.row() for index in self.ui.seriesTable.selectedIndexes()})
        return [self._seriesUIDOfRow(row) for row in rows]

    def _onImportProgress(self, done: int, total: int) -> None:
        self._setStatus(_("Importing: {done} of {total} files").format(done=done, total=total))
        slicer.app.processEvents()

    def onImportButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("DICOM import failed."), waitCursor=True):
            parameters = self._parameterNode
            message = self.logic.importFolder(parameters.databaseFolder, parameters.importFolder,
                                              copyFiles=parameters.copyFiles, progress=self._onImportProgress)
            self._refreshTable()
            self._setStatus(message)

    def onRefreshButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not read the DICOM database."), waitCursor=True):
            self._refreshTable()

    def _refreshTable(self) -> None:
        rows = self.logic.seriesRows(self._parameterNode.databaseFolder)
        self._fillTable(rows)
        self._setStatus(_("{count} series in the database.").format(count=len(rows)))
        self._updateButtonStates()

    def _fillTable(self, rows: List[Dict[str, str]]) -> None:
        table = self.ui.seriesTable
        table.setRowCount(0)
        table.setRowCount(len(rows))
        for rowIndex, row in enumerate(rows):
            for columnIndex, key in enumerate(self.COLUMNS.values()):
                item = qt.QTableWidgetItem(row[key])
                item.setToolTip(row[key])
                table.setItem(rowIndex, columnIndex, item)
            table.item(rowIndex, 0).setData(qt.Qt.UserRole, row["seriesUID"])
        table.resizeColumnsToContents()

    def _showLoadWarnings(self, warningsBySeries: Dict[str, List[str]]) -> None:
        """Loading finds problems the index cannot (e.g. resampled slices): add them to the Warnings column."""
        warningsColumn = list(self.COLUMNS).index("Warnings")
        for rowIndex in range(self.ui.seriesTable.rowCount):
            loadWarnings = warningsBySeries.get(self._seriesUIDOfRow(rowIndex))
            if loadWarnings:
                item = self.ui.seriesTable.item(rowIndex, warningsColumn)
                text = "; ".join(filter(None, [item.text(), *loadWarnings]))
                item.setText(text)
                item.setToolTip(text)

    def onLoadButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Loading the series failed."), waitCursor=True):
            nodes, warningsBySeries = self.logic.loadSeries(self._parameterNode.databaseFolder,
                                                            self._selectedSeriesUIDs())
            self._showLoadWarnings(warningsBySeries)
            volumes = [node for node in nodes if node.IsA("vtkMRMLScalarVolumeNode")]  # 4D series load as sequences
            if volumes:
                slicer.util.setSliceViewerLayers(background=volumes[0], fit=True)
            warningCount = sum(len(warnings) for warnings in warningsBySeries.values())
            self._setStatus(_("Loaded {nodes} volume(s), {warnings} warning(s).").format(
                nodes=len(nodes), warnings=warningCount))


    # ------------------------------------------------------------------ Query PACS
    def _pacsNodeFromPanel(self) -> Any:
        return self.logic.pacsNode(self.ui.pacsNodeComboBox.currentText, self.ui.pacsHostLineEdit.text,
                                   self.ui.pacsPortSpinBox.value, self.ui.pacsCalledAetLineEdit.text,
                                   self.ui.pacsWebUrlLineEdit.text)

    def onPacsNodeChanged(self, index: int) -> None:
        name = self.ui.pacsNodeComboBox.currentText
        if not name:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not read the PACS settings."), waitCursor=True):
            node = self.logic.pacsNode(name)
            self.ui.pacsHostLineEdit.text = node.host
            self.ui.pacsPortSpinBox.value = int(node.port)
            self.ui.pacsCalledAetLineEdit.text = node.ae_title
            self.ui.pacsWebUrlLineEdit.text = node.web_url

    def onPacsEchoButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("The PACS did not answer."), waitCursor=True):
            seconds = self.logic.echoPacs(self._pacsNodeFromPanel())
            self._setStatus(_("PACS answered in {ms} ms.").format(ms=round(seconds * 1000)))

    def onQueryButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("PACS query failed."), waitCursor=True):
            level = self.ui.queryLevelComboBox.currentText.lower()
            filters = {"patient_id": self.ui.queryPatientIdLineEdit.text,
                       "patient_name": self.ui.queryPatientNameLineEdit.text,
                       "study_date": self.ui.queryStudyDateLineEdit.text,
                       "modality": self.ui.queryModalityLineEdit.text}
            if level == "patient":
                filters = {key: filters[key] for key in ("patient_id", "patient_name")}
            rows = self.logic.queryPacs(self._pacsNodeFromPanel(), level, filters)
            self._fillQueryTable(level, rows)
            self._setStatus(_("{count} match(es) on the PACS.").format(count=len(rows)))

    def _fillQueryTable(self, level: str, rows: List[Dict[str, str]]) -> None:
        columns = MedSegDICOMLogic.QUERY_COLUMNS[level]
        table = self.ui.queryResultsTable
        table.setRowCount(0)
        table.setColumnCount(len(columns))
        table.setHorizontalHeaderLabels(columns)
        table.setRowCount(len(rows))
        uidKey = {"patient": "", "study": "StudyInstanceUID", "series": "SeriesInstanceUID"}[level]
        for rowIndex, row in enumerate(rows):
            for columnIndex, key in enumerate(columns):
                item = qt.QTableWidgetItem(row.get(key, ""))
                table.setItem(rowIndex, columnIndex, item)
            table.item(rowIndex, 0).setData(qt.Qt.UserRole, row.get(uidKey, "") if uidKey else "")
        table.resizeColumnsToContents()

    def onRetrieveButton(self) -> None:
        table = self.ui.queryResultsTable
        rows = sorted({index.row() for index in table.selectedIndexes()})
        uids = [uid for uid in (table.item(row, 0).data(qt.Qt.UserRole) for row in rows) if uid]
        if not uids:
            self._setStatus(_("Select studies or series in the query results first."))
            return
        with slicer.util.tryWithErrorDisplay(_("Retrieving from the PACS failed."), waitCursor=True):
            messages = [self.logic.retrieveFromPacs(self._pacsNodeFromPanel(), uid, self._parameterNode.databaseFolder,
                                                    self.ui.retrieveMethodComboBox.currentText) for uid in uids]
            self._refreshTable()
            self._setStatus("\n".join(messages))


#
# MedSegDICOMLogic
#


class MedSegDICOMLogic(ScriptedLoadableModuleLogic):
    """Thin adapter from the panel to MedSegLib.dicom (database, loader, MRML conversion)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._database = None
        self._databaseFolder: Optional[str] = None

    def getParameterNode(self) -> MedSegDICOMParameterNode:
        return MedSegDICOMParameterNode(super().getParameterNode())

    @staticmethod
    def applicationDatabase() -> Any:
        """3D Slicer's own DICOM database (``slicer.dicomDatabase``) when the application has one open."""
        database = getattr(slicer, "dicomDatabase", None)
        return database if database is not None and database.isOpen else None

    @classmethod
    def defaultDatabaseFolder(cls) -> Path:
        """Slicer's DICOM database inside the application; headless, the one ``medseg dicom`` uses by default."""
        applicationDatabase = cls.applicationDatabase()
        if applicationDatabase is not None:
            return Path(applicationDatabase.databaseDirectory)
        return Path(_importMedSegLib("MedSegLib.dicom.database").default_database_directory())

    def usesApplicationDatabase(self, databaseFolder: Path) -> bool:
        """True when ``databaseFolder`` is the application's database: then CTK reads and writes it, not MedSegLib."""
        applicationDatabase = self.applicationDatabase()
        return applicationDatabase is not None and os.path.normpath(os.fspath(databaseFolder)) == os.path.normpath(
            applicationDatabase.databaseDirectory)

    def database(self, databaseFolder: Path) -> Any:
        """The database of ``databaseFolder``: Slicer's ctkDICOMDatabase, or a MedSegLib one (same method names)."""
        if self.usesApplicationDatabase(databaseFolder):
            return self.applicationDatabase()
        folder = os.fspath(databaseFolder)
        if self._database is None or folder != self._databaseFolder:
            self.closeDatabase()
            self._database = _importMedSegLib("MedSegLib.dicom.database").DicomDatabase(folder)
            self._databaseFolder = folder
        return self._database

    def closeDatabase(self) -> None:
        """Release the database files (module unload, or before its folder is removed)."""
        if self._database is not None and self._database is not self.applicationDatabase():
            self._database.closeDatabase()
        self._database = self._databaseFolder = None

    def importFolder(self, databaseFolder: Path, importFolder: Path, copyFiles: bool = False,
                     progress: Optional[Callable[[int, int], None]] = None) -> str:
        """Index every DICOM file under ``importFolder``; returns a one-paragraph summary with warnings."""
        if self.usesApplicationDatabase(databaseFolder):
            from DICOMLib import DICOMUtils

            database = self.applicationDatabase()
            before = database.imagesCount()
            DICOMUtils.importDicom(os.fspath(importFolder), database, copyFiles)
            return _("{added} instances added to the 3D Slicer DICOM database.").format(
                added=database.imagesCount() - before)
        indexer = _importMedSegLib("MedSegLib.dicom.indexer")
        summary = indexer.import_paths(self.database(databaseFolder), [os.fspath(importFolder)],
                                       copy_files=copyFiles, progress=progress)
        counts = _("{seen} files: {added} added, {updated} updated, {unchanged} unchanged, "
                   "{nonDicom} not DICOM, {failed} unreadable.").format(
            seen=summary.files_seen, added=summary.added, updated=summary.updated, unchanged=summary.unchanged,
            nonDicom=summary.skipped_non_dicom, failed=len(summary.failed))
        return "\n".join([counts, *summary.warnings()])

    def seriesRows(self, databaseFolder: Path) -> List[Dict[str, str]]:
        """One display row per series (patient, study, series, modality, instances, warnings) plus its UID."""
        if self.usesApplicationDatabase(databaseFolder):
            return self._applicationSeriesRows(self.applicationDatabase())
        database = _importMedSegLib("MedSegLib.dicom.database")
        rows = []
        for patient in database.describe_database(self.database(databaseFolder)):
            patientText = " ".join(filter(None, [patient["displayed_name"] or patient["name"],
                                                 f"({patient['patient_id']})" if patient["patient_id"] else ""]))
            for study in patient["studies"]:
                studyText = " ".join(filter(None, [study["study_date"], study["description"]]))
                for series in study["series"]:
                    rows.append({
                        "seriesUID": series["series_instance_uid"],
                        "patient": patientText,
                        "study": studyText,
                        "series": " ".join(filter(None, [str(series["series_number"] or ""), series["description"]])),
                        "modality": series["modality"],
                        "instances": str(series["instances"]),
                        "warnings": "; ".join(series["warnings"]),
                    })
        return rows

    @staticmethod
    def _applicationSeriesRows(database: Any) -> List[Dict[str, str]]:
        """Rows from a ctkDICOMDatabase through its own API; warnings come from MedSeg's series examination."""
        loader = _importMedSegLib("MedSegLib.dicom.loader")
        rows = []
        for patient in database.patients():
            patientText = database.displayedNameForPatient(patient) or database.nameForPatient(patient)
            for study in database.studiesForPatient(patient):
                studyText = " ".join(filter(None, [database.fieldForStudy("StudyDate", study),
                                                   database.descriptionForStudy(study)]))
                for series in database.seriesForStudy(study):
                    files = database.filesForSeries(series)
                    warnings = [w for loadable in loader.examine_files(files) for w in loadable.warnings]
                    rows.append({
                        "seriesUID": series,
                        "patient": patientText,
                        "study": studyText,
                        "series": " ".join(filter(None, [database.fieldForSeries("SeriesNumber", series),
                                                         database.descriptionForSeries(series)])),
                        "modality": database.fieldForSeries("Modality", series),
                        "instances": str(len(files)),
                        "warnings": "; ".join(dict.fromkeys(warnings)),
                    })
        return rows

    def loadSeries(self, databaseFolder: Path, seriesUIDs: List[str],
                   scene: Any = None) -> Tuple[List[Any], Dict[str, List[str]]]:
        """Load each series as volume node(s) (a sequence for 4D series); returns the nodes and warnings per series."""
        loader = _importMedSegLib("MedSegLib.dicom.loader")
        mrml = _importMedSegLib("MedSegLib.dicom.mrml")
        scene = scene if scene is not None else slicer.mrmlScene
        db = self.database(databaseFolder)
        nodes, warningsBySeries = [], {}
        for seriesUID in seriesUIDs:
            warningsBySeries[seriesUID] = []
            for loaded in loader.load_series_files(db.filesForSeries(seriesUID)):
                nodes.append(mrml.add_loaded_volume(loaded, scene))
                warningsBySeries[seriesUID].extend(loaded.warnings)
        return nodes, warningsBySeries


    # ------------------------------------------------------------------ PACS (MedSegLib.pacs)
    QUERY_COLUMNS = {
        "patient": ["PatientID", "PatientName", "PatientBirthDate", "NumberOfPatientRelatedStudies"],
        "study": ["StudyDate", "PatientID", "PatientName", "ModalitiesInStudy", "StudyDescription",
                  "StudyInstanceUID"],
        "series": ["Modality", "SeriesNumber", "SeriesDescription", "NumberOfSeriesRelatedInstances",
                   "SeriesInstanceUID"],
    }

    @staticmethod
    def pacsNodeNames() -> List[str]:
        """Names of the nodes in MedSeg's PACS settings file."""
        return sorted(_importMedSegLib("MedSegLib.pacs.nodes").load_nodes())

    @staticmethod
    def pacsNode(name: str = "", host: str = "", port: int = 0, calledAet: str = "", webUrl: str = "") -> Any:
        """A configured node by name, with the panel's non-empty fields taking precedence."""
        nodes = _importMedSegLib("MedSegLib.pacs.nodes")
        return nodes.resolve_node(name or None, host or None, int(port) if port else None, calledAet or None,
                                  None, webUrl or None)

    @staticmethod
    def echoPacs(node: Any) -> float:
        """Round trip in seconds (C-ECHO, or a one-result QIDO-RS for a DICOMweb-only node)."""
        import time

        if node.web_url and not node.ae_title:
            started = time.perf_counter()
            _importMedSegLib("MedSegLib.pacs.dicomweb").search(node, "study", limit=1)
            return time.perf_counter() - started
        return _importMedSegLib("MedSegLib.pacs.dimse").echo(node)

    @staticmethod
    def queryPacs(node: Any, level: str, filters: Dict[str, str]) -> List[Dict[str, str]]:
        """C-FIND (or QIDO-RS when the node has a DICOMweb URL) at patient, study or series level."""
        if node.web_url:
            return _importMedSegLib("MedSegLib.pacs.dicomweb").search(node, level, filters)
        return _importMedSegLib("MedSegLib.pacs.dimse").find(node, level, filters)

    def retrieveFromPacs(self, node: Any, uid: str, databaseFolder: Path, method: str = "C-GET") -> str:
        """Retrieve a study/series straight into the database; Slicer's own database gets it through CTK."""
        if self.usesApplicationDatabase(databaseFolder):
            with tempfile.TemporaryDirectory(prefix="MedSegRetrieve-") as stagingFolder:
                result = self._retrieve(node, uid, Path(stagingFolder), method)
                self.importFolder(databaseFolder, Path(stagingFolder) / "dicom", copyFiles=True)
        else:
            self.closeDatabase()  # the retrieve indexes through its own connection
            result = self._retrieve(node, uid, Path(databaseFolder), method)
        return _("{method}: {count} instance(s) of {level} {uid} retrieved in {seconds:.1f} s.").format(
            method=method, count=result.received, level=result.level, uid=uid, seconds=result.elapsed_s)

    @staticmethod
    def _retrieve(node: Any, uid: str, databaseFolder: Path, method: str) -> Any:
        if method == "WADO-RS":
            return _importMedSegLib("MedSegLib.pacs.dicomweb").retrieve(node, uid, databaseFolder)
        dimse = _importMedSegLib("MedSegLib.pacs.dimse")
        if method == "C-MOVE":
            return dimse.move(node, uid, databaseFolder)
        return dimse.get(node, uid, databaseFolder)

#
# MedSegDICOMTest
#


class MedSegDICOMTest(ScriptedLoadableModuleTest):
    """Runs MedSegLib's DICOM self-tests in the application scene (the same checks pytest runs headless)."""

    SELFTEST_MODULE = "MedSegLib.selftests.dicom_selftests"

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_MedSegDICOM_importAndLoad()
        self.setUp()
        self.test_MedSegDICOM_pacsErrorsAreClear()
        self.setUp()
        self.test_MedSegDICOM_selftests()
        self.setUp()
        self.test_MedSegDICOM_exportSelftests()

    def test_MedSegDICOM_importAndLoad(self) -> None:
        """The panel's import -> table -> load path on MedSeg's synthetic CT series."""
        from MedSegLib.sample_data import write_ct_phantom

        with tempfile.TemporaryDirectory(prefix="MedSegDICOMTest-") as workDir:
            seriesFolder = write_ct_phantom(Path(workDir) / "ct", shape=(8, 32, 32))
            logic = MedSegDICOMLogic()
            databaseFolder = Path(workDir) / "db"
            message = logic.importFolder(databaseFolder, seriesFolder)
            self.assertIn("8 added", message)
            rows = logic.seriesRows(databaseFolder)
            self.assertEqual(len(rows), 1)
            self.assertEqual((rows[0]["modality"], rows[0]["instances"], rows[0]["warnings"]), ("CT", "8", ""))
            nodes, warnings = logic.loadSeries(databaseFolder, [rows[0]["seriesUID"]])
            self.assertEqual(len(nodes), 1)
            self.assertEqual(slicer.util.arrayFromVolume(nodes[0]).shape, (8, 32, 32))
            self.assertEqual(warnings, {rows[0]["seriesUID"]: []})
            logic.closeDatabase()

    def test_MedSegDICOM_pacsErrorsAreClear(self) -> None:
        """A PACS that is not there gives one readable error quickly, never a hang."""
        import socket
        import time

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            closedPort = probe.getsockname()[1]
        logic = MedSegDICOMLogic()
        node = logic.pacsNode("", "127.0.0.1", closedPort, "ORTHANC")
        started = time.perf_counter()
        with self.assertRaises(Exception) as caught:
            logic.queryPacs(node, "study", {"patient_id": "X"})
        self.assertIn("connection refused", str(caught.exception))
        self.assertLess(time.perf_counter() - started, node.timeout_s)

    def test_MedSegDICOM_selftests(self) -> None:
        run_selftests(self, self.SELFTEST_MODULE, slicer.mrmlScene, self.delayDisplay)

    def test_MedSegDICOM_exportSelftests(self) -> None:
        """DICOM SEG / Parametric Map export and import round trips (the panel's export path)."""
        run_selftests(self, "MedSegLib.selftests.export_selftests", slicer.mrmlScene, self.delayDisplay)
