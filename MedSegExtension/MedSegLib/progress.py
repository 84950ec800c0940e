"""Progress reporting and cancellation shared by the CLI (tqdm on stderr) and the Slicer panels.

Logic functions accept an optional ``ProgressCallback`` (fraction done in 0..1 and a message) so the
widget can drive a progress bar, and the CLI shows a tqdm bar; both raise ``OperationCancelled``
when cancel is requested.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Callable, Iterator, List, Optional

from MedSegLib.errors import OperationCancelled

ProgressCallback = Callable[[float, str], None]


class CancelToken:
    """Set by the user (button, Ctrl-C); checked by long loops between work units."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise OperationCancelled()


def tqdm_callback(total: int, description: str, disable: bool = False):
    """A ``(done_fraction, message)`` callback that drives a tqdm bar on stderr; returns (callback, bar)."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=description, file=sys.stderr, disable=disable, delay=1.0, leave=False)

    def callback(fraction: float, message: str = "") -> None:
        bar.n = int(round(fraction * total))
        if message:
            bar.set_postfix_str(message, refresh=False)
        bar.refresh()

    return callback, bar


class StepProgress:
    """A progress bar over named steps of a pipeline (shown only when it lasts more than a second)."""

    def __init__(self, steps: List[str], disable: bool = False, description: str = "medseg") -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=len(steps), desc=description, file=sys.stderr, disable=disable, delay=1.0, leave=False)
        self.timings: dict = {}

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        self._bar.set_postfix_str(name)
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = time.perf_counter() - started
            self._bar.update(1)
            if self._bar.n >= self._bar.total:
                self._bar.close()


def report(callback: Optional[ProgressCallback], fraction: float, message: str = "") -> None:
    if callback is not None:
        callback(fraction, message)
