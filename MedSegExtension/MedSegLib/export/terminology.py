"""Slicer terminology entries (segment tag ``TerminologyEntry``) <-> DICOM coded concepts of a SEG segment.

Slicer serialises an entry as ``context~category~type~typeModifier~anatomicContext~region~regionModifier`` with
each code as ``scheme^value^meaning``; DICOM SEG carries the same codes in the Segmented Property Category/Type
(+ modifier) and Anatomic Region sequences, which is how Slicer's own DICOM SEG plugin maps them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Tuple

SLICER_TERMINOLOGY_TAG = "TerminologyEntry"
IMPORT_CONTEXT = "Segmentation category and type - DICOM master list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
#: SNOMED CT "Tissue" (category and type) when a segment carries no terminology: a valid, honest default
DEFAULT_CODE = ("SCT", "85756007", "Tissue")

Code3 = Tuple[str, str, str]


@dataclasses.dataclass
class SegmentTerms:
    """The codes of one segment; ``None`` where absent."""

    category: Code3 = DEFAULT_CODE
    type: Code3 = DEFAULT_CODE
    type_modifier: Optional[Code3] = None
    region: Optional[Code3] = None
    region_modifier: Optional[Code3] = None
    context: str = ""


def _code(text: str) -> Optional[Code3]:
    parts = (text or "").split("^")
    if len(parts) < 3 or not parts[0] or not parts[1]:
        return None
    return parts[0], parts[1], "^".join(parts[2:])


def parse_entry(serialized: Optional[str]) -> SegmentTerms:
    """Codes from a serialised Slicer entry; missing category/type fall back to SNOMED CT Tissue."""
    fields = (serialized or "").split("~")
    fields += [""] * (7 - len(fields))
    category, type_ = _code(fields[1]), _code(fields[2])
    if category is None or type_ is None:
        return SegmentTerms(context=fields[0])
    return SegmentTerms(
        category=category,
        type=type_,
        type_modifier=_code(fields[3]),
        region=_code(fields[5]),
        region_modifier=_code(fields[6]),
        context=fields[0],
    )


def _text(code: Optional[Code3]) -> str:
    return "^".join(code) if code else "^^"


def serialize_terms(terms: SegmentTerms) -> str:
    """The Slicer string for codes read from a SEG (the DICOM master list context, as Slicer's plugin uses)."""
    context = terms.context or IMPORT_CONTEXT
    return "~".join(
        [
            context,
            _text(terms.category),
            _text(terms.type),
            _text(terms.type_modifier),
            ANATOMIC_CONTEXT if terms.region else "",
            _text(terms.region),
            _text(terms.region_modifier),
        ]
    )


def coded(code: Code3) -> Any:
    from highdicom.sr.coding import CodedConcept

    return CodedConcept(value=code[1], scheme_designator=code[0], meaning=code[2])


def code3(item: Any) -> Code3:
    """(scheme, value, meaning) of a code sequence item / CodedConcept."""
    return str(item.CodingSchemeDesignator), str(item.CodeValue), str(item.CodeMeaning)
