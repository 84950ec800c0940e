"""``medseg window``: exact CT/MR windowing to a uint8 volume or to PNG images, and the preset list.

    medseg window INPUT (--preset NAME[,NAME...] | --wl L --ww W) [--function seed|linear|linear-exact|sigmoid] -o OUT
    medseg window --list-presets [--json] [--presets FILE]

OUT ``.nrrd`` / ``.nii.gz`` (also .nii, .nhdr, .mha): the windowed uint8 volume on the input grid.
OUT ``.png``: one slice (``--slice N``, ``--view``), a montage (``--montage [N]``), or with several
comma-separated presets the same slice side by side. OUT a folder (existing, or without suffix) or
``--all-slices``: every slice of the view as PNG files. ``--overlay SEG`` draws segments (.seg.nrrd, or a
label map with its .ctbl) in their colours. INPUT is a volume file, a DICOM folder, or a series UID with
``--db DIR``; the series' DICOM window pairs are presets too (``--preset dicom``, ``dicom:2``, or their
explanation, e.g. ``--preset SOFT_TISSUE``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, List, Optional, Sequence

from MedSegLib.errors import UserInputError

VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
FUNCTION_CHOICES = ("seed", "linear", "linear-exact", "sigmoid")


def _output_kind(out: Path, all_slices: bool) -> str:
    name = out.name.lower()
    if all_slices or out.is_dir() or (not out.suffix and not out.exists()):
        return "folder"
    if name.endswith(".png"):
        return "png"
    if name.endswith(VOLUME_SUFFIXES):
        return "volume"
    raise UserInputError("output must end in .png, .nrrd, .nii.gz, .nii, .nhdr or .mha, or be a folder", out)


def list_presets(args: argparse.Namespace) -> int:
    from MedSegLib.windowing.presets import load_presets

    presets = load_presets(args.presets)
    if args.input:
        presets += _series_presets_of(_load_input(args))
    if args.json:
        print(json.dumps([preset.to_json() for preset in presets], indent=2))
        return 0
    width = max(len(preset.name) for preset in presets)
    for preset in presets:
        if preset.is_percentile:
            numbers = f"percentiles {preset.lower_percentile:g}-{preset.upper_percentile:g} %"
        else:
            numbers = f"W {preset.window:g} / L {preset.level:g}"
        print(f"{preset.name:<{width}}  {numbers:<24}  {preset.source}")
    return 0


def _load_input(args: argparse.Namespace) -> Any:
    from MedSegLib.inputs import load_input_volume
    from MedSegLib.runtime import boot

    runtime = boot()
    return load_input_volume(args.input, runtime.scene, db=args.db)


def _series_presets_of(volume_node: Any) -> List[Any]:
    from MedSegLib.windowing.display import series_presets

    return series_presets(volume_node)


def resolve_specs(args: argparse.Namespace, volume_node: Any, array: Any) -> List[Any]:
    """WindowSpecs from --preset (comma list) or --wl/--ww; --function overrides the preset's default."""
    from MedSegLib.windowing.presets import find_preset, load_presets
    from MedSegLib.windowing.render import WindowSpec
    from MedSegLib.windowing.voi_lut import check_window

    specs = []
    if args.preset is not None:
        presets = load_presets(args.presets) + _series_presets_of(volume_node)
        names = [name.strip() for name in args.preset.split(",") if name.strip()]
        if not names:
            raise UserInputError("--preset needs a name (see medseg window --list-presets)")
        for name in names:
            preset = find_preset(name, presets)
            window, level = preset.window_level(array)
            specs.append(WindowSpec(window, level, args.function or preset.function, preset.name))
    else:
        specs.append(WindowSpec(args.ww, args.wl, args.function or "seed", f"W{args.ww:g} L{args.wl:g}"))
    for spec in specs:
        try:
            check_window(spec.window, spec.function)
        except ValueError as error:
            raise UserInputError(f"{spec.label}: {error}") from None
    return specs


def _overlays(args: argparse.Namespace, volume_node: Any) -> List[Any]:
    if not args.overlay:
        return []
    from MedSegLib.node_io import import_labelmap_as_segmentation, is_segmentation_file, load_segmentation
    from MedSegLib.windowing.render import segment_masks

    path = Path(args.overlay)
    if not path.is_file():
        raise UserInputError("overlay segmentation not found", path)
    scene = volume_node.GetScene()
    if is_segmentation_file(path):
        node = load_segmentation(path, scene)
    else:
        node = import_labelmap_as_segmentation(path, scene)
    masks = segment_masks(node, volume_node)
    if not masks:
        raise UserInputError("the segmentation has no segments to draw", path)
    return masks


def run_window(args: argparse.Namespace) -> int:
    if args.list_presets:
        return list_presets(args)
    if not args.input:
        raise UserInputError("INPUT is required (a volume file, a DICOM folder, or a series UID with --db)")
    if args.output is None:
        raise UserInputError("-o OUT is required (.png, .nrrd, .nii.gz or a folder)")
    if args.preset is None and (args.wl is None or args.ww is None):
        raise UserInputError("give --preset NAME, or both --wl LEVEL and --ww WIDTH")
    if args.preset is not None and (args.wl is not None or args.ww is not None):
        raise UserInputError("--preset and --wl/--ww exclude each other")
    out = Path(args.output)
    kind = _output_kind(out, args.all_slices)
    if kind != "png" and args.montage is not None:
        raise UserInputError("--montage writes one image: OUT must end in .png", out)

    from MedSegLib.volume_nodes import array_and_ijk_to_ras
    from MedSegLib.windowing import render

    volume_node = _load_input(args)
    array, ijk_to_ras = array_and_ijk_to_ras(volume_node)
    specs = resolve_specs(args, volume_node, array)
    if len(specs) > 1 and (kind != "png" or args.montage is not None):
        raise UserInputError("several presets are only shown side by side in one .png slice image")
    spec = specs[0]
    summary = {"input": args.input, "output": str(out), "window": spec.window, "level": spec.level,
               "function": spec.function, "preset": spec.label}  # fmt: skip

    if kind == "volume":
        render.save_windowed_volume(volume_node, spec, out)
        _report(args, summary)
        return 0

    overlays = _overlays(args, volume_node)
    try:
        if kind == "folder":
            summary["files"] = _write_folder(args, out, array, ijk_to_ras, spec, overlays)
        elif args.montage is not None:
            image = render.render_montage(
                array, ijk_to_ras, spec, args.view, args.montage or None, args.columns, overlays, args.overlay_mode
            )
            _write(out, image)
        elif len(specs) > 1:
            image = render.render_presets_side_by_side(
                array, ijk_to_ras, specs, args.view, args.slice, overlays, args.overlay_mode
            )
            summary["preset"] = " | ".join(s.label for s in specs)
            _write(out, image)
        else:
            image = render.render_slice(array, ijk_to_ras, spec, args.view, args.slice, overlays, args.overlay_mode)
            _write(out, image)
    except ValueError as error:  # slice out of range, unknown view: the user's to fix
        raise UserInputError(str(error)) from None
    _report(args, summary)
    return 0


def _write(out: Path, image: Any) -> None:
    from MedSegLib.png_writer import write_png

    out.parent.mkdir(parents=True, exist_ok=True)
    write_png(out, image)


def _write_folder(args: argparse.Namespace, out: Path, array: Any, ijk_to_ras: Any, spec: Any, overlays) -> int:
    from tqdm import tqdm

    from MedSegLib.display_slices import slice_count
    from MedSegLib.windowing import render

    folder, prefix = out, None
    if out.name.lower().endswith(".png"):  # --all-slices with a file name: name_0000.png beside it
        folder, prefix = out.parent, out.name[: -len(".png")]
    count = slice_count(array, ijk_to_ras, args.view)
    # delay=1: the bar only appears for renders that last more than a second.
    with tqdm(total=count, desc="medseg window", unit="slice", file=sys.stderr, delay=1.0, disable=args.quiet,
              leave=False) as bar:  # fmt: skip

        def progress(fraction: float, message: str) -> None:
            bar.update(round(fraction * count) - bar.n)

        paths = render.write_all_slices(
            folder, array, ijk_to_ras, spec, args.view, overlays, args.overlay_mode, prefix, progress=progress
        )
    return len(paths)


def _report(args: argparse.Namespace, summary: dict) -> None:
    if args.json:
        print(json.dumps(summary, indent=2))
    elif not args.quiet:
        files = f" ({summary['files']} files)" if "files" in summary else ""
        print(
            f"{summary['output']}{files}: W {summary['window']:g} / L {summary['level']:g}"
            f" ({summary['function']}, {summary['preset']})",
            file=sys.stdout,
        )


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "window",
        help="window a CT/MR volume (presets or W/L) to a uint8 volume or PNG images",
        description=(
            "Window INPUT with a preset or --wl/--ww and write a uint8 volume (.nrrd/.nii.gz) or PNG images. "
            "Functions: seed = clip((x - (L - W/2)) / W * 255, 0, 255) truncated (3D Slicer's display), or the "
            "DICOM VOI LUT functions linear, linear-exact, sigmoid (bit-exact with pydicom, rounded half up)."
        ),
    )
    add = parser.add_argument
    add("input", nargs="?", metavar="INPUT", help="volume file, DICOM folder, or series UID with --db")
    add("-o", "--output", "--out", metavar="OUT", help=".png, .nrrd, .nii.gz, or a folder for all slices")
    choice = parser.add_argument_group("window (one of)")
    choice.add_argument("--preset", metavar="NAME[,NAME...]", help="preset name(s); several -> side by side (PNG)")
    choice.add_argument("--wl", "--level", dest="wl", type=float, metavar="L", help="window level (centre)")
    choice.add_argument("--ww", "--width", dest="ww", type=float, metavar="W", help="window width")
    add("--function", choices=list(FUNCTION_CHOICES), help="window function (default: the preset's, else seed)")
    add("--view", choices=["axial", "coronal", "sagittal"], default="axial", help="slice orientation")
    add("--slice", type=_non_negative_int, metavar="N", help="slice index along the view normal (default: middle)")
    add("--all-slices", action="store_true", help="write every slice of the view as PNG files")
    add("--montage", nargs="?", const=16, type=_non_negative_int, metavar="N",
        help="one PNG of N evenly spaced slices (default 16; 0 = all)")  # fmt: skip
    add("--columns", type=int, metavar="C", help="montage columns (default: about sqrt(N))")
    add("--overlay", metavar="SEG", help="draw the segments of SEG (.seg.nrrd or label map) in their colours")
    add("--overlay-mode", choices=["outline", "fill", "both"], default="both", help="how segments are drawn")
    add("--db", metavar="DIR", help="DICOM database folder, for a series UID as INPUT")
    add("--presets", metavar="FILE", help="your own presets JSON (schema: Resources/Presets/window_presets.json)")
    add("--list-presets", action="store_true", help="list the presets (with INPUT: plus its DICOM windows)")
    add("--json", action="store_true", help="machine-readable output")
    add("-q", "--quiet", action="store_true", help="no progress bar or summary line")
    parser.set_defaults(func=run_window)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``medseg window`` alone (used by tests and the Slicer panel's "batch" button)."""
    from MedSegLib.cli.main import main as medseg_main

    return medseg_main(["window", *(argv or [])])
