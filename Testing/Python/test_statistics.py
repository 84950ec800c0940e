"""Segment statistics: Slicer's measurement names/units, known-geometry values, TotalSegmentator's
statistics.json, CSV/JSON output and the ``medseg stats`` command."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from MedSegLib.selftests import segmentation_selftests as selftests
from MedSegLib.statistics.segment_statistics import LABELMAP, SCALAR


def test_measurement_names_match_segment_statistics():
    from MedSegLib.statistics import MEASUREMENTS

    by_key = {m.key: (m.name, m.unit) for m in MEASUREMENTS}
    assert by_key[f"{LABELMAP}.voxel_count"] == ("Voxel count", "")
    assert by_key[f"{LABELMAP}.volume_mm3"] == ("Volume mm3", "mm3")
    assert by_key[f"{LABELMAP}.volume_cm3"] == ("Volume cm3", "cm3")
    assert by_key[f"{LABELMAP}.surface_area_mm2"] == ("Surface mm2", "mm2")
    assert by_key[f"{LABELMAP}.centroid_ras"][0] == "Centroid"
    for key, name in (
        ("min", "Minimum"),
        ("max", "Maximum"),
        ("mean", "Mean"),
        ("median", "Median"),
        ("stdev", "Standard deviation"),
        ("percentile_05", "Percentile 5"),
        ("percentile_95", "Percentile 95"),
    ):
        assert by_key[f"{SCALAR}.{key}"][0] == name


def test_ball_statistics_against_geometry(scene, tmp_path):
    """Oblique, anisotropic grid: volume exact, surface ~ 4 pi r^2, centroid and principal axes right."""
    from MedSegLib.segmentation.output import ensure_segmentation_node, write_segment
    from MedSegLib.selftests.runtime_selftests import random_oblique_ijk_to_ras
    from MedSegLib.statistics import compute_statistics
    from MedSegLib.volume_nodes import add_volume_node, ras_of_voxels

    spacing = (0.7, 0.8, 1.2)
    ijk_to_ras = random_oblique_ijk_to_ras(4, spacing=spacing)
    shape = (50, 70, 80)
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    centre = np.array([40.0, 35.0, 25.0])
    # an ellipsoid with semi-axes 20, 12, 8 mm along the grid axes i, j, k
    ellipsoid = (((i - centre[0]) * spacing[0]) / 20) ** 2 + (((j - centre[1]) * spacing[1]) / 12) ** 2 + (
        ((k - centre[2]) * spacing[2]) / 8
    ) ** 2 <= 1.0
    rng = np.random.default_rng(0)
    voxels = np.where(ellipsoid, rng.normal(60, 10, shape), -1000).astype(np.int16)
    volume = add_volume_node(voxels, ijk_to_ras, "ct", scene)
    segmentation = ensure_segmentation_node(volume)
    write_segment(segmentation, volume, "ellipsoid", ellipsoid)
    table = compute_statistics(segmentation, volume)
    count = int(ellipsoid.sum())
    voxel_volume = float(np.prod(spacing))
    assert table.value("ellipsoid", "voxel_count") == count
    assert table.value("ellipsoid", "volume_mm3") == pytest.approx(count * voxel_volume, rel=1e-9)
    assert table.value("ellipsoid", "volume_mm3") == pytest.approx(4 / 3 * np.pi * 20 * 12 * 8, rel=0.03)
    assert table.value("ellipsoid", "volume_cm3") == pytest.approx(count * voxel_volume / 1000, rel=1e-9)
    centroid = np.array(table.value("ellipsoid", "centroid_ras"))
    assert np.abs(centroid - ras_of_voxels(ijk_to_ras, [centre])[0]).max() < 0.05
    # longest principal axis (largest moment last in ITK) = grid axis i in RAS
    axis_i = ijk_to_ras[:3, 0] / np.linalg.norm(ijk_to_ras[:3, 0])
    major = np.array(table.value("ellipsoid", "principal_axis_z"))
    assert abs(abs(float(major @ axis_i)) - 1.0) < 0.01
    obb = sorted(table.value("ellipsoid", "obb_diameter_mm"))
    assert obb == pytest.approx([16, 24, 40], abs=2.0)
    # Knud Thomsen's ellipsoid surface approximation (error < 1.1 %)
    p = 1.6075
    surface = 4 * np.pi * (((20 * 12) ** p + (20 * 8) ** p + (12 * 8) ** p) / 3) ** (1 / p)
    assert table.value("ellipsoid", "surface_area_mm2") == pytest.approx(surface, rel=0.1)
    values = voxels[ellipsoid].astype(np.float64)
    assert table.value("ellipsoid", f"{SCALAR}.mean") == pytest.approx(values.mean())
    assert table.value("ellipsoid", f"{SCALAR}.stdev") == pytest.approx(values.std())
    assert table.value("ellipsoid", f"{SCALAR}.median") == pytest.approx(np.median(values))
    assert table.value("ellipsoid", f"{SCALAR}.percentile_95") == pytest.approx(np.percentile(values, 95))
    assert table.value("ellipsoid", f"{SCALAR}.min") == values.min()
    assert 0.5 < table.value("ellipsoid", "sphericity") < 1.0

    csv_path = table.write(tmp_path / "stats.csv")
    rows = list(csv.reader(csv_path.open()))
    assert rows[0][:4] == ["Segment", "Voxel count", "Volume mm3", "Volume cm3"]
    assert rows[1][0] == "ellipsoid" and int(rows[1][1]) == count
    data = json.loads(table.write(tmp_path / "stats.json").read_text())
    assert data["measurements"][f"{LABELMAP}.volume_mm3"] == {"name": "Volume mm3", "unit": "mm3"}
    assert data["segments"][0]["name"] == "ellipsoid"


def test_statistics_equal_totalsegmentator_json(shared_data, scene):
    """Same masks as TotalSegmentator's statistics.json: volume within 1 %, mean intensity within 0.01 HU."""
    from MedSegLib.node_io import load_volume
    from MedSegLib.segmentation.output import ensure_segmentation_node, write_segment
    from MedSegLib.statistics import compute_statistics
    from MedSegLib.volume_nodes import array_and_ijk_to_ras

    folder = shared_data / "totalsegmentator"
    reference = json.loads((folder / "example_seg_fast" / "statistics.json").read_text())
    names = json.loads((folder / "label_maps_total_and_total_mr.json").read_text())["total"]
    value_of = {name: int(value) for value, name in names.items()}
    ct = load_volume(folder / "example_ct_sm.nii.gz", scene)
    labels, _ = array_and_ijk_to_ras(load_volume(folder / "example_seg_fast.nii.gz", scene, label=True))
    segmentation = ensure_segmentation_node(ct)
    present = [name for name, stats in reference.items() if stats["volume"] > 0]
    assert len(present) >= 30
    for name in present:
        write_segment(segmentation, ct, name, labels == value_of[name])
    table = compute_statistics(segmentation, ct, shape_measures=False)
    worst = 0.0
    for name in present:
        volume = table.value(name, "volume_mm3")
        worst = max(worst, abs(volume - reference[name]["volume"]) / reference[name]["volume"])
        assert volume == pytest.approx(reference[name]["volume"], rel=0.01), name
        assert table.value(name, f"{SCALAR}.mean") == pytest.approx(reference[name]["intensity"], abs=0.01), name
    print(f"\n  statistics.json: {len(present)} structures, worst volume difference {worst * 100:.3f} %")


def test_cli_stats(scene, tmp_path, capsys):
    from MedSegLib.cli.main import main
    from MedSegLib.node_io import save_node

    volume, _ = selftests.phantom_volume(scene)
    ct = save_node(volume, tmp_path / "ct.nrrd")
    assert main(["segment", str(ct), "-m", "lungs", "-o", str(tmp_path / "lungs.seg.nrrd"), "-q"]) == 0
    assert main(["stats", str(ct), str(tmp_path / "lungs.seg.nrrd"), "-o", str(tmp_path / "s.json"), "-q"]) == 0
    data = json.loads((tmp_path / "s.json").read_text())
    assert [s["name"] for s in data["segments"]] == ["Right lung", "Left lung"]
    assert all(s[f"{LABELMAP}.volume_mm3"] > 0 for s in data["segments"])
    assert main(["segment", str(ct), "-m", "bone", "-o", str(tmp_path / "bone.nii.gz"), "-q"]) == 0
    assert (
        main(["stats", str(ct), str(tmp_path / "bone.nii.gz"), "-o", str(tmp_path / "b.csv"), "--no-shape", "-q"]) == 0
    )
    rows = list(csv.reader((tmp_path / "b.csv").open()))
    assert rows[1][0] == "Bone" and "Surface mm2" not in rows[0]
    assert main(["stats", str(ct), str(tmp_path / "bone.nii.gz"), "-o", str(tmp_path / "b.txt")]) == 2
    assert "csv or .json" in capsys.readouterr().err
    assert (
        main(["stats", str(ct), str(tmp_path / "bone.nii.gz"), "-o", str(tmp_path / "c.csv"), "--segments", "Liver"])
        == 2
    )
    assert "no segment named 'Liver'" in capsys.readouterr().err
