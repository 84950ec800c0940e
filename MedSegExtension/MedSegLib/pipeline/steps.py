"""The step registry: what a pipeline YAML may name, each with a parameter schema and a runner.

Capabilities live in other MedSegLib packages (segmentation, deep_learning, qmri, export, pacs) that
evolve on their own; every step imports them inside its function, so a missing or not-yet-built module
fails (or, with ``on_unavailable: skip``, skips) only that step with a clear "not available" message,
and ``medseg run --help`` / pipeline validation never pay for torch or VTK imports.

Built-in order of a full pipeline: load -> window -> segment / deep_segment -> statistics -> qmri ->
export_seg / export_pmap -> send. Extensions add steps with :func:`register_step`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from MedSegLib.errors import UserInputError
from MedSegLib.pipeline.context import (
    CaseContext,
    SegmentationEntry,
    StepSkipped,
    StepUnavailable,
    VolumeEntry,
    sha256_file,
)

StepRunner = Callable[[CaseContext, Dict[str, Any]], Optional[str]]

SELECTOR_SCHEMA: Dict[str, Any] = {
    "anyOf": [
        {"type": "string"},
        {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "modality": {"type": "string"},
                "name": {"type": "string"},
                "index_name": {"type": "string"},
            },
        },
    ]
}
NAME_SCHEMA = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]*$"}


@dataclass(frozen=True)
class Step:
    """A pipeline step type: ``run(ctx, params)`` returns an optional one-line note for the summary."""

    name: str
    run: StepRunner
    schema: Dict[str, Any]
    summary: str
    check: Optional[Callable[[Dict[str, Any]], None]] = None
    needs: Tuple[str, ...] = field(default_factory=tuple)  # modules that must import for the step to run


_STEPS: Dict[str, Step] = {}


def register_step(step: Step) -> None:
    """Add (or replace) a step type; it becomes valid in pipeline files at once."""
    _STEPS[step.name] = step


def get_step(name: str) -> Step:
    return _STEPS[name]


def step_names() -> List[str]:
    return list(_STEPS)


def step_available(name: str) -> Tuple[bool, str]:
    """(available, reason): whether the modules a step needs import in this installation."""
    import importlib

    for module in _STEPS[name].needs:
        try:
            importlib.import_module(module)
        except ImportError as error:
            return False, f"{module} cannot be imported ({error})"
    return True, ""


def _require(module: str, what: str) -> Any:
    """Import a capability module or raise StepUnavailable naming what is missing."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise StepUnavailable(f"{what} is not available in this installation ({error})") from None


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "item"


# ------------------------------------------------------------------------------------------------- load


def _loaded_volumes_for_input(item: Dict[str, Any], params: Dict[str, Any], ctx: CaseContext) -> List[Any]:
    """LoadedVolume objects of one case input: a folder, a volume file, a DB series or a PACS study."""
    from MedSegLib.dicom.loader import load_folder, load_series_files

    keep = bool(params.get("keep_acquired_grid", False))
    kind = item["kind"]
    if kind == "path":
        path = Path(item["path"])
        if path.is_dir():
            loaded = load_folder(path, keep_acquired_grid=keep)
            if loaded:
                return loaded
            from MedSegLib.node_io import is_volume_file

            files = sorted(p for p in path.iterdir() if p.is_file() and is_volume_file(p))
            if files:
                return [("file", p) for p in files]
            raise UserInputError("no loadable DICOM series or volume file in the folder", path)
        if path.is_file():
            return [("file", path)]
        raise UserInputError("input not found", path)
    if kind == "series":
        from MedSegLib.dicom.database import DicomDatabase

        with DicomDatabase(item["db"], create=False) as database:
            files = database.filesForSeries(item["uid"])
        if not files:
            raise UserInputError(f"series {item['uid']} is not in the database", item["db"])
        return load_series_files(files, keep_acquired_grid=keep)
    if kind == "pacs":
        return _retrieve_pacs_study(item, keep, ctx)
    raise UserInputError(f"unknown input kind {kind!r}")


def _retrieve_pacs_study(item: Dict[str, Any], keep: bool, ctx: CaseContext) -> List[Any]:
    """The image series the case lists (C-GET or WADO-RS into a scratch database), loaded in UID order."""
    from MedSegLib.dicom.database import DicomDatabase
    from MedSegLib.dicom.loader import load_series_files
    from MedSegLib.pipeline.cases import pacs_node

    node = pacs_node(item["node"], item.get("settings"))
    database_dir = ctx.scratch / "pacs-db"
    database_dir.mkdir(parents=True, exist_ok=True)
    series_uids = [s["uid"] for s in item.get("series", [])]
    if not series_uids:
        raise UserInputError(f"study {item['study_uid']} on {item['node']} lists no image series")
    if node.web_url:
        retrieve = _require("MedSegLib.pacs.dicomweb", "DICOMweb").retrieve
    else:
        retrieve = _require("MedSegLib.pacs.dimse", "DICOM networking").get
    loaded = []
    for number, series_uid in enumerate(series_uids):
        retrieve(node, series_uid, database_dir, "series")
        with DicomDatabase(database_dir, create=False) as database:
            files = database.filesForSeries(series_uid)
        loaded.extend(load_series_files(files, keep_acquired_grid=keep))
        ctx.report((number + 1) / len(series_uids) / 2, f"retrieved {number + 1}/{len(series_uids)} series")
    if not loaded:
        raise UserInputError(f"study {item['study_uid']} retrieved from {item['node']} holds no image series")
    return loaded


def run_load(ctx: CaseContext, params: Dict[str, Any]) -> str:
    from MedSegLib.dicom.mrml import add_loaded_volume
    from MedSegLib.node_io import load_volume

    wanted = {m.upper() for m in params.get("modalities", [])}
    for number, item in enumerate(ctx.inputs):
        for loaded in _loaded_volumes_for_input(item, params, ctx):
            if isinstance(loaded, tuple):  # a volume file (no DICOM facts)
                node = load_volume(loaded[1], ctx.scene)
                ctx.volumes.append(VolumeEntry(node, node.GetName()))
                continue
            modality = str(loaded.series.get("Modality", "") or "")
            if wanted and modality.upper() not in wanted:
                continue
            node = add_loaded_volume(loaded, ctx.scene)
            sequence = node.IsA("vtkMRMLSequenceNode")
            entry = VolumeEntry(
                node=node,
                name=node.GetName(),
                modality=modality,
                series_uid=str(loaded.series_uid or ""),
                description=str(loaded.series.get("SeriesDescription", "") or ""),
                files=[str(f) for f in loaded.files],
                is_sequence=sequence,
                resampled=bool(loaded.resampled),
                index_name=node.GetIndexName() if sequence else "",
            )
            ctx.volumes.append(entry)
        ctx.report((number + 1) / max(1, len(ctx.inputs)), f"input {number + 1}/{len(ctx.inputs)}")
    if not ctx.volumes:
        raise UserInputError(
            "nothing loadable in this case's input" + (f" (modalities {sorted(wanted)})" if wanted else "")
        )
    ctx.provenance["input_series"] = [v.to_json() for v in ctx.volumes]
    ctx.provenance["input_series_uids"] = [v.series_uid for v in ctx.volumes if v.series_uid]
    return f"{len(ctx.volumes)} series: " + ", ".join(f"{v.name} ({v.modality or 'file'})" for v in ctx.volumes)


# ----------------------------------------------------------------------------------------------- window


def _default_volume(ctx: CaseContext, selector: Any) -> VolumeEntry:
    """The selected 3D volume; by default the first CT, else the first 3D volume."""
    if selector:
        return ctx.select_volume(selector)
    try:
        return ctx.select_volume({"modality": "CT"})
    except UserInputError:
        return ctx.select_volume(None)


def _window_specs(names: Sequence[str], array: Any) -> List[Any]:
    from MedSegLib.windowing.presets import find_preset, load_presets
    from MedSegLib.windowing.render import WindowSpec

    presets = load_presets()
    specs = []
    for name in names:
        preset = find_preset(name, presets)
        window, level = preset.window_level(array if preset.is_percentile else None)
        specs.append(WindowSpec(window, level, preset.function, preset.name))
    return specs


def _check_window(params: Dict[str, Any]) -> None:
    from MedSegLib.windowing.presets import find_preset, load_presets

    presets = load_presets()
    for name in params.get("presets", []) + ([params["overlay_window"]] if params.get("overlay_window") else []):
        find_preset(name, presets)


def run_window(ctx: CaseContext, params: Dict[str, Any]) -> str:
    from MedSegLib.png_writer import write_png
    from MedSegLib.volume_nodes import array_and_ijk_to_ras
    from MedSegLib.windowing.render import render_montage, render_presets_side_by_side

    if not params.get("input") and not any(not v.is_sequence for v in ctx.volumes):
        raise StepSkipped("no 3D volume to render in this case")
    entry = _default_volume(ctx, params.get("input"))
    array, ijk_to_ras = array_and_ijk_to_ras(entry.node)
    names = params.get("presets") or (["Lung", "Mediastinum", "Bone"] if entry.modality in ("CT", "") else ["MR-Auto"])
    specs = _window_specs(names, array)
    views = params.get("views", ["axial"])
    labels = " | ".join(spec.label for spec in specs)
    for view in views:
        image = render_presets_side_by_side(array, ijk_to_ras, specs, view)
        path = write_png(ctx.path("images", f"windows_{view}.png"), image)
        ctx.add_output(path, "image", f"{entry.name}: {labels} ({view}, middle slice)")
    tiles = int(params.get("tiles", 9))
    if tiles > 0:
        for number, spec in enumerate(specs):
            image = render_montage(array, ijk_to_ras, spec, views[0], tiles=tiles)
            path = write_png(ctx.path("images", f"montage_{_safe_name(spec.label)}.png"), image)
            ctx.add_output(path, "image", f"{spec.label} window (W {spec.window:g} / L {spec.level:g}), {tiles} slices")
            ctx.report((number + 1) / len(specs), spec.label)
    return f"{len(specs)} windows on {entry.name}"


# ---------------------------------------------------------------------------------------- segmentation


def _method_list(params: Dict[str, Any]) -> List[Tuple[str, Dict[str, Any]]]:
    items: List[Tuple[str, Dict[str, Any]]] = []
    if params.get("method"):
        items.append((params["method"], dict(params.get("parameters") or {})))
    for item in params.get("methods", []):
        if isinstance(item, str):
            items.append((item, {}))
        else:
            items.append((item["method"], dict(item.get("parameters") or {})))
    return items


def _check_segment(params: Dict[str, Any]) -> None:
    methods = _method_list(params)
    if not methods:
        raise ValueError("give 'method' or 'methods'")
    try:
        from MedSegLib.segmentation.api import get_method, split_parameters
    except ImportError:
        return  # validated when it runs (reported as not available)
    for name, parameters in methods:
        split_parameters(get_method(name), parameters)


def _overlay_image(ctx: CaseContext, segmentation: Any, entry: VolumeEntry, window: Optional[str]) -> Path:
    """Mid axial and coronal slices with every segment as translucent fill + outline."""
    from MedSegLib.png_writer import write_png
    from MedSegLib.volume_nodes import array_and_ijk_to_ras
    from MedSegLib.windowing.render import render_slice, segment_masks, side_by_side

    array, ijk_to_ras = array_and_ijk_to_ras(entry.node)
    default = "Mediastinum" if entry.modality in ("CT", "") else "MR-Auto"
    spec = _window_specs([window or default], array)[0]
    masks = segment_masks(segmentation, entry.node)
    images = [render_slice(array, ijk_to_ras, spec, view, None, masks, "both") for view in ("axial", "coronal")]
    heights = {image.shape[0] for image in images}
    if len(heights) > 1:  # different heights: pad to the tallest so they sit in one row
        import numpy as np

        tallest = max(heights)
        images = [np.pad(i, ((0, tallest - i.shape[0]), (0, 0), (0, 0))) for i in images]
    return write_png(ctx.path("images", f"overlay_{_safe_name(segmentation.GetName())}.png"), side_by_side(images))


def _finish_segmentation(
    ctx: CaseContext, segmentation: Any, entry: VolumeEntry, name: str, kind: str, params: Dict[str, Any]
) -> None:
    from MedSegLib.node_io import save_node

    segmentation.SetName(name)
    path = save_node(segmentation, ctx.path("segmentations", f"{name}.seg.nrrd"))
    ctx.add_output(path, "segmentation", f"{kind} segmentation of {entry.name}", segments=_segment_names(segmentation))
    try:
        overlay = _overlay_image(ctx, segmentation, entry, params.get("overlay_window"))
        ctx.add_output(overlay, "image", f"{name} ({kind}): " + ", ".join(_segment_names(segmentation)))
    except ValueError as error:  # e.g. a gantry-tilted grid the slice renderer refuses: the result stands
        ctx.provenance.setdefault("notes", []).append(f"{name}: overlay image not rendered ({error})")
    ctx.segmentations[name] = SegmentationEntry(segmentation, entry, ctx.current_step, kind, path)


def _segment_names(segmentation: Any) -> List[str]:
    seg = segmentation.GetSegmentation()
    return [seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())]


def run_segment(ctx: CaseContext, params: Dict[str, Any]) -> str:
    api = _require("MedSegLib.segmentation.api", "classical segmentation")
    entry = _default_volume(ctx, params.get("input"))
    methods = _method_list(params)
    segmentation = None
    for number, (method, parameters) in enumerate(methods):
        result = api.segment_volume_node(
            entry.node, segmentation, method=method, parameters=parameters, cancel=ctx.cancel
        )
        segmentation = result.segmentation
        ctx.report((number + 1) / len(methods), method)
    name = params.get("name") or ctx.current_step
    _finish_segmentation(ctx, segmentation, entry, name, "classical", params)
    ctx.provenance.setdefault("methods", {})[name] = [{"method": m, "parameters": p} for m, p in methods]
    return f"{len(_segment_names(segmentation))} segments by {', '.join(m for m, _ in methods)}"


def run_deep_segment(ctx: CaseContext, params: Dict[str, Any]) -> str:
    model_package = _require("MedSegLib.deep_learning.model_package", "deep-learning segmentation")
    try:  # the model first: finding none must not cost a torch import in every worker
        package = model_package.resolve_model(params.get("model", "medseg-ct-phantom"))
    except UserInputError as error:
        raise StepUnavailable(f"model not available: {error.one_line()}") from None
    try:
        import torch  # noqa: F401
    except ImportError:
        raise StepUnavailable("deep-learning segmentation needs PyTorch (pip install 'medseg[dl]')") from None
    inference = _require("MedSegLib.deep_learning.inference", "deep-learning segmentation")
    entry = _default_volume(ctx, params.get("input"))
    name = params.get("name") or ctx.current_step
    segmentation = ctx.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    segmentation.CreateDefaultDisplayNodes()

    def progress(fraction: float, message: str = "") -> None:
        ctx.report(fraction, message)

    inference.segment_volume_node(
        entry.node,
        segmentation,
        package,
        device=params.get("device", "cpu"),
        overlap=params.get("overlap"),
        progress=progress,
        cancel=ctx.cancel,
    )
    _finish_segmentation(ctx, segmentation, entry, name, "deep learning", params)
    ctx.provenance.setdefault("models", {})[name] = {
        "name": package.name,
        "version": package.version,
        "weights": package.weights_path.name,
        "weights_sha256": sha256_file(package.weights_path),
    }
    return f"{package.name} {package.version}: {len(_segment_names(segmentation))} segments"


# ------------------------------------------------------------------------------------------ statistics


def run_statistics(ctx: CaseContext, params: Dict[str, Any]) -> str:
    stats = _require("MedSegLib.statistics", "segment statistics")
    from MedSegLib.statistics.segment_statistics import LABELMAP, SCALAR

    names = params.get("segmentations") or list(ctx.segmentations)
    if not names:
        raise StepSkipped("no segmentation to measure (add a segment or deep_segment step before)")
    rows_total = 0
    for number, name in enumerate(names):
        if name not in ctx.segmentations:
            raise UserInputError(f"statistics: no segmentation named {name!r} (made: {', '.join(ctx.segmentations)})")
        seg = ctx.segmentations[name]
        table = stats.compute_statistics(seg.node, seg.volume.node, shape_measures=bool(params.get("shape", False)))
        for suffix in (".csv", ".json"):
            path = table.write(ctx.path("statistics", f"{name}{suffix}"))
            ctx.add_output(path, "table", f"segment statistics of {name}")
        unit = table.scalar_unit or ("HU" if seg.volume.modality == "CT" else "value")
        rows = []
        for sid in table.segment_ids:
            segment = table.names[sid]
            volume = table.value(sid, f"{LABELMAP}.volume_cm3")
            mean = table.value(sid, f"{SCALAR}.mean")
            ctx.measure("Volume cm3", f"{name}: {segment}", volume)
            ctx.measure(f"Mean {unit}", f"{name}: {segment}", mean)
            rows.append(
                [segment]
                + [_round(table.value(sid, f"{SCALAR}.{key}")) for key in ("mean", "stdev", "min", "max")]
                + [_round(volume)]
            )
        ctx.tables.append(
            {
                "title": f"Statistics: {name} ({seg.kind}) on {seg.volume.name}",
                "columns": ["Segment", f"Mean ({unit})", "SD", "Min", "Max", "Volume (cm3)"],
                "rows": rows,
                "step": ctx.current_step,
            }
        )
        rows_total += len(rows)
        ctx.report((number + 1) / len(names), name)
    return f"{rows_total} segments measured"


def _round(value: Any, digits: int = 4) -> Any:
    if value is None:
        return None
    try:
        return float(f"{float(value):.{digits}g}")
    except (TypeError, ValueError):
        return value


# ------------------------------------------------------------------------------------------------- qMRI

_MODEL_FOR_INDEX = {"InversionTime": "ir", "EchoTime": "t2", "FlipAngle": "vfa", "TriggerTime": "molli"}
_AUTO_FIT_IDS = {"ir": "T1-IR", "t2": "T2-SE", "vfa": "T1-VFA", "molli": "T1-MOLLI"}


def _fit_list(ctx: CaseContext, params: Dict[str, Any]) -> List[Tuple[str, str, VolumeEntry]]:
    fits: List[Tuple[str, str, VolumeEntry]] = []
    if params.get("fits"):
        for number, item in enumerate(params["fits"]):
            entry = ctx.select_volume(item.get("input"), sequence=True) if item.get("input") else None
            if entry is None:
                wanted = {v: k for k, v in _MODEL_FOR_INDEX.items()}.get(item["model"])
                entry = ctx.select_volume({"index_name": wanted} if wanted else None, sequence=True)
            fits.append((item.get("id") or f"{item['model']}{number + 1 if number else ''}", item["model"], entry))
        return fits
    for entry in (v for v in ctx.volumes if v.is_sequence):
        model = _MODEL_FOR_INDEX.get(entry.index_name)
        if model:
            fits.append((_AUTO_FIT_IDS[model], model, entry))
    if not fits:
        raise StepSkipped("no multi-TI / multi-TE series to fit in this case")
    return fits


def _auto_regions(values: Any, fitted: Any, min_voxels: int = 8) -> Tuple[Any, List[str]]:
    """Regions of homogeneous fitted value that differ from the dominant one (phantom spheres, lesions).

    The dominant value (the mode of the fitted voxels, e.g. the fill fluid or the bulk tissue) forms the
    "Background" region; connected voxels more than 15 % away from it form Region 1..n (ordered top to
    bottom, left to right on the middle slice), so a T1 table per region needs no drawn segmentation.
    """
    import numpy as np
    from scipy import ndimage

    labels = np.zeros(values.shape, dtype=np.int32)
    inside = fitted & np.isfinite(values) & (values > 0)
    if not inside.any():
        return labels, []
    logs = np.log(values[inside])
    hist, edges = np.histogram(logs, bins=128)
    mode = float(np.exp((edges[np.argmax(hist)] + edges[np.argmax(hist) + 1]) / 2))
    relative = np.zeros(values.shape)
    relative[inside] = np.abs(values[inside] - mode) / mode
    distinct = inside & (relative > 0.15)
    distinct = ndimage.binary_opening(distinct, structure=np.ones((1, 3, 3), bool))
    components, count = ndimage.label(distinct)
    sizes = ndimage.sum_labels(np.ones_like(components), components, range(1, count + 1)) if count else []
    keep = [index + 1 for index, size in enumerate(sizes) if size >= min_voxels]
    centres = ndimage.center_of_mass(np.ones_like(components), components, keep) if keep else []
    order = sorted(range(len(keep)), key=lambda n: (round(centres[n][1] / 4), centres[n][2]))
    names = []
    for new, position in enumerate(order, start=1):
        labels[components == keep[position]] = new
        names.append(f"Region {new}")
    background = inside & ~distinct & (relative < 0.15)
    labels[background & (labels == 0)] = len(names) + 1
    names.append("Background")
    return labels, names


def _signal_model(result: Any, times: Any) -> Optional[Callable[[Tuple[int, int, int]], Any]]:
    """A function voxel -> model curve over ``times`` from the fitted maps (IR and mono-exponential)."""
    import numpy as np

    from MedSegLib.qmri import models

    info, maps = result.info, result.maps
    model = str(info.get("model", ""))
    if model == "ir":
        tr = info.get("TR_ms")

        def ir(voxel: Tuple[int, int, int]) -> Any:
            tr_values = None if tr is None else np.interp(times, info["TI_ms"], tr)
            efficiency = maps["efficiency"][voxel] if "efficiency" in maps else 2.0
            curve = models.ir_signal(maps["T1"][voxel], maps["M0"][voxel], times, tr_values, efficiency)
            return np.abs(curve) if info.get("magnitude", True) else curve

        return ir
    if model.startswith("t2") and result.primary in maps:
        offset = maps.get("offset")

        def decay(voxel: Tuple[int, int, int]) -> Any:
            extra = offset[voxel] if offset is not None else 0.0
            return models.mono_exp_signal(maps[result.primary][voxel], maps["M0"][voxel], times, extra)

        return decay
    return None


def run_qmri(ctx: CaseContext, params: Dict[str, Any]) -> str:
    pipeline = _require("MedSegLib.qmri.pipeline", "quantitative MRI")
    acquisition_module = _require("MedSegLib.qmri.acquisition", "quantitative MRI")
    import numpy as np

    from MedSegLib.node_io import save_node
    from MedSegLib.report import plots

    fits = _fit_list(ctx, params)
    notes = []
    for number, (fit_id, model, entry) in enumerate(fits):
        result, nodes = pipeline.fit_sequence_node(entry.node, model, cancel=ctx.cancel)
        primary = result.primary
        ctx.maps[fit_id] = nodes
        ctx.map_sources[fit_id] = {"volume": entry, "primary": primary, "model": model}
        for map_name in (primary, "M0", "RMSE", "status"):
            if map_name in nodes:
                nodes[map_name].SetName(f"{fit_id} {map_name}")
                path = save_node(nodes[map_name], ctx.path("qmri", fit_id, f"{map_name}.nrrd"))
                ctx.add_output(path, "map", f"{fit_id}: {map_name} map of {entry.name}", quantity=map_name)
        values = np.asarray(result.maps[primary], dtype=float)
        fitted = np.asarray(result.maps["status"]) == 0
        unit = "ms"
        middle = values.shape[0] // 2
        shown = values[fitted]
        low, high = np.percentile(shown, [2, 98]) if shown.size else (0.0, 1.0)
        figure = plots.map_with_colour_bar(
            np.where(fitted[middle], values[middle], np.nan), float(low), float(high), f"{primary} ({unit})"
        )
        path = plots.write_figure(figure, ctx.path("images", f"{fit_id}_{primary}"))
        ctx.add_output(path, "image", f"{fit_id}: {primary} map, middle slice, colour bar in {unit}")
        region_labels, region_names = (None, [])
        if params.get("regions", "auto") == "auto":
            region_labels, region_names = _auto_regions(values, fitted)
        rows = []
        for index, region in enumerate(region_names, start=1):
            inside = (region_labels == index) & fitted
            if not inside.any():
                continue
            median = float(np.median(values[inside]))
            q1, q3 = np.percentile(values[inside], [25, 75])
            rows.append([region, int(inside.sum()), _round(median), _round(q3 - q1)])
            ctx.measure(f"{primary} median ({unit})", f"{fit_id}: {region}", median)
        if rows:
            ctx.tables.append(
                {
                    "title": f"{primary} per region ({fit_id}, {entry.name})",
                    "columns": ["Region", "Voxels", f"Median {primary} ({unit})", "IQR"],
                    "rows": rows,
                    "step": ctx.current_step,
                }
            )
        # fit curves for sample voxels: region centres (or the best-fitted voxels)
        times = np.asarray(result.info.get("TI_ms") or result.info.get("TE_ms") or [], dtype=float)
        model_curve = _signal_model(result, np.linspace(0, times.max() if times.size else 1, 120))
        samples = _sample_voxels(region_labels, region_names, fitted, int(params.get("sample_voxels", 4)))
        if times.size and samples:
            data = acquisition_module.acquisition_from_sequence(entry.node).array
            series = []
            for label, voxel in samples:
                curve = model_curve(voxel) if model_curve is not None else None
                series.append(
                    {
                        "label": f"{label}: {primary} {values[voxel]:.0f} {unit}",
                        "x": times.tolist(),
                        "y": [float(v) for v in data[(slice(None),) + voxel]],
                        "curve_x": np.linspace(0, times.max(), 120).tolist(),
                        "curve_y": None if curve is None else [float(v) for v in np.ravel(curve)],
                    }
                )
            xlabel = "TI (ms)" if result.info.get("TI_ms") else "TE (ms)"
            figure = plots.fit_curves(series, xlabel, "signal", f"{fit_id}: measured signal and fitted model")
            path = plots.write_figure(figure, ctx.path("images", f"{fit_id}_fit_curves"))
            ctx.add_output(path, "image", f"{fit_id}: fit curves for {len(series)} sample voxels")
        counts = result.status_counts()
        notes.append(f"{fit_id} ({model}): {counts['fitted']} voxels, {len(rows)} regions")
        ctx.provenance.setdefault("qmri", {})[fit_id] = {
            "model": model,
            "series": entry.series_uid,
            "protocol": {k: v for k, v in result.info.items() if k != "model"},
        }
        ctx.report((number + 1) / len(fits), fit_id)
    return "; ".join(notes)


def _sample_voxels(labels: Any, names: List[str], fitted: Any, count: int) -> List[Tuple[str, Tuple[int, int, int]]]:
    import numpy as np
    from scipy import ndimage

    samples: List[Tuple[str, Tuple[int, int, int]]] = []
    if labels is not None:
        for index, name in enumerate(names, start=1):
            mask = (labels == index) & fitted
            if not mask.any() or name == "Background":
                continue
            centre = np.round(ndimage.center_of_mass(mask)).astype(int)
            if not mask[tuple(centre)]:
                centre = np.argwhere(mask)[0]
            samples.append((name, tuple(int(v) for v in centre)))
            if len(samples) >= count:
                break
    if not samples and fitted.any():
        samples = [("voxel", tuple(int(v) for v in np.argwhere(fitted)[len(np.argwhere(fitted)) // 2]))]
    return samples


# ---------------------------------------------------------------------------------------------- export


def run_export_seg(ctx: CaseContext, params: Dict[str, Any]) -> str:
    seg_export = _require("MedSegLib.export.seg", "DICOM SEG export")
    reference_module = _require("MedSegLib.export.reference", "DICOM SEG export")
    names = params.get("segmentations") or list(ctx.segmentations)
    if not names:
        raise StepSkipped("no segmentation to export")
    written = []
    for name in names:
        if name not in ctx.segmentations:
            raise UserInputError(f"export_seg: no segmentation named {name!r} (made: {', '.join(ctx.segmentations)})")
        seg = ctx.segmentations[name]
        if not seg.volume.files:
            raise StepSkipped(f"{seg.volume.name} was not loaded from DICOM, so a DICOM SEG cannot reference it")
        reference = reference_module.load_reference(list(seg.volume.files))
        path = seg_export.export_segmentation(
            seg.node,
            reference,
            ctx.path("dicom", f"SEG_{_safe_name(name)}.dcm"),
            series_description=(params.get("series_description") or f"MedSeg {name}")[:64],
        )
        ctx.add_output(Path(path), "dicom", f"DICOM SEG of {name} (references {reference.series_instance_uid})")
        written.append(Path(path).name)
    return ", ".join(written)


def _first_volume_files(entry: VolumeEntry, slices: int) -> List[str]:
    """Files of the reference a map is exported against: the series itself, or the first volume of a 4D series.

    A map fitted from a multi-TI / multi-TE series lies on the grid of each of its volumes; its frames reference
    the instances of the first volume (the loader orders 4D files volume-major, slices ascending).
    """
    files = list(entry.files)
    if not entry.is_sequence:
        return files
    volumes = entry.node.GetNumberOfDataNodes()
    if len(files) != volumes * slices:
        raise UserInputError(
            f"{entry.name}: {len(files)} files for {volumes} volumes of {slices} slices (an enhanced multi-frame "
            "4D series); a Parametric Map needs single-frame source instances to reference"
        )
    return files[:slices]


def run_export_pmap(ctx: CaseContext, params: Dict[str, Any]) -> str:
    pmap = _require("MedSegLib.export.pmap", "DICOM Parametric Map export")
    reference_module = _require("MedSegLib.export.reference", "DICOM Parametric Map export")
    if not ctx.maps:
        raise StepSkipped("no quantitative map to export (add a qmri step before)")
    fit_ids = params.get("fits") or list(ctx.maps)
    written = []
    series_number = int(params.get("series_number", 902))
    for fit_id in fit_ids:
        if fit_id not in ctx.maps:
            raise UserInputError(f"export_pmap: no fit named {fit_id!r} (fitted: {', '.join(ctx.maps)})")
        source = ctx.map_sources[fit_id]
        entry: VolumeEntry = source["volume"]
        if not entry.files:
            raise StepSkipped(f"{entry.name} was not loaded from DICOM, so a Parametric Map cannot reference it")
        for map_name in params.get("maps") or [source["primary"]]:
            node = ctx.maps[fit_id].get(map_name)
            if node is None:
                known = ", ".join(ctx.maps[fit_id])
                raise UserInputError(f"export_pmap: fit {fit_id} has no {map_name!r} map (maps: {known})")
            slices = node.GetImageData().GetDimensions()[2]
            reference = reference_module.load_reference(_first_volume_files(entry, slices))
            unit = node.GetAttribute("MedSeg.unit") or None
            description = params.get("series_description") or f"MedSeg {fit_id} {map_name} map"
            path = pmap.export_volume_node(
                node,
                reference,
                ctx.path("dicom", f"PM_{_safe_name(fit_id)}_{_safe_name(map_name)}.dcm"),
                quantity=map_name,
                unit=unit,
                series_description=description[:64],
                series_number=series_number,
            )
            series_number += 1
            ctx.add_output(
                Path(path),
                "dicom",
                f"DICOM Parametric Map of {fit_id} {map_name} ({unit or 'no unit'}, "
                f"references {reference.series_instance_uid})",
                quantity=map_name,
                unit=unit or "",
            )
            written.append(Path(path).name)
        ctx.report(len(written) / max(1, len(fit_ids)), fit_id)
    return ", ".join(written)


def _check_send(params: Dict[str, Any]) -> None:
    if not params.get("node"):
        raise ValueError("'node' (a PACS node name from the MedSeg settings) is required")


def run_send(ctx: CaseContext, params: Dict[str, Any]) -> str:
    _require("MedSegLib.pacs.nodes", "PACS sending")
    from MedSegLib.pipeline.cases import pacs_node

    node = pacs_node(params["node"], params.get("settings"))
    files = [ctx.out_dir / o["path"] for o in ctx.outputs if o["kind"] == "dicom"]
    if not files:
        raise StepSkipped("no DICOM object to send (add export_seg before send)")
    if node.web_url:
        result = _require("MedSegLib.pacs.dicomweb", "DICOMweb").stow(node, files)
    else:
        result = _require("MedSegLib.pacs.dimse", "DICOM networking").store(node, files)
    if result.failed:
        raise UserInputError(f"{node.describe()} refused {len(result.failed)} object(s): {result.failed[0][1]}")
    ctx.provenance.setdefault("sent", []).append(
        {"node": params["node"], "protocol": "STOW-RS" if node.web_url else "C-STORE", "objects": result.sent}
    )
    return f"sent {result.sent} object(s) to {node.describe()}"


# ------------------------------------------------------------------------------------------- registry

_FIT_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["model"],
    "properties": {
        "model": {"enum": ["ir", "vfa", "molli", "t2", "epg", "t2star"]},
        "input": SELECTOR_SCHEMA,
        "id": NAME_SCHEMA,
    },
}
_METHOD_ITEM = {
    "anyOf": [
        {"type": "string"},
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["method"],
            "properties": {"method": {"type": "string"}, "parameters": {"type": "object"}},
        },
    ]
}

for _step in (
    Step(
        "load",
        run_load,
        {
            "keep_acquired_grid": {"type": "boolean"},
            "modalities": {"type": "array", "items": {"type": "string"}},
        },
        "load every series of the case (DICOM folder, volume file, database series or PACS study)",
        needs=("MedSegLib.dicom.loader",),
    ),
    Step(
        "window",
        run_window,
        {
            "input": SELECTOR_SCHEMA,
            "presets": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            "views": {"type": "array", "items": {"enum": ["axial", "coronal", "sagittal"]}, "minItems": 1},
            "tiles": {"type": "integer", "minimum": 0, "maximum": 64},
        },
        "windowed renders: presets side by side and one montage per preset",
        check=_check_window,
        needs=("MedSegLib.windowing.render",),
    ),
    Step(
        "segment",
        run_segment,
        {
            "input": SELECTOR_SCHEMA,
            "method": {"type": "string"},
            "parameters": {"type": "object"},
            "methods": {"type": "array", "items": _METHOD_ITEM, "minItems": 1},
            "name": NAME_SCHEMA,
            "overlay_window": {"type": "string"},
        },
        "classical segmentation (threshold, region growing, CT presets ...) with an overlay image",
        check=_check_segment,
        needs=("MedSegLib.segmentation.api",),
    ),
    Step(
        "deep_segment",
        run_deep_segment,
        {
            "input": SELECTOR_SCHEMA,
            "model": {"type": "string"},
            "device": {"type": "string"},
            "overlap": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
            "name": NAME_SCHEMA,
            "overlay_window": {"type": "string"},
        },
        "deep-learning segmentation with a MedSeg model package (checksum recorded)",
        needs=("MedSegLib.deep_learning.inference", "torch"),
    ),
    Step(
        "statistics",
        run_statistics,
        {"segmentations": {"type": "array", "items": {"type": "string"}}, "shape": {"type": "boolean"}},
        "segment statistics (volume, intensity; shape measures optional) as CSV and JSON",
        needs=("MedSegLib.statistics",),
    ),
    Step(
        "qmri",
        run_qmri,
        {
            "fits": {"type": "array", "items": _FIT_SCHEMA, "minItems": 1},
            "regions": {"enum": ["auto", "none"]},
            "sample_voxels": {"type": "integer", "minimum": 0, "maximum": 12},
        },
        "T1 / T2 / T2* maps with colour bars, fit curves and per-region values",
        needs=("MedSegLib.qmri.pipeline",),
    ),
    Step(
        "export_seg",
        run_export_seg,
        {"segmentations": {"type": "array", "items": {"type": "string"}}, "series_description": {"type": "string"}},
        "DICOM SEG of each segmentation, referencing its source series",
        needs=("MedSegLib.export.seg",),
    ),
    Step(
        "export_pmap",
        run_export_pmap,
        {
            "fits": {"type": "array", "items": NAME_SCHEMA, "minItems": 1},
            "maps": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            "series_description": {"type": "string"},
            "series_number": {"type": "integer", "minimum": 1},
        },
        "DICOM Parametric Map (float values, real-world value mapping with units) of each qMRI map",
        needs=("MedSegLib.export.pmap", "highdicom"),
    ),
    Step(
        "send",
        run_send,
        {"node": {"type": "string"}, "settings": {"type": "string"}},
        "send the exported DICOM objects to a PACS node (C-STORE or STOW-RS)",
        check=_check_send,
        needs=("MedSegLib.pacs.nodes",),
    ),
):
    register_step(_step)
