"""Self-tests of windowing (exact functions, presets, display nodes, rendering); run in both hosts.

Every check compares whole value ranges voxel by voxel against independent references: pydicom's
``apply_windowing`` / ``apply_voi_lut`` for the DICOM functions, VTK's ``vtkImageMapToWindowLevelColors``
(what Slicer's slice views use) for the seed formula.
"""

from __future__ import annotations

import json
import warnings
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

SLICER_CT_PRESETS = {"CT-Bone": (1000, 400), "CT-Air": (1000, -426), "CT-Brain": (100, 50), "CT-Abdomen": (350, 40),
                     "CT-Lung": (1400, -500)}  # fmt: skip
CLINICAL_PRESETS = ("Brain", "Subdural", "Stroke", "Temporal bone", "Lung", "Mediastinum", "Soft tissue", "Liver",
                    "Bone", "Spine")  # fmt: skip
WINDOWS = ((400, 40), (1500, -600), (80.5, 40.25), (1, 0), (2, 0.5), (3, 100), (7.3, 0.25), (4096, 2048), (8, 32))


def all_int16() -> np.ndarray:
    return np.arange(-32768, 32768).astype(np.int16)


def float_edge_values() -> np.ndarray:
    """Every int16 value as float32 plus values between them, huge ones and infinities."""
    rng = np.random.default_rng(7)
    extra = np.concatenate([rng.normal(0, 800, 20000), rng.uniform(-2000, 4000, 20000), [-1e30, 1e30, -np.inf, np.inf,
                            0.49999999999999994, -0.5, 39.5, 40.5, 240.0, -160.0]])  # fmt: skip
    return np.concatenate([all_int16().astype(np.float32), extra.astype(np.float32)])


def pydicom_window_dataset(center: float, width: float, function: str, bits: int) -> Any:
    """A dataset whose pydicom output range is [0, 2**bits - 1] (unsigned, no rescale)."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsStored = bits
    ds.PixelRepresentation = 0
    ds.WindowCenter = center
    ds.WindowWidth = width
    ds.VOILUTFunction = function
    return ds


def pydicom_windowed(values: np.ndarray, center: float, width: float, function: str, out_dtype: Any) -> np.ndarray:
    """pydicom's float64 result, converted to integers by the documented rounding (half up)."""
    from pydicom.pixels import apply_windowing

    dtype = np.dtype(out_dtype)
    bits = 16 if dtype == np.uint16 else 8
    with np.errstate(over="ignore"):
        y = apply_windowing(values, pydicom_window_dataset(center, width, function, bits))
    if dtype == np.float64:
        return y
    whole = np.floor(y)
    whole += (y - whole) >= 0.5
    return whole.astype(dtype)


def engines() -> List[str]:
    """The fast-path backends present here: numpy always, numba when installed."""
    from MedSegLib.windowing.fast_window import numba_available

    return ["numpy"] + (["numba"] if numba_available() else [])


def _assert_same(expected: np.ndarray, actual: np.ndarray, what: str) -> None:
    assert expected.dtype == actual.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    if expected.dtype == np.float64:
        same = expected.view(np.uint64) == actual.view(np.uint64)  # bit for bit, -0.0 included
    else:
        same = expected == actual
    if not same.all():
        bad = int(np.argmin(same))
        raise AssertionError(f"{what}: {int((~same).sum())} voxels differ, first at {bad}: "
                             f"{actual.ravel()[bad]!r} != {expected.ravel()[bad]!r}")  # fmt: skip


def check_dicom_functions_match_pydicom(scene: Any, work_dir: Path) -> None:
    """LINEAR / LINEAR_EXACT / SIGMOID: every int16, uint16 and float edge value, uint8/uint16/float64 out."""
    from MedSegLib.windowing.fast_window import window
    from MedSegLib.windowing.voi_lut import window_reference

    inputs = {"int16": all_int16(), "uint16": all_int16().view(np.uint16), "float32": float_edge_values()}
    for width, center in WINDOWS:
        for function in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
            if function == "LINEAR" and width < 1:
                continue
            for out_dtype in (np.uint8, np.uint16, np.float64):
                for name, values in inputs.items():
                    expected = pydicom_windowed(values, center, width, function, out_dtype)
                    what = f"{function} W{width} C{center} {name}->{np.dtype(out_dtype)}"
                    _assert_same(expected, window_reference(values, center, width, function, out_dtype), what + " ref")
                    for engine in engines():
                        got = window(values, center, width, function, out_dtype, engine=engine)
                        _assert_same(expected, got, f"{what} {engine}")


def vtk_window_level(values: np.ndarray, window: float, level: float) -> np.ndarray:
    """What Slicer's slice views show: vtkImageMapToWindowLevelColors, luminance output."""
    import vtk
    from vtk.util import numpy_support

    image = vtk.vtkImageData()
    image.SetDimensions(values.size, 1, 1)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(values.ravel(), deep=1))
    mapper = vtk.vtkImageMapToWindowLevelColors()
    mapper.SetInputData(image)
    mapper.SetWindow(window)
    mapper.SetLevel(level)
    mapper.SetOutputFormatToLuminance()
    mapper.Update()
    return numpy_support.vtk_to_numpy(mapper.GetOutput().GetPointData().GetScalars()).ravel().copy()


def seed_float64_reference(values: np.ndarray, level: float, width: float, ymax: int) -> np.ndarray:
    """The seed formula written out independently: float64, this operation order, truncated."""
    x = values.astype(np.float64)
    return np.floor(np.clip((x - (level - width / 2)) / width * ymax, 0, ymax))


def check_seed_matches_float64_reference_and_slicer(scene: Any, work_dir: Path) -> None:
    """Seed formula: fast path == float64 reference on all inputs; == VTK/Slicer for Slicer's CT presets."""
    from MedSegLib.windowing.fast_window import window
    from MedSegLib.windowing.voi_lut import window_reference

    values16 = all_int16()
    for width, level in list(WINDOWS) + list(SLICER_CT_PRESETS.values()):
        for values in (values16, values16.view(np.uint16), float_edge_values()):
            for out_dtype, ymax in ((np.uint8, 255), (np.uint16, 65535)):
                expected = seed_float64_reference(values, level, width, ymax).astype(out_dtype)
                what = f"seed W{width} L{level} {values.dtype}->{np.dtype(out_dtype)}"
                _assert_same(expected, window_reference(values, level, width, "seed", out_dtype), what + " ref")
                for engine in engines():
                    got = window(values, level, width, "seed", out_dtype, engine=engine)
                    _assert_same(expected, got, f"{what} {engine}")
    for name, (width, level) in SLICER_CT_PRESETS.items():
        _assert_same(vtk_window_level(values16, width, level), window(values16, level, width), f"{name} vs VTK")
        _assert_same(vtk_window_level(values16, width, level), seed_float64_reference(values16, level, width, 255)
                     .astype(np.uint8), f"{name} float64 reference vs VTK")  # fmt: skip


def check_voi_lut_sequence_matches_pydicom(scene: Any, work_dir: Path) -> None:
    """Explicit VOI LUT items (US list and OW bytes; 8 and 12/16 bits): every int16 / uint16 value."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.pixels import apply_voi_lut
    from pydicom.uid import ExplicitVRLittleEndian

    from MedSegLib.windowing.fast_window import apply_voi_lut_sequence
    from MedSegLib.windowing.voi_lut import apply_voi_lut_sequence_reference, voi_luts_from_dataset

    rng = np.random.default_rng(3)
    cases = [  # (entries, first mapped, bits, as OW bytes)
        (256, -128, 8, False),
        (200, 1000, 8, False),
        (4096, -1024, 12, False),
        (4096, 0, 16, True),
        (65536, -32768, 16, True),
        (2, 5, 16, False),
    ]
    for entries, first, bits, as_bytes in cases:
        data = np.sort(rng.integers(0, 1 << bits, entries)).astype(np.uint16)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        item = Dataset()
        item.LUTDescriptor = [entries if entries < 65536 else 0, first, bits]
        if as_bytes:
            item.add_new(0x00283006, "OW", data.astype("<u2").tobytes())
        else:
            item.LUTData = [int(v) for v in data]
        ds.VOILUTSequence = [item]
        lut = voi_luts_from_dataset(ds)[0]
        for values in (all_int16(), all_int16().view(np.uint16)):
            if values.dtype == np.uint16 and first < 0:
                continue  # pydicom's uint16 arithmetic wraps for negative first values; the standard clips
            expected = apply_voi_lut(values, ds)
            what = f"VOI LUT {entries}@{first} {bits} bits {values.dtype}"
            if bits == 8:
                # pydicom keeps 8-bit LUT indices in uint8, which wraps once x - first > 255 (the standard
                # clips to the last entry, as we do): compare where pydicom's index is still right.
                keep = values.astype(np.int64) - first < 256
                _assert_same(expected[keep], apply_voi_lut_sequence_reference(values, lut)[keep], what + " ref")
                for engine in engines():
                    got = apply_voi_lut_sequence(values, lut, engine=engine)
                    _assert_same(expected[keep], got[keep], f"{what} {engine}")
                continue
            _assert_same(expected, apply_voi_lut_sequence_reference(values, lut), what + " ref")
            for engine in engines():
                _assert_same(expected, apply_voi_lut_sequence(values, lut, engine=engine), f"{what} {engine}")
        floats = float_edge_values()
        floats = floats[np.isfinite(floats) & (floats - first < 60000)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns that float input "may give incorrect results"
            expected = apply_voi_lut(floats, ds)
        if bits == 8:
            keep = (floats - first) < 256
            expected, floats = expected[keep], floats[keep]
        for engine in engines():
            got = apply_voi_lut_sequence(floats, lut, engine=engine)
            _assert_same(expected, got, f"VOI LUT {entries}@{first} float32 {engine}")


def check_nan_maps_to_zero_with_warning(scene: Any, work_dir: Path) -> None:
    """NaN -> 0 for every function and backend path, with exactly one RuntimeWarning per call."""
    from MedSegLib.windowing.fast_window import window
    from MedSegLib.windowing.voi_lut import window_reference

    values = np.array([np.nan, -1000.0, 40.0, np.nan, 3000.0], dtype=np.float32)
    computes = [window_reference] + [partial(window, engine=engine) for engine in engines()]
    for function in ("seed", "linear", "linear-exact", "sigmoid"):
        for compute in computes:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                out = compute(values, 40, 400, function, np.uint8)
            nan_warnings = [w for w in caught if "NaN" in str(w.message)]
            messages = [str(w.message) for w in caught]
            assert len(nan_warnings) == 1, f"{function}: expected one NaN warning, got {messages}"
            assert out[0] == 0 and out[3] == 0, f"{function}: NaN gave {out[[0, 3]]}"
            assert out[4] == 255 and out[1] == 0, f"{function}: {out}"


def check_fast_path_layouts_and_backends(scene: Any, work_dir: Path) -> None:
    """Non-contiguous views, 3D shapes, int32/float64/uint8 inputs and the numpy backend give the same bytes."""
    from MedSegLib.windowing import fast_window
    from MedSegLib.windowing.voi_lut import window_reference

    rng = np.random.default_rng(11)
    volume = rng.integers(-1024, 3071, size=(7, 33, 65)).astype(np.int16)
    cases = [volume, volume[:, ::2, ::-1], volume.transpose(2, 0, 1), volume.astype(np.int32),
             volume.astype(np.float64) + 0.5, (volume % 256).astype(np.uint8)]  # fmt: skip
    for engine in engines():
        for values in cases:
            for function in ("seed", "linear", "sigmoid"):
                expected = window_reference(values, 40, 400, function, np.uint8)
                got = fast_window.window(values, 40, 400, function, np.uint8, threads=2, engine=engine)
                _assert_same(expected, got, f"{engine} {function} {values.dtype} {values.strides}")


def check_preset_library(scene: Any, work_dir: Path) -> None:
    """Slicer's CT presets with Slicer's numbers (also vs the Volumes logic's file), clinical set, MR auto."""
    from MedSegLib.runtime import boot
    from MedSegLib.windowing.presets import find_preset, load_presets

    presets = load_presets()
    for name, (window, level) in SLICER_CT_PRESETS.items():
        preset = find_preset(name, presets)
        assert (preset.window, preset.level) == (window, level), f"{name}: {preset.window}/{preset.level}"
    share = Path(boot().logic("Volumes").GetModuleShareDirectory())
    marker = share / ".medseg-base"
    base = Path(marker.read_text().strip()) if marker.is_file() else share
    slicer_file = base / "VolumeDisplayPresets.json"
    if slicer_file.is_file():
        for entry in json.loads(slicer_file.read_text())["volumeDisplayPresets"]:
            if entry["id"].startswith("CT_"):
                preset = find_preset(entry["id"], presets)
                assert (preset.window, preset.level) == (entry["window"], entry["level"]), entry
    for name in CLINICAL_PRESETS:
        preset = find_preset(name, presets)
        assert preset.source.strip(), f"{name} has no source"
        assert preset.window > 0
    auto = find_preset("MR-Auto", presets)
    assert auto.is_percentile
    values = np.arange(100001, dtype=np.float32)
    window, level = auto.window_level(values)
    assert np.isclose(window, 99800.0) and np.isclose(level, 50000.0), (window, level)
    assert find_preset("ct lung", presets).name == "CT-Lung"
    assert find_preset("abdomen", presets).name == "Soft tissue"


def _ct_volume(scene: Any, name: str = "ct") -> Any:
    from MedSegLib.volume_nodes import add_volume_node

    voxels = np.random.default_rng(5).integers(-1024, 2000, size=(4, 16, 16)).astype(np.int16)
    return add_volume_node(voxels, np.diag([-0.8, -0.8, 2.5, 1.0]), name, scene)


def check_display_node_presets_stick(scene: Any, work_dir: Path) -> None:
    """A preset on the display node survives Modified events and new image data (auto W/L is off)."""
    import slicer

    from MedSegLib.windowing.display import add_display_node_presets, apply_preset
    from MedSegLib.windowing.presets import find_preset, load_presets

    presets = load_presets()
    volume = _ct_volume(scene)
    display = volume.GetScalarVolumeDisplayNode()
    assert display.GetAutoWindowLevel() == 1, "precondition: new display nodes start with auto W/L"
    apply_preset(volume, find_preset("Lung", presets))
    display.Modified()
    array = slicer.util.arrayFromVolume(volume)
    array[:] = 0
    slicer.util.arrayFromVolumeModified(volume)
    assert display.GetAutoWindowLevel() == 0
    assert (display.GetWindow(), display.GetLevel()) == (1500.0, -600.0), (display.GetWindow(), display.GetLevel())
    assert display.GetColorNodeID() == "vtkMRMLColorTableNodeGrey"
    count = add_display_node_presets(volume, [find_preset(n, presets) for n in ("Lung", "Mediastinum", "Bone")])
    assert count == 3 and display.GetNumberOfWindowLevelPresets() == 3
    assert add_display_node_presets(volume, [find_preset("Lung", presets)]) == 0, "duplicates must be skipped"
    display.SetWindowLevelFromPreset(2)
    assert (display.GetWindow(), display.GetLevel()) == (1800.0, 400.0)


def check_presets_in_volumes_module(scene: Any, work_dir: Path) -> None:
    """MedSeg presets appear in the Volumes logic (Slicer's format) and ApplyVolumeDisplayPreset uses them."""
    from MedSegLib.runtime import boot
    from MedSegLib.windowing.display import register_volume_display_presets

    runtime = boot()
    ok = register_volume_display_presets()
    if runtime.in_application and not ok:
        return  # the app read its presets before us: documented fallback (display-node presets)
    assert ok, "MedSeg presets did not reach the Volumes logic"
    logic = runtime.logic("Volumes")
    ids = logic.GetVolumeDisplayPresetIDs()
    for expected in ("CT_BONE", "CT_LUNG", "PET", "MEDSEG_LIVER", "MEDSEG_LUNG", "MEDSEG_MEDIASTINUM"):
        assert expected in ids, f"{expected} missing from {ids}"
    assert not any(i.startswith("MEDSEG_CT_") for i in ids), "Slicer's own presets must not be duplicated"
    volume = _ct_volume(scene)
    display = volume.GetScalarVolumeDisplayNode()
    assert logic.ApplyVolumeDisplayPreset(display, "MEDSEG_LIVER")
    assert (display.GetWindow(), display.GetLevel(), display.GetAutoWindowLevel()) == (150.0, 30.0, 0)
    assert logic.GetAppliedVolumeDisplayPresetId(display) == "MEDSEG_LIVER"
    assert register_volume_display_presets(), "registering twice must keep working"


def check_series_presets_from_dicom_pairs(scene: Any, work_dir: Path) -> None:
    """DICOM WindowCenter/Width pairs on the display node become presets (first applied), named by explanation."""
    from MedSegLib.dicom.mrml import apply_window_presets
    from MedSegLib.windowing.display import series_presets
    from MedSegLib.windowing.presets import find_preset

    volume = _ct_volume(scene)
    apply_window_presets(volume, [(40.0, 400.0, "SOFT_TISSUE"), (-600.0, 1500.0, "LUNG")])
    if not volume.GetAttribute("DICOM.WindowCenterWidthExplanation"):
        volume.SetAttribute("DICOM.WindowCenterWidthExplanation", "SOFT_TISSUE\\LUNG")
    presets = series_presets(volume)
    assert [(p.window, p.level) for p in presets] == [(400.0, 40.0), (1500.0, -600.0)], presets
    assert presets[0].description == "SOFT_TISSUE" and presets[1].description == "LUNG"
    display = volume.GetScalarVolumeDisplayNode()
    assert (display.GetWindow(), display.GetLevel(), display.GetAutoWindowLevel()) == (400.0, 40.0, 0)
    assert find_preset("dicom", presets) is presets[0]
    assert find_preset("dicom:2", presets) is presets[1]
    assert find_preset("lung", presets) is presets[1]


def asymmetric_phantom(flip_i: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """A volume with markers at patient right (1000), anterior (2000) and superior (3000); 0.5 x 1 x 3 mm voxels.

    Returns (array[k, j, i], IJKToRAS) with DICOM-like axes (i -> patient left, j -> posterior), or
    with i running to patient right when ``flip_i``.
    """
    shape = (6, 20, 30)
    array = np.full(shape, -1000, dtype=np.int16)
    ijk_to_ras = np.diag([0.5 if flip_i else -0.5, -1.0, 3.0, 1.0])
    right = slice(shape[2] - 3, shape[2]) if flip_i else slice(0, 3)
    array[:, 8:12, right] = 1000  # patient right, mid A-P
    array[:, 0:2, 12:18] = 2000  # anterior (j = 0), mid L-R
    array[5, 8:12, 12:18] = 3000  # superior slice only
    return array, ijk_to_ras


def check_render_orientation_and_aspect(scene: Any, work_dir: Path) -> None:
    """Axial: patient right on image left, anterior on top; pixels square in mm (aspect from spacing)."""
    from MedSegLib.windowing.render import WindowSpec, render_slice

    spec = WindowSpec(4000, 1000)  # -1000 -> 0, 1000 -> 127, 2000 -> 191, 3000 -> 255
    for flip in (False, True):
        array, ijk_to_ras = asymmetric_phantom(flip)
        image = render_slice(array, ijk_to_ras, spec, "axial", 2)
        assert image.shape == (40, 30), f"axial shape {image.shape} (rows 20 x 1 mm, cols 30 x 0.5 mm)"
        right = image[16:24, 0:3]
        assert (right == 127).all(), f"flip={flip}: patient right not on image left"
        assert (image[0:4, 12:18] == 191).all(), f"flip={flip}: anterior not at the top"
        coronal = render_slice(array, ijk_to_ras, spec, "coronal", 10)
        assert coronal.shape == (36, 30), f"coronal shape {coronal.shape} (6 slices x 3 mm at 0.5 mm pixels)"
        assert (coronal[0:6, 12:18] == 255).all(), f"flip={flip}: superior not at the top"
        assert (coronal[:, 0:3] == 127).all(), f"flip={flip}: coronal patient right not on image left"


def check_overlay_in_segment_colours(scene: Any, work_dir: Path) -> None:
    """Segments drawn in their colours (fill inside, opaque outline on the border) on the volume's grid."""
    import slicer

    from MedSegLib.volume_nodes import add_volume_node
    from MedSegLib.windowing.render import WindowSpec, render_slice, segment_masks

    array, ijk_to_ras = asymmetric_phantom()
    volume = add_volume_node(array, ijk_to_ras, "phantom", scene)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segment_id = segmentation.GetSegmentation().AddEmptySegment("right", "right", (1.0, 0.0, 0.0))
    mask = (array == 1000).astype(np.uint8)
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentation, segment_id, volume)
    masks = segment_masks(segmentation, volume)
    assert len(masks) == 1 and np.array_equal(masks[0].mask, mask.astype(bool))
    image = render_slice(array, ijk_to_ras, WindowSpec(4000, 1000), "axial", 2, masks, "both")
    assert image.shape == (40, 30, 3)
    assert tuple(image[16, 0]) == (255, 0, 0), f"outline pixel {image[16, 0]}"
    inside = image[19, 1]
    assert inside[0] > inside[1] == inside[2], f"fill pixel {inside} is not tinted red"
    assert tuple(image[30, 20]) == (0, 0, 0), "background must stay grey (black here)"


ALL_CHECKS: Dict[str, Callable[[Any, Path], None]] = {
    name: function for name, function in sorted(globals().items()) if name.startswith("check_")
}

__all__: List[str] = ["ALL_CHECKS", *ALL_CHECKS]
