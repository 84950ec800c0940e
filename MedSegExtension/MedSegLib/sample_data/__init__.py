"""Built-in sample data made by code: a chest/abdomen CT phantom and an MR relaxometry phantom.

Nothing is downloaded: demos, tutorials and tests write real DICOM series in a second or two, with
ground truth (label maps, T1/T2/M0 maps) known exactly. Same seed, same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Sequence

from MedSegLib.atomic import atomic_output
from MedSegLib.sample_data.ct_phantom import (
    DEFAULT_CT_SHAPE,
    DEFAULT_CT_SPACING_MM,
    LABEL_NAMES,
    TISSUE_HU,
    CTPhantom,
    make_ct_phantom,
    write_ct_phantom,
    write_ct_series,
)
from MedSegLib.sample_data.dicom_series_writer import PathLike, deterministic_uid
from MedSegLib.sample_data.mr_phantom import (
    DEFAULT_MR_SHAPE,
    DEFAULT_MR_SPACING_MM,
    DEFAULT_TI_MS,
    NIST_SPHERES_MS,
    MRPhantom,
    SphereSpec,
    add_rician_noise,
    default_echo_times,
    ir_signal,
    make_mr_phantom,
    rescale_for_storage,
    se_signal,
    simulate_ir_series,
    simulate_se_series,
    write_mr_ir_series,
    write_mr_se_series,
)

__all__ = [
    "CTPhantom",
    "DEFAULT_CT_SHAPE",
    "DEFAULT_CT_SPACING_MM",
    "DEFAULT_MR_SHAPE",
    "DEFAULT_MR_SPACING_MM",
    "DEFAULT_TI_MS",
    "LABEL_NAMES",
    "MRPhantom",
    "NIST_SPHERES_MS",
    "SphereSpec",
    "TISSUE_HU",
    "add_rician_noise",
    "default_echo_times",
    "deterministic_uid",
    "ir_signal",
    "make_ct_phantom",
    "make_mr_phantom",
    "rescale_for_storage",
    "se_signal",
    "simulate_ir_series",
    "simulate_se_series",
    "write_all_sample_data",
    "write_ct_phantom",
    "write_ct_series",
    "write_mr_ir_series",
    "write_mr_se_series",
    "write_truth_maps",
]


def write_truth_maps(
    out_dir: PathLike, arrays: Dict[str, object], spacing: Sequence[float], origin_lps: Sequence[float]
) -> Dict[str, Path]:
    """Write (slices, rows, cols) arrays as ``<name>.nrrd`` with the series' geometry (atomic writes).

    Kept in a folder of their own: a DICOM import of the series folders must not meet non-DICOM files.
    """
    import SimpleITK as sitk  # lazy: heavy import

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: Dict[str, Path] = {}
    for name, array in arrays.items():
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((float(spacing[2]), float(spacing[1]), float(spacing[0])))
        image.SetOrigin(tuple(float(v) for v in origin_lps))
        target = out / f"{name}.nrrd"
        with atomic_output(target) as temp_path:
            sitk.WriteImage(image, str(temp_path), True)
        written[name] = target
    return written


def write_all_sample_data(out_dir: PathLike, seed: int = 0) -> Dict[str, Path]:
    """Write ct/, mr_ir/, mr_se/ DICOM folders with default parameters, plus truth/ (NRRD ground truth).

    truth/ holds ct_labels, mr_labels, mr_t1_ms, mr_t2_ms, mr_m0 (.nrrd) and truth.json (label names,
    sphere table). Returns {"ct", "mr_ir", "mr_se", "truth"} -> folder.
    """
    root = Path(out_dir)
    ct = make_ct_phantom(seed=seed)
    mr = make_mr_phantom(seed=seed)
    paths = {
        "ct": write_ct_series(root / "ct", ct),
        "mr_ir": write_mr_ir_series(root / "mr_ir", phantom=mr),
        "mr_se": write_mr_se_series(root / "mr_se", phantom=mr),
    }
    truth = root / "truth"
    write_truth_maps(truth, {"ct_labels": ct.labels}, ct.spacing, ct.origin_lps)
    write_truth_maps(
        truth,
        {"mr_labels": mr.labels, "mr_t1_ms": mr.t1_ms, "mr_t2_ms": mr.t2_ms, "mr_m0": mr.m0},
        mr.spacing,
        mr.origin_lps,
    )
    description = {
        "ct_labels": {str(value): name for value, name in ct.label_names.items()},
        "mr_labels": {str(value): name for value, name in mr.label_names.items()},
        "mr_spheres": [
            {"number": s.number, "center_lps_mm": list(s.center_lps), "radius_mm": s.radius_mm,
             "t1_ms": s.t1_ms, "t2_ms": s.t2_ms, "m0": s.m0}
            for s in mr.spheres
        ],
        "mr_field_strength_t": mr.field_strength_t,
        "mr_array": mr.array,
    }
    with atomic_output(truth / "truth.json") as temp_path:
        temp_path.write_text(json.dumps(description, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    paths["truth"] = truth
    return paths
