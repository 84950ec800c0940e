"""What every MedSeg scripted module needs from MedSegLib, in one Qt-free place.

The module files (``MedSeg<Name>.py``) stay thin: they import parts of MedSegLib lazily (so
Slicer's module scan at startup stays fast and a missing optional part is one readable message),
find their resources in both the installed and the source-tree layout, and run the shared
self-tests in their ``Test`` class.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, Optional

Check = Callable[[Any, Path], None]


def import_part(module_name: str, translate: Optional[Callable[[str], str]] = None) -> ModuleType:
    """Import a MedSegLib module on first use; a missing part or dependency becomes one clear RuntimeError."""
    translate = translate or (lambda text: text)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and error.name.split(".")[0] == "MedSegLib":
            message = translate("{module} is not available in this MedSeg build (missing {missing}).").format(
                module=module_name, missing=error.name
            )
        else:
            message = translate("{module} needs the Python package '{package}'.").format(
                module=module_name, package=error.name
            )
        raise RuntimeError(message) from error


def resource_file(installed_path: str, relative_path: str) -> str:
    """The installed resource if present (``module.resourcePath(...)``), else the source tree's ``Resources/``."""
    if os.path.isfile(installed_path):
        return installed_path
    from MedSegLib.resources import resource_path

    return str(resource_path(*relative_path.split("/")))


def selftest_checks(module_name: str) -> Dict[str, Check]:
    """The ``check_*`` functions of a ``MedSegLib.selftests`` module; an empty or missing module is an error."""
    module = importlib.import_module(module_name)
    checks = getattr(module, "ALL_CHECKS", None) or {
        name: value for name, value in vars(module).items() if name.startswith("check_") and callable(value)
    }
    if not checks:
        raise AssertionError(f"{module_name} defines no check_* functions")
    return dict(sorted(checks.items()))


def run_selftests(
    test_case: Any, module_name: str, scene: Any, announce: Optional[Callable[[str], None]] = None
) -> None:
    """Run every check of ``module_name`` as a subTest of ``test_case`` in a cleared ``scene``."""
    try:
        checks = selftest_checks(module_name)
    except ImportError as error:
        test_case.fail(f"{module_name} cannot be imported: {error}")
        return
    prefix = type(test_case).__name__ + "-"
    for name, check in checks.items():
        with test_case.subTest(check=name), tempfile.TemporaryDirectory(prefix=prefix) as work_dir:
            if announce is not None:
                announce(f"Running {name}")
            scene.Clear(0)
            check(scene, Path(work_dir))
