"""Pipeline files: YAML in, a validated :class:`PipelineSpec` out, every error naming the YAML line.

A batch over hundreds of studies must not fail on study 37 because of a typo in step 5, so the whole
file is checked before anything runs: YAML syntax, the document structure (JSON Schema), each step's
parameters (the step's own schema) and the step's pre-flight check (e.g. the segmentation method exists).
Errors are raised as ``UserInputError`` with ``FILE:LINE`` as the path, so the CLI prints one line.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

from MedSegLib.errors import UserInputError

SCHEMA_VERSION = 1
PathKey = Tuple[Union[str, int], ...]

INPUTS_SCHEMA: Dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "folders": {"type": "array", "items": {"type": "string"}},
        "glob": {"type": "string", "description": "folders matching this pattern, one case each"},
        "dicom_db": {
            "type": "object",
            "additionalProperties": False,
            "required": ["path"],
            "properties": {
                "path": {"type": "string"},
                "query": {"type": "object", "additionalProperties": {"type": ["string", "number"]}},
                "group_by": {"enum": ["study", "series"]},
            },
        },
        "pacs": {
            "type": "object",
            "additionalProperties": False,
            "required": ["node"],
            "properties": {
                "node": {"type": "string"},
                "query": {"type": "object", "additionalProperties": {"type": ["string", "number"]}},
                "settings": {"type": "string", "description": "PACS nodes file (default: MedSeg settings)"},
            },
        },
    },
}

EXECUTION_SCHEMA: Dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "workers": {"type": "integer", "minimum": 0},
        "threads_per_worker": {"anyOf": [{"type": "integer", "minimum": 1}, {"const": "auto"}]},
        "on_unavailable": {"enum": ["fail", "skip"]},
    },
}

DOCUMENT_SCHEMA: Dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["steps"],
    "properties": {
        "version": {"const": SCHEMA_VERSION},
        "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]*$"},
        "description": {"type": "string"},
        "plugins": {"type": "array", "items": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_.]*$"}},
        "inputs": INPUTS_SCHEMA,
        "execution": EXECUTION_SCHEMA,
        "steps": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "minProperties": 1,
                "maxProperties": 1,
                "additionalProperties": {"type": ["object", "null"]},
            },
        },
    },
}


@dataclass
class StepSpec:
    """One step of a pipeline: its type (registry name), parameters and where it was written."""

    type: str
    params: Dict[str, Any]
    id: str
    line: int = 0

    def to_json(self) -> Dict[str, Any]:
        return {"type": self.type, "id": self.id, "params": self.params}


@dataclass
class PipelineSpec:
    """A validated pipeline: steps in order, input sources and execution options."""

    name: str
    steps: List[StepSpec]
    inputs: Dict[str, Any] = field(default_factory=dict)
    execution: Dict[str, Any] = field(default_factory=dict)
    description: str = ""
    source: str = ""
    plugins: List[str] = field(default_factory=list)  # modules that register extra steps (imported in workers)

    def to_json(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "source": self.source,
            "plugins": self.plugins,
            "inputs": self.inputs,
            "execution": self.execution,
            "steps": [step.to_json() for step in self.steps],
        }

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> PipelineSpec:
        steps = [StepSpec(s["type"], dict(s.get("params") or {}), s["id"]) for s in data["steps"]]
        return cls(
            data["name"],
            steps,
            dict(data.get("inputs") or {}),
            dict(data.get("execution") or {}),
            data.get("description", ""),
            data.get("source", ""),
            list(data.get("plugins") or []),
        )

    @property
    def digest(self) -> str:
        """Hash of what changes results (steps and their parameters): a change re-runs every case."""
        text = json.dumps([self.plugins] + [step.to_json() for step in self.steps], sort_keys=True, default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------- YAML with lines


def _compose_with_lines(text: str, source: str) -> Tuple[Any, Dict[PathKey, int]]:
    """Parse YAML keeping the 1-based line of every mapping key and sequence item."""
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark is not None else 0
        problem = " ".join(str(error.problem or error.context or "invalid YAML").split())
        raise UserInputError(f"YAML syntax error: {problem}", f"{source}:{line}") from None
    lines: Dict[PathKey, int] = {}

    def walk(node: Any, path: PathKey) -> Any:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            result = {}
            for key_node, value_node in node.value:
                key = key_node.value
                result[key] = walk(value_node, path + (key,))
                lines[path + (key,)] = key_node.start_mark.line + 1
            return result
        if isinstance(node, yaml.SequenceNode):
            return [walk(item, path + (index,)) for index, item in enumerate(node.value)]
        return _scalar(node)

    if root is None:
        return None, lines
    return walk(root, ()), lines


def _scalar(node: Any) -> Any:
    """A YAML scalar with the safe loader's type resolution (int, float, bool, null, str)."""
    import yaml

    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def line_of(lines: Dict[PathKey, int], path: PathKey) -> int:
    """Line of the deepest known element on ``path`` (JSON Schema errors point into the document)."""
    path = tuple(path)
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return lines.get((), 1)


def _path_text(path: PathKey) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _schema_errors(document: Any, schema: Dict[str, Any], base: PathKey = ()) -> List[Tuple[PathKey, str]]:
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    errors = []
    for error in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path))):
        path = base + tuple(error.absolute_path)
        message = error.message
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            allowed = list(error.schema.get("properties", {}))
            for key in [k for k in error.instance if k not in allowed]:
                errors.append((path + (key,), f"unknown key {key!r} (allowed: {', '.join(allowed)})"))
            continue
        errors.append((path, message))
    return errors


def _raise_first(errors: List[Tuple[PathKey, str]], lines: Dict[PathKey, int], source: str) -> None:
    if not errors:
        return
    errors = sorted(errors, key=lambda item: line_of(lines, item[0]))
    path, message = errors[0]
    where = _path_text(path)
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    raise UserInputError(f"{where + ': ' if where else ''}{message}{more}", f"{source}:{line_of(lines, path)}")


def parse_pipeline_text(text: str, source: str = "<pipeline>") -> PipelineSpec:
    """Validate a pipeline document completely (structure, step parameters, pre-flight checks)."""
    from MedSegLib.pipeline.steps import get_step, step_names

    document, lines = _compose_with_lines(text, source)
    if not isinstance(document, dict):
        raise UserInputError("a pipeline is a YAML mapping with at least a 'steps' list", f"{source}:1")
    _raise_first(_schema_errors(document, DOCUMENT_SCHEMA), lines, source)
    plugins = list(document.get("plugins") or [])
    for index, module in enumerate(plugins):
        try:
            import_plugin(module)
        except ImportError as error:
            where = f"{source}:{line_of(lines, ('plugins', index))}"
            raise UserInputError(f"plugins[{index}]: cannot import {module!r} ({error})", where) from None
    errors: List[Tuple[PathKey, str]] = []
    steps: List[StepSpec] = []
    seen_ids: Dict[str, int] = {}
    for index, item in enumerate(document["steps"]):
        ((step_type, params),) = item.items()
        params = copy.deepcopy(params) if params else {}
        path: PathKey = ("steps", index, step_type)
        try:
            step = get_step(step_type)
        except KeyError:
            errors.append((("steps", index), f"unknown step {step_type!r} (known: {', '.join(step_names())})"))
            continue
        schema = {"type": "object", "additionalProperties": False, "properties": dict(step.schema)}
        schema["properties"].update({"id": {"type": "string", "pattern": "^[A-Za-z0-9_.-]+$"}})
        step_errors = _schema_errors(params, schema, path)
        errors.extend(step_errors)
        step_id = str(params.pop("id", "")) or step_type
        if step_id in seen_ids:
            seen_ids[step_id] += 1
            step_id = f"{step_id}-{seen_ids[step_id]}"
        else:
            seen_ids[step_id] = 1
        if not step_errors and step.check is not None:
            try:
                step.check(params)
            except (UserInputError, ValueError) as error:
                problem = error.one_line() if isinstance(error, UserInputError) else str(error)
                errors.append((path, problem))
        steps.append(StepSpec(step_type, params, step_id, line_of(lines, ("steps", index))))
    _raise_first(errors, lines, source)
    name = document.get("name") or Path(source).stem.replace(".pipeline", "") or "pipeline"
    return PipelineSpec(
        name=str(name),
        steps=steps,
        inputs=dict(document.get("inputs") or {}),
        execution=dict(document.get("execution") or {}),
        description=str(document.get("description", "")),
        source=source,
        plugins=plugins,
    )


def import_plugin(module: str) -> None:
    """Import a module that calls ``register_step`` (validation and every worker do this first)."""
    import importlib

    importlib.import_module(module)


def load_pipeline(path: Union[str, Path]) -> PipelineSpec:
    """Read and validate a pipeline YAML file (relative input paths resolve against its folder)."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError("pipeline file not found", path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UserInputError(f"cannot read the pipeline file ({error})", path) from None
    spec = parse_pipeline_text(text, str(path))
    base = path.resolve().parent
    inputs = spec.inputs
    if inputs.get("folders"):
        inputs["folders"] = [str((base / Path(folder).expanduser()).resolve()) for folder in inputs["folders"]]
    if inputs.get("glob") and not Path(inputs["glob"]).is_absolute():
        inputs["glob"] = str(base / inputs["glob"])
    if inputs.get("dicom_db"):
        inputs["dicom_db"]["path"] = str((base / Path(inputs["dicom_db"]["path"]).expanduser()).resolve())
    if inputs.get("pacs", {}).get("settings"):
        inputs["pacs"]["settings"] = str((base / Path(inputs["pacs"]["settings"]).expanduser()).resolve())
    for step in spec.steps:  # a PACS settings file named by a step, like the inputs, is relative to the pipeline
        if step.type == "send" and step.params.get("settings"):
            step.params["settings"] = str((base / Path(step.params["settings"]).expanduser()).resolve())
    return spec
