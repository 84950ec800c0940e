"""Typed parameter declarations shared by the ``medseg segment`` command and the Slicer panel.

Each method declares its parameters once (name, type, default, unit, bounds, help). The CLI turns them
into ``--kebab-case`` options, the panel into widgets, and :func:`resolve_parameters` validates values
from either side with the same messages, so both front ends always agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from MedSegLib.errors import UserInputError

# Seed requirements of a method.
SEEDS_NONE = "none"  # seeds are ignored
SEEDS_OPTIONAL = "optional"
SEEDS_REQUIRED = "required"  # at least one seed point
SEEDS_LABELLED = "labelled"  # seeds of at least two named groups (segments)


@dataclass(frozen=True)
class Param:
    """One method parameter; ``kind`` is float, int, bool or str; ``default`` None means "automatic"."""

    name: str
    kind: type
    default: Any
    help: str
    unit: str = ""
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    choices: Optional[Tuple[str, ...]] = None

    @property
    def cli_flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def label(self) -> str:
        """Human label for the panel ("Lower threshold (HU)")."""
        text = self.name.replace("_", " ").capitalize()
        return f"{text} ({self.unit})" if self.unit else text

    def validate(self, value: Any, method: str) -> Any:
        """Convert and check one value; raise a one-line UserInputError naming the CLI option."""
        if value is None:
            return None
        try:
            if self.kind is bool:
                if isinstance(value, str):
                    lowered = value.strip().lower()
                    if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                        raise ValueError(value)
                    value = lowered in ("1", "true", "yes", "on")
                else:
                    value = bool(value)
            else:
                value = self.kind(value)
        except (TypeError, ValueError):
            raise UserInputError(f"{method}: {self.cli_flag} expects {self.kind.__name__}, got {value!r}") from None
        if self.choices is not None and value not in self.choices:
            raise UserInputError(f"{method}: {self.cli_flag} must be one of {', '.join(self.choices)}, got {value!r}")
        if self.kind in (int, float):
            if value != value:  # NaN
                raise UserInputError(f"{method}: {self.cli_flag} is not a number")
            if self.minimum is not None and value < self.minimum:
                raise UserInputError(f"{method}: {self.cli_flag} must be >= {self.minimum:g}, got {value:g}")
            if self.maximum is not None and value > self.maximum:
                raise UserInputError(f"{method}: {self.cli_flag} must be <= {self.maximum:g}, got {value:g}")
        return value


@dataclass(frozen=True)
class Method:
    """A segmentation method as both front ends see it."""

    name: str
    title: str
    description: str
    run: Callable[..., Any]
    params: Tuple[Param, ...] = ()
    seeds: str = SEEDS_NONE
    category: str = "threshold"
    aliases: Tuple[str, ...] = field(default_factory=tuple)

    def param(self, name: str) -> Param:
        for param in self.params:
            if param.name == name:
                return param
        raise KeyError(name)

    @property
    def param_names(self) -> List[str]:
        return [param.name for param in self.params]


def resolve_parameters(method: Method, given: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Method defaults overridden by ``given`` (None values mean "not given"); unknown names are errors."""
    given = dict(given or {})
    known = set(method.param_names)
    unknown = sorted(name for name, value in given.items() if value is not None and name not in known)
    if unknown:
        flags = ", ".join("--" + name.replace("_", "-") for name in unknown)
        raise UserInputError(f"{method.name}: option(s) {flags} do not apply to this method")
    values: Dict[str, Any] = {}
    for param in method.params:
        value = given.get(param.name)
        values[param.name] = param.validate(param.default if value is None else value, method.name)
    return values


def check_range(lower: Optional[float], upper: Optional[float], method: str, what: str = "threshold") -> None:
    """``min > max`` is the most common user slip: say it plainly."""
    if lower is not None and upper is not None and lower > upper:
        raise UserInputError(f"{method}: {what} minimum {lower:g} is greater than maximum {upper:g}")


def format_method_table(methods: Sequence[Method]) -> str:
    """Text for ``--list-methods``: name, seeds, parameters with defaults and units."""
    lines = []
    for method in methods:
        seeds = {
            SEEDS_NONE: "",
            SEEDS_OPTIONAL: " [seeds optional]",
            SEEDS_REQUIRED: " [seeds required]",
            SEEDS_LABELLED: " [labelled seeds of >= 2 segments]",
        }[method.seeds]
        lines.append(f"{method.name:<22}{method.title}{seeds}")
        lines.append(f"{'':<22}{method.description}")
        for param in method.params:
            default = "auto" if param.default is None else param.default
            unit = f" {param.unit}" if param.unit else ""
            choices = f" {{{','.join(param.choices)}}}" if param.choices else ""
            lines.append(f"{'':<24}{param.cli_flag}{choices} (default {default}{unit}): {param.help}")
    return "\n".join(lines)
