"""``medseg demo``: the main job on built-in data, end to end, as a one-case pipeline run.

Phantom CT and MR relaxometry series are written as real DICOM, indexed into a DICOM database, and the
demo pipeline (``Resources/Pipelines/demo.yaml``) runs on the database series: windowed montages (lung /
mediastinum / bone), classical and deep-learning segmentation with overlays, segment statistics, T1/T2
maps with colour bars and fit curves, DICOM SEG export. The output folder then holds ``report.html``
(self-contained), ``scene.mrb`` (opens in 3D Slicer) and the run itself (``summary.json``,
``cases/phantom/`` with the exported DICOM objects under ``dicom/``), so ``medseg report`` works on it too.
Capabilities not installed (e.g. no deep-learning model) are listed as "not available" in the report.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

from MedSegLib.errors import UserInputError
from MedSegLib.progress import StepProgress

DEFAULT_OUTPUT = Path("medseg-demo")
# Smaller than the phantom's default (64x256x256) so the whole demo stays well under a minute on a laptop;
# same 160 mm x 384 mm field of view, so the anatomy is unchanged.
DEMO_CT_SHAPE: Tuple[int, int, int] = (40, 192, 192)
DEMO_CT_SPACING_MM: Tuple[float, float, float] = (4.0, 2.0, 2.0)
DEMO_MR_SHAPE: Tuple[int, int, int] = (6, 96, 96)
DEMO_MR_SPACING_MM: Tuple[float, float, float] = (4.0, 2.5, 2.5)
CASE_ID = "phantom"

_FALLBACK_PIPELINE = """
version: 1
name: demo
execution: {on_unavailable: skip}
steps:
  - load: {}
  - window: {input: CT, presets: [Lung, Mediastinum, Bone], tiles: 9}
  - segment: {input: CT, name: classical, methods: [body, lungs, bone]}
  - deep_segment: {input: CT, name: deep-learning, model: medseg-ct-phantom, device: cpu}
  - statistics: {}
  - qmri: {regions: auto, sample_voxels: 4}
  - export_seg: {}
"""


def demo_pipeline() -> Any:
    """The shipped demo pipeline (or the same steps built in, when Resources are not installed)."""
    from MedSegLib.pipeline import load_pipeline, parse_pipeline_text
    from MedSegLib.resources import resource_path

    try:
        path = resource_path("Pipelines", "demo.yaml")
    except FileNotFoundError:
        path = None
    if path is not None and path.is_file():
        return load_pipeline(path)
    return parse_pipeline_text(_FALLBACK_PIPELINE, "demo.yaml")


def _database_case(database_dir: Path, dicom_root: Path) -> Any:
    """Index the phantom series into a DICOM database; the demo case is every series it holds."""
    from MedSegLib.dicom.database import DicomDatabase
    from MedSegLib.dicom.indexer import import_paths
    from MedSegLib.pipeline import CaseSpec
    from MedSegLib.pipeline.cases import cases_from_database, compute_input_hash

    with DicomDatabase(database_dir) as database:
        import_paths(database, [str(dicom_root)])
    inputs: List[Dict[str, Any]] = []
    for case in cases_from_database(str(database_dir), group_by="study"):
        inputs.extend(case.inputs)
    if not inputs:
        raise UserInputError("the phantom series did not reach the DICOM database", database_dir)
    case = CaseSpec(CASE_ID, inputs, "MedSeg phantom study (CT + MR IR + MR multi-echo SE)")
    compute_input_hash(case)
    return case


def run_demo(output_dir: Path, seed: int = 0, quiet: bool = False) -> Dict[str, object]:
    """Run the demo into ``output_dir``; returns a summary (paths, node names, timings, step status)."""
    from MedSegLib.node_io import save_scene_bundle
    from MedSegLib.pipeline import RunOptions, run_pipeline
    from MedSegLib.report import build_report
    from MedSegLib.runtime import boot
    from MedSegLib.sample_data import write_ct_phantom, write_mr_ir_series, write_mr_se_series

    started = time.perf_counter()
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise UserInputError("output exists and is not a folder", output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    progress = StepProgress(["phantom DICOM", "DICOM database", "pipeline", "save scene", "report"], disable=quiet)
    runtime = boot()
    scene = runtime.scene
    scene.Clear(0)

    with progress.step("phantom DICOM"):
        dicom_root = output_dir / "input_dicom"
        write_ct_phantom(dicom_root / "ct", shape=DEMO_CT_SHAPE, spacing_mm=DEMO_CT_SPACING_MM, seed=seed)
        write_mr_ir_series(dicom_root / "mr_ir", shape=DEMO_MR_SHAPE, spacing_mm=DEMO_MR_SPACING_MM, seed=seed)
        write_mr_se_series(dicom_root / "mr_se", shape=DEMO_MR_SHAPE, spacing_mm=DEMO_MR_SPACING_MM, seed=seed)

    with progress.step("DICOM database"):
        case = _database_case(output_dir / "dicom_db", dicom_root)

    with progress.step("pipeline"):
        spec = demo_pipeline()
        options = RunOptions(workers=0, on_unavailable="skip", force=True, quiet=True, keep_scene=True)
        run_summary = run_pipeline(spec, [case], output_dir, options)
    result = run_summary["cases"][0]
    if result["status"] != "complete":
        raise RuntimeError(f"demo pipeline failed in step {result.get('step')}: {result.get('reason')}")
    manifest = json.loads((output_dir / "cases" / CASE_ID / "manifest.json").read_text(encoding="utf-8"))

    ct_node = _first_node(scene, "vtkMRMLScalarVolumeNode", lambda n: "CT" in n.GetName())
    mr_nodes = [
        scene.GetNthNodeByClass(i, "vtkMRMLSequenceNode")
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSequenceNode"))
    ]
    display = ct_node.GetScalarVolumeDisplayNode()
    level, width = display.GetLevel(), display.GetWindow()

    with progress.step("save scene"):
        scene_path = save_scene_bundle(output_dir / "scene.mrb", scene)

    steps = {s["id"]: s["status"] for s in manifest["steps"]}
    unavailable = [f"{s['id']} ({s['message']})" for s in manifest["steps"] if s["status"] == "not available"]
    with progress.step("report"):
        intro = (
            "Built-in phantom study, written as DICOM, indexed into a DICOM database and run through the "
            f"{spec.name} pipeline in {run_summary['seconds']:.1f} s. "
            + (
                "Not available in this installation: " + "; ".join(unavailable) + "."
                if unavailable
                else "Every capability was available."
            )
        )
        import html

        report_path = build_report(output_dir, title="MedSeg demo: phantom CT and MR", intro=html.escape(intro))
    case_dir = output_dir / "cases" / CASE_ID
    outputs = manifest["outputs"]
    png = next(case_dir / o["path"] for o in outputs if o["path"].endswith("windows_axial.png"))
    return {
        "output": str(output_dir),
        "report": str(report_path),
        "scene": str(scene_path),
        "png": str(png),
        "dicom_objects": [str(case_dir / o["path"]) for o in outputs if o["kind"] == "dicom"],
        "ct_volume": ct_node.GetName(),
        "ct_window": {"level": level, "width": width},
        "ct_shape": list(DEMO_CT_SHAPE),
        "ct_spacing_mm": list(DEMO_CT_SPACING_MM),
        "mr_nodes": [node.GetName() for node in mr_nodes],
        "steps": steps,
        "not_available": unavailable,
        "seconds": round(time.perf_counter() - started, 2),
        "timings": {name: round(value, 2) for name, value in progress.timings.items()},
    }


def _first_node(scene: Any, class_name: str, wanted: Any) -> Any:
    nodes = [scene.GetNthNodeByClass(i, class_name) for i in range(scene.GetNumberOfNodesByClass(class_name))]
    for node in nodes:
        if wanted(node):
            return node
    if not nodes:
        raise RuntimeError(f"the demo scene has no {class_name}")
    return nodes[0]


def run_demo_command(args: argparse.Namespace) -> int:
    summary = run_demo(Path(args.output), seed=args.seed, quiet=args.json)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"report: {summary['report']}")
        print(f"scene: {summary['scene']}")
        print(f"DICOM: {', '.join(summary['dicom_objects']) or 'none'}")
        if summary["not_available"]:
            print("not available: " + "; ".join(summary["not_available"]))
        print(f"done in {summary['seconds']} s")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="run the main job on built-in sample data (report.html + scene.mrb)")
    parser.add_argument(
        "-o", "--output", "--out", default=str(DEFAULT_OUTPUT), help="output folder (default %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="phantom random seed (deterministic output)")
    parser.add_argument("--json", action="store_true", help="machine-readable summary")
    parser.set_defaults(func=run_demo_command)
