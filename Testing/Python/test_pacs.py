"""PACS networking against a live Orthanc (DIMSE + DICOMweb): store, find, get, move, WADO, send, failures.

The real GE head CT of ../shared/data (28 slices) goes to Orthanc by C-STORE, is found at every level, and comes
back by C-GET, C-MOVE and WADO-RS into fresh databases that must load to the same voxels (and the same stored
pixel bytes per instance). A DICOM SEG and a Parametric Map made by MedSeg are sent back and found on the server.
Wrong AE title, a closed port, a silent server and bad credentials must fail with a clear error within the timeout.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from MedSegLib.errors import UserInputError
from MedSegLib.pacs import PacsError, PacsNode, dicomweb, dimse
from orthanc_fixture import MEDSEG_AET, ORTHANC_AET, PASSWORD, USER, free_port, orthanc  # noqa: F401

REAL_SERIES = Path("dcm_qa_ct") / "In" / "GE"


@pytest.fixture(scope="module")
def node(orthanc) -> PacsNode:  # noqa: F811
    return PacsNode(
        name="test-orthanc",
        ae_title=ORTHANC_AET,
        host="127.0.0.1",
        port=orthanc.dicom_port,
        calling_aet=MEDSEG_AET,
        storage_port=orthanc.medseg_port,
        timeout_s=5.0,
        web_url=orthanc.web_url,
        username=USER,
        password=PASSWORD,
    )


@pytest.fixture(scope="module")
def real_series(shared_data) -> list:
    folder = shared_data / REAL_SERIES
    files = sorted(str(p) for p in folder.rglob("*") if p.is_file())
    if not files:
        pytest.skip(f"{folder} holds no files")
    return files


@pytest.fixture(scope="module")
def stored(node, real_series) -> dict:
    """The real series stored once by C-STORE; its identity as the server should report it."""
    result = dimse.store(node, real_series)
    assert result.sent == len(real_series) and not result.failed, result.failed
    first = pydicom.dcmread(real_series[0], stop_before_pixels=True)
    return {
        "count": len(real_series),
        "patient_id": str(first.PatientID),
        "study": str(first.StudyInstanceUID),
        "series": str(first.SeriesInstanceUID),
        "study_date": str(first.StudyDate),
        "files": real_series,
    }


def _pixels_by_sop(files) -> dict:
    return {str(ds.SOPInstanceUID): ds.PixelData for ds in (pydicom.dcmread(f) for f in files)}


def _assert_same_series(database: Path, stored: dict) -> None:
    from MedSegLib.dicom.database import DicomDatabase
    from MedSegLib.dicom.loader import load_series_files

    with DicomDatabase(database, create=False) as db:
        files = db.filesForSeries(stored["series"])
        assert len(files) == stored["count"]
        assert all(Path(f).resolve().is_relative_to(database.resolve()) for f in files), "files outside the database"
    original_pixels, retrieved_pixels = _pixels_by_sop(stored["files"]), _pixels_by_sop(files)
    # compare explicitly: pytest's diff of two dicts of pixel bytes is quadratic and can run for many minutes
    changed = sorted(sop for sop, pixels in original_pixels.items() if retrieved_pixels.get(sop) != pixels)
    assert not changed and set(retrieved_pixels) == set(original_pixels), (
        f"stored pixel data changed in transit for {len(changed)} instance(s), e.g. {changed[:2]}"
    )
    original = load_series_files(stored["files"])[0]
    retrieved = load_series_files(files)[0]
    assert retrieved.array.dtype == original.array.dtype
    assert np.array_equal(retrieved.array, original.array)
    assert np.allclose(retrieved.ijk_to_ras, original.ijk_to_ras, atol=1e-6)


def test_echo(node):
    assert dimse.echo(node) < node.timeout_s


def test_find_each_level(node, stored):
    patients = dimse.find(node, "patient", {"patient_id": stored["patient_id"]})
    assert [p["PatientID"] for p in patients] == [stored["patient_id"]]
    studies = dimse.find(
        node, "study", {"patient_id": stored["patient_id"], "study_date": stored["study_date"], "modality": "CT"}
    )
    assert stored["study"] in [s["StudyInstanceUID"] for s in studies]
    assert dimse.find(node, "study", {"study_date": "19000101-19000102"}) == []
    series = dimse.find(node, "series", {"patient_id": stored["patient_id"], "modality": "CT"})
    match = [s for s in series if s["SeriesInstanceUID"] == stored["series"]]
    assert match and int(match[0]["NumberOfSeriesRelatedInstances"]) == stored["count"]
    assert dimse.find(node, "series", {"study_uid": stored["study"], "modality": "MR"}) == []
    # the same through QIDO-RS
    web_series = dicomweb.search(node, "series", {"study_uid": stored["study"]})
    assert stored["series"] in [s["SeriesInstanceUID"] for s in web_series]
    assert stored["patient_id"] in [p["PatientID"] for p in dicomweb.search(node, "patient", {})]
    with pytest.raises(UserInputError, match="unknown C-FIND filter"):
        dimse.find(node, "study", {"colour": "red"})


def test_cget_into_fresh_database(node, stored, tmp_path):
    result = dimse.get(node, stored["series"], tmp_path / "db")
    assert (result.level, result.received, result.failed) == ("series", stored["count"], 0)
    assert result.series_uids == [stored["series"]]
    _assert_same_series(tmp_path / "db", stored)
    # the check can fail: one changed voxel in one retrieved file is caught
    from MedSegLib.dicom.database import DicomDatabase

    with DicomDatabase(tmp_path / "db") as db:
        victim = db.filesForSeries(stored["series"])[5]
    ds = pydicom.dcmread(victim)
    pixels = ds.pixel_array.copy()
    pixels[10, 10] += 1
    ds.PixelData = pixels.tobytes()
    ds.save_as(victim)
    with pytest.raises(AssertionError):
        _assert_same_series(tmp_path / "db", stored)


def test_cmove_into_fresh_database(node, stored, tmp_path):
    result = dimse.move(node, stored["study"], tmp_path / "db", bind_address="127.0.0.1")
    assert result.level == "study" and result.received >= stored["count"]
    _assert_same_series(tmp_path / "db", stored)


def test_wado_into_fresh_database(node, stored, tmp_path):
    result = dicomweb.retrieve(node, stored["series"], tmp_path / "db")
    assert result.received == stored["count"]
    _assert_same_series(tmp_path / "db", stored)


def test_move_to_unknown_destination_is_explained(node, stored, tmp_path):
    stranger = dataclasses.replace(node, move_aet="STRANGER", storage_port=free_port())
    started = time.perf_counter()
    with pytest.raises(PacsError, match="move destination 'STRANGER'"):
        dimse.move(stranger, stored["series"], tmp_path / "db", level="series", bind_address="127.0.0.1")
    assert time.perf_counter() - started < 3 * node.timeout_s


def test_unknown_calling_aet_is_explained(node):
    """Orthanc aborts queries from AE titles it does not know: say so instead of a bare abort."""
    with pytest.raises(PacsError, match="is MedSeg's AE title 'STRANGER' allowed to query"):
        dimse.find(dataclasses.replace(node, calling_aet="STRANGER"), "study", {})


def test_send_seg_and_parametric_map_back(node, orthanc, tmp_path, runtime):  # noqa: F811
    """MedSeg results go back to the PACS (SEG by C-STORE, Parametric Map by STOW-RS) and are found there."""
    from MedSegLib.export import pmap, seg
    from MedSegLib.export.reference import load_reference
    from MedSegLib.sample_data import make_ct_phantom, write_ct_phantom

    shape = (6, 48, 48)
    folder = write_ct_phantom(tmp_path / "ct", shape=shape, seed=11)
    labels = make_ct_phantom(shape, seed=11).labels
    reference = load_reference(str(folder))
    assert dimse.store(node, reference.files).sent == shape[0]
    segments = [seg.SegmentData("heart", labels == 7, (0.8, 0.4, 0.3)), seg.SegmentData("liver", labels == 8)]
    seg_path = seg.write_seg(segments, reference, tmp_path / "seg.dcm")
    values = np.random.default_rng(3).uniform(200, 1800, shape).astype(np.float32)
    pm_path = pmap.write_parametric_map(values, reference.ijk_to_ras, reference, tmp_path / "t1.dcm", quantity="T1")
    assert dimse.store(node, [str(seg_path)]).sent == 1
    assert dicomweb.stow(node, [str(pm_path)]).sent == 1
    study = str(reference.datasets[0].StudyInstanceUID)
    seg_uid = str(pydicom.dcmread(seg_path, stop_before_pixels=True).SeriesInstanceUID)
    pm_uid = str(pydicom.dcmread(pm_path, stop_before_pixels=True).SeriesInstanceUID)
    on_server = {s["SeriesInstanceUID"]: s for s in dimse.find(node, "series", {"study_uid": study})}
    assert on_server[seg_uid]["Modality"] == "SEG"
    assert pm_uid in on_server and on_server[pm_uid]["NumberOfSeriesRelatedInstances"] == "1"
    assert seg_uid in {s["SeriesInstanceUID"] for s in dicomweb.search(node, "series", {"modality": "SEG"})}
    # and the SEG comes back by C-GET with identical masks
    back = dimse.get(node, seg_uid, tmp_path / "db")
    from MedSegLib.dicom.database import DicomDatabase

    with DicomDatabase(tmp_path / "db") as db:
        contents = seg.read_seg(db.filesForSeries(seg_uid)[0])
    assert back.received == 1 and [s.name for s in contents.segments] == ["heart", "liver"]


@pytest.mark.parametrize("case", ["wrong_aet", "closed_port", "silent_server"])
def test_failures_are_clear_and_bounded(node, case):
    silent = None
    if case == "wrong_aet":
        bad, expected = dataclasses.replace(node, ae_title="NOT_ORTHANC"), "rejected the association"
    elif case == "closed_port":
        bad, expected = dataclasses.replace(node, port=free_port()), "connection refused"
    else:  # accepts TCP and never answers: must not hang
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        bad = dataclasses.replace(node, port=silent.getsockname()[1], timeout_s=2.0)
        expected = "no DICOM association answer within 2 s"
    started = time.perf_counter()
    try:
        with pytest.raises(PacsError, match=expected) as caught:
            dimse.find(bad, "study", {})
    finally:
        if silent is not None:
            silent.close()
    assert time.perf_counter() - started < bad.timeout_s + 3.0
    assert "\n" not in str(caught.value) and bad.describe() in str(caught.value)


def test_dicomweb_failures(node):
    with pytest.raises(PacsError, match="HTTP 401"):
        dicomweb.search(dataclasses.replace(node, password="wrong"), "study")
    started = time.perf_counter()
    with pytest.raises(PacsError, match="cannot connect"):
        dicomweb.search(dataclasses.replace(node, web_url=f"http://127.0.0.1:{free_port()}/dicom-web"), "study")
    assert time.perf_counter() - started < node.timeout_s


def _cli(*argv: str) -> tuple:
    """Run ``medseg`` in-process; returns (exit code, stdout)."""
    import contextlib
    import io

    from MedSegLib.cli.main import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    return code, out.getvalue()


def test_cli_with_configured_node(node, stored, tmp_path, monkeypatch):
    from MedSegLib.pacs.nodes import load_nodes, save_nodes

    config = tmp_path / "pacs.json"
    monkeypatch.setenv("MEDSEG_PACS_CONFIG", str(config))
    save_nodes({"orthanc": dataclasses.replace(node, name="orthanc")}, calling_aet=MEDSEG_AET)
    assert load_nodes()["orthanc"].port == node.port
    code, out = _cli("pacs", "echo", "--node", "orthanc")
    assert code == 0 and "OK" in out
    code, out = _cli(
        "pacs", "find", "--node", "orthanc", "--level", "series", "--patient-id", stored["patient_id"], "--json"
    )
    assert code == 0 and stored["series"] in [row["SeriesInstanceUID"] for row in json.loads(out)]
    code, out = _cli(
        "pacs",
        "get",
        stored["series"],
        "--host",
        "127.0.0.1",
        "--port",
        str(node.port),
        "--called-aet",
        ORTHANC_AET,
        "--calling-aet",
        MEDSEG_AET,
        "--db",
        str(tmp_path / "db"),
        "--json",
    )
    assert code == 0 and json.loads(out)["received"] == stored["count"]
    code, out = _cli(
        "pacs",
        "find",
        "--web",
        node.web_url,
        "--user",
        USER,
        "--password",
        PASSWORD,
        "--level",
        "study",
        "--study-uid",
        stored["study"],
        "--json",
    )
    assert code == 0 and [row["StudyInstanceUID"] for row in json.loads(out)] == [stored["study"]]
    code, _ = _cli("pacs", "echo", "--node", "missing")
    assert code == 2


def test_cli_error_is_one_line(node):
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "MedSegLib.cli.main",
            "pacs",
            "echo",
            "--host",
            "127.0.0.1",
            "--port",
            str(free_port()),
            "--called-aet",
            ORTHANC_AET,
            "--timeout",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2] / "MedSegExtension",
    )
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and "connection refused" in lines[0], completed.stderr


def test_send_deidentified(node, tmp_path, stored):
    """``send --deidentify``: what reaches the PACS carries no patient identity, under new UIDs."""
    code, _ = _cli(
        "pacs",
        "send",
        *stored["files"][:3],
        "--host",
        "127.0.0.1",
        "--port",
        str(node.port),
        "--called-aet",
        ORTHANC_AET,
        "--calling-aet",
        MEDSEG_AET,
        "--deidentify",
        "--date-shift",
        "-30",
    )
    assert code == 0
    studies = dimse.find(node, "study", {"patient_name": "ANONYMIZED"})
    assert studies and all(s["StudyInstanceUID"] != stored["study"] for s in studies)
    assert all(s["PatientID"].startswith("MEDSEG-") for s in studies)


def test_nodes_cli_and_keyword_filters(node, stored, tmp_path, monkeypatch):
    """Nodes are managed from the CLI; DICOM keywords work as filter names (pipelines write them)."""
    monkeypatch.setenv("MEDSEG_PACS_CONFIG", str(tmp_path / "pacs.json"))
    code, _ = _cli(
        "pacs",
        "nodes",
        "add",
        "archive",
        "--host",
        "127.0.0.1",
        "--port",
        str(node.port),
        "--called-aet",
        ORTHANC_AET,
        "--calling-aet",
        MEDSEG_AET,
        "--web",
        node.web_url,
        "--user",
        USER,
    )
    assert code == 0
    code, out = _cli("pacs", "nodes", "list")
    assert code == 0 and out.startswith("archive:")
    monkeypatch.setenv("MEDSEG_PACS_PASSWORD", PASSWORD)
    code, out = _cli(
        "pacs", "find", "--node", "archive", "--web", node.web_url, "--level", "series", "--modality", "CT", "--json"
    )
    assert code == 0 and stored["series"] in [row["SeriesInstanceUID"] for row in json.loads(out)]
    by_keyword = dimse.find(node, "series", {"PatientID": stored["patient_id"], "Modality": "CT"})
    assert stored["series"] in [row["SeriesInstanceUID"] for row in by_keyword]
    code, _ = _cli("pacs", "nodes", "remove", "archive")
    assert code == 0 and _cli("pacs", "nodes", "remove", "archive")[0] == 2


def test_dicom_tls(tmp_path):
    """DICOM TLS against an Orthanc that only speaks TLS: verified echo/find work, plain DICOM fails clearly."""
    from orthanc_fixture import OrthancServer, skip_without_orthanc

    skip_without_orthanc()
    if shutil.which("openssl") is None:
        pytest.skip("openssl not found (needed to make a test certificate)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    server = OrthancServer(
        tmp_path,
        {
            "DicomTlsEnabled": True,
            "DicomTlsCertificate": str(cert),
            "DicomTlsPrivateKey": str(key),
            "DicomTlsTrustedCertificates": str(cert),
            "DicomTlsRemoteCertificateRequired": False,
        },
    )
    server.start()
    try:
        tls_node = PacsNode(
            ae_title=ORTHANC_AET,
            host="127.0.0.1",
            port=server.dicom_port,
            calling_aet=MEDSEG_AET,
            timeout_s=3.0,
            tls=True,
            tls_ca_file=str(cert),
        )
        assert dimse.echo(tls_node) < tls_node.timeout_s
        assert dimse.find(tls_node, "study", {}) == []
        started = time.perf_counter()
        with pytest.raises(PacsError, match="no DICOM association answer|TLS needed|aborted"):
            dimse.echo(dataclasses.replace(tls_node, tls=False))
        assert time.perf_counter() - started < tls_node.timeout_s + 3.0
    finally:
        server.stop()
