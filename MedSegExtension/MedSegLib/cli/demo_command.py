"""``medseg demo``: the main job on built-in data, end to end.

Writes the synthetic CT phantom (and the MR relaxometry phantom) as real DICOM series, loads
them through the DICOM loader into the MRML scene, renders a windowed axial PNG and saves the
whole scene as ``scene.mrb`` that 3D Slicer opens.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Dict

from MedSegLib.errors import UserInputError
from MedSegLib.progress import StepProgress

DEFAULT_OUTPUT = Path("medseg-demo")


def run_demo(output_dir: Path, seed: int = 0, quiet: bool = False) -> Dict[str, object]:
    """Run the demo into ``output_dir``; returns a summary (paths and timings)."""
    from MedSegLib.dicom.mrml import load_dicom_folder_into_scene
    from MedSegLib.display_slices import (
        display_pixel_spacing,
        display_slice,
        resample_to_square_pixels,
        slice_count,
        window_to_uint8,
    )
    from MedSegLib.node_io import save_scene_bundle
    from MedSegLib.png_writer import write_png
    from MedSegLib.runtime import boot
    from MedSegLib.sample_data import write_ct_phantom, write_mr_ir_series, write_mr_se_series
    from MedSegLib.volume_nodes import array_and_ijk_to_ras

    started = time.perf_counter()
    if output_dir.exists() and not output_dir.is_dir():
        raise UserInputError("output exists and is not a folder", output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    steps = StepProgress(["phantom DICOM", "load into scene", "render PNG", "save scene"], disable=quiet)
    runtime = boot()
    scene = runtime.scene
    scene.Clear(0)

    with steps.step("phantom DICOM"):
        dicom_root = output_dir / "dicom"
        ct_folder = write_ct_phantom(dicom_root / "ct", seed=seed)
        ir_folder = write_mr_ir_series(dicom_root / "mr_ir", seed=seed)
        se_folder = write_mr_se_series(dicom_root / "mr_se", seed=seed)

    with steps.step("load into scene"):
        ct_nodes = load_dicom_folder_into_scene(ct_folder, scene)
        mr_nodes = load_dicom_folder_into_scene(ir_folder, scene) + load_dicom_folder_into_scene(se_folder, scene)
    ct_node = ct_nodes[0]

    with steps.step("render PNG"):
        array, ijk_to_ras = array_and_ijk_to_ras(ct_node)
        display = ct_node.GetScalarVolumeDisplayNode()
        level, width = display.GetLevel(), display.GetWindow()
        middle = slice_count(array, ijk_to_ras, "axial") // 2
        image = display_slice(array, ijk_to_ras, "axial", middle)
        image = resample_to_square_pixels(image, *display_pixel_spacing(ijk_to_ras, "axial"))
        png_path = write_png(output_dir / "ct_axial.png", window_to_uint8(image, level, width))

    with steps.step("save scene"):
        scene_path = save_scene_bundle(output_dir / "scene.mrb", scene)

    return {
        "output": str(output_dir),
        "scene": str(scene_path),
        "png": str(png_path),
        "ct_volume": ct_node.GetName(),
        "ct_window": {"level": level, "width": width},
        "mr_nodes": [node.GetName() for node in mr_nodes],
        "seconds": round(time.perf_counter() - started, 2),
    }


def run_demo_command(args: argparse.Namespace) -> int:
    summary = run_demo(Path(args.output), seed=args.seed, quiet=args.json)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"scene: {summary['scene']}")
        print(f"image: {summary['png']}")
        print(f"done in {summary['seconds']} s")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="run the main job on built-in sample data")
    parser.add_argument(
        "-o", "--output", "--out", default=str(DEFAULT_OUTPUT), help="output folder (default %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="phantom random seed (deterministic output)")
    parser.add_argument("--json", action="store_true", help="machine-readable summary")
    parser.set_defaults(func=run_demo_command)
