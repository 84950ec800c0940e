"""Run ``medseg deepseg infer`` / ``train`` in a child process: the caller (Slicer's GUI thread) stays free.

Why a process and not a thread: inference holds the GIL in Python glue between windows and torch's
intra-op threads compete with the GUI; a child process keeps Slicer responsive, can use all cores, and
Cancel is a plain terminate that always works, even inside a long convolution. The child reports
progress as ``MEDSEG-PROGRESS <fraction> <message>`` lines on stdout (``--progress-lines``); a reader
thread keeps the latest one, so the GUI only polls :attr:`BackgroundRun.fraction` / ``message`` from a
timer. stderr goes to a file (no pipe to fill up) and is kept for the error message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

PROGRESS_PREFIX = "MEDSEG-PROGRESS"
_LIB_PARENT = Path(__file__).resolve().parents[2]  # the folder that holds MedSegLib/


def progress_line(fraction: float, message: str = "") -> str:
    """The line a child prints for one progress update (one line: newlines in the message are folded)."""
    text = " ".join(str(message).split())
    return f"{PROGRESS_PREFIX} {min(max(float(fraction), 0.0), 1.0):.4f} {text}".rstrip()


def parse_progress_line(line: str) -> Optional[Tuple[float, str]]:
    """(fraction, message) of a progress line, None for any other line."""
    if not line.startswith(PROGRESS_PREFIX + " "):
        return None
    parts = line[len(PROGRESS_PREFIX) + 1 :].rstrip("\r\n").split(" ", 1)
    try:
        fraction = float(parts[0])
    except ValueError:
        return None
    return fraction, parts[1] if len(parts) > 1 else ""


def medseg_command(arguments: Sequence[str], python: Optional[str] = None) -> List[str]:
    """``python -m MedSegLib.cli.main ARGUMENTS`` (``python`` defaults to this interpreter)."""
    return [python or sys.executable, "-m", "MedSegLib.cli.main", *map(str, arguments)]


class BackgroundRun:
    """One ``medseg`` child process with parsed progress, cancel (terminate) and the JSON summary."""

    def __init__(self, arguments: Sequence[str], python: Optional[str] = None, env: Optional[Dict[str, str]] = None):
        self.command = medseg_command(arguments, python)
        self._env = dict(os.environ if env is None else env)
        path = self._env.get("PYTHONPATH", "")
        self._env["PYTHONPATH"] = str(_LIB_PARENT) + (os.pathsep + path if path else "")
        self._env["PYTHONUNBUFFERED"] = "1"
        self.fraction = 0.0
        self.message = ""
        self.progress_history: List[Tuple[float, str]] = []
        self.output_lines: List[str] = []  # stdout lines that are not progress (e.g. the --json summary)
        self.cancelled = False
        self.started_at: Optional[float] = None
        self.ended_at: Optional[float] = None
        self._process: Optional[subprocess.Popen] = None
        self._reader: Optional[threading.Thread] = None
        self._stderr_file: Any = None
        self._lock = threading.Lock()

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> BackgroundRun:
        if self._process is not None:
            raise RuntimeError("already started")
        self._stderr_file = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")
        self.started_at = time.perf_counter()
        self._process = subprocess.Popen(
            self.command,
            stdout=subprocess.PIPE,
            stderr=self._stderr_file,
            stdin=subprocess.DEVNULL,
            env=self._env,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read_stdout, name="medseg-background-reader", daemon=True)
        self._reader.start()
        return self

    def _read_stdout(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            parsed = parse_progress_line(line)
            with self._lock:
                if parsed is None:
                    self.output_lines.append(line.rstrip("\r\n"))
                else:
                    self.fraction, self.message = parsed
                    self.progress_history.append(parsed)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> Optional[int]:
        return None if self._process is None else self._process.poll()

    @property
    def pid(self) -> Optional[int]:
        return None if self._process is None else self._process.pid

    def wait(self, timeout: Optional[float] = None) -> int:
        """Wait for the child (raises ``subprocess.TimeoutExpired``); then all its output has been read."""
        if self._process is None:
            raise RuntimeError("not started")
        code = self._process.wait(timeout)
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self.ended_at is None:
            self.ended_at = time.perf_counter()
        return code

    def cancel(self, grace_seconds: float = 5.0) -> Optional[int]:
        """Terminate the child (SIGTERM; kill after ``grace_seconds``); returns its exit status."""
        if self._process is None:
            return None
        if self._process.poll() is None:
            self.cancelled = True
            self._process.terminate()
            try:
                self._process.wait(grace_seconds)
            except subprocess.TimeoutExpired:
                self._process.kill()
        return self.wait()

    # --- results --------------------------------------------------------------------------------
    @property
    def error_text(self) -> str:
        """Everything the child wrote to stderr (its error message when it failed)."""
        if self._stderr_file is None:
            return ""
        with self._lock:
            self._stderr_file.flush()
            self._stderr_file.seek(0)
            text = self._stderr_file.read()
            self._stderr_file.seek(0, os.SEEK_END)
        return text

    def error_message(self) -> str:
        """The child's last ``medseg ...: error: ...`` line, else the last line of stderr."""
        lines = [line for line in self.error_text.splitlines() if line.strip()]
        for line in reversed(lines):
            if ": error: " in line:
                return line.strip()
        return lines[-1].strip() if lines else ""

    def summary(self) -> Optional[Dict[str, Any]]:
        """The JSON object the child printed on stdout (``--json``), if any."""
        with self._lock:
            text = "\n".join(self.output_lines)
        start = text.find("{")
        if start < 0:
            return None
        try:
            return json.loads(text[start : text.rfind("}") + 1])
        except ValueError:
            return None


def start_inference(
    input_path: str,
    model: str,
    output_path: str,
    device: str = "auto",
    overlap: Optional[float] = None,
    sw_batch_size: Optional[int] = None,
    python: Optional[str] = None,
    extra: Sequence[str] = (),
) -> BackgroundRun:
    """``medseg deepseg infer`` in the background (JSON summary and progress lines on)."""
    arguments = ["deepseg", "infer", input_path, "--model", model, "-o", output_path, "--device", device]
    if overlap is not None:
        arguments += ["--overlap", repr(float(overlap))]
    if sw_batch_size is not None:
        arguments += ["--sw-batch", str(int(sw_batch_size))]
    arguments += ["--json", "--progress-lines", *extra]
    return BackgroundRun(arguments, python=python).start()


def start_training(
    data_dir: str,
    labels: Sequence[str],
    epochs: int,
    output_dir: str,
    python: Optional[str] = None,
    extra: Sequence[str] = (),
) -> BackgroundRun:
    """``medseg deepseg train`` in the background (resumes from ``output_dir`` unless ``--fresh`` in extra)."""
    arguments = ["deepseg", "train", "--data", data_dir, "--labels", *labels, "--epochs", str(int(epochs))]
    arguments += ["-o", output_dir, "--progress-lines", *extra]
    return BackgroundRun(arguments, python=python).start()
