"""Windowing: exact functions vs pydicom / float64 / VTK, presets, display nodes, rendering and the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from MedSegLib.selftests import windowing_selftests


@pytest.mark.parametrize("name", sorted(windowing_selftests.ALL_CHECKS))
def test_selftest(name, scene, tmp_path):
    windowing_selftests.ALL_CHECKS[name](scene, tmp_path)


# ---------------------------------------------------------------------------------------------------
# helpers


def read_png(path: Path) -> np.ndarray:
    """Decode the PNGs MedSeg writes (8-bit grey or RGB, filter 0) without extra dependencies."""
    import struct
    import zlib

    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, idat, header = 8, b"", None
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        payload = data[position + 8 : position + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", payload)
        elif kind == b"IDAT":
            idat += payload
        position += 12 + length
    cols, rows, _, color_type = header[:4]
    channels = 3 if color_type == 2 else 1
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(rows, 1 + cols * channels)
    assert (raw[:, 0] == 0).all(), "only filter type 0 is expected"
    image = raw[:, 1:].reshape(rows, cols, channels)
    return image[..., 0] if channels == 1 else image


def run_cli(*argv) -> int:
    from MedSegLib.cli.main import main

    return main(["window", *[str(a) for a in argv]])


@pytest.fixture()
def phantom_nrrd(scene, tmp_path) -> Path:
    """The asymmetric phantom (0.5 x 1 x 3 mm) saved as NRRD."""
    from MedSegLib.node_io import save_node
    from MedSegLib.volume_nodes import add_volume_node

    array, ijk_to_ras = windowing_selftests.asymmetric_phantom()
    array = array + np.random.default_rng(0).integers(-40, 40, array.shape).astype(np.int16)
    path = save_node(add_volume_node(array, ijk_to_ras, "phantom", scene), tmp_path / "phantom.nrrd")
    scene.Clear(0)
    return path


def load_array(path: Path) -> np.ndarray:
    from MedSegLib.node_io import load_volume
    from MedSegLib.volume_nodes import array_and_ijk_to_ras

    return array_and_ijk_to_ras(load_volume(path), copy=True)


# ---------------------------------------------------------------------------------------------------
# presets files


def write_json(path: Path, document) -> Path:
    path.write_text(json.dumps(document) if not isinstance(document, str) else document)
    return path


SCHEMA = "medseg-window-presets/1"
GOOD_ENTRY = {"name": "My vessels", "window": 600, "level": 150}
GOOD_USER_FILE = {"schema": SCHEMA, "presets": [GOOD_ENTRY]}


def doc(*entries) -> dict:
    return {"schema": SCHEMA, "presets": list(entries)}


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("{not json", "not valid JSON"),
        ([], "JSON object"),
        ({"schema": "other", "presets": []}, "'schema' must be"),
        ({"schema": SCHEMA, "presets": {}}, "'presets' must be a list"),
        (doc({"window": 1, "level": 2}), "preset #1: 'name' is required"),
        (doc({"name": "A", "window": 0, "level": 2}), "preset #1 ('A'): 'window' must be > 0"),
        (doc(GOOD_ENTRY, {"name": "B", "level": 2}), "preset #2 ('B'): 'window' and 'level' are required"),
        (doc({"name": "C", "window": "wide", "level": 2}), "preset #1 ('C'): 'window' must be a finite number"),
        (doc({"name": "D", "window": 1, "level": 2, "widht": 3}), "unknown key(s) widht"),
        (doc({"name": "E", "kind": "percentile", "lower_percentile": 99, "upper_percentile": 1}),
         "lower_percentile < upper"),
        (doc({"name": "F", "window": 1, "level": 2}, {"name": "f", "window": 3, "level": 4}), "repeats preset #1"),
        (doc({"name": "G", "window": 1, "level": 2, "id": "9x"}), "'id' must match"),
    ],
)  # fmt: skip
def test_invalid_preset_files_name_file_and_entry(tmp_path, document, message):
    from MedSegLib.errors import UserInputError
    from MedSegLib.windowing.presets import load_presets

    path = write_json(tmp_path / "mine.json", document)
    with pytest.raises(UserInputError) as caught:
        load_presets(path)
    assert str(path) in caught.value.one_line()
    assert message in caught.value.one_line(), caught.value.one_line()


def test_user_presets_from_option_and_environment(tmp_path, monkeypatch):
    from MedSegLib.windowing.presets import ENV_VAR, find_preset, load_presets

    mine = write_json(tmp_path / "mine.json", GOOD_USER_FILE)
    lung = {"name": "Lung", "window": 1600, "level": -550, "source": "our department"}
    override = write_json(tmp_path / "override.json", doc(lung))
    monkeypatch.setenv(ENV_VAR, str(override))
    presets = load_presets(mine)
    assert find_preset("my vessels", presets).window == 600
    assert find_preset("my vessels", presets).group == "user"
    lung = find_preset("lung", presets)
    assert (lung.window, lung.level, lung.source) == (1600, -550, "our department")
    assert sum(1 for p in presets if p.name == "Lung") == 1


def test_cli_bad_presets_file_is_a_one_line_error(tmp_path, capsys):
    path = write_json(tmp_path / "bad.json", doc({"name": "X"}))
    assert run_cli("--list-presets", "--presets", path) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and str(path) in error and "preset #1 ('X')" in error


def test_list_presets_json(capsys):
    assert run_cli("--list-presets", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert isinstance(listed, list) and all({"name", "window", "level", "source"} <= set(item) for item in listed)
    by_name = {item["name"]: item for item in listed}
    assert (by_name["CT-Air"]["window"], by_name["CT-Air"]["level"]) == (1000, -426)
    assert by_name["Mediastinum"]["source"].startswith("Radiopaedia")
    assert by_name["MR-Auto"]["window"] is None and by_name["MR-Auto"]["kind"] == "percentile"
    for name in windowing_selftests.CLINICAL_PRESETS:
        assert name in by_name


# ---------------------------------------------------------------------------------------------------
# CLI outputs


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz"])
@pytest.mark.parametrize(("function", "level", "width"), [("seed", 40, 400), ("linear", -600, 1500),
                                                          ("linear-exact", 0.5, 3), ("sigmoid", 50, 350)])  # fmt: skip
def test_volume_output_is_the_function_of_the_input(phantom_nrrd, tmp_path, suffix, function, level, width):
    from MedSegLib.windowing.voi_lut import window_reference

    out = tmp_path / f"windowed{suffix}"
    assert run_cli(phantom_nrrd, "--wl", level, "--ww", width, "--function", function, "-o", out, "-q") == 0
    source, source_matrix = load_array(phantom_nrrd)
    windowed, matrix = load_array(out)
    assert windowed.dtype == np.uint8
    assert np.abs(matrix - source_matrix).max() < 1e-5, "output must stay on the input grid"
    assert np.array_equal(windowed, window_reference(source, level, width, function, np.uint8))


def test_png_orientation_aspect_and_values(phantom_nrrd, tmp_path):
    from MedSegLib.windowing.fast_window import window

    out = tmp_path / "axial.png"
    assert run_cli(phantom_nrrd, "--wl", 1000, "--ww", 4000, "--slice", 2, "-o", out, "-q") == 0
    image = read_png(out)
    assert image.shape == (40, 30), "rows: 20 x 1 mm, cols: 30 x 0.5 mm -> square 0.5 mm pixels"
    assert image[16:24, 0:3].mean() > 120, "patient right must be on the image's left"
    assert image[16:24, 27:30].mean() < 10, "patient left (air) on the image's right"
    assert image[0:4, 12:18].mean() > 180, "anterior must be at the top"
    source, _ = load_array(phantom_nrrd)
    expected = window(source[2], 1000, 4000)  # axial slice 2, before orientation/stretch
    assert sorted(np.unique(image)) == sorted(np.unique(expected)), "PNG grey values are the exact window values"
    sagittal = tmp_path / "sagittal.png"
    window_args = ("--wl", 1000, "--ww", 4000)
    assert run_cli(phantom_nrrd, *window_args, "--view", "sagittal", "--slice", 1, "-o", sagittal, "-q") == 0
    assert read_png(sagittal).shape == (18, 20), "sagittal: 6 x 3 mm rows, 20 x 1 mm cols at 1 mm pixels"


def test_montage_side_by_side_and_all_slices(phantom_nrrd, tmp_path):
    montage = tmp_path / "montage.png"
    assert run_cli(phantom_nrrd, "--preset", "bone", "--montage", "0", "--columns", "4", "-o", montage, "-q") == 0
    assert read_png(montage).shape == (2 * 40 + 4, 4 * 30 + 3 * 4), "6 axial tiles in 4 columns, 4-pixel gaps"
    default = tmp_path / "montage16.png"
    assert run_cli(phantom_nrrd, "--preset", "bone", "--montage", "--view", "coronal", "-o", default, "-q") == 0
    assert read_png(default).shape == (4 * 36 + 3 * 4, 4 * 30 + 3 * 4), "16 coronal tiles in a 4 x 4 grid"
    trio = tmp_path / "trio.png"
    assert run_cli(phantom_nrrd, "--preset", "lung,mediastinum,bone", "-o", trio, "-q") == 0
    image = read_png(trio)
    assert image.shape == (40, 3 * 30 + 2 * 4)
    assert not np.array_equal(image[:, :30], image[:, 34:64]), "lung and mediastinum windows differ"
    folder = tmp_path / "slices"
    assert run_cli(phantom_nrrd, "--preset", "lung", "-o", folder, "-q") == 0
    assert sorted(p.name for p in folder.iterdir()) == [f"axial_{i:04d}.png" for i in range(6)]
    named = tmp_path / "named" / "ct.png"
    named.parent.mkdir()
    assert run_cli(phantom_nrrd, "--preset", "lung", "--all-slices", "--view", "sagittal", "-o", named, "-q") == 0
    assert len(list(named.parent.glob("ct_*.png"))) == 30


def test_overlay_from_seg_nrrd(phantom_nrrd, tmp_path, scene):
    import slicer

    from MedSegLib.node_io import load_volume, save_node

    volume = load_volume(phantom_nrrd, scene)
    array = slicer.util.arrayFromVolume(volume)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segment_id = segmentation.GetSegmentation().AddEmptySegment("right", "right", (0.0, 1.0, 0.0))
    mask = np.zeros(array.shape, np.uint8)
    mask[:, 8:12, 0:3] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentation, segment_id, volume)
    seg_path = save_node(segmentation, tmp_path / "seg.seg.nrrd")
    scene.Clear(0)
    out = tmp_path / "overlay.png"
    assert run_cli(phantom_nrrd, "--preset", "bone", "--slice", 2, "--overlay", seg_path, "--overlay-mode",
                   "outline", "-o", out, "-q") == 0  # fmt: skip
    image = read_png(out)
    assert image.shape == (40, 30, 3)
    assert tuple(image[16, 0]) == (0, 255, 0), "segment outline in the segment's colour"
    assert image[19, 1, 0] == image[19, 1, 1] == image[19, 1, 2], "outline mode leaves the inside grey"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--preset", "nonsense"], "unknown preset 'nonsense'"),
        (["--wl", "40"], "give --preset NAME, or both --wl"),
        (["--preset", "lung", "--slice", "99"], "slice 99 is out of range"),
        (["--wl", "40", "--ww", "0.5", "--function", "linear"], "LINEAR windowing needs a width >= 1"),
        (["--preset", "lung", "--wl", "1", "--ww", "2"], "exclude each other"),
    ],
)
def test_cli_user_errors(phantom_nrrd, tmp_path, capsys, argv, message):
    assert run_cli(phantom_nrrd, *argv, "-o", tmp_path / "x.png", "-q") == 2
    assert message in capsys.readouterr().err


def test_dicom_phantom_series_presets(tmp_path, capsys, scene):
    sample_data = pytest.importorskip("MedSegLib.sample_data")
    folder = sample_data.write_ct_phantom(tmp_path / "ct", shape=(8, 64, 64), seed=0)
    assert run_cli(folder, "--list-presets", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    dicom = [item for item in listed if item["group"] == "dicom"]
    assert [(d["window"], d["level"]) for d in dicom] == [(400.0, 40.0), (1500.0, -600.0), (2000.0, 500.0)]
    out = tmp_path / "dicom.nrrd"
    assert run_cli(folder, "--preset", "dicom:2", "-o", out, "-q") == 0
    from MedSegLib.inputs import load_input_volume
    from MedSegLib.runtime import boot
    from MedSegLib.volume_nodes import array_and_ijk_to_ras
    from MedSegLib.windowing.voi_lut import window_reference

    hu, _ = array_and_ijk_to_ras(load_input_volume(str(folder), boot().scene))
    assert np.array_equal(load_array(out)[0], window_reference(hu, -600, 1500)), "DICOM pair 2 = W1500 / L-600"
    assert run_cli(folder, "--preset", "dicom", "--montage", "4", "-o", tmp_path / "m.png", "-q") == 0
    assert read_png(tmp_path / "m.png").ndim == 2


def test_real_ct_two_window_pairs(shared_data, scene):
    """totalsegmentator/example_ct_dicom carries WC 40\\300 / WW 300\\1500: both become presets, first applied."""
    from MedSegLib.inputs import load_input_volume
    from MedSegLib.windowing.display import series_presets
    from MedSegLib.windowing.fast_window import window
    from MedSegLib.windowing.voi_lut import window_reference

    folder = shared_data / "totalsegmentator" / "example_ct_dicom"
    if not folder.is_dir():
        pytest.skip("example_ct_dicom not in shared data")
    volume = load_input_volume(str(folder), scene)
    presets = series_presets(volume)
    assert [(p.window, p.level) for p in presets] == [(300.0, 40.0), (1500.0, 300.0)]
    display = volume.GetScalarVolumeDisplayNode()
    assert (display.GetWindow(), display.GetLevel(), display.GetAutoWindowLevel()) == (300.0, 40.0, 0)
    import slicer

    hu = slicer.util.arrayFromVolume(volume)
    for function in ("seed", "linear", "sigmoid"):
        assert np.array_equal(window(hu, 40, 300, function), window_reference(hu, 40, 300, function))


def test_numpy_backend_without_numba(monkeypatch):
    """The path a 3D Slicer without numba takes is exact too (chunked LUT gather / numpy on threads)."""
    from MedSegLib.windowing import fast_window
    from MedSegLib.windowing.voi_lut import window_reference

    monkeypatch.setenv(fast_window.BACKEND_ENV, "numpy")
    assert fast_window.backend() == "numpy"
    values = np.random.default_rng(1).integers(-32768, 32767, size=(3, 300, 301)).astype(np.int16)
    for function in ("seed", "linear-exact", "sigmoid"):
        assert np.array_equal(fast_window.window(values, 40, 400, function, np.uint16, threads=2),
                              window_reference(values, 40, 400, function, np.uint16))  # fmt: skip
    floats = values.astype(np.float32) / 7
    assert np.array_equal(fast_window.window(floats, 40, 400), window_reference(floats, 40, 400))


def test_backend_choice(monkeypatch):
    from MedSegLib.windowing import fast_window

    monkeypatch.delenv(fast_window.BACKEND_ENV, raising=False)
    with pytest.raises(ValueError):
        fast_window.backend(requested="gpu")
    if not fast_window.numba_available():
        assert fast_window.backend(10) == "numpy"
        return
    assert fast_window.warm_up()
    assert fast_window.backend(10) == "numba", "once warm, auto uses numba for any size"
    assert fast_window.backend(10, "numpy") == "numpy"


def test_demo_helper_uses_exact_window():
    from MedSegLib.display_slices import window_to_uint8
    from MedSegLib.windowing.voi_lut import window_reference

    values = np.arange(-2000, 2000, dtype=np.int16)
    assert np.array_equal(window_to_uint8(values, 40, 400), window_reference(values, 40, 400))
    assert os.environ.get("MEDSEG_WINDOW_BACKEND", "auto") in ("auto", "numba", "numpy")
