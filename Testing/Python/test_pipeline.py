"""`medseg run` pipelines: validation with YAML lines, per-case isolation, resume, atomic outputs, backends.

Cases are tiny CT phantoms (24x64x64) so the whole module stays within seconds per backend; the Dask test
adds a real scanner series from ../shared/data when it is present.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from orthanc_fixture import MEDSEG_AET, ORTHANC_AET, PASSWORD, USER, orthanc  # noqa: F401

PIPELINE = """\
version: 1
name: test-ct
steps:
  - load: {}
  - window:
      presets: [Lung, Bone]
      tiles: 4
  - segment:
      name: dense
      method: threshold
      parameters: {lower: 150, segment_name: Dense}
  - statistics: {}
"""

REAL_CT = Path("dcm_qa_ct") / "In" / "Philips" / "S21570" / "S2020"


def _phantom(folder: Path, seed: int) -> Path:
    from MedSegLib.sample_data import write_ct_phantom

    return write_ct_phantom(folder, shape=(16, 64, 64), spacing_mm=(8.0, 6.0, 6.0), seed=seed)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline-inputs")
    a = _phantom(root / "phantomA", seed=1)
    b = _phantom(root / "phantomB", seed=2)
    broken = root / "broken"
    broken.mkdir()
    (broken / "IM0001.dcm").write_bytes(b"DICM" + b"\0" * 300)  # not a DICOM image
    return {"root": root, "a": a, "b": b, "broken": broken}


@pytest.fixture(scope="module")
def spec():
    from MedSegLib.pipeline import parse_pipeline_text

    return parse_pipeline_text(PIPELINE, "test.yaml")


def _cases(spec, *folders):
    from MedSegLib.pipeline import resolve_cases

    return resolve_cases(spec.inputs, [str(f) for f in folders])


def _by_id(summary):
    return {case["id"]: case for case in summary["cases"]}


def _case_outputs(out: Path, case_id: str):
    manifest = json.loads((out / "cases" / case_id / "manifest.json").read_text())
    return manifest, {o["path"]: o["sha256"] for o in manifest["outputs"]}


# ------------------------------------------------------------------------------------------------ schema


@pytest.mark.parametrize(
    "text, line, words",
    [
        ("version: 1\nsteps:\n  - load: {}\n  - segmnt: {method: otsu}\n", 4, ["unknown step 'segmnt'"]),
        ("steps:\n  - load: {}\n  - window:\n      tiles: many\n", 4, ["tiles", "not of type 'integer'"]),
        ("steps:\n  - load: {}\n  - segment:\n      method: no-such-method\n", 3, ["no-such-method"]),
        ("steps:\n  - load: {}\n  - window:\n      presets: [Lung, Nonexistent]\n", 3, ["Nonexistent"]),
        ("steps:\n  - load: {}\n  - load: [\n", 4, ["YAML syntax error"]),
        ("name: x\nstepz:\n  - load: {}\n", 1, ["'steps' is a required property", "and 1 more"]),
        ("steps:\n  - load: {}\n  - window:\n      tiles: 3\n      colour: red\n", 5, ["unknown key 'colour'"]),
        ("steps:\n  - load: {}\nexecution:\n  workers: -1\n", 4, ["workers"]),
    ],
)
def test_schema_error_names_the_yaml_line(text, line, words):
    from MedSegLib.errors import UserInputError
    from MedSegLib.pipeline import parse_pipeline_text

    with pytest.raises(UserInputError) as raised:
        parse_pipeline_text(text, "p.yaml")
    message = raised.value.one_line()
    assert message.startswith(f"p.yaml:{line}: "), message
    for word in words:
        assert word in message, message


def test_cli_reports_a_bad_pipeline_in_one_line_before_running(tmp_path, inputs, capsys):
    from MedSegLib.cli.main import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("steps:\n  - load: {}\n  - statistics:\n      shape: yes please\n")
    out = tmp_path / "out"
    assert main(["run", str(bad), str(inputs["a"]), "-o", str(out), "--workers", "0", "-q"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and f"{bad}:4:" in error[0] and "shape" in error[0], error
    assert not out.exists()  # nothing ran


def test_shipped_pipelines_are_valid():
    from MedSegLib.pipeline import load_pipeline
    from MedSegLib.resources import resource_path

    files = sorted(resource_path("Pipelines").glob("*.yaml"))
    assert len(files) >= 3
    for path in files:
        assert load_pipeline(path).steps


# -------------------------------------------------------------------------------- isolation and resume


def test_bad_case_fails_alone_and_resume_skips_complete_cases(tmp_path, inputs, spec, runtime):
    from MedSegLib.cli.main import main
    from MedSegLib.pipeline.context import sha256_file

    out = tmp_path / "run"
    pipeline_file = tmp_path / "p.yaml"
    pipeline_file.write_text(PIPELINE)
    options = ["-o", str(out), "--workers", "0", "-q"]
    args = ["run", str(pipeline_file), str(inputs["a"]), str(inputs["broken"])]
    assert main(args + options) == 1  # one case failed
    summary = json.loads((out / "summary.json").read_text())
    cases = _by_id(summary)
    assert cases["phantomA"]["status"] == "complete"
    assert cases["broken"]["status"] == "failed" and cases["broken"]["step"] == "load"
    assert "IM0001.dcm" in cases["broken"]["reason"] or "DICOM" in cases["broken"]["reason"]
    assert (out / "failed" / "broken.json").is_file()
    assert not (out / "cases" / "broken").exists()
    assert not (out / ".staging").exists()

    manifest, outputs = _case_outputs(out, "phantomA")
    provenance = manifest["provenance"]
    assert manifest["medseg_version"] == provenance["medseg_version"]
    assert provenance["input_series_uids"] and provenance["parameters"][2]["params"]["parameters"]["lower"] == 150
    assert manifest["input"]["hash"] and manifest["pipeline"]["digest"] == spec.digest
    for relative, digest in outputs.items():  # every output recorded with its checksum
        assert sha256_file(out / "cases" / "phantomA" / relative) == digest
    assert {"images/windows_axial.png", "segmentations/dense.seg.nrrd", "statistics/dense.csv"} <= set(outputs)
    volume = manifest["measurements"]["Volume cm3"]["dense: Dense"]
    assert volume > 0
    first_mtime = (out / "cases" / "phantomA" / "manifest.json").stat().st_mtime_ns

    # re-run with one more case: the complete one is skipped, the broken one is tried (and fails) again
    assert main(args + [str(inputs["b"])] + options) == 1
    cases = _by_id(json.loads((out / "summary.json").read_text()))
    assert cases["phantomA"]["status"] == "skipped"
    assert cases["phantomA"]["measurements"]["Volume cm3"]["dense: Dense"] == volume
    assert cases["phantomB"]["status"] == "complete"
    assert cases["broken"]["status"] == "failed"
    assert (out / "cases" / "phantomA" / "manifest.json").stat().st_mtime_ns == first_mtime

    # changed input data -> the case runs again
    _phantom(inputs["root"] / "phantomA-changed", seed=7)
    shutil.rmtree(inputs["a"])
    shutil.copytree(inputs["root"] / "phantomA-changed", inputs["a"])
    try:
        assert main(["run", str(pipeline_file), str(inputs["a"]), "-o", str(out), "--workers", "0", "-q"]) == 0
        cases = _by_id(json.loads((out / "summary.json").read_text()))
        assert cases["phantomA"]["status"] == "complete"
        assert (out / "cases" / "phantomA" / "manifest.json").stat().st_mtime_ns != first_mtime
    finally:
        shutil.rmtree(inputs["a"])
        _phantom(inputs["a"], seed=1)


def test_cancel_leaves_no_partial_outputs(tmp_path, inputs, runtime):
    """Ctrl-C in the middle of a case: the exception propagates and no case folder or staging remains."""
    from MedSegLib.pipeline import RunOptions, parse_pipeline_text, register_step, run_pipeline
    from MedSegLib.pipeline.steps import Step

    def interrupt(ctx, params):
        (ctx.path("images", "half-written.png")).write_bytes(b"partial")
        raise KeyboardInterrupt

    register_step(Step("test_interrupt", interrupt, {}, "raises KeyboardInterrupt (test only)"))
    spec = parse_pipeline_text("steps:\n  - load: {}\n  - test_interrupt: {}\n", "cancel.yaml")
    out = tmp_path / "cancelled"
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(spec, _cases(spec, inputs["a"]), out, RunOptions(workers=0, quiet=True))
    assert not (out / "cases").exists()
    assert not (out / ".staging").exists()
    assert not (out / "summary.json").exists()


def test_unavailable_step_fails_or_is_skipped_by_option(tmp_path, inputs, runtime):
    from MedSegLib.pipeline import RunOptions, parse_pipeline_text, register_step, run_pipeline
    from MedSegLib.pipeline.context import StepUnavailable
    from MedSegLib.pipeline.steps import Step

    def missing(ctx, params):
        raise StepUnavailable("the frobnicator module is not installed")

    register_step(Step("test_missing", missing, {}, "always unavailable (test only)"))
    spec = parse_pipeline_text("steps:\n  - load: {}\n  - test_missing: {}\n", "missing.yaml")
    failed = run_pipeline(spec, _cases(spec, inputs["a"]), tmp_path / "f", RunOptions(workers=0, quiet=True))
    assert failed["cases"][0]["status"] == "failed" and "frobnicator" in failed["cases"][0]["reason"]
    skipped = run_pipeline(
        spec, _cases(spec, inputs["a"]), tmp_path / "s", RunOptions(workers=0, quiet=True, on_unavailable="skip")
    )
    case = skipped["cases"][0]
    assert case["status"] == "complete"
    assert [s["status"] for s in case["steps"]] == ["ok", "not available"]


# -------------------------------------------------------------------------------------------- backends


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, inputs, spec, runtime):
    """All cases (2 phantoms, the broken one, a real series when present) in this process: the reference."""
    from conftest import SHARED_DATA
    from MedSegLib.pipeline import RunOptions, run_pipeline

    folders = [inputs["a"], inputs["b"], inputs["broken"]]
    real = SHARED_DATA / REAL_CT
    if real.is_dir():
        folders.append(real)
    cases = _cases(spec, *folders)
    out = tmp_path_factory.mktemp("local-run")
    summary = run_pipeline(spec, cases, out, RunOptions(workers=0, quiet=True))
    expected = {"phantomA": "complete", "phantomB": "complete", "broken": "failed"}
    if real.is_dir():
        expected["S2020"] = "complete"
    assert {c["id"]: c["status"] for c in summary["cases"]} == expected
    return {"cases": cases, "out": out, "summary": summary, "expected": expected}


def _assert_same_results(reference: Path, other: Path, expected) -> None:
    for case_id, status in expected.items():
        if status != "complete":
            continue
        reference_manifest, reference_outputs = _case_outputs(reference, case_id)
        other_manifest, other_outputs = _case_outputs(other, case_id)
        assert reference_outputs == other_outputs, case_id  # byte-identical images, segmentations, tables
        assert reference_manifest["measurements"] == other_manifest["measurements"]


PLUGIN = """\
import os

from MedSegLib.pipeline.steps import Step, register_step


def _crash(ctx, params):
    if ctx.case_id in params.get("cases", []):
        os._exit(3)  # what a segfault or the OOM killer looks like to the pool
    return "survived"


register_step(Step("test_crash", _crash, {"cases": {"type": "array", "items": {"type": "string"}}}, "test only"))
"""


def test_process_pool_two_workers_matches_in_process_and_survives_a_crash(tmp_path, local_run, monkeypatch):
    """2 spawned workers: same bytes as the in-process run; a case that kills its worker fails alone."""
    from MedSegLib.pipeline import RunOptions, parse_pipeline_text, run_pipeline

    (tmp_path / "medseg_test_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers get the parent's sys.path
    crashing = PIPELINE.replace("steps:\n", "plugins: [medseg_test_plugin]\nsteps:\n") + (
        "  - test_crash: {cases: [phantomB]}\n"
    )
    spec = parse_pipeline_text(crashing, "crash.yaml")
    phantoms = [c for c in local_run["cases"] if c.id in ("phantomA", "phantomB", "broken")]
    pool = run_pipeline(spec, phantoms, tmp_path / "pool", RunOptions(workers=2, quiet=True))
    assert pool["backend"] == "process" and pool["workers"] == 2 and pool["threads_per_worker"] >= 1
    cases = _by_id(pool)
    assert {k: v["status"] for k, v in cases.items()} == {
        "phantomA": "complete",
        "phantomB": "failed",
        "broken": "failed",
    }
    assert "worker process died" in cases["phantomB"]["reason"] and "exit code 3" in cases["phantomB"]["reason"]
    assert cases["broken"]["step"] == "load"
    assert not (tmp_path / "pool" / "cases" / "phantomB").exists()
    assert not (tmp_path / "pool" / ".staging").exists()
    assert cases["phantomA"].get("worker_pid")
    worker = cases["phantomA"]["worker"]  # warmed once by the pool initializer; no DL step, so no torch import
    assert worker["pid"] == cases["phantomA"]["worker_pid"] and worker["boot_s"] > 0 and worker["case_number"] >= 1
    assert worker["torch_loaded"] is False
    _assert_same_results(local_run["out"], tmp_path / "pool", {"phantomA": "complete"})


def test_dask_local_cluster_two_workers_real_and_phantom_cases(tmp_path, local_run, spec):
    """The issue's proof: 2 phantom + 1 real case + 1 broken case, locally and on a 2-worker LocalCluster."""
    pytest.importorskip("distributed")
    from MedSegLib.pipeline import RunOptions, run_pipeline

    cases, expected = local_run["cases"], local_run["expected"]
    dask = run_pipeline(spec, cases, tmp_path / "dask", RunOptions(workers=2, scheduler="local", quiet=True))
    assert dask["backend"] == "dask"
    assert {c["id"]: c["status"] for c in dask["cases"]} == expected
    assert _by_id(dask)["broken"]["reason"] == _by_id(local_run["summary"])["broken"]["reason"]
    assert None not in {c.get("worker_pid") for c in dask["cases"] if c["status"] == "complete"}
    _assert_same_results(local_run["out"], tmp_path / "dask", expected)
    if "S2020" in expected:
        manifest, _ = _case_outputs(tmp_path / "dask", "S2020")
        assert manifest["provenance"]["input_series_uids"][0].startswith("1.")
    # resume: the complete cases are skipped (nothing left to run, so no cluster is even started)
    complete = [c for c in cases if expected[c.id] == "complete"]
    again = run_pipeline(spec, complete, tmp_path / "dask", RunOptions(workers=2, scheduler="local", quiet=True))
    assert {c["id"]: c["status"] for c in again["cases"]} == {c.id: "skipped" for c in complete}


def test_dicom_database_query_gives_one_case_per_series(tmp_path, inputs, runtime):
    from MedSegLib.dicom.database import DicomDatabase
    from MedSegLib.dicom.indexer import import_paths
    from MedSegLib.pipeline import RunOptions, parse_pipeline_text, resolve_cases, run_pipeline
    from MedSegLib.sample_data import write_mr_ir_series

    write_mr_ir_series(tmp_path / "files" / "mr", shape=(2, 32, 32), spacing_mm=(4.0, 8.0, 8.0))
    shutil.copytree(inputs["a"], tmp_path / "files" / "ct")
    with DicomDatabase(tmp_path / "db") as database:
        import_paths(database, [str(tmp_path / "files")])
    text = f"inputs:\n  dicom_db:\n    path: {tmp_path / 'db'}\n    query: {{Modality: CT}}\nsteps:\n  - load: {{}}\n"
    spec = parse_pipeline_text(text, "db.yaml")
    cases = resolve_cases(spec.inputs)
    assert len(cases) == 1 and cases[0].inputs[0]["kind"] == "series" and cases[0].input_hash
    summary = run_pipeline(spec, cases, tmp_path / "out", RunOptions(workers=0, quiet=True))
    manifest, _ = _case_outputs(tmp_path / "out", cases[0].id)
    assert summary["counts"]["complete"] == 1
    assert [s["modality"] for s in manifest["provenance"]["input_series"]] == ["CT"]
    assert len(resolve_cases({"dicom_db": {"path": str(tmp_path / "db"), "group_by": "study"}})) >= 1


def test_deep_segment_step_records_the_model_checksum(tmp_path, inputs, runtime):
    """The DL step on the real inference API with a tiny random-weight model package (wiring, provenance)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("monai")
    from MedSegLib.deep_learning.model_package import build_network, sha256_of, write_model_package
    from MedSegLib.pipeline import RunOptions, parse_pipeline_text, run_pipeline

    network = {
        "architecture": "UNet",
        "parameters": {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [4, 8], "strides": [2]},
    }
    torch.manual_seed(0)
    package_dir = tmp_path / "tiny-model"
    package_dir.mkdir()
    torch.save(build_network(network).state_dict(), package_dir / "model.pt")
    manifest = {
        "name": "tiny",
        "version": "0.1",
        "input": {"channels": 1, "modalities": ["CT"]},
        "labels": [{"value": 1, "name": "A", "color": [255, 0, 0]}, {"value": 2, "name": "B", "color": [0, 255, 0]}],
        "network": dict(network, weights="model.pt", format="state_dict"),
        "preprocessing": {
            "normalization": {"type": "scale_range", "a_min": -1000, "a_max": 1000, "b_min": 0, "b_max": 1}
        },
        "inference": {"roi_size": [16, 32, 32], "overlap": 0.25, "mode": "gaussian", "sw_batch_size": 2},
    }
    write_model_package(package_dir, manifest, package_dir / "model.pt")
    text = f"steps:\n  - load: {{}}\n  - deep_segment: {{model: '{package_dir}', name: dl, device: cpu}}\n"
    spec = parse_pipeline_text(text + "  - statistics: {}\n", "dl.yaml")
    summary = run_pipeline(spec, _cases(spec, inputs["a"]), tmp_path / "out", RunOptions(workers=0, quiet=True))
    assert summary["counts"]["complete"] == 1, summary["cases"]
    manifest, outputs = _case_outputs(tmp_path / "out", "phantomA")
    model = manifest["provenance"]["models"]["dl"]
    assert model["name"] == "tiny" and model["weights_sha256"] == sha256_of(package_dir / "model.pt")
    assert "segmentations/dl.seg.nrrd" in outputs and "images/overlay_dl.png" in outputs
    assert set(manifest["measurements"]["Volume cm3"]) == {"dl: A", "dl: B"}


# ------------------------------------------------------------------------------- quantitative maps


def test_mr_relaxometry_pipeline_exports_parametric_maps(tmp_path, runtime):
    """The shipped MR pipeline on the MR phantom: T1 and T2 maps become DICOM Parametric Maps that read back
    (pydicom raw floats and highdicom's real-world value mapping) to the fitted values, in ms."""
    import numpy as np
    import pydicom

    from MedSegLib.export.pmap import PM_SOP_CLASS, read_parametric_map
    from MedSegLib.node_io import load_volume
    from MedSegLib.pipeline import RunOptions, load_pipeline, resolve_cases, run_pipeline
    from MedSegLib.resources import resource_path
    from MedSegLib.sample_data import write_mr_ir_series, write_mr_se_series
    from MedSegLib.volume_nodes import array_and_ijk_to_ras

    study = tmp_path / "mr-study"
    grid = {"shape": (2, 48, 48), "spacing_mm": (4.0, 5.0, 5.0)}
    ir = write_mr_ir_series(study / "ir", **grid, ti_ms=[50, 150, 400, 1000, 3000])
    se = write_mr_se_series(study / "se", **grid, te_ms=[10, 30, 60, 120, 240])
    spec = load_pipeline(resource_path("Pipelines", "mr-relaxometry.yaml"))
    assert [s.type for s in spec.steps][-1] == "export_pmap"
    cases = resolve_cases(spec.inputs, [str(study)])
    summary = run_pipeline(spec, cases, tmp_path / "out", RunOptions(workers=0, quiet=True))
    assert summary["counts"]["complete"] == 1, summary["cases"]
    manifest, outputs = _case_outputs(tmp_path / "out", "mr-study")
    assert {"dicom/PM_T1-IR_T1.dcm", "dicom/PM_T2-SE_T2.dcm"} <= set(outputs)
    source_uids = [
        str(pydicom.dcmread(next(p for p in sorted(folder.iterdir()) if p.is_file())).SeriesInstanceUID)
        for folder in (ir, se)
    ]
    case = tmp_path / "out" / "cases" / "mr-study"
    fits = (("T1-IR", "T1", "113063"), ("T2-SE", "T2", "113065"))
    for (fit_id, quantity, code), source_uid in zip(fits, source_uids):
        path = case / "dicom" / f"PM_{fit_id}_{quantity}.dcm"
        fitted_node = load_volume(case / "qmri" / fit_id / f"{quantity}.nrrd")
        fitted, fitted_ijk_to_ras = array_and_ijk_to_ras(fitted_node, copy=True)

        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID == PM_SOP_CLASS and "FloatPixelData" in ds
        assert int(ds.NumberOfFrames) == fitted.shape[0] and (ds.Rows, ds.Columns) == fitted.shape[1:]
        mapping = ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
        unit = mapping.MeasurementUnitsCodeSequence[0]
        assert (unit.CodeValue, unit.CodingSchemeDesignator) == ("ms", "UCUM")
        assert str(mapping.LUTLabel) == quantity
        assert float(mapping.RealWorldValueSlope) == 1.0 and float(mapping.RealWorldValueIntercept) == 0.0
        assert mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0].CodeValue == code
        # stored floats through the mapping are exactly the fitted values (as a multiset: frames in any order)
        raw = np.frombuffer(ds.FloatPixelData, dtype=np.float32)
        real_world = raw * float(mapping.RealWorldValueSlope) + float(mapping.RealWorldValueIntercept)
        assert np.array_equal(np.sort(real_world), np.sort(fitted.astype(np.float32).ravel()), equal_nan=True)
        # and with geometry, read by highdicom (real-world value transform applied)
        data = read_parametric_map(path)
        assert data.quantity == quantity and data.unit == "ms"
        assert data.referenced_series_uid == source_uid
        assert np.allclose(data.ijk_to_ras, fitted_ijk_to_ras, atol=1e-4)
        assert np.array_equal(data.values, fitted.astype(np.float32), equal_nan=True)
        finite = data.values[np.isfinite(data.values) & (data.values > 0)]
        assert finite.size and 1.0 <= float(np.median(finite)) <= 5000.0  # milliseconds, not seconds
    # the per-region medians in the manifest come from the same maps the Parametric Maps carry
    t1_regions = manifest["measurements"]["T1 median (ms)"]
    assert len(t1_regions) >= 2 and all(20.0 < v < 5000.0 for v in t1_regions.values())
    assert [s["status"] for s in manifest["steps"]] == ["ok", "ok", "ok"]


# --------------------------------------------------------------------------------------------- PACS


@pytest.mark.parametrize("protocol", ["dimse", "dicomweb"])
def test_pacs_query_input_and_seg_sent_back(protocol, orthanc, tmp_path, runtime):  # noqa: F811
    """Cases from a PACS query (C-FIND + C-GET, or QIDO-RS + WADO-RS), the DICOM SEG sent back (C-STORE or
    STOW-RS) and found on the server by C-FIND, QIDO-RS and its SOP Instance UID; a re-run skips the case."""
    import pydicom

    from MedSegLib.cli.main import main
    from MedSegLib.pacs import PacsNode, dicomweb, dimse
    from MedSegLib.pacs.nodes import save_nodes

    patient = f"PIPE-{protocol.upper()}"
    folder = _phantom(tmp_path / "ct", seed=40 if protocol == "dimse" else 41)
    files = sorted(p for p in folder.iterdir() if p.is_file())
    for path in files:  # an own patient, so the query finds this study only
        ds = pydicom.dcmread(path)
        ds.PatientID = patient
        ds.save_as(path)
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    study, ct_series = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
    dimse_node = PacsNode(
        name="archive",
        ae_title=ORTHANC_AET,
        port=orthanc.dicom_port,
        calling_aet=MEDSEG_AET,
        storage_port=orthanc.medseg_port,
        timeout_s=10.0,
    )
    web_node = PacsNode(name="archive", web_url=orthanc.web_url, username=USER, password=PASSWORD, timeout_s=10.0)
    assert dimse.store(dimse_node, [str(p) for p in files]).sent == len(files)
    save_nodes({"archive": dimse_node if protocol == "dimse" else web_node}, tmp_path / "pacs.json", MEDSEG_AET)
    pipeline = tmp_path / "to-pacs.yaml"
    pipeline.write_text(
        "version: 1\nname: to-pacs\ninputs:\n  pacs:\n    node: archive\n    settings: pacs.json\n"
        f"    query: {{PatientID: {patient}, Modality: CT}}\n"
        "steps:\n  - load: {}\n  - segment:\n      name: dense\n      method: threshold\n"
        "      parameters: {lower: 150, segment_name: Dense}\n  - export_seg: {}\n"
        "  - send: {node: archive, settings: pacs.json}\n"
    )
    out = tmp_path / "out"
    assert main(["run", str(pipeline), "-o", str(out), "--workers", "0", "-q"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [c["status"] for c in summary["cases"]] == ["complete"]
    case_id = summary["cases"][0]["id"]
    manifest, outputs = _case_outputs(out, case_id)
    (item,) = manifest["input"]["items"]
    assert item["kind"] == "pacs" and item["study_uid"] == study
    assert item["series"] == [{"uid": ct_series, "modality": "CT", "instances": str(len(files))}]
    assert manifest["provenance"]["input_series_uids"] == [ct_series]
    protocol_name = "C-STORE" if protocol == "dimse" else "STOW-RS"
    assert manifest["provenance"]["sent"] == [{"node": "archive", "protocol": protocol_name, "objects": 1}]
    seg = pydicom.dcmread(out / "cases" / case_id / "dicom" / "SEG_dense.dcm", stop_before_pixels=True)
    assert seg.Modality == "SEG" and str(seg.StudyInstanceUID) == study
    assert str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID) == ct_series

    on_server = {s["SeriesInstanceUID"]: s for s in dimse.find(dimse_node, "series", {"study_uid": study})}
    assert on_server[str(seg.SeriesInstanceUID)]["Modality"] == "SEG"
    assert on_server[str(seg.SeriesInstanceUID)]["NumberOfSeriesRelatedInstances"] == "1"
    qido = dicomweb.search(web_node, "series", {"study_uid": study, "modality": "SEG"})
    assert [s["SeriesInstanceUID"] for s in qido] == [str(seg.SeriesInstanceUID)]
    found = orthanc.rest("/tools/lookup", method="POST", data=str(seg.SOPInstanceUID).encode())
    assert [entry["Type"] for entry in found] == ["Instance"]

    # the study now holds the SEG too, but its image series did not change: the case is complete, skipped
    assert main(["run", str(pipeline), "-o", str(out), "--workers", "0", "-q"]) == 0
    again = json.loads((out / "summary.json").read_text())
    assert [c["status"] for c in again["cases"]] == ["skipped"]
