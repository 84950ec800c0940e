"""Static checks of the Slicer side of MedSeg (no 3D Slicer needed).

3D Slicer cannot run here, so everything the application would reject at load time is checked from the
files: .ui XML, module classes and metadata (with ``ast``), CMake file lists, the ExtensionsIndex catalog
entry and the icons. Each ``check_*`` function takes a project root and returns a list of problems, so
``test_checks_catch_broken_copies`` can run it on a deliberately broken copy and prove it can fail.
``test_cmake_configure_with_stub_slicer`` additionally runs the real CMake on the project against a small
stand-in for Slicer's CMake macros and inspects the build and install trees, and the last section runs the
modules' Logic and Test classes on slicer-core with stand-ins for the Qt-only imports.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import shutil
import struct
import subprocess
import sys
import types
import unittest
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = ["MedSegDICOM", "MedSegWindowing", "MedSegSegmentation", "MedSegDeepLearning", "MedSegQuantitativeMRI"]
EXTENSION_NAME = "MedSegExtension"
CATALOG_FILE = "MedSegExtension.json"

# Slicer Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json (additionalProperties: false).
CATALOG_REQUIRED = {"$schema", "category", "scm_url"}
CATALOG_ALLOWED = CATALOG_REQUIRED | {"scm_revision", "scm_type", "build_dependencies", "dicom_support_rule",
                                      "build_subdirectory", "enabled", "tier"}
CATALOG_SCHEMA_URL = re.compile(
    r"^https://raw\.githubusercontent\.com/Slicer/Slicer/main/Schemas/"
    r"slicer-extension-catalog-entry-schema-v1\.0\.[0-9]+\.json#$")

# Imports that need the Slicer application (Qt, CTK, the module base classes): never in MedSegLib.
FORBIDDEN_IN_MEDSEGLIB = ("qt", "ctk", "PythonQt", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper",
                          "slicer.i18n")

# Top-level .ui class and the MRML widgets that need mrmlSceneChanged -> setMRMLScene connections.
UI_TOP_LEVEL_CLASS = "qMRMLWidget"
MRML_SCENE_WIDGETS = {"qMRMLNodeComboBox", "qMRMLSegmentSelectorWidget", "qMRMLCheckableNodeComboBox",
                      "qMRMLSubjectHierarchyTreeView", "qMRMLSubjectHierarchyComboBox"}

CMAKE_FILE_SUFFIXES = {
    ".py", ".ui", ".png", ".svg", ".json", ".txt", ".sql", ".csv", ".xml", ".qrc", ".cmake",
    ".md", ".yaml", ".yml", ".pt", ".ts", ".ctbl", ".nrrd", ".zip",
}


# --------------------------------------------------------------------------------------------------
# Parsing helpers
# --------------------------------------------------------------------------------------------------


def module_file(root: Path, module: str) -> Path:
    return root / EXTENSION_NAME / module / f"{module}.py"


def ui_file(root: Path, module: str) -> Path:
    return root / "Resources" / "UI" / f"{module}.ui"


def python_files(folder: Path) -> List[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def parse_module(root: Path, module: str) -> ast.Module:
    return ast.parse(module_file(root, module).read_text(encoding="utf-8"), filename=str(module_file(root, module)))


def ui_widgets(ui_root: ET.Element) -> Iterator[ET.Element]:
    return ui_root.iter("widget")


def ui_object_names(ui_root: ET.Element) -> Set[str]:
    """Every objectName Qt's loader creates (childWidgetVariables exposes them as attributes)."""
    return {element.get("name") for tag in ("widget", "layout", "action", "spacer")
            for element in ui_root.iter(tag) if element.get("name")}


def ui_dynamic_property(widget: ET.Element, name: str) -> Optional[str]:
    for prop in widget.findall("property"):
        if prop.get("name") == name and prop.get("stdset") == "0":
            string = prop.find("string")
            return string.text if string is not None else None
    return None


def ui_parameter_bindings(ui_root: ET.Element) -> Dict[str, str]:
    """SlicerParameterName -> class of the widget that carries it."""
    bindings = {}
    for widget in ui_widgets(ui_root):
        name = ui_dynamic_property(widget, "SlicerParameterName")
        if name is not None:
            bindings[name] = widget.get("class")
    return bindings


def self_ui_attributes(tree: ast.AST) -> Set[str]:
    """Names X used as ``self.ui.X`` anywhere in the module file."""
    used = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui"
                and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"):
            used.add(node.attr)
    return used


def _decorator_name(decorator: ast.expr) -> str:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    if isinstance(target, ast.Attribute):
        return target.attr
    return target.id if isinstance(target, ast.Name) else ""


def parameter_node_fields(tree: ast.Module) -> Dict[str, ast.expr]:
    """Annotated fields of the ``@parameterNodeWrapper`` class: name -> annotation."""
    fields: Dict[str, ast.expr] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(_decorator_name(d) == "parameterNodeWrapper"
                                                  for d in node.decorator_list):
            for statement in node.body:
                if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                    fields[statement.target.id] = statement.annotation
    return fields


def _name_of(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Subscript):
        return _name_of(node.value)
    return ""


def split_annotation(annotation: ast.expr) -> Tuple[str, Set[str]]:
    """``Annotated[T, A(...), B(...)]`` -> ("T", {"A", "B"}); ``Optional[T]`` -> T; plain ``T`` -> (T, {})."""
    if isinstance(annotation, ast.Subscript) and _name_of(annotation.value) == "Annotated":
        elements = annotation.slice.elts if isinstance(annotation.slice, ast.Tuple) else [annotation.slice]
        base, metadata = split_annotation(elements[0])
        return base, metadata | {_name_of(item.func) for item in elements[1:] if isinstance(item, ast.Call)}
    if isinstance(annotation, ast.Subscript) and _name_of(annotation.value) == "Optional":
        return split_annotation(annotation.slice)
    return _name_of(annotation), set()


# Which annotation a widget class can be bound to (mirrors slicer.parameterNodeWrapper.guiConnectors):
# widget class -> (accepted base types, "node" for vtkMRML* types; metadata of which one must be present).
WIDGET_CONNECTORS: Dict[str, Tuple[Set[str], List[Set[str]]]] = {
    "QCheckBox": ({"bool"}, []),
    "QPushButton": ({"bool"}, []),
    "QSpinBox": ({"int"}, []),
    "QSlider": ({"int"}, [{"WithinRange"}, {"Minimum", "Maximum"}]),
    "QDoubleSpinBox": ({"float"}, []),
    "ctkSliderWidget": ({"float"}, [{"WithinRange"}, {"Minimum", "Maximum"}]),
    "QComboBox": ({"str", "int", "float", "bool"}, [{"Choice"}]),
    "QLineEdit": ({"str"}, []),
    "QTextEdit": ({"str"}, []),
    "ctkRangeWidget": ({"FloatRange"}, [{"RangeBounds"}]),
    "ctkPathLineEdit": ({"Path", "PurePath", "PosixPath", "WindowsPath"}, []),
    "ctkDirectoryButton": ({"Path", "PurePath", "PosixPath", "WindowsPath"}, []),
    "qMRMLNodeComboBox": ({"node"}, []),
}


def binding_problem(widget_class: str, annotation: ast.expr) -> Optional[str]:
    """Why ``connectGui`` would raise for this widget/annotation pair, or None if it can bind them."""
    if widget_class not in WIDGET_CONNECTORS:
        return f"no parameter-node GUI connector for widget class {widget_class}"
    accepted, required_metadata = WIDGET_CONNECTORS[widget_class]
    base, metadata = split_annotation(annotation)
    kind = "node" if base.startswith("vtkMRML") else base
    if kind not in accepted:
        return f"{widget_class} cannot represent a parameter of type {base or ast.unparse(annotation)}"
    if required_metadata and not any(option <= metadata for option in required_metadata):
        options = " or ".join("+".join(sorted(option)) for option in required_metadata)
        return f"{widget_class} bound to {base} needs a {options} annotation"
    return None


def _static_text(node: Optional[ast.expr]) -> Optional[str]:
    """Literal text of a string, ``_("...")``/``tr("...")`` or ``translate(context, "...")``; None if not literal."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Call) and node.args:
        function = _name_of(node.func)
        if function in ("_", "tr"):
            return _static_text(node.args[0])
        if function == "translate" and len(node.args) >= 2:
            return _static_text(node.args[1])
    return None


def module_metadata(tree: ast.Module, module: str) -> Dict[str, ast.expr]:
    """``self.parent.X = value`` assignments in ``<module>.__init__``."""
    metadata: Dict[str, ast.expr] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == module:
            for function in node.body:
                if isinstance(function, ast.FunctionDef) and function.name == "__init__":
                    for statement in ast.walk(function):
                        if isinstance(statement, ast.Assign):
                            for target in statement.targets:
                                if (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Attribute)
                                        and target.value.attr == "parent"):
                                    metadata[target.attr] = statement.value
    return metadata


def class_assignments(tree: ast.Module, class_name: str) -> Dict[str, ast.expr]:
    values: Dict[str, ast.expr] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            for statement in node.body:
                if isinstance(statement, ast.Assign):
                    for target in statement.targets:
                        if isinstance(target, ast.Name):
                            values[target.id] = statement.value
    return values


# --------------------------------------------------------------------------------------------------
# A small CMake reader: commands, set() variables, file tokens
# --------------------------------------------------------------------------------------------------

_CMAKE_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|#[^\n]*|[()]|[^\s()"#]+(?:"(?:[^"\\]|\\.)*")?')


def cmake_commands(text: str) -> List[Tuple[str, List[str]]]:
    """``name(arg ...)`` calls in order, with quotes removed and comments dropped (enough for our files)."""
    commands: List[Tuple[str, List[str]]] = []
    tokens = [t for t in _CMAKE_TOKEN.findall(text) if not t.startswith("#")]
    index = 0
    while index < len(tokens):
        name = tokens[index]
        if index + 1 < len(tokens) and tokens[index + 1] == "(":
            depth, args, index = 1, [], index + 2
            while index < len(tokens) and depth:
                token = tokens[index]
                depth += {"(": 1, ")": -1}.get(token, 0)
                if depth and token not in "()":
                    args.append(token[1:-1] if token.startswith('"') and token.endswith('"') else token)
                index += 1
            commands.append((name.lower(), args))
        else:
            index += 1
    return commands


def _expand(token: str, variables: Dict[str, List[str]]) -> List[str]:
    """Substitute known ``${VAR}``; a token that is exactly one list variable expands to its items."""
    whole = re.fullmatch(r"\$\{(\w+)\}", token)
    if whole and whole.group(1) in variables:
        return list(variables[whole.group(1)])
    expanded = re.sub(r"\$\{(\w+)\}", lambda m: ";".join(variables[m.group(1)]) if m.group(1) in variables
                      else m.group(0), token)
    return [expanded]


class CMakeProject:
    """Reads the top-level CMakeLists and every add_subdirectory, tracking set() values like CMake's scopes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: Dict[Path, List[Tuple[str, List[str]]]] = {}  # CMakeLists -> commands (args expanded)
        self.variables: Dict[Path, Dict[str, List[str]]] = {}  # CMakeLists -> variables at its end
        self.missing_subdirectories: List[str] = []
        self._read(root / "CMakeLists.txt", {"PROJECT_SOURCE_DIR": [str(root)], "CMAKE_SOURCE_DIR": [str(root)]})

    def _read(self, path: Path, inherited: Dict[str, List[str]]) -> None:
        variables = dict(inherited)
        variables["CMAKE_CURRENT_SOURCE_DIR"] = variables["CMAKE_CURRENT_LIST_DIR"] = [str(path.parent)]
        commands: List[Tuple[str, List[str]]] = []
        in_function = 0
        for name, args in cmake_commands(path.read_text(encoding="utf-8")):
            if name in ("function", "macro"):
                in_function += 1
            elif name in ("endfunction", "endmacro"):
                in_function -= 1
            expanded = [item for arg in args for item in (_expand(arg, variables) if not in_function else [arg])]
            commands.append((name, expanded))
            if in_function:
                continue
            if name == "set" and expanded:
                values = expanded[1:]
                if "CACHE" in values:
                    values = values[:values.index("CACHE")]
                variables[expanded[0]] = [v for v in values if v != "PARENT_SCOPE"]
            elif name == "add_subdirectory" and expanded:
                child = path.parent / expanded[0] / "CMakeLists.txt"
                if child.is_file():
                    self._read(child, variables)
                else:
                    self.missing_subdirectories.append(f"{path.relative_to(self.root)}: add_subdirectory({args[0]})")
        self.files[path] = commands
        self.variables[path] = variables

    def listed_files(self) -> Dict[Path, List[str]]:
        """Every token that names a file (known suffix, no unresolved variable) -> where it is listed."""
        listed: Dict[Path, List[str]] = {}
        for cmake_path, commands in self.files.items():
            for name, args in commands:
                for arg in args:
                    for item in arg.split(";"):
                        if ("${" in item or "://" in item or " " in item
                                or Path(item).suffix not in CMAKE_FILE_SUFFIXES):
                            continue
                        path = Path(item) if Path(item).is_absolute() else cmake_path.parent / item
                        listed.setdefault(path.resolve(), []).append(
                            f"{cmake_path.relative_to(self.root)}: {name}(... {item} ...)")
        return listed


def _load_update_tool(root: Path):
    spec = importlib.util.spec_from_file_location("update_cmake_lists", ROOT / "Testing" / "update_cmake_lists.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


# --------------------------------------------------------------------------------------------------
# Checks: each returns the list of problems found under ``root``
# --------------------------------------------------------------------------------------------------


def check_ui_files(root: Path) -> List[str]:
    """Every .ui parses, is a qMRMLWidget named after its module, declares its custom widgets and wires the scene."""
    problems = []
    for module in MODULES:
        path = ui_file(root, module)
        try:
            ui_root = ET.parse(path).getroot()
        except (OSError, ET.ParseError) as error:
            problems.append(f"{path.name}: cannot parse: {error}")
            continue
        top = ui_root.find("widget")
        if top is None or top.get("class") != UI_TOP_LEVEL_CLASS:
            problems.append(f"{path.name}: top-level widget must be {UI_TOP_LEVEL_CLASS}, "
                            f"not {None if top is None else top.get('class')}")
            continue
        if top.get("name") != module or ui_root.findtext("class") != module:
            problems.append(f"{path.name}: top-level widget and <class> must be named {module}")
        declared = {custom.findtext("class") for custom in ui_root.iter("customwidget")}
        for widget in ui_widgets(ui_root):
            widget_class = widget.get("class")
            if widget_class.startswith(("ctk", "qMRML", "qSlicer")) and widget_class not in declared:
                problems.append(f"{path.name}: {widget_class} ({widget.get('name')}) has no <customwidget> entry")
        connected = {(c.findtext("sender"), c.findtext("signal"), c.findtext("receiver"), c.findtext("slot"))
                     for c in ui_root.iter("connection")}
        for widget in ui_widgets(ui_root):
            if widget.get("class") in MRML_SCENE_WIDGETS:
                wanted = (module, "mrmlSceneChanged(vtkMRMLScene*)", widget.get("name"), "setMRMLScene(vtkMRMLScene*)")
                if wanted not in connected:
                    problems.append(f"{path.name}: {widget.get('name')} is not connected to mrmlSceneChanged")
    return problems


def check_ui_names_used(root: Path) -> List[str]:
    """``self.ui.X`` in a module file must be an objectName of its .ui (else AttributeError in setup())."""
    problems = []
    for module in MODULES:
        names = ui_object_names(ET.parse(ui_file(root, module)).getroot())
        for attribute in sorted(self_ui_attributes(parse_module(root, module)) - names):
            problems.append(f"{module}.py uses self.ui.{attribute}, which {module}.ui does not define")
    return problems


def check_parameter_bindings(root: Path) -> List[str]:
    """Every SlicerParameterName is a field of the module's parameter node, of a type its widget can show."""
    problems = []
    for module in MODULES:
        fields = parameter_node_fields(parse_module(root, module))
        if not fields:
            problems.append(f"{module}.py has no @parameterNodeWrapper class with fields")
            continue
        for parameter, widget_class in sorted(ui_parameter_bindings(ET.parse(ui_file(root, module)).getroot()).items()):
            if parameter not in fields:
                problems.append(f"{module}.ui binds SlicerParameterName '{parameter}', "
                                f"which the parameter node class does not declare")
                continue
            problem = binding_problem(widget_class, fields[parameter])
            if problem:
                problems.append(f"{module}.ui '{parameter}': {problem}")
    return problems


def check_cmake_files_exist(root: Path) -> List[str]:
    """Every file named in a CMakeLists.txt exists (slicerMacroBuildScriptedModule stops on a missing one)."""
    project = CMakeProject(root)
    problems = list(project.missing_subdirectories)
    for path, places in sorted(project.listed_files().items()):
        if not path.is_file():
            problems.append(f"{places[0]}: file does not exist")
    return problems


def check_python_files_listed(root: Path) -> List[str]:
    """Every .py under MedSegExtension is in CMake (unlisted files are missing from the packaged extension)."""
    listed = CMakeProject(root).listed_files()
    problems = [f"{path.relative_to(root)} is not listed in any CMakeLists.txt "
                f"(run: python Testing/update_cmake_lists.py)"
                for path in python_files(root / EXTENSION_NAME) if path.resolve() not in listed]
    try:
        tool = _load_update_tool(root)
        text = (root / tool.CMAKE_FILE).read_text(encoding="utf-8")
        if tool.replace_block(text, tool.render_block(root)) != text:
            problems.append(f"{tool.CMAKE_FILE}: generated MedSegLib block is out of date "
                            "(run: python Testing/update_cmake_lists.py)")
    except ValueError as error:
        problems.append(f"{EXTENSION_NAME}/CMakeLists.txt: {error}")
    return problems


def check_resources_installed(root: Path) -> List[str]:
    """Each module's .ui and icon are installed by its CMakeLists; data folders by the generated block."""
    listed = CMakeProject(root).listed_files()
    problems = []
    for path in sorted(p for p in (root / "Resources").rglob("*") if p.is_file()):
        if path.resolve() not in listed and path.name != f"{EXTENSION_NAME}.png":  # the extension icon is a URL
            problems.append(f"{path.relative_to(root)} is not installed by any CMakeLists.txt")
    return problems


def check_module_cmake(root: Path) -> List[str]:
    """Per-module CMake: name, generic tests, unit test; every module folder added; no orphan CMakeLists."""
    project = CMakeProject(root)
    problems = []
    extension_cmake = root / EXTENSION_NAME / "CMakeLists.txt"
    added = {args[0] for name, args in project.files.get(extension_cmake, []) if name == "add_subdirectory" and args}
    module_dirs = sorted(p.parent.name for p in (root / EXTENSION_NAME).glob("*/CMakeLists.txt"))
    for module in sorted(set(MODULES) | set(module_dirs)):
        if module not in added:
            problems.append(f"{EXTENSION_NAME}/CMakeLists.txt: add_subdirectory({module}) is missing")
    for module in MODULES:
        path = root / EXTENSION_NAME / module / "CMakeLists.txt"
        commands = project.files.get(path)
        if commands is None:
            problems.append(f"{path.relative_to(root)} is missing or not reached")
            continue
        if project.variables[path].get("MODULE_NAME") != [module]:
            problems.append(f"{path.relative_to(root)}: set(MODULE_NAME {module}) expected")
        build = [args for name, args in commands if name == "slicermacrobuildscriptedmodule"]
        if len(build) != 1 or "WITH_GENERIC_TESTS" not in build[0] or f"{module}.py" not in build[0]:
            problems.append(f"{path.relative_to(root)}: slicerMacroBuildScriptedModule(NAME {module} SCRIPTS "
                            f"{module}.py ... WITH_GENERIC_TESTS) expected")
        names = [name for name, _ in commands]
        unittest_ok = False
        if "slicer_add_python_unittest" in names:
            index = names.index("slicer_add_python_unittest")
            guarded = ("if", ["BUILD_TESTING"]) in commands[:index] and "endif" in names[index:]
            unittest_ok = guarded and commands[index][1] == ["SCRIPT", f"{module}.py"]
        if not unittest_ok:
            problems.append(f"{path.relative_to(root)}: if(BUILD_TESTING) slicer_add_python_unittest(SCRIPT "
                            f"{module}.py) endif() expected")
    return problems


def check_module_classes(root: Path) -> List[str]:
    """Module, Widget, Logic and Test classes exist (Slicer looks them up by name)."""
    problems = []
    for module in MODULES:
        classes = {node.name for node in parse_module(root, module).body if isinstance(node, ast.ClassDef)}
        for suffix in ("", "Widget", "Logic", "Test"):
            if module + suffix not in classes:
                problems.append(f"{module}.py: class {module + suffix} is missing")
    return problems


def check_module_metadata(root: Path) -> List[str]:
    """title, categories (with MedSeg), contributors, helpText and acknowledgementText are non-empty literals."""
    problems = []
    for module in MODULES:
        metadata = module_metadata(parse_module(root, module), module)
        for field in ("title", "helpText", "acknowledgementText"):
            text = _static_text(metadata.get(field))
            if not (text and text.strip()):
                problems.append(f"{module}: self.parent.{field} must be a non-empty string")
        for field in ("categories", "contributors"):
            value = metadata.get(field)
            items = [_static_text(item) for item in value.elts] if isinstance(value, ast.List) else []
            if not items or not all(item and item.strip() for item in items):
                problems.append(f"{module}: self.parent.{field} must be a non-empty list of non-empty strings")
            elif field == "categories" and "MedSeg" not in items:
                problems.append(f"{module}: self.parent.categories must contain 'MedSeg'")
        if not isinstance(metadata.get("dependencies"), ast.List):
            problems.append(f"{module}: self.parent.dependencies must be a list")
    return problems


def check_selftest_modules(root: Path) -> List[str]:
    """Each Test class names a MedSegLib.selftests module that exists (else its self-test fails in Slicer)."""
    problems = []
    for module in MODULES:
        value = class_assignments(parse_module(root, module), f"{module}Test").get("SELFTEST_MODULE")
        name = _static_text(value)
        if not name or not name.startswith("MedSegLib.selftests."):
            problems.append(f"{module}Test.SELFTEST_MODULE must name a MedSegLib.selftests module")
            continue
        path = root / EXTENSION_NAME / Path(*name.split(".")).with_suffix(".py")
        if not path.is_file():
            problems.append(f"{module}Test.SELFTEST_MODULE: {path.relative_to(root)} does not exist")
    return problems


def check_medseglib_qt_free(root: Path) -> List[str]:
    """MedSegLib must import under slicer-core, which has no Qt, CTK, module base classes or translations."""
    problems = []
    for path in python_files(root / EXTENSION_NAME / "MedSegLib"):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in imported:
                if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN_IN_MEDSEGLIB):
                    problems.append(f"{path.relative_to(root)}:{node.lineno}: imports {name}")
    return problems


def check_catalog(root: Path) -> List[str]:
    """ExtensionsIndex entry (Slicer >= 5.8): schema v1.0.x keys only, required keys, sane values."""
    path = root / CATALOG_FILE
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return [f"{CATALOG_FILE}: cannot read: {error}"]
    if not isinstance(entry, dict):
        return [f"{CATALOG_FILE}: must be a JSON object"]
    problems = [f"{CATALOG_FILE}: required key '{key}' is missing" for key in sorted(CATALOG_REQUIRED - set(entry))]
    problems += [f"{CATALOG_FILE}: key '{key}' is not allowed by the catalog schema"
                 for key in sorted(set(entry) - CATALOG_ALLOWED)]
    if "$schema" in entry and not CATALOG_SCHEMA_URL.match(str(entry["$schema"])):
        problems.append(f"{CATALOG_FILE}: $schema must be the v1.0.x catalog-entry schema URL")
    for key in ("category", "scm_url", "scm_revision", "build_subdirectory", "dicom_support_rule"):
        if key in entry and not (isinstance(entry[key], str) and entry[key].strip()):
            problems.append(f"{CATALOG_FILE}: '{key}' must be a non-empty string")
    if entry.get("scm_type", "git") not in ("git", "local"):
        problems.append(f"{CATALOG_FILE}: scm_type must be 'git' or 'local'")
    if "enabled" in entry and not isinstance(entry["enabled"], bool):
        problems.append(f"{CATALOG_FILE}: 'enabled' must be true or false")
    tier = entry.get("tier", 1)
    if isinstance(tier, bool) or not isinstance(tier, int) or not 1 <= tier <= 5:
        problems.append(f"{CATALOG_FILE}: 'tier' must be an integer 1-5")
    dependencies = entry.get("build_dependencies", [])
    if not (isinstance(dependencies, list) and all(isinstance(d, str) for d in dependencies)):
        problems.append(f"{CATALOG_FILE}: 'build_dependencies' must be a list of extension names")
    return problems


def check_top_level_cmake(root: Path) -> List[str]:
    """project(), metadata, find_package(Slicer), the module folder and packaging, in CMake's required order."""
    project = CMakeProject(root)
    path = root / "CMakeLists.txt"
    commands = project.files[path]
    variables = project.variables[path]
    steps = [
        ("cmake_minimum_required", lambda args: bool(args)),
        ("project", lambda args: args[:1] == [EXTENSION_NAME]),
        ("find_package", lambda args: args[:2] == ["Slicer", "REQUIRED"]),
        ("include", lambda args: args == ["${Slicer_USE_FILE}"]),
        ("add_subdirectory", lambda args: args == [EXTENSION_NAME]),
        ("include", lambda args: args == ["${Slicer_EXTENSION_GENERATE_CONFIG}"]),
        ("include", lambda args: args == ["${Slicer_EXTENSION_CPACK}"]),
    ]
    problems = []
    position = 0
    for name, matches in steps:
        found = next((i for i in range(position, len(commands))
                      if commands[i][0] == name and matches(commands[i][1])), None)
        if found is None:
            problems.append(f"CMakeLists.txt: {name}(...) for step '{name}' missing or out of order")
        else:
            position = found + 1
    for key in ("HOMEPAGE", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS", "STATUS"):
        if not "".join(variables.get(f"EXTENSION_{key}", [])).strip():
            problems.append(f"CMakeLists.txt: set(EXTENSION_{key} ...) is missing or empty")
    icon_url = "".join(variables.get("EXTENSION_ICONURL", []))
    if not icon_url.endswith(f"/Resources/Icons/{EXTENSION_NAME}.png"):
        problems.append(f"CMakeLists.txt: EXTENSION_ICONURL should point at Resources/Icons/{EXTENSION_NAME}.png")
    try:
        scm_url = json.loads((root / CATALOG_FILE).read_text(encoding="utf-8")).get("scm_url", "")
    except (OSError, ValueError):
        scm_url = ""
    repository = re.sub(r"^https://github\.com/|\.git$", "", scm_url)
    for key in ("HOMEPAGE", "ICONURL"):
        if repository and repository not in "".join(variables.get(f"EXTENSION_{key}", [])):
            problems.append(f"CMakeLists.txt: EXTENSION_{key} does not point at the catalog's repository {repository}")
    return problems


def png_size(path: Path) -> Optional[Tuple[int, int]]:
    data = path.read_bytes()[:24]
    if len(data) < 24 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def check_icons(root: Path) -> List[str]:
    """Module and extension icons are 128x128 PNG files (Slicer's recommended size)."""
    problems = []
    for name in MODULES + [EXTENSION_NAME]:
        path = root / "Resources" / "Icons" / f"{name}.png"
        size = png_size(path) if path.is_file() else None
        if size != (128, 128):
            problems.append(f"{path.relative_to(root)}: expected a 128x128 PNG, got {size}")
    return problems


CHECKS: List[Callable[[Path], List[str]]] = [
    check_ui_files, check_ui_names_used, check_parameter_bindings, check_cmake_files_exist,
    check_python_files_listed, check_resources_installed, check_module_cmake, check_module_classes,
    check_module_metadata, check_selftest_modules, check_medseglib_qt_free, check_catalog,
    check_top_level_cmake, check_icons,
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_project(check: Callable[[Path], List[str]]) -> None:
    problems = check(ROOT)
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------------------------------
# Every check can fail: run it on a copy of the project with one deliberate defect
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "project"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / EXTENSION_NAME, copy / EXTENSION_NAME, ignore=ignore)
    shutil.copytree(ROOT / "Resources", copy / "Resources", ignore=ignore)
    for name in ("CMakeLists.txt", CATALOG_FILE):
        shutil.copy2(ROOT / name, copy / name)
    return copy


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"mutation target {old!r} not found in {path}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def _edit_json(path: Path, change: Callable[[dict], None]) -> None:
    entry = json.loads(path.read_text(encoding="utf-8"))
    change(entry)
    path.write_text(json.dumps(entry), encoding="utf-8")


def _write_png(path: Path, width: int, height: int) -> None:
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + header + b"\0\0\0\0")


def _ui(root: Path, module: str = "MedSegWindowing") -> Path:
    return ui_file(root, module)


def _py(root: Path, module: str = "MedSegWindowing") -> Path:
    return module_file(root, module)


MUTATIONS: Dict[str, Tuple[Callable[[Path], List[str]], Callable[[Path], None], str]] = {
    "ui-not-xml": (check_ui_files, lambda r: _edit(_ui(r), "</ui>", "</uix>"), "cannot parse"),
    "ui-top-level-class": (check_ui_files, lambda r: _edit(_ui(r), 'class="qMRMLWidget" name="MedSegWindowing"',
                                                           'class="QWidget" name="MedSegWindowing"'), "top-level"),
    "ui-custom-widget-undeclared": (check_ui_files, lambda r: _edit(_ui(r), "<class>ctkSliderWidget</class>",
                                                                    "<class>ctkOtherWidget</class>"), "customwidget"),
    "ui-scene-not-connected": (check_ui_files, lambda r: _edit(_ui(r), "<receiver>inputVolumeSelector</receiver>",
                                                               "<receiver>nothing</receiver>"), "mrmlSceneChanged"),
    "py-unknown-ui-name": (check_ui_names_used, lambda r: _edit(_py(r), "self.ui.autoButton.connect",
                                                                "self.ui.autoButon.connect"), "autoButon"),
    "ui-unknown-parameter": (check_parameter_bindings, lambda r: _edit(_ui(r), "<string>level</string>",
                                                                       "<string>levl</string>"), "levl"),
    "ui-parameter-type": (check_parameter_bindings, lambda r: _edit(
        _py(r), "window: Annotated[float, WithinRange(WINDOW_MIN, WINDOW_MAX)] = 400.0", "window: float = 400.0"),
        "WithinRange"),
    "ui-parameter-widget": (check_parameter_bindings, lambda r: _edit(
        _ui(r, "MedSegDICOM"), '"QCheckBox" name="copyFilesCheckBox"', '"QRadioButton" name="copyFilesCheckBox"'),
        "QRadioButton"),
    "cmake-missing-file": (check_cmake_files_exist, lambda r: _edit(
        r / EXTENSION_NAME / "MedSegWindowing" / "CMakeLists.txt", "${MODULE_NAME}.py", "${MODULE_NAME}.py\n  Gone.py"),
        "Gone.py"),
    "cmake-unlisted-python": (check_python_files_listed, lambda r: (
        r / EXTENSION_NAME / "MedSegLib" / "brand_new.py").write_text("", encoding="utf-8"), "brand_new.py"),
    "cmake-unlisted-resource": (check_resources_installed, lambda r: (
        r / "Resources" / "Presets" / "new.json").write_text("{}", encoding="utf-8"), "new.json"),
    "cmake-no-generic-tests": (check_module_cmake, lambda r: _edit(
        r / EXTENSION_NAME / "MedSegDICOM" / "CMakeLists.txt", "  WITH_GENERIC_TESTS\n", ""), "WITH_GENERIC_TESTS"),
    "cmake-module-not-added": (check_module_cmake, lambda r: _edit(
        r / EXTENSION_NAME / "CMakeLists.txt", "add_subdirectory(MedSegDeepLearning)\n", ""),
        "add_subdirectory(MedSegDeepLearning)"),
    "py-class-missing": (check_module_classes, lambda r: _edit(_py(r), "class MedSegWindowingTest(",
                                                               "class WindowingTest("), "MedSegWindowingTest"),
    "py-empty-help": (check_module_metadata, lambda r: _edit(
        _py(r, "MedSegDICOM"), 'self.parent.title = _("MedSeg DICOM")', 'self.parent.title = ""'), "title"),
    "py-category": (check_module_metadata, lambda r: _edit(
        _py(r), 'translate("qSlicerAbstractCoreModule", "MedSeg")', '"Examples"'), "MedSeg"),
    "py-selftest-module": (check_selftest_modules, lambda r: _edit(
        _py(r), 'SELFTEST_MODULE = "MedSegLib.selftests.', 'SELFTEST_MODULE = "MedSegLib.selftests.no_such_'),
        "no_such_"),
    "lib-imports-qt": (check_medseglib_qt_free, lambda r: (r / EXTENSION_NAME / "MedSegLib" / "errors.py").write_text(
        "def f():\n    from slicer.i18n import tr\n    return tr\n", encoding="utf-8"), "slicer.i18n"),
    "catalog-extra-key": (check_catalog, lambda r: _edit_json(r / CATALOG_FILE, lambda e: e.update(homepage="x")),
                          "homepage"),
    "catalog-missing-key": (check_catalog, lambda r: _edit_json(r / CATALOG_FILE, lambda e: e.pop("scm_url")),
                            "scm_url"),
    "catalog-tier": (check_catalog, lambda r: _edit_json(r / CATALOG_FILE, lambda e: e.update(tier=7)), "tier"),
    "top-level-no-cpack": (check_top_level_cmake, lambda r: _edit(
        r / "CMakeLists.txt", "include(${Slicer_EXTENSION_CPACK})", ""), "include"),
    "top-level-no-metadata": (check_top_level_cmake, lambda r: _edit(
        r / "CMakeLists.txt", "set(EXTENSION_STATUS", "set(EXTENSION_STATE"), "EXTENSION_STATUS"),
    "icon-size": (check_icons, lambda r: _write_png(r / "Resources" / "Icons" / "MedSegDICOM.png", 64, 64), "128x128"),
}


@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_checks_catch_broken_copies(case: str, project_copy: Path) -> None:
    check, mutate, expected = MUTATIONS[case]
    assert not [p for p in check(project_copy) if expected in p], "defect reported before it was introduced"
    mutate(project_copy)
    problems = check(project_copy)
    assert any(expected in problem for problem in problems), f"{check.__name__} missed '{case}': {problems}"


def test_every_check_has_a_mutation() -> None:
    assert {check for check, _, _ in MUTATIONS.values()} == set(CHECKS)


def test_cmake_reader() -> None:
    """The hand-written CMake reader handles comments, quotes, nesting, list variables and scopes."""
    commands = cmake_commands('set(A "x y" b) # comment (not a call)\nif(NOT (A AND B))\nfoo(${A} "q\\"r")\n')
    assert commands == [("set", ["A", "x y", "b"]), ("if", ["NOT", "A", "AND", "B"]), ("foo", ["${A}", 'q\\"r'])]
    assert _expand("${L}", {"L": ["a.py", "b.py"]}) == ["a.py", "b.py"]
    assert _expand("${D}/x.ui", {"D": ["/r"]}) == ["/r/x.ui"]
    assert _expand("${UNKNOWN}/x.ui", {}) == ["${UNKNOWN}/x.ui"]


def test_update_tool_round_trip(project_copy: Path) -> None:
    """update_cmake_lists.py --check fails on a stale block, rewrites it, then passes."""
    tool = _load_update_tool(project_copy)
    (project_copy / EXTENSION_NAME / "MedSegLib" / "later_module.py").write_text("", encoding="utf-8")
    assert tool.main(["--root", str(project_copy), "--check"]) == 1
    assert tool.main(["--root", str(project_copy)]) == 0
    assert "MedSegLib/later_module.py" in (project_copy / tool.CMAKE_FILE).read_text(encoding="utf-8")
    assert tool.main(["--root", str(project_copy), "--check"]) == 0
    assert check_python_files_listed(project_copy) == []


# --------------------------------------------------------------------------------------------------
# Real CMake against a stand-in for Slicer's CMake package
# --------------------------------------------------------------------------------------------------

# Minimal stand-ins, written for this test: same argument signatures and file semantics as Slicer's
# slicerMacroBuildScriptedModule / slicer_add_python_unittest and CTK's ctkMacroCompilePythonScript
# (scripts and resources land at DESTINATION_DIR/<path as given>; the directory is installed), but files
# are copied at configure time and nothing is compiled.
STUB_SLICER_CONFIG = """
set(Slicer_USE_FILE ${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake)
set(Slicer_EXTENSION_GENERATE_CONFIG ${CMAKE_CURRENT_LIST_DIR}/Empty.cmake)
set(Slicer_EXTENSION_CPACK ${CMAKE_CURRENT_LIST_DIR}/Empty.cmake)
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.10/qt-scripted-modules)
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.10/qt-scripted-modules)
"""

STUB_USE_SLICER = r"""
set(BUILD_TESTING ON)
function(_stub_copy kind source_dir dest_dir)
  foreach(file IN LISTS ARGN)
    set(target "${dest_dir}/${file}")
    get_filename_component(target "${target}" ABSOLUTE)
    string(FIND "${target}" "${dest_dir}/" inside)
    if(NOT inside EQUAL 0)
      message(FATAL_ERROR "${kind} '${file}' would be copied outside ${dest_dir}")
    endif()
    if(NOT EXISTS "${source_dir}/${file}")
      message(FATAL_ERROR "${kind} '${source_dir}/${file}' does not exist")
    endif()
    configure_file("${source_dir}/${file}" "${target}" COPYONLY)
  endforeach()
endfunction()
macro(ctkMacroCompilePythonScript)
  cmake_parse_arguments(MY "NO_INSTALL_SUBDIR;GLOBAL_TARGET" "TARGET_NAME;SOURCE_DIR;DESTINATION_DIR;INSTALL_DIR"
    "SCRIPTS;RESOURCES" ${ARGN})
  if(MY_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "ctkMacroCompilePythonScript: unknown arguments ${MY_UNPARSED_ARGUMENTS}")
  endif()
  foreach(var TARGET_NAME SCRIPTS DESTINATION_DIR INSTALL_DIR)
    if(NOT DEFINED MY_${var})
      message(FATAL_ERROR "ctkMacroCompilePythonScript: ${var} is mandatory")
    endif()
  endforeach()
  if(NOT MY_SOURCE_DIR)
    set(MY_SOURCE_DIR ${CMAKE_CURRENT_SOURCE_DIR})
  endif()
  _stub_copy(script "${MY_SOURCE_DIR}" "${MY_DESTINATION_DIR}" ${MY_SCRIPTS})
  _stub_copy(resource "${MY_SOURCE_DIR}" "${MY_DESTINATION_DIR}" ${MY_RESOURCES})
  if(MY_NO_INSTALL_SUBDIR)
    install(DIRECTORY "${MY_DESTINATION_DIR}/" DESTINATION "${MY_INSTALL_DIR}")
  else()
    install(DIRECTORY "${MY_DESTINATION_DIR}" DESTINATION "${MY_INSTALL_DIR}")
  endif()
endmacro()
macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY_SLICER "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  if(MY_SLICER_UNPARSED_ARGUMENTS OR NOT MY_SLICER_NAME)
    message(FATAL_ERROR "slicerMacroBuildScriptedModule: bad arguments ${ARGN}")
  endif()
  ctkMacroCompilePythonScript(TARGET_NAME ${MY_SLICER_NAME} SCRIPTS "${MY_SLICER_SCRIPTS}"
    RESOURCES "${MY_SLICER_RESOURCES}" DESTINATION_DIR ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}
    INSTALL_DIR ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR} NO_INSTALL_SUBDIR)
  if(MY_SLICER_WITH_GENERIC_TESTS)
    set_property(GLOBAL APPEND PROPERTY STUB_TESTS "generic:${MY_SLICER_NAME}")
  endif()
endmacro()
function(slicer_add_python_unittest)
  cmake_parse_arguments(MY "" "SCRIPT;TESTNAME_PREFIX" "SLICER_ARGS" ${ARGN})
  if(MY_UNPARSED_ARGUMENTS OR NOT EXISTS "${CMAKE_CURRENT_SOURCE_DIR}/${MY_SCRIPT}")
    message(FATAL_ERROR "slicer_add_python_unittest: bad arguments ${ARGN}")
  endif()
  set_property(GLOBAL APPEND PROPERTY STUB_TESTS "unittest:${MY_SCRIPT}")
endfunction()
"""

STUB_REPORT = """
get_property(tests GLOBAL PROPERTY STUB_TESTS)
file(WRITE "${CMAKE_BINARY_DIR}/stub-tests.txt" "${tests}")
"""


def cmake_layout_problems(source: Path, work: Path) -> List[str]:
    """Configure and install ``source`` against the stub Slicer; report what Slicer would not find."""
    stub = work / "SlicerStub"
    stub.mkdir(parents=True)
    (stub / "SlicerConfig.cmake").write_text(STUB_SLICER_CONFIG, encoding="utf-8")
    (stub / "UseSlicer.cmake").write_text(STUB_USE_SLICER, encoding="utf-8")
    (stub / "Empty.cmake").write_text(STUB_REPORT, encoding="utf-8")
    build, install = work / "build", work / "install"
    for command in (["cmake", "-S", str(source), "-B", str(build), f"-DSlicer_DIR={stub}", "-G", "Ninja"],
                    ["cmake", "--install", str(build), "--prefix", str(install)]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            return [f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"]
    expected = [f"{module}.py" for module in MODULES]
    expected += [f"Resources/UI/{module}.ui" for module in MODULES]
    expected += [f"Resources/Icons/{module}.png" for module in MODULES]
    library = source / EXTENSION_NAME / "MedSegLib"
    expected += [p.relative_to(library.parent).as_posix() for p in python_files(library)]
    resources = source / "Resources"
    expected += [p.relative_to(source).as_posix() for p in resources.rglob("*")
                 if p.is_file() and p.relative_to(resources).parts[0] not in ("UI", "Icons")]
    problems = []
    for tree in (build, install):
        scripted = tree / "lib" / "Slicer-5.10" / "qt-scripted-modules"
        problems += [f"{scripted.relative_to(work)}/{name} is missing" for name in expected
                     if not (scripted / name).is_file()]
        if (scripted / "qt-scripted-modules").exists():
            problems.append(f"{scripted.relative_to(work)}: installed one folder too deep (NO_INSTALL_SUBDIR)")
    tests = sorted((build / "stub-tests.txt").read_text(encoding="utf-8").split(";"))
    if tests != sorted([f"generic:{m}" for m in MODULES] + [f"unittest:{m}.py" for m in MODULES]):
        problems.append(f"registered tests: {tests}")
    return problems


needs_cmake = pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("ninja") is None,
                                 reason="cmake/ninja not installed")


@needs_cmake
def test_cmake_configure_with_stub_slicer(tmp_path: Path) -> None:
    """Real CMake: the project configures, and build and install trees have the layout Slicer loads from."""
    problems = cmake_layout_problems(ROOT, tmp_path)
    assert not problems, "\n".join(problems)


@needs_cmake
def test_cmake_stub_catches_broken_copy(project_copy: Path, tmp_path: Path) -> None:
    """The stub build reports an unlisted MedSegLib file, and a resource path that leaves the modules folder."""
    (project_copy / EXTENSION_NAME / "MedSegLib" / "unlisted.py").write_text("", encoding="utf-8")
    problems = cmake_layout_problems(project_copy, tmp_path / "a")
    assert any("MedSegLib/unlisted.py is missing" in problem for problem in problems), problems
    _edit(project_copy / EXTENSION_NAME / "MedSegWindowing" / "CMakeLists.txt", "  WITH_GENERIC_TESTS",
          "  RESOURCES ../../Resources/UI/MedSegWindowing.ui\n  WITH_GENERIC_TESTS")
    problems = cmake_layout_problems(project_copy, tmp_path / "b")
    assert any("would be copied outside" in problem for problem in problems), problems


# --------------------------------------------------------------------------------------------------
# The modules' Logic and Test classes, run on slicer-core with stand-ins for the Qt-only imports
# --------------------------------------------------------------------------------------------------
# Widgets need Qt and stay untested here, but the logic and the in-Slicer tests only need MRML: this runs
# the very test methods ctest runs inside Slicer, against the real MedSegLib and a real (headless) scene.


def _qt_only_stand_ins() -> Dict[str, types.ModuleType]:
    """Just enough of qt, slicer.i18n, slicer.ScriptedLoadableModule and slicer.parameterNodeWrapper."""
    qt = types.ModuleType("qt")
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text

    base = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent) -> None:
            self.parent, self.moduleName = parent, type(self).__name__

    class ScriptedLoadableModuleWidget:
        pass

    class ScriptedLoadableModuleLogic:
        def __init__(self) -> None:
            self.moduleName = type(self).__name__.removesuffix("Logic")

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message: str, msec: int = 100) -> None:
            pass

    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                ScriptedLoadableModuleTest):
        setattr(base, cls.__name__, cls)

    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = lambda cls: cls
    for name in ("WithinRange", "Choice", "Default", "RangeBounds", "Minimum", "Maximum"):
        setattr(wrapper, name, lambda *args, _name=name, **kwargs: (_name, args, kwargs))

    class FloatRange:
        def __init__(self, minimum: float = 0.0, maximum: float = 0.0) -> None:
            self.minimum, self.maximum = minimum, maximum

    wrapper.FloatRange = FloatRange
    return {"qt": qt, "slicer.i18n": i18n, "slicer.ScriptedLoadableModule": base,
            "slicer.parameterNodeWrapper": wrapper}


@pytest.fixture(scope="module")
def slicer_modules() -> Iterator[Dict[str, types.ModuleType]]:
    """The five module files imported on slicer-core (booted), removed again afterwards."""
    pytest.importorskip("slicer")
    from MedSegLib.runtime import boot

    boot()
    with pytest.MonkeyPatch.context() as patch:
        for name, stand_in in _qt_only_stand_ins().items():
            patch.setitem(sys.modules, name, stand_in)
        for module in MODULES:
            patch.syspath_prepend(str(ROOT / EXTENSION_NAME / module))
        try:
            yield {module: importlib.import_module(module) for module in MODULES}
        finally:
            for module in MODULES:
                sys.modules.pop(module, None)


def _run_test_method(test_class: type, method: str) -> unittest.TestResult:
    result = unittest.TestResult()
    test_class(method).run(result)
    return result


def _module_test_methods() -> List[Tuple[str, str]]:
    """(module, test method) pairs of every module's Test class, except the MedSegLib.selftests runners."""
    pairs = []
    for module in MODULES:
        for node in parse_module(ROOT, module).body:
            if isinstance(node, ast.ClassDef) and node.name == f"{module}Test":
                pairs += [(module, item.name) for item in node.body if isinstance(item, ast.FunctionDef)
                          and item.name.startswith("test_") and not item.name.endswith("_selftests")]
    return pairs


@pytest.mark.parametrize("module,method", _module_test_methods())
def test_module_test_methods_headless(slicer_modules, module: str, method: str) -> None:
    """The module's own Slicer test method, with its logic, passes on slicer-core."""
    result = _run_test_method(getattr(slicer_modules[module], f"{module}Test"), method)
    problems = [text for _, text in result.errors + result.failures]
    assert result.wasSuccessful(), "\n".join(problems)


def test_selftest_runner_runs_medseglib_checks(slicer_modules, monkeypatch) -> None:
    """A Test class's runner executes every check of its MedSegLib.selftests module in the scene.

    Run on the runtime checks only: each selftests module's own checks are its owner's pytest's business.
    """
    from MedSegLib.selftests import runtime_selftests

    calls = []

    def recorded(name: str, check: Callable) -> Callable:
        return lambda scene, work_dir: calls.append(name) or check(scene, work_dir)

    for name, check in runtime_selftests.ALL_CHECKS.items():
        monkeypatch.setitem(runtime_selftests.ALL_CHECKS, name, recorded(name, check))
    test_class = slicer_modules["MedSegSegmentation"].MedSegSegmentationTest
    monkeypatch.setattr(test_class, "SELFTEST_MODULE", runtime_selftests.__name__)
    result = _run_test_method(test_class, "test_MedSegSegmentation_selftests")
    assert result.wasSuccessful(), "\n".join(text for _, text in result.errors + result.failures)
    assert sorted(calls) == sorted(runtime_selftests.ALL_CHECKS)


def test_missing_selftests_module_is_a_failure(slicer_modules, monkeypatch) -> None:
    """A selftests module that is not there fails the Slicer test (it is not skipped or silently passed)."""
    test_class = slicer_modules["MedSegWindowing"].MedSegWindowingTest
    monkeypatch.setattr(test_class, "SELFTEST_MODULE", "MedSegLib.selftests.not_written_yet")
    result = _run_test_method(test_class, "test_MedSegWindowing_selftests")
    assert len(result.failures) == 1 and not result.errors and not result.skipped
    assert "not_written_yet" in result.failures[0][1]
