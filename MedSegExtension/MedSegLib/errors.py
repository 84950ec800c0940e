"""User-facing error types.

A ``UserInputError`` is raised for anything the user can fix (bad file, missing tag, wrong
option). The CLI turns it into one line on stderr and exit code 2, with no traceback unless
``--debug``; inside 3D Slicer the widget shows the same one line.
"""

from __future__ import annotations

import os
from typing import Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


class UserInputError(Exception):
    """Bad input: names the offending file (if any) and the problem, in one line."""

    def __init__(self, problem: str, path: Optional[PathLike] = None) -> None:
        self.problem = problem
        self.path = os.fspath(path) if path is not None else None
        super().__init__(self.one_line())

    def one_line(self) -> str:
        text = f"{self.path}: {self.problem}" if self.path else self.problem
        return " ".join(text.split())


class OperationCancelled(Exception):
    """Raised by long operations when the user pressed cancel (Ctrl-C or the panel's button)."""
