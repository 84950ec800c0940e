"""De-identification on export and on send: DICOM PS3.15 Annex E Basic Application Confidentiality Profile.

Attributes that identify the patient, the staff, the institution or the visit are removed, emptied or replaced
(table below, the profile's X/Z/D actions); private elements and overlays are removed; every instance-specific
UID is either retained (Retain UIDs option) or remapped by a keyed hash, so a series and the SEG/Parametric Map
that references it stay consistent after de-identification. Dates are emptied, or shifted by a fixed number of
days (Retain Longitudinal Temporal Information with Modified Dates option). Applied recursively to sequences.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import hmac
import secrets
from typing import Any, Dict, Optional

# PS3.15 Table E.1-1 actions for the attributes the images MedSeg handles carry (X remove, Z empty, D dummy).
ACTIONS: Dict[str, str] = {
    **dict.fromkeys(
        (
            "PatientName",
            "PatientID",
            "PatientBirthDate",
            "PatientSex",
            "ReferringPhysicianName",
            "StudyID",
            "AccessionNumber",
            "ContentCreatorName",
            "FillerOrderNumberImagingServiceRequest",
            "PlacerOrderNumberImagingServiceRequest",
            "VerifyingObserverName",
            "PersonName",
        ),
        "Z",
    ),
    "ReferencedPerformedProcedureStepSequence": "Z",  # Type 2 in SR documents: emptied, not removed
    "DeviceSerialNumber": "D",  # Type 1 in enhanced equipment (SEG, Parametric Map): dummy, not removed
    **dict.fromkeys(
        (
            "PatientBirthTime",
            "OtherPatientIDs",
            "OtherPatientIDsSequence",
            "OtherPatientNames",
            "PatientBirthName",
            "PatientAddress",
            "PatientTelephoneNumbers",
            "PatientMotherBirthName",
            "MilitaryRank",
            "BranchOfService",
            "EthnicGroup",
            "Occupation",
            "AdditionalPatientHistory",
            "PatientComments",
            "PatientAge",
            "PatientSize",
            "PatientWeight",
            "MedicalRecordLocator",
            "CountryOfResidence",
            "RegionOfResidence",
            "PatientReligiousPreference",
            "PatientInsurancePlanCodeSequence",
            "IssuerOfPatientID",
            "IssuerOfPatientIDQualifiersSequence",
            "MedicalAlerts",
            "Allergies",
            "PregnancyStatus",
            "SmokingStatus",
            "LastMenstrualDate",
            "PatientState",
            "SpecialNeeds",
            "ResponsiblePerson",
            "ResponsibleOrganization",
            "InstitutionName",
            "InstitutionAddress",
            "InstitutionalDepartmentName",
            "InstitutionCodeSequence",
            "InstitutionalDepartmentTypeCodeSequence",
            "StationName",
            "PerformingPhysicianName",
            "PerformingPhysicianIdentificationSequence",
            "PhysiciansOfRecord",
            "PhysiciansOfRecordIdentificationSequence",
            "NameOfPhysiciansReadingStudy",
            "PhysiciansReadingStudyIdentificationSequence",
            "OperatorsName",
            "OperatorIdentificationSequence",
            "RequestingPhysician",
            "RequestingService",
            "ReferringPhysicianAddress",
            "ReferringPhysicianTelephoneNumbers",
            "ReferringPhysicianIdentificationSequence",
            "ConsultingPhysicianName",
            "StudyDescription",
            "SeriesDescription",
            "DerivationDescription",
            "ImageComments",
            "ProtocolName",
            "RequestAttributesSequence",
            "AdmittingDiagnosesDescription",
            "AdmittingDiagnosesCodeSequence",
            "ReasonForStudy",
            "RequestedProcedureDescription",
            "RequestedProcedureID",
            "PerformedProcedureStepDescription",
            "PerformedProcedureStepID",
            "ScheduledProcedureStepDescription",
            "ScheduledProcedureStepID",
            "ReferencedPatientSequence",
            "ReferencedStudySequence",
            "ProcedureCodeSequence",
            "AdmissionID",
            "IssuerOfAdmissionID",
            "ServiceEpisodeID",
            "ServiceEpisodeDescription",
            "VisitComments",
            "CurrentPatientLocation",
            "PatientInstitutionResidence",
            "AcquisitionComments",
            "ImagePresentationComments",
            "TextComments",
            "TextString",
            "ContrastBolusAgent",
            "RequestedContrastAgent",
            "DetectorID",
            "GantryID",
            "StudyComments",
            "InterpretationAuthor",
            "ReviewerName",
            "PerformedLocation",
            "ScheduledPerformingPhysicianName",
            "NamesOfIntendedRecipientsOfResults",
            "OrderEnteredBy",
            "OrderEntererLocation",
            "OrderCallbackPhoneNumber",
            "DigitalSignaturesSequence",
            "DataSetTrailingPadding",
            "SourceApplicationEntityTitle",
            "SendingApplicationEntityTitle",
            "ReceivingApplicationEntityTitle",
            "StationAETitle",
            "RetrieveAETitle",
            "TimezoneOffsetFromUTC",
            "DeviceUID",
            "PatientTransportArrangements",
            "PersonAddress",
            "PersonTelephoneNumbers",
            "ContentCreatorIdentificationCodeSequence",
            "ModifyingDeviceID",
            "ModifyingDeviceManufacturer",
            "OriginalAttributesSequence",
            "RequestedProcedureCodeSequence",
        ),
        "X",
    ),
}
_DATE_VRS = ("DA", "DT", "TM")
_TYPE1_DATES = {
    "ContentDate": "19000101",
    "ContentTime": "000000",
    "InstanceCreationDate": "19000101",
    "InstanceCreationTime": "000000",
}
_ROOT = "2.25."


def _standard_uid(uid: Any) -> bool:
    return str(uid).startswith("1.2.840.10008.") or uid.name != str(uid)


@dataclasses.dataclass
class Deidentifier:
    """PS3.15 basic profile with options; one instance keeps UID/ID remapping consistent across datasets.

    ``key`` makes the remapping reproducible across sessions (same key -> same new UIDs); without it a random
    key is drawn. ``date_shift_days`` shifts every date (0 keeps dates: "Retain Full Dates" option), ``None``
    empties them.
    """

    retain_uids: bool = False
    date_shift_days: Optional[int] = None
    key: bytes = dataclasses.field(default_factory=lambda: secrets.token_bytes(32))
    patient_name: str = "ANONYMIZED"
    patient_id: Optional[str] = None  # None: a keyed pseudonym of the original ID
    uid_map: Dict[str, str] = dataclasses.field(default_factory=dict)

    def new_uid(self, uid: str) -> str:
        """A 2.25 UID derived from ``uid`` by HMAC-SHA256 (same input and key -> same output)."""
        if uid not in self.uid_map:
            digest = hmac.new(self.key, uid.encode("ascii", "replace"), hashlib.sha256).digest()
            self.uid_map[uid] = _ROOT + str(int.from_bytes(digest[:16], "big"))
        return self.uid_map[uid]

    def pseudonym(self, patient_id: str) -> str:
        digest = hmac.new(self.key, b"patient:" + patient_id.encode("utf-8", "replace"), hashlib.sha256).hexdigest()
        return "MEDSEG-" + digest[:12].upper()

    # ------------------------------------------------------------------ dataset processing
    def apply(self, ds: Any) -> Any:
        """De-identify ``ds`` in place (and its file meta); returns it."""
        original_id = str(ds.get("PatientID", "") or "")
        ds.remove_private_tags()
        self._process(ds)
        ds.PatientName = self.patient_name
        ds.PatientID = self.patient_id if self.patient_id is not None else self.pseudonym(original_id)
        ds.PatientIdentityRemoved = "YES"
        self._method(ds)
        meta = getattr(ds, "file_meta", None)
        if meta is not None:
            if "MediaStorageSOPInstanceUID" in meta and "SOPInstanceUID" in ds:
                meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            for keyword in (
                "SourceApplicationEntityTitle",
                "SendingApplicationEntityTitle",
                "ReceivingApplicationEntityTitle",
            ):
                if keyword in meta:
                    delattr(meta, keyword)
        return ds

    def _process(self, ds: Any) -> None:
        """Apply the actions; elements are replaced, never changed in place, because writers such as highdicom
        share DataElement objects between a new object and its source datasets."""
        import copy

        from pydicom.dataelem import DataElement
        from pydicom.uid import UID

        for element in list(ds):
            tag = element.tag
            if tag.group & 0xFF00 == 0x6000:  # overlays and curves
                del ds[tag]
                continue
            keyword = element.keyword
            action = ACTIONS.get(keyword)
            if action == "X":
                del ds[tag]
            elif action == "D":
                ds[tag] = DataElement(tag, element.VR, "0")
            elif action == "Z":
                ds[tag] = DataElement(tag, element.VR, [] if element.VR == "SQ" else "")
            elif element.VR == "SQ":
                ds[tag] = copy.deepcopy(element)
                for item in ds[tag].value:
                    self._process(item)
            elif element.VR == "UI" and element.value and not self.retain_uids:
                values = element.value if element.VM > 1 else [element.value]
                # UIDs of the standard (SOP classes, transfer syntaxes, coding schemes) are never remapped
                mapped = [str(v) if _standard_uid(UID(str(v))) else self.new_uid(str(v)) for v in values]
                ds[tag] = DataElement(tag, "UI", mapped if element.VM > 1 else mapped[0])
            elif element.VR in _DATE_VRS and element.value not in (None, ""):
                ds[tag] = DataElement(tag, element.VR, self._date_value(keyword, element.VR, str(element.value)))

    def _date_value(self, keyword: str, vr: str, value: str) -> str:
        if self.date_shift_days is None:
            return _TYPE1_DATES.get(keyword, "")
        if vr == "TM" or self.date_shift_days == 0:
            return value
        try:
            day = datetime.datetime.strptime(value[:8], "%Y%m%d").date()
        except ValueError:
            return ""
        shifted = (day + datetime.timedelta(days=self.date_shift_days)).strftime("%Y%m%d")
        return shifted + value[8:]

    def _method(self, ds: Any) -> None:
        from pydicom.dataset import Dataset

        codes = [("113100", "Basic Application Confidentiality Profile")]
        if self.retain_uids:
            codes.append(("113110", "Retain UIDs Option"))
        if self.date_shift_days is None:
            ds.LongitudinalTemporalInformationModified = "REMOVED"
        elif self.date_shift_days == 0:
            codes.append(("113106", "Retain Longitudinal Temporal Information Full Dates Option"))
            ds.LongitudinalTemporalInformationModified = "UNMODIFIED"
        else:
            codes.append(("113107", "Retain Longitudinal Temporal Information Modified Dates Option"))
            ds.LongitudinalTemporalInformationModified = "MODIFIED"
        items = []
        for value, meaning in codes:
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
            items.append(item)
        ds.DeidentificationMethodCodeSequence = items
        ds.DeidentificationMethod = ["MedSeg PS3.15 Basic Profile"] + [m[:64] for _, m in codes[1:]]  # LO: 64 each


def deidentify_file(source: str, destination: str, deidentifier: Deidentifier) -> str:
    """Read, de-identify and write one file (used by ``medseg pacs send --deidentify``)."""
    import pydicom

    ds = pydicom.dcmread(source)
    deidentifier.apply(ds)
    ds.save_as(destination, enforce_file_format=True)
    return destination
