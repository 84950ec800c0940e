"""Real ISMRM/NIST system phantom data (hazen_relaxometry): sphere means against reference_values.json.

Sphere ROIs come from hazen's template sphere centres mapped onto our own M0 map (``qmri.phantom``), with a
radius of half the detected sphere radius. The T1 fit is IR with the per-image TR term (Siemens site 1 lengthens TR
with TI) and polarity restoration; the T2 fit is mono-exponential without the first echo (hazen also skips it).

Measurable range (decided from the protocol and the expected value, not from the results):
- IR T1: at least three TIs on the recovering part of the curve, i.e. with e^(-TI/T1) >= 0.1 (TI <= T1 ln 10),
  and T1 <= 2 TI_max. The fit has three unknowns (a, b, T1): the recovered images fix the plateau a, and only the
  images still recovering carry b and T1; with two of them (b, T1) are solved exactly, with no redundancy against
  noise, and in magnitude data the earlier one usually sits near the null, where its sign is a guess. (With TIs of
  50, 100, 200 ... ms this needs T1 >= 200 / ln 10 = 87 ms: the GE plate 4 sphere 14, 73 ms, has only TI 50 and
  100 ms left, and its TI 50 ms image is at 7 % of the plateau, about 3 noise SD, so RD-NLS-PR's sign for it decides
  between our 88 ms and hazen's 73 ms.) Longer T1 than 2 TI_max barely curves over the sampled TIs, so T1 trades
  off against the inversion efficiency.
- T2: TE_first_used <= T2 <= 5 TE_max. Shorter T2 has decayed into the noise before the first fitted echo; longer
  T2 loses under 20 % of its signal over the train.

Run ``python Testing/Python/test_qmri_hazen.py`` to print the per-sphere table (also versus published NIST values).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

# (folder, sphere number) -> why our mean disagrees with hazen's own number although the sphere is in range
KNOWN_DISAGREEMENTS: Dict[tuple, str] = {}

RECOVERING = 0.1  # e^(-TI/T1) above this: the image is still recovering (carries T1); below: at the plateau
MIN_RECOVERING_IMAGES = 3  # more images than the two unknowns (b, T1) they determine


def measurable(parameter: str, value_ms: float, times: List[float]) -> bool:
    if parameter == "T1":
        recovering = sum(np.exp(-t / value_ms) >= RECOVERING for t in times)
        return recovering >= MIN_RECOVERING_IMAGES and value_ms <= 2.0 * max(times)
    return min(times) <= value_ms <= 5.0 * max(times)


def evaluate(shared: Path) -> List[Dict]:
    """Fit every hazen dataset and return one row per sphere."""
    from MedSegLib.dicom.loader import load_folder
    from MedSegLib.qmri import fitting, phantom

    base = shared / "hazen_relaxometry"
    reference = json.loads((base / "reference_values.json").read_text())
    rows = []
    for dataset in reference["datasets"]:
        loaded = load_folder(base / dataset["folder"], use_philips_scale_slope=True)
        assert len(loaded) == 1, f"{dataset['folder']}: expected one multi-volume acquisition"
        volume = loaded[0]
        data = volume.array.astype(np.float64)
        parameter = dataset["parameter"]
        if parameter == "T1":
            times = [p["InversionTime"] for p in volume.per_volume]
            tr = [p["RepetitionTime"] for p in volume.per_volume]
            result = fitting.fit_t1_ir(data, times, tr, mask="none")
            used_times = times
        else:
            times = [p["EchoTime"] for p in volume.per_volume]
            result = fitting.fit_t2(data, times, drop_first_echo=True, mask="none")
            used_times = sorted(times)[1:]
        plate = dataset["plate"]
        template = reference["template_sphere_centres_row_col"][f"plate{plate}"][:14]
        rois = phantom.locate_spheres(result.maps["M0"][0], template)
        values = result.maps[parameter][0]
        published = reference["published_values_hazen"][f"plate{plate}_{parameter.lower()}"]["1.5T"]
        for index, roi in enumerate(rois.masks(values.shape)):
            expected = dataset["expected_ms"][index]
            mean = float(values[roi].mean())
            rows.append(
                {
                    "folder": dataset["folder"],
                    "sphere": index + 1,
                    "parameter": parameter,
                    "ours": mean,
                    "expected": expected,
                    "published": published[index],
                    "in_range": measurable(parameter, expected, used_times),
                    "passes": abs(mean - expected) <= 0.02 * expected + 1.0,
                    "matched_spheres": rois.matched,
                }
            )
    return rows


def format_table(rows: List[Dict]) -> str:
    lines = [
        f"{'dataset':28s} {'sph':>3s} {'ours':>8s} {'hazen':>8s} {'dev%':>7s} {'NIST':>8s} {'vsNIST%':>8s} "
        f"{'range':>5s} result"
    ]
    for row in rows:
        deviation = 100 * (row["ours"] / row["expected"] - 1)
        vs_nist = 100 * (row["ours"] / row["published"] - 1)
        verdict = "pass" if row["passes"] else ("FAIL" if row["in_range"] else "fail (outside range)")
        if (row["folder"], row["sphere"]) in KNOWN_DISAGREEMENTS:
            verdict += " [known]"
        lines.append(
            f"{row['folder'] + ' ' + row['parameter']:28s} {row['sphere']:3d} {row['ours']:8.1f} "
            f"{row['expected']:8.1f} {deviation:7.2f} {row['published']:8.1f} {vs_nist:8.2f} "
            f"{'in' if row['in_range'] else 'out':>5s} {verdict}"
        )
    return "\n".join(lines)


def test_hazen_phantom_sphere_means(shared_data):
    if not (shared_data / "hazen_relaxometry").is_dir():
        pytest.skip("hazen_relaxometry data not present")
    rows = evaluate(shared_data)
    print("\n" + format_table(rows))
    assert len(rows) == 6 * 14
    assert all(row["matched_spheres"] >= 9 for row in rows), "sphere template placement failed"
    in_range = [row for row in rows if row["in_range"]]
    assert len(in_range) >= 2 * len(rows) // 3  # the range rule must keep most spheres (57 of 84 today)
    failures = [
        (row["folder"], row["sphere"], round(row["ours"], 1), row["expected"])
        for row in in_range
        if not row["passes"] and (row["folder"], row["sphere"]) not in KNOWN_DISAGREEMENTS
    ]
    assert not failures, failures
    still_known = [
        key for key in KNOWN_DISAGREEMENTS if any((r["folder"], r["sphere"]) == key and not r["passes"] for r in rows)
    ]
    assert still_known == list(KNOWN_DISAGREEMENTS), "a known disagreement disappeared: update the list"


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root / "MedSegExtension"))
    print(format_table(evaluate(root.parent / "shared" / "data")))
