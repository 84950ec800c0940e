"""The window/level preset library: built-in JSON plus users' own files, validated with clear messages.

The library lives in ``Resources/Presets/window_presets.json`` (its ``$comment`` documents the schema).
Users add presets in files of the same schema, named by ``--presets FILE`` or the ``MEDSEG_PRESETS``
environment variable (several paths joined by ``os.pathsep``); a user preset with the name of a library
preset replaces it. Any invalid file raises ``UserInputError`` naming the file, the entry and the field,
because a silently skipped preset shows up much later as a wrong image.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from MedSegLib.errors import UserInputError

SCHEMA = "medseg-window-presets/1"
LIBRARY_FILE = ("Presets", "window_presets.json")
ENV_VAR = "MEDSEG_PRESETS"
DEFAULT_COLOR = "vtkMRMLColorTableNodeGrey"
_ID_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_KINDS = ("fixed", "percentile")
_MODALITIES = ("CT", "MR", "any")
_GROUPS = ("slicer", "clinical", "auto", "user", "dicom")
_FUNCTIONS = ("seed", "linear", "linear-exact", "sigmoid")
_KEYS = {
    "id", "name", "kind", "window", "level", "lower_percentile", "upper_percentile", "source", "description",
    "modality", "group", "aliases", "color", "function",
}  # fmt: skip

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class WindowPreset:
    """One preset: a fixed window/level, or a percentile window computed from each volume."""

    name: str
    id: str
    window: Optional[float] = None
    level: Optional[float] = None
    kind: str = "fixed"
    lower_percentile: Optional[float] = None
    upper_percentile: Optional[float] = None
    source: str = ""
    description: str = ""
    modality: str = "CT"
    group: str = "user"
    aliases: Tuple[str, ...] = field(default_factory=tuple)
    color: str = DEFAULT_COLOR
    function: str = "seed"
    origin: str = ""  # file it came from (not part of the schema)

    @property
    def is_percentile(self) -> bool:
        return self.kind == "percentile"

    def window_level(self, values: Optional[np.ndarray] = None) -> Tuple[float, float]:
        """(window, level); percentile presets need the volume's values."""
        if not self.is_percentile:
            return float(self.window), float(self.level)
        if values is None:
            raise ValueError(f"preset {self.name!r} is computed from the volume: pass its values")
        return percentile_window(values, self.lower_percentile, self.upper_percentile)

    def to_json(self) -> Dict[str, Any]:
        """The ``--list-presets --json`` object: name, window, level, source first."""
        data = {"name": self.name, "window": self.window, "level": self.level, "source": self.source}
        for key, value in asdict(self).items():
            if key not in data and key != "origin":
                data[key] = list(value) if isinstance(value, tuple) else value
        return data


def percentile_window(values: np.ndarray, lower: float, upper: float) -> Tuple[float, float]:
    """(window, level) spanning two percentiles of the finite values (linear interpolation)."""
    array = np.asarray(values)
    if array.dtype.kind == "f":
        array = array[np.isfinite(array)]
    if array.size == 0:
        raise ValueError("no finite values to compute a percentile window from")
    low, high = (float(v) for v in np.percentile(array, [lower, upper]))
    if high <= low:  # a constant volume: any positive width shows it mid-grey
        high = low + 1.0
    return high - low, (high + low) / 2.0


def normalize_name(name: str) -> str:
    """Lookup key: case, spaces, '-' and '_' ignored ("CT-Lung" == "ct lung" == "CT_LUNG")."""
    return re.sub(r"[\s_\-]+", "", str(name)).lower()


def default_id(name: str) -> str:
    text = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").upper()
    return text if text and text[0].isalpha() else f"P_{text}"


def _number(entry: Dict[str, Any], key: str, where: str, path: Path) -> Optional[float]:
    if key not in entry or entry[key] is None:
        return None
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserInputError(f"{where}: '{key}' must be a finite number, got {value!r}", path)
    return float(value)


def _text(entry: Dict[str, Any], key: str, where: str, path: Path, default: str = "") -> str:
    value = entry.get(key, default)
    if not isinstance(value, str):
        raise UserInputError(f"{where}: '{key}' must be a string, got {value!r}", path)
    return value


def _choice(entry: Dict[str, Any], key: str, allowed: Sequence[str], where: str, path: Path, default: str) -> str:
    value = _text(entry, key, where, path, default)
    if value not in allowed:
        raise UserInputError(f"{where}: '{key}' must be one of {', '.join(allowed)}, got {value!r}", path)
    return value


def parse_preset(entry: Any, index: int, path: Path, library: bool = False) -> WindowPreset:
    """One validated preset from a JSON entry; errors name the file, the entry and the field."""
    where = f"preset #{index + 1}"
    if not isinstance(entry, dict):
        raise UserInputError(f"{where} must be a JSON object, got {type(entry).__name__}", path)
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise UserInputError(f"{where}: 'name' is required and must be a non-empty string", path)
    where = f"preset #{index + 1} ({name!r})"
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        allowed = ", ".join(sorted(_KEYS))
        raise UserInputError(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {allowed})", path)
    kind = _choice(entry, "kind", _KINDS, where, path, "fixed")
    window = _number(entry, "window", where, path)
    level = _number(entry, "level", where, path)
    lower = _number(entry, "lower_percentile", where, path)
    upper = _number(entry, "upper_percentile", where, path)
    if kind == "fixed":
        if window is None or level is None:
            raise UserInputError(f"{where}: 'window' and 'level' are required numbers", path)
        if window <= 0:
            raise UserInputError(f"{where}: 'window' must be > 0, got {window:g}", path)
        if lower is not None or upper is not None:
            raise UserInputError(f"{where}: percentiles are only allowed with \"kind\": \"percentile\"", path)
    else:
        if lower is None or upper is None:
            raise UserInputError(f"{where}: 'lower_percentile' and 'upper_percentile' are required", path)
        if not 0 <= lower < upper <= 100:
            raise UserInputError(f"{where}: need 0 <= lower_percentile < upper_percentile <= 100", path)
        if window is not None or level is not None:
            raise UserInputError(f"{where}: a percentile preset has no fixed 'window'/'level'", path)
    source = _text(entry, "source", where, path, "")
    if library and not source.strip():
        raise UserInputError(f"{where}: 'source' is required in the library", path)
    preset_id = _text(entry, "id", where, path, default_id(name))
    if not _ID_PATTERN.match(preset_id):
        raise UserInputError(f"{where}: 'id' must match {_ID_PATTERN.pattern}, got {preset_id!r}", path)
    aliases = entry.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a.strip() for a in aliases):
        raise UserInputError(f"{where}: 'aliases' must be a list of non-empty strings", path)
    return WindowPreset(
        name=name.strip(),
        id=preset_id,
        window=window,
        level=level,
        kind=kind,
        lower_percentile=lower,
        upper_percentile=upper,
        source=source or f"user file {path}",
        description=_text(entry, "description", where, path),
        modality=_choice(entry, "modality", _MODALITIES, where, path, "CT" if kind == "fixed" else "any"),
        group=_choice(entry, "group", _GROUPS, where, path, "clinical" if library else "user"),
        aliases=tuple(a.strip() for a in aliases),
        color=_text(entry, "color", where, path, DEFAULT_COLOR),
        function=_choice(entry, "function", _FUNCTIONS, where, path, "seed"),
        origin=str(path),
    )


def parse_preset_document(document: Any, path: PathLike, library: bool = False) -> List[WindowPreset]:
    """Validate a whole preset file's JSON; names must be unique within the file."""
    path = Path(path)
    if not isinstance(document, dict):
        raise UserInputError(f"a preset file must hold a JSON object with 'schema' ({SCHEMA}) and 'presets'", path)
    schema = document.get("schema")
    if schema != SCHEMA:
        raise UserInputError(f"'schema' must be {SCHEMA!r}, got {schema!r}", path)
    unknown = sorted(set(document) - {"schema", "presets", "$comment"})
    if unknown:
        raise UserInputError(f"unknown top-level key(s) {', '.join(unknown)}", path)
    entries = document.get("presets")
    if not isinstance(entries, list):
        raise UserInputError("'presets' must be a list", path)
    presets = [parse_preset(entry, index, path, library) for index, entry in enumerate(entries)]
    seen: Dict[str, int] = {}
    for index, preset in enumerate(presets):
        keys = {normalize_name(preset.name), normalize_name(preset.id)} | {normalize_name(a) for a in preset.aliases}
        for key in keys:
            if key in seen and seen[key] != index:
                raise UserInputError(
                    f"preset #{index + 1} ({preset.name!r}): name, id or alias {key!r} repeats preset #{seen[key] + 1}",
                    path,
                )
            seen[key] = index
    return presets


def read_preset_file(path: PathLike, library: bool = False) -> List[WindowPreset]:
    path = Path(path)
    if not path.is_file():
        raise UserInputError("preset file not found", path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserInputError(f"not valid JSON: {error}", path) from None
    return parse_preset_document(document, path, library)


def library_path() -> Path:
    from MedSegLib.resources import resource_path

    return resource_path(*LIBRARY_FILE)


def user_preset_files(extra: Optional[Iterable[PathLike]] = None) -> List[Path]:
    """Files from ``MEDSEG_PRESETS`` then those given (``--presets``, the panel's setting)."""
    files = [Path(p) for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p.strip()]
    if extra is not None:
        files += [Path(p) for p in ([extra] if isinstance(extra, (str, os.PathLike)) else extra)]
    return files


def load_presets(user_files: Optional[Union[PathLike, Iterable[PathLike]]] = None) -> List[WindowPreset]:
    """The library plus user presets (a user preset replaces a library one of the same name, in place)."""
    presets = read_preset_file(library_path(), library=True)
    for path in user_preset_files(user_files):
        for preset in read_preset_file(path):
            key = normalize_name(preset.name)
            replaced = [i for i, p in enumerate(presets) if normalize_name(p.name) == key]
            if replaced:
                presets[replaced[0]] = preset
            else:
                presets.append(preset)
    return presets


def find_preset(name: str, presets: Sequence[WindowPreset]) -> WindowPreset:
    """Preset by name, id or alias (case, spaces, '-' and '_' ignored); unknown -> UserInputError."""
    key = normalize_name(name)
    for matches in (
        lambda p: normalize_name(p.name) == key,
        lambda p: normalize_name(p.id) == key,
        lambda p: key in {normalize_name(a) for a in p.aliases},
    ):
        for preset in presets:
            if matches(preset):
                return preset
    names = ", ".join(p.name for p in presets)
    raise UserInputError(f"unknown preset {name!r}; known presets: {names}")
