"""``medseg segment``: classical segmentation of a CT/MR volume into a Slicer segmentation or label map.

    medseg segment INPUT --method NAME [method options] [--seeds R,A,S[@SEGMENT] | FILE.mrk.json ...]
                   -o OUT.(seg.nrrd|nii.gz) [--mask SEG [--mask-segment NAME]] [--surfaces DIR]
    medseg segment --list-methods

Method options come from the same declarations the MedSegSegmentation panel uses (``--list-methods``
prints them with defaults and units). Seeds are RAS millimetres, as Slicer shows them; ``@NAME`` (or one
``.mrk.json`` per segment, named after the file's markups node) groups seeds into competing segments for
grow-from-seeds and watershed. ``.seg.nrrd`` output is a Slicer segmentation (names, colours, terminology);
``.nii.gz`` / ``.nrrd`` a label map on the input grid, value i = segment i, names in a ``.ctbl`` beside it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

from MedSegLib.errors import UserInputError

SEGMENTATION_SUFFIXES = (".seg.nrrd",)
LABELMAP_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


def parse_seed(text: str) -> List[Any]:
    """``R,A,S`` or ``R,A,S@NAME`` -> [SeedPoint]; a ``.mrk.json`` file -> its control points."""
    from MedSegLib.segmentation.core import SeedPoint

    if text.lower().endswith(".mrk.json"):
        from MedSegLib.node_io import load_markups
        from MedSegLib.segmentation.api import seeds_from_markups

        node = load_markups(text)
        seeds = seeds_from_markups(node)
        if not seeds:
            raise UserInputError("markups file has no control points", text)
        return seeds
    coordinates, _, group = text.partition("@")
    parts = coordinates.replace(";", ",").split(",")
    try:
        values = tuple(float(part) for part in parts)
    except ValueError:
        raise UserInputError(
            f"--seeds expects R,A,S in mm (optionally @SEGMENT) or a .mrk.json file, got {text!r}"
        ) from None
    if len(values) != 3:
        raise UserInputError(f"--seeds expects 3 coordinates R,A,S, got {text!r}")
    return [SeedPoint(values, group.strip())]  # type: ignore[arg-type]


def _bool(text: str) -> str:
    return text


def _add_declared_options(parser: argparse.ArgumentParser) -> None:
    """One ``--option`` per declared parameter name across all methods (+ post-processing)."""
    from MedSegLib.segmentation.api import POST_PARAMS, iter_methods

    seen: Dict[str, Any] = {}
    method_group = parser.add_argument_group("method options (see --list-methods for which method uses which)")
    post_group = parser.add_argument_group("post-processing (any method)")
    declared = [(method_group, param) for method in iter_methods() for param in method.params]
    declared += [(post_group, param) for param in POST_PARAMS]
    for group, param in declared:
        if param.name in seen:
            continue
        seen[param.name] = param
        kwargs: Dict[str, Any] = {"dest": param.name, "default": None, "help": param.help}
        if param.kind is bool:
            kwargs.update(nargs="?", const="true", metavar="BOOL")
        else:
            kwargs.update(
                metavar=param.unit.upper() if param.unit and param.kind is not str else param.kind.__name__.upper()
            )
            if param.choices:
                kwargs["choices"] = param.choices
        group.add_argument(param.cli_flag, **kwargs)


def _given_parameters(args: argparse.Namespace) -> Dict[str, Any]:
    from MedSegLib.segmentation.api import POST_PARAMS, iter_methods

    names = {param.name for method in iter_methods() for param in method.params} | {p.name for p in POST_PARAMS}
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def _output_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(SEGMENTATION_SUFFIXES):
        return "segmentation"
    if name.endswith(LABELMAP_SUFFIXES):
        return "labelmap"
    raise UserInputError("output must end in .seg.nrrd (segmentation) or .nii.gz/.nii/.nrrd (label map)", path)


def list_methods(as_json: bool) -> int:
    from MedSegLib.segmentation.api import POST_PARAMS, iter_methods
    from MedSegLib.segmentation.params import format_method_table

    methods = iter_methods()
    if as_json:
        payload = [
            {
                "name": m.name,
                "title": m.title,
                "description": m.description,
                "category": m.category,
                "seeds": m.seeds,
                "parameters": [
                    {
                        "name": p.name,
                        "option": p.cli_flag,
                        "type": p.kind.__name__,
                        "default": p.default,
                        "unit": p.unit,
                        "help": p.help,
                        "choices": list(p.choices) if p.choices else None,
                    }
                    for p in m.params
                ],
            }
            for m in methods
        ]
        print(json.dumps(payload, indent=1))
        return 0
    print(format_method_table(methods))
    print()
    print("post-processing options (any method):")
    for param in POST_PARAMS:
        default = "off" if param.default in (None, 0.0, False, "none") else param.default
        print(f"  {param.cli_flag:<24}(default {default}): {param.help}")
    return 0


def run_segment(args: argparse.Namespace) -> int:
    if args.list_methods:
        return list_methods(args.json)
    if not args.input or not args.method or not args.output:
        raise UserInputError("give INPUT, --method NAME and -o OUT (or --list-methods)")
    from MedSegLib.segmentation.api import get_method

    method = get_method(args.method)  # unknown names fail before loading anything
    output = Path(args.output)
    kind = _output_kind(output)
    seeds = [seed for text in (args.seeds or []) for seed in parse_seed(text)]

    from MedSegLib.inputs import load_input_volume
    from MedSegLib.node_io import export_segmentation_to_labelmap, load_segmentation, save_node
    from MedSegLib.progress import tqdm_callback
    from MedSegLib.runtime import boot
    from MedSegLib.segmentation.api import segment_volume_node

    boot()
    started = time.perf_counter()
    volume = load_input_volume(args.input, db=args.db)
    load_seconds = time.perf_counter() - started
    mask = None
    if args.mask:
        from MedSegLib.node_io import import_labelmap_as_segmentation, is_segmentation_file

        mask_node = (
            load_segmentation(args.mask)
            if is_segmentation_file(args.mask)
            else import_labelmap_as_segmentation(args.mask)
        )
        segment = args.mask_segment or mask_node.GetSegmentation().GetNthSegmentID(0)
        mask = (mask_node, segment)
    callback, bar = tqdm_callback(100, f"segment {method.name}", disable=args.quiet)
    try:
        result = segment_volume_node(
            volume, None, method, seeds=seeds, mask=mask, parameters=_given_parameters(args), progress=callback
        )
    finally:
        bar.close()
    segmentation = result.segmentation
    segmentation.SetName(args.name or f"{volume.GetName()} {method.name}")
    if kind == "segmentation":
        written = {"segmentation": save_node(segmentation, output)}
    else:
        written = export_segmentation_to_labelmap(segmentation, output, volume)
    if args.surfaces:
        from MedSegLib.segmentation.output import export_surfaces

        written["surfaces"] = export_surfaces(
            segmentation, args.surfaces, args.surface_format, args.surface_coordinates
        )
    if args.stats:
        from MedSegLib.statistics import compute_statistics

        written["statistics"] = compute_statistics(segmentation, volume).write(args.stats)
    summary = {
        "method": method.name,
        "segments": [segmentation.GetSegmentation().GetSegment(s).GetName() for s in result.segment_ids],
        "parameters": result.parameters,
        "seconds": {"load": round(load_seconds, 3), **{k: round(v, 3) for k, v in result.seconds.items()}},
        "outputs": {k: ([str(p) for p in v] if isinstance(v, list) else str(v)) for k, v in written.items()},
    }
    if args.json:
        print(json.dumps(summary, indent=1))
    elif not args.quiet:
        print(f"{method.name}: {', '.join(summary['segments'])} -> {output}", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="classical segmentation (threshold, region growing, level set, CT presets, ...)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", nargs="?", help="volume file, DICOM folder, or series UID with --db")
    parser.add_argument("--method", "-m", help="method name (see --list-methods)")
    parser.add_argument("--list-methods", action="store_true", help="list methods and their options, then exit")
    parser.add_argument(
        "--seeds", action="append", metavar="R,A,S[@SEGMENT]|FILE.mrk.json", help="seed point(s) in RAS mm (repeatable)"
    )
    parser.add_argument("--output", "-o", help="OUT.seg.nrrd (segmentation) or OUT.nii.gz (label map + .ctbl)")
    parser.add_argument("--mask", metavar="SEG", help="restrict the result to a segment of this segmentation/label map")
    parser.add_argument("--mask-segment", metavar="NAME", help="segment of --mask to use (default: the first)")
    parser.add_argument("--name", help="name of the output segmentation node")
    parser.add_argument("--surfaces", metavar="DIR", help="also export closed surfaces (one file per segment)")
    parser.add_argument("--surface-format", choices=("stl", "obj"), default="stl")
    parser.add_argument("--surface-coordinates", choices=("LPS", "RAS"), default="LPS")
    parser.add_argument("--stats", metavar="FILE", help="also write segment statistics (.csv or .json)")
    parser.add_argument("--db", metavar="DIR", help="DICOM database folder (when INPUT is a series UID)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary (or the method list) on stdout")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary line")
    _add_declared_options(parser)
    # RAS seeds are often negative ("--seeds -60.5,150,170"): let argparse take "-<digit>..." as a value,
    # as it already does for plain negative numbers (no option of this parser starts with a digit).
    parser._negative_number_matcher = re.compile(r"^-\d+$|^-\d*\.\d+$|^-\.?\d[\d.,;eE+-]*(@.*)?$")
    parser.set_defaults(func=run_segment)
