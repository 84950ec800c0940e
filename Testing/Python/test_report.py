"""`medseg report`: one self-contained HTML file (data-URI images, no network), checked in headless Chromium."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import threading
import xml.etree.ElementTree as ET
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

PIPELINE = """\
version: 1
name: report-test
steps:
  - load: {}
  - window: {presets: [Lung, Bone], tiles: 4}
  - segment:
      name: dense
      method: threshold
      parameters: {lower: 150, segment_name: Dense}
  - statistics: {}
  - qmri: {regions: auto, sample_voxels: 3}
"""


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory, runtime):
    from MedSegLib.pipeline import RunOptions, parse_pipeline_text, resolve_cases, run_pipeline
    from MedSegLib.sample_data import write_ct_phantom, write_mr_ir_series, write_mr_se_series

    root = tmp_path_factory.mktemp("report-inputs")
    study = root / "study"
    write_ct_phantom(study / "ct", shape=(16, 64, 64), spacing_mm=(8.0, 6.0, 6.0), seed=3)
    write_mr_ir_series(study / "ir", shape=(2, 64, 64), spacing_mm=(4.0, 4.0, 4.0), ti_ms=[50, 150, 400, 1000, 3000])
    write_mr_se_series(study / "se", shape=(2, 64, 64), spacing_mm=(4.0, 4.0, 4.0), te_ms=[10, 30, 60, 120, 240])
    ct_only = write_ct_phantom(root / "ct_only", shape=(16, 64, 64), spacing_mm=(8.0, 6.0, 6.0), seed=4)
    broken = root / "broken"
    broken.mkdir()
    (broken / "scan.dcm").write_text("not dicom")
    spec = parse_pipeline_text(PIPELINE, "report-test.yaml")
    out = tmp_path_factory.mktemp("report-run")
    summary = run_pipeline(
        spec, resolve_cases({}, [str(study), str(ct_only), str(broken)]), out, RunOptions(workers=0, quiet=True)
    )
    assert {c["id"]: c["status"] for c in summary["cases"]} == {
        "study": "complete",
        "ct_only": "complete",
        "broken": "failed",
    }
    return out


class _Collector(HTMLParser):
    """Tags with their attributes, and the rows of every table by id."""

    def __init__(self) -> None:
        super().__init__()
        self.tags = []
        self.rows = {}
        self._table = None
        self._in_body = False

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if tag == "table":
            self._table = attributes.get("id")
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body and self._table:
            self.rows[self._table] = self.rows.get(self._table, 0) + 1

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._in_body = False
        elif tag == "table":
            self._table = None


def _decode_image(uri: str) -> str:
    """Decode a data URI fully (PNG chunks + zlib stream, or SVG XML); returns the kind."""
    header, payload = uri.split(",", 1)
    data = base64.b64decode(payload, validate=True)
    if header == "data:image/png;base64":
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", data[16:24])
        assert width > 0 and height > 0
        position, idat = 8, b""
        while position < len(data):
            (length,) = struct.unpack(">I", data[position : position + 4])
            kind = data[position + 4 : position + 8]
            if kind == b"IDAT":
                idat += data[position + 8 : position + 8 + length]
            position += 12 + length
        assert len(zlib.decompress(idat)) > 0
        return "png"
    assert header == "data:image/svg+xml;base64", header
    ET.fromstring(data.decode("utf-8"))
    return "svg"


def _check_self_contained(document: str) -> _Collector:
    collector = _Collector()
    collector.feed(document)
    assert not any(tag in ("script", "link", "iframe", "object", "embed") for tag, _ in collector.tags)
    for tag, attributes in collector.tags:
        for name in ("src", "href", "srcset", "poster", "data"):
            value = attributes.get(name)
            if value is not None:
                assert value.startswith(("data:", "#")), (tag, name, value[:80])
    assert not re.search(r"url\(\s*['\"]?(?!data:)", document)  # no CSS fetches either
    return collector


def test_report_is_self_contained_with_cohort_and_case_sections(run_folder):
    from MedSegLib.cli.main import main

    assert main(["report", str(run_folder)]) == 0
    document = (run_folder / "report.html").read_text(encoding="utf-8")
    collector = _check_self_contained(document)
    images = [a["src"] for tag, a in collector.tags if tag == "img"]
    assert len(images) >= 10
    assert {_decode_image(uri) for uri in images} <= {"png", "svg"}
    assert collector.rows["cases-table"] == 3
    assert collector.rows["cohort-volume-cm3"] == 2  # the two CT cases
    assert collector.rows["cohort-t1-median-ms"] == 1  # only the study has an IR series
    assert collector.rows["steps-study"] == 5 and collector.rows["steps-broken"] == 1
    failure = json.loads((run_folder / "failed" / "broken.json").read_text())
    assert failure["reason"] and failure["reason"].replace("'", "&#x27;") in document
    for section in ("case-study", "case-ct_only", "case-broken", "cohort"):
        assert f'id="{section}"' in document


def test_report_svg_fallback_without_matplotlib(run_folder, tmp_path, monkeypatch):
    from MedSegLib.report import build_report

    monkeypatch.setenv("MEDSEG_PLOTS", "svg")
    path = build_report(run_folder, tmp_path / "svg-report.html")
    document = path.read_text(encoding="utf-8")
    collector = _check_self_contained(document)
    kinds = [_decode_image(a["src"]) for tag, a in collector.tags if tag == "img"]
    assert kinds.count("svg") >= 3  # cohort bar charts drawn by hand


def test_report_command_needs_a_run_folder(tmp_path, capsys):
    from MedSegLib.cli.main import main

    assert main(["report", str(tmp_path)]) == 2
    assert "summary.json" in capsys.readouterr().err


class _ConnectionRecorder:
    """A TCP listener used as Chromium's proxy: any network request the page makes shows up here."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self.requests = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.server.accept()
            except OSError:
                continue
            with connection:
                connection.settimeout(1.0)
                try:
                    self.requests.append(connection.recv(512).split(b"\r\n")[0].decode("latin-1"))
                except OSError:
                    self.requests.append("?")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.server.close()


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("Chromium not installed (Debian package 'chromium'; `make system-packages`)")


# Chromium's own background services (updates, network time, sign-in) that headless still contacts; any
# other request comes from the page.
_BROWSER_SERVICE_HOSTS = ("update.googleapis.com", "accounts.google.com", "clients2.google.com", "gvt1.com")
_QUIET_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-client-side-phishing-detection",
    "--disable-domain-reliability",
    "--no-pings",
    "--disable-features=NetworkTimeServiceQuerying,OptimizationHints,MediaRouter,Translate",
    "--window-size=1280,2000",
]


def _page_requests(requests):
    def host(line: str) -> str:
        target = line.split(" ")[1] if " " in line else line
        return target.split("://")[-1].split("/")[0].split(":")[0]

    # a connection that never sends a request line is Chromium warming up its proxy connection, not a fetch
    sent = [r for r in requests if r.strip() and r != "?"]
    return [r for r in sent if not any(host(r).endswith(h) for h in _BROWSER_SERVICE_HOSTS)]


def _run_chromium(browser: str, profile: Path, mode: list, uri: str):
    """Run headless Chromium through a recording proxy; returns (completed process, page requests)."""
    recorder = _ConnectionRecorder()
    try:
        command = [browser, *_QUIET_FLAGS, f"--user-data-dir={profile}"]
        command += [f"--proxy-server=http://127.0.0.1:{recorder.port}", "--proxy-bypass-list=<-loopback>"]
        completed = subprocess.run(command + mode + [uri], capture_output=True, text=True, timeout=90)
    finally:
        recorder.close()
    return completed, _page_requests(recorder.requests)


def test_report_renders_in_headless_chromium_without_network(run_folder, tmp_path):
    from MedSegLib.report import build_report

    browser = _chromium()
    report = build_report(run_folder)
    artifacts = Path(os.environ.get("MEDSEG_TEST_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    screenshot = artifacts / "report-screenshot.png"
    shot, requests = _run_chromium(browser, tmp_path / "profile", [f"--screenshot={screenshot}"], report.as_uri())
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert screenshot.is_file() and screenshot.stat().st_size > 20000  # a real page, not a blank one
    assert requests == [], requests
    dom, requests = _run_chromium(browser, tmp_path / "profile", ["--dump-dom"], report.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert requests == [], requests
    collector = _Collector()
    collector.feed(dom.stdout)  # the DOM as Chromium parsed it
    assert collector.rows["cases-table"] == 3
    assert collector.rows["cohort-volume-cm3"] == 2
    assert sum(1 for tag, _ in collector.tags if tag == "img") >= 10

    # the detector itself: a page with one remote image is caught
    leaky = tmp_path / "leaky.html"
    leaky.write_text('<html><body><img src="http://medseg-test.invalid/x.png"></body></html>')
    _, requests = _run_chromium(browser, tmp_path / "profile", ["--dump-dom"], leaky.as_uri())
    assert any("medseg-test.invalid" in r for r in requests), requests
