"""`medseg report`: one self-contained HTML file (data-URI images, no network), checked in headless Chromium."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import struct
import threading
import time
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


def _browser_binaries():
    """(chromium, chromedriver) from Debian's packages, or a skip naming the missing one."""
    chromium = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
    driver = shutil.which("chromedriver") or next((p for p in ("/usr/bin/chromedriver",) if os.path.exists(p)), None)
    missing = [name for name, path in (("chromium", chromium), ("chromium-driver", driver)) if path is None]
    if missing:
        pytest.skip(f"headless browser check needs the Debian package(s) {', '.join(missing)} (`make system-packages`)")
    return chromium, driver


# Chromium's own background services (updates, network time, sign-in, a preconnect to Debian's default search
# engine at start-up) that headless may still contact; any other request comes from the page.
_BROWSER_SERVICE_HOSTS = (
    "update.googleapis.com",
    "accounts.google.com",
    "clients2.google.com",
    "gvt1.com",
    "duckduckgo.com",
)
_CLOSED_NETWORK_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
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
    "--window-size=1280,1600",
]


def _page_requests(requests):
    def host(line: str) -> str:
        target = line.split(" ")[1] if " " in line else line
        return target.split("://")[-1].split("/")[0].split(":")[0]

    # a connection that never sends a request line is Chromium warming up its proxy connection, not a fetch
    sent = [r for r in requests if r.strip() and r != "?"]
    return [r for r in sent if not any(host(r).endswith(h) for h in _BROWSER_SERVICE_HOSTS)]


@pytest.fixture()
def browser(tmp_path, monkeypatch):
    """Headless Chromium driven by Selenium through Debian's chromedriver, every request sent to a recorder.

    Selenium Manager must never run (it would try to download a driver): the driver path is given explicitly
    and SE_OFFLINE is set, so a missing driver fails here instead of reaching for the network.
    """
    chromium, driver_path = _browser_binaries()
    monkeypatch.setenv("SE_OFFLINE", "true")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    recorder = _ConnectionRecorder()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in _CLOSED_NETWORK_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.add_argument(f"--proxy-server=http://127.0.0.1:{recorder.port}")
    options.add_argument("--proxy-bypass-list=<-loopback>")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    options.add_experimental_option("prefs", {"net.network_prediction_options": 2})  # no predicted preconnects
    service = Service(executable_path=driver_path, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(60)
    driver.recorder = recorder
    try:
        yield driver
    finally:
        driver.quit()
        recorder.close()


_PAGE_FACTS = """
const images = Array.from(document.images).map((img) => ({
    complete: img.complete, width: img.naturalWidth, height: img.naturalHeight, alt: img.alt || "",
    scheme: (img.currentSrc || img.src).split(":")[0]}));
const tables = Array.from(document.querySelectorAll("table")).map((table) => {
    let heading = table.previousElementSibling;
    while (heading && !/^H[1-4]$/.test(heading.tagName)) heading = heading.previousElementSibling;
    const section = table.closest("section");
    return {id: table.id, section: section ? section.id : "", heading: heading ? heading.textContent.trim() : "",
            rows: table.tBodies.length ? table.tBodies[0].rows.length : 0};
});
return {ready: document.readyState, title: document.title, images: images, tables: tables,
        height: document.documentElement.scrollHeight};
"""


def _open(driver, uri: str) -> dict:
    """Load ``uri``, wait until every image settled, return the page facts and the SEVERE console entries."""
    driver.get(uri)
    deadline = time.monotonic() + 30
    facts = driver.execute_script(_PAGE_FACTS)
    while (facts["ready"] != "complete" or not all(i["complete"] for i in facts["images"])) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.1)
        facts = driver.execute_script(_PAGE_FACTS)
    facts["severe"] = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    return facts


def _save_full_page(driver, path: Path, height: int) -> None:
    """A screenshot of the whole report (the window grown to the page height, capped) for a person to review."""
    driver.set_window_size(1280, max(800, min(int(height), 16000)))
    assert driver.save_screenshot(str(path))


def _expected_tables(run_folder: Path) -> dict:
    """(section id, table id or heading) -> rows, from summary.json and the case manifests the report reads."""
    from MedSegLib.report import load_run
    from MedSegLib.report.html_report import cohort_tables

    summary = load_run(run_folder)
    expected = {("cohort", "cases-table"): len(summary["cases"])}
    ids = [case["id"] for case in summary["cases"]]
    for group, columns in cohort_tables(summary["cases"]).items():
        with_data = [i for i in ids if any(i in values for values in columns.values())]
        expected[("cohort", f"cohort-{_slug(group)}")] = len(with_data)
    for case in summary["cases"]:
        section, manifest = f"case-{case['id']}", case.get("manifest") or {}
        steps = manifest.get("steps") or case.get("steps") or []
        if steps:
            expected[(section, f"steps-{case['id']}")] = len(steps)
        for table in manifest.get("tables", []):
            expected[(section, table["title"])] = len(table["rows"])
        if manifest.get("provenance", {}).get("input_series"):
            expected[(section, "Input series")] = len(manifest["provenance"]["input_series"])
        outputs = [o for o in manifest.get("outputs", []) if o.get("kind") != "image"]
        if outputs:
            expected[(section, "Outputs")] = len(outputs)
    return expected


def test_report_in_headless_chromium_via_selenium(run_folder, tmp_path, browser):
    """The report in a real browser: no console errors, every image decoded, the expected table rows, no network."""
    from MedSegLib.report import build_report

    report = build_report(run_folder)
    facts = _open(browser, report.as_uri())
    assert facts["severe"] == [], facts["severe"]
    assert facts["title"].startswith("MedSeg report")
    assert len(facts["images"]) >= 10
    undecoded = [i for i in facts["images"] if not (i["complete"] and i["width"] > 0 and i["height"] > 0)]
    assert undecoded == [], undecoded
    assert {i["scheme"] for i in facts["images"]} == {"data"}

    found = {}
    for table in facts["tables"]:
        found[(table["section"], table["heading"])] = table["rows"]
        if table["id"]:
            found[(table["section"], table["id"])] = table["rows"]
    # the numbers this run must show, written out, then every table the run's files call for
    assert found[("cohort", "cases-table")] == 3
    assert found[("cohort", "cohort-volume-cm3")] == 2  # the two CT cases
    assert found[("cohort", "cohort-t1-median-ms")] == 1  # only the study has an inversion-recovery series
    assert found[("case-study", "steps-study")] == 5 and found[("case-broken", "steps-broken")] == 1
    assert found[("case-ct_only", "Statistics: dense (classical) on " + _ct_volume_name(run_folder, "ct_only"))] == 1
    expected = _expected_tables(run_folder)
    assert len(expected) >= 12
    for key, rows in expected.items():
        assert found.get(key) == rows, (key, found.get(key), rows)
    assert _page_requests(browser.recorder.requests) == []

    artifacts = Path(os.environ.get("MEDSEG_TEST_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    screenshot = artifacts / "report-screenshot.png"
    _save_full_page(browser, screenshot, facts["height"])
    with open(screenshot, "rb") as handle:
        header = handle.read(24)
    width, height = struct.unpack(">II", header[16:24])
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and width >= 1000 and height >= 2000
    assert screenshot.stat().st_size > 50000  # a real page, not a blank one


def _ct_volume_name(run_folder: Path, case_id: str) -> str:
    manifest = json.loads((run_folder / "cases" / case_id / "manifest.json").read_text())
    return next(s["name"] for s in manifest["provenance"]["input_series"] if s["modality"] == "CT")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def test_browser_checks_catch_a_broken_page(tmp_path, browser):
    """The detectors themselves: a script error, an image that does not decode and a remote fetch are all seen."""
    broken = tmp_path / "broken.html"
    broken.write_text(
        "<html><body><img id='bad' src='data:image/png;base64,iVBORw0KGgo='>"
        "<img src='http://medseg-test.invalid/x.png'><script>undefined_function();</script></body></html>"
    )
    facts = _open(browser, broken.as_uri())
    messages = " | ".join(entry["message"] for entry in facts["severe"])
    assert "undefined_function" in messages, messages
    assert [i["width"] for i in facts["images"]] == [0, 0]
    assert any("medseg-test.invalid" in r for r in _page_requests(browser.recorder.requests))
