"""A real Orthanc PACS for the tests: free ports on 127.0.0.1, temporary storage, config written here, stopped after.

Import the fixture into a test module with ``from orthanc_fixture import orthanc  # noqa: F401``. Tests skip (with
the reason) only when the ``Orthanc`` binary is missing; ``make test`` installs it (Debian ``orthanc`` and
``orthanc-dicomweb``).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from base64 import b64encode
from pathlib import Path
from typing import Optional

import pytest

ORTHANC_AET = "ORTHANC"
MEDSEG_AET = "MEDSEG"
USER, PASSWORD = "medseg", "medseg-test-secret"


def free_port() -> int:
    """A TCP port nobody listens on right now (bound to 127.0.0.1 only)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dicomweb_plugin() -> Optional[str]:
    """Path of the DICOMweb plugin from the Debian package's file list (or its usual place)."""
    try:
        listing = subprocess.run(["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, timeout=10)
        for line in listing.stdout.splitlines():
            if "libOrthancDicomWeb.so" in line and os.path.isfile(line):
                return line
    except (OSError, subprocess.SubprocessError):
        pass
    found = glob.glob("/usr/share/orthanc/plugins/libOrthancDicomWeb.so*") + glob.glob(
        "/usr/lib/orthanc/libOrthancDicomWeb.so*"
    )
    return found[0] if found else None


class OrthancServer:
    """One Orthanc process with its own storage, DICOM port, HTTP port and a registered MedSeg move destination."""

    def __init__(self, work_dir: Path, extra_config: Optional[dict] = None) -> None:
        self.work_dir = work_dir
        self.extra_config = dict(extra_config or {})
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.medseg_port = free_port()
        self.plugin = dicomweb_plugin()
        self.process: Optional[subprocess.Popen] = None
        self.log_path = work_dir / "orthanc.log"

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    def config(self) -> dict:
        storage = str(self.work_dir / "storage")
        return {
            "Name": "MedSegTestOrthanc",
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "DicomAet": ORTHANC_AET,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "HttpServerEnabled": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {USER: PASSWORD},
            "DicomServerEnabled": True,
            "DicomCheckCalledAet": True,
            "DicomModalities": {"medseg": [MEDSEG_AET, "127.0.0.1", self.medseg_port]},
            "DicomScuTimeout": 10,
            "DicomScpTimeout": 30,
            "StableAge": 1,
            "Plugins": [self.plugin] if self.plugin else [],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
            **self.extra_config,
        }

    def start(self, timeout_s: float = 20.0) -> OrthancServer:
        binary = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if os.path.exists("/usr/sbin/Orthanc") else None)
        if binary is None:
            raise FileNotFoundError("Orthanc")
        config_path = self.work_dir / "orthanc.json"
        config_path.write_text(json.dumps(self.config(), indent=2))
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            [binary, str(config_path)], stdout=log, stderr=subprocess.STDOUT, cwd=self.work_dir
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}: {self.log_tail()}")
            try:
                self.rest("/system")
                with socket.create_connection(("127.0.0.1", self.dicom_port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not start within {timeout_s} s: {self.log_tail()}")

    def rest(self, path: str, method: str = "GET", data: Optional[bytes] = None) -> object:
        """Call Orthanc's REST API (authenticated); JSON answers are decoded."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=data, method=method)
        token = b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        try:
            return json.loads(body)
        except ValueError:
            return body

    def clear(self) -> None:
        """Delete every patient (tests that need an empty archive)."""
        for patient in self.rest("/patients"):
            self.rest(f"/patients/{patient}", method="DELETE")

    def log_tail(self, lines: int = 15) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None


def skip_without_orthanc() -> None:
    if shutil.which("Orthanc") is None and not os.path.exists("/usr/sbin/Orthanc"):
        pytest.skip(
            "Orthanc binary not found (install the Debian packages orthanc and orthanc-dicomweb; `make test` does it)"
        )


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    """A running Orthanc (DIMSE + DICOMweb with HTTP basic auth) for the whole test session."""
    if shutil.which("Orthanc") is None and not os.path.exists("/usr/sbin/Orthanc"):
        pytest.skip(
            "Orthanc binary not found (install the Debian packages orthanc and orthanc-dicomweb; `make test` does it)"
        )
    server = OrthancServer(tmp_path_factory.mktemp("orthanc")).start()
    try:
        yield server
    finally:
        server.stop()
