"""What one case carries from step to step: loaded volumes, segmentations, maps, outputs and provenance.

Steps talk to each other only through this object, so a step written by another module (segmentation,
deep learning, qMRI, export) needs no knowledge of the others, and the runner can record every output
with its provenance in the case manifest.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from MedSegLib.progress import CancelToken


class StepUnavailable(Exception):
    """The capability a step needs is not installed / not built yet (reported as "not available")."""


class StepSkipped(Exception):
    """The step does not apply to this case (e.g. DICOM export of a NIfTI input); not an error."""


@dataclass
class VolumeEntry:
    """A loaded series: its MRML node (scalar volume or sequence) and the DICOM facts steps select on."""

    node: Any
    name: str
    modality: str = ""
    series_uid: str = ""
    description: str = ""
    files: List[str] = field(default_factory=list)
    is_sequence: bool = False
    resampled: bool = False
    index_name: str = ""

    def to_json(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "modality": self.modality,
            "series_instance_uid": self.series_uid,
            "description": self.description,
            "instances": len(self.files),
            "kind": "4D" if self.is_sequence else "3D",
            "index": self.index_name,
        }


@dataclass
class SegmentationEntry:
    """A segmentation made by a step, with the volume whose grid and series it belongs to."""

    node: Any
    volume: VolumeEntry
    step: str
    kind: str  # "classical" or "deep learning"
    path: Optional[Path] = None


@dataclass
class CaseContext:
    """State of one case while its steps run (inside one worker process)."""

    case_id: str
    scene: Any
    out_dir: Path
    inputs: List[Dict[str, Any]]
    volumes: List[VolumeEntry] = field(default_factory=list)
    segmentations: Dict[str, SegmentationEntry] = field(default_factory=dict)
    maps: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # fit id -> {map name: node}
    map_sources: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # fit id -> {"volume", "primary", "model"}
    outputs: List[Dict[str, Any]] = field(default_factory=list)
    measurements: Dict[str, Dict[str, float]] = field(default_factory=dict)
    tables: List[Dict[str, Any]] = field(default_factory=list)
    provenance: Dict[str, Any] = field(default_factory=dict)
    cancel: CancelToken = field(default_factory=CancelToken)
    progress: Optional[Callable[[str, float, str], None]] = None
    current_step: str = ""
    scratch: Path = field(default_factory=lambda: Path("."))

    def report(self, fraction: float, message: str = "") -> None:
        """Per-case progress of the running step (sent to the parent / scheduler when possible)."""
        self.cancel.raise_if_cancelled()
        if self.progress is not None:
            self.progress(self.current_step, fraction, message)

    def path(self, *parts: str) -> Path:
        """A path inside the case's (staging) output folder; parent folders are created."""
        target = self.out_dir.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def add_output(self, path: Path, kind: str, caption: str = "", **extra: Any) -> Dict[str, Any]:
        """Record an output file (path relative to the case folder) with its checksum and making step."""
        path = Path(path)
        entry = {
            "path": path.relative_to(self.out_dir).as_posix(),
            "kind": kind,
            "step": self.current_step,
            "caption": caption,
            "sha256": sha256_file(path),
            "bytes": path.stat().st_size,
            **extra,
        }
        self.outputs.append(entry)
        return entry

    def measure(self, group: str, column: str, value: Optional[float]) -> None:
        """A number for the cohort table (e.g. group "Volume cm3", column "classical: Lungs")."""
        if value is None:
            return
        self.measurements.setdefault(group, {})[column] = float(value)

    def select_volume(self, selector: Any = None, sequence: bool = False) -> VolumeEntry:
        """The volume a step works on: by modality ("CT"), name/description substring, or the first one."""
        from MedSegLib.errors import UserInputError

        candidates = [v for v in self.volumes if v.is_sequence == sequence]
        if isinstance(selector, str):
            selector = {"modality": selector} if selector.isupper() and len(selector) <= 4 else {"name": selector}
        selector = dict(selector or {})
        if selector.get("modality"):
            candidates = [v for v in candidates if v.modality.upper() == str(selector["modality"]).upper()]
        if selector.get("name"):
            needle = str(selector["name"]).lower()
            candidates = [v for v in candidates if needle in v.name.lower() or needle in v.description.lower()]
        if selector.get("index_name"):
            candidates = [v for v in candidates if v.index_name == selector["index_name"]]
        if not candidates:
            kind = "4D series" if sequence else "3D volume"
            loaded = ", ".join(f"{v.name} ({v.modality or '?'})" for v in self.volumes) or "nothing"
            raise UserInputError(f"no {kind} matches {selector or 'any'} (loaded: {loaded})")
        return candidates[0]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
