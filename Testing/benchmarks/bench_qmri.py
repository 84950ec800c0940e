"""Benchmark and Monte-Carlo accuracy of MedSeg's vectorised relaxometry fits vs scipy curve_fit and qmrpy.

    .venv/bin/python Testing/benchmarks/bench_qmri.py [--quick] [--subsample 200]

1. Speed on a 128x128x32 volume: IR T1 (7 TIs, magnitude, Rician SNR 50) and T2 (32 echoes, SNR 100). MedSeg
   fits every voxel; curve_fit and qmrpy fit a random subsample voxel by voxel and are extrapolated.
2. Accuracy on that subsample (identical data for all three): median and 95th percentile of |relative error|.
3. Monte-Carlo with known truth, Rician noise at SNR 20/50/100/1000 (SNR = M0 / sigma): bias (mean) and CoV.

curve_fit is started from the true T1/T2 (its best case); for magnitude IR, which has local minima (qmri_methods.md
1.6), it also starts at 100/400/1500/4000 ms and keeps the lowest-RSS answer, i.e. the per-voxel least-squares
optimum. Its speed is quoted per start (one curve_fit call per voxel), the fairest figure for it. qmrpy (if
installed) uses its defaults (RD-NLS for IR, scipy least_squares for T2).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "MedSegExtension"))

from MedSegLib.qmri import _kernels, fitting, models  # noqa: E402

TI = np.array([50.0, 100.0, 200.0, 400.0, 800.0, 1600.0, 3200.0])
TE = np.arange(1, 33) * 10.0
SHAPE = (32, 128, 128)


def rician(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return np.hypot(signal + sigma * rng.standard_normal(signal.shape), sigma * rng.standard_normal(signal.shape))


def curve_fit_ir(y: np.ndarray, truth: np.ndarray, starts: tuple = (100.0, 400.0, 1500.0, 4000.0)) -> np.ndarray:
    """Lowest-RSS curve_fit of |a + b e^(-TI/T1)| over starts at the true T1 and at ``starts``."""
    from scipy.optimize import curve_fit

    def model(t, a, b, t1):
        return np.abs(a + b * np.exp(-t / t1))

    out = np.full(len(y), np.nan)
    for v in range(len(y)):
        best = np.inf
        for start in (truth[v],) + tuple(starts):
            try:
                p, _ = curve_fit(model, TI, y[v], p0=[y[v, -1], -2 * y[v, -1], start], maxfev=5000)
            except RuntimeError:
                continue
            rss = float(np.sum((model(TI, *p) - y[v]) ** 2))
            if rss < best:
                best, out[v] = rss, p[2]
    return out


def curve_fit_t2(y: np.ndarray, truth: np.ndarray) -> np.ndarray:
    from scipy.optimize import curve_fit

    out = np.full(len(y), np.nan)
    for v in range(len(y)):
        try:
            p, _ = curve_fit(
                lambda t, m0, t2: m0 * np.exp(-t / t2), TE, y[v], p0=[y[v, 0] * 1.2, truth[v]], maxfev=5000
            )
            out[v] = p[1]
        except RuntimeError:
            pass
    return out


def qmrpy_fit(y: np.ndarray, kind: str) -> np.ndarray | None:
    try:
        import qmrpy
    except ImportError:
        return None
    out = np.full(len(y), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for v in range(len(y)):
            try:
                if kind == "ir":
                    out[v] = qmrpy.fit_t1_inversion_recovery(y[v], ti_ms=TI).params["t1_ms"]
                else:
                    out[v] = qmrpy.fit_t2_mono(y[v], te_ms=TE).params["t2_ms"]
            except Exception:  # noqa: BLE001 - a failed voxel is a NaN, as for curve_fit
                pass
    return out


def ours(kind: str, y_vn: np.ndarray) -> np.ndarray:
    data = y_vn.T
    if kind == "ir":
        return fitting.fit_t1_ir(data, TI, mask="none").maps["T1"].astype(np.float64)
    return fitting.fit_t2(data, TE, mask="none").maps["T2"].astype(np.float64)


def ours_volume(kind: str, volume: np.ndarray) -> fitting.QMRIResult:
    if kind == "ir":
        return fitting.fit_t1_ir(volume, TI, mask="none")
    return fitting.fit_t2(volume, TE, mask="none")


def timed(function, *args) -> tuple[float, object]:
    started = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - started, result


def timed_cpu(function, *args) -> tuple[float, float, object]:
    """(wall s, CPU s of this process over all threads, result)."""
    cpu = time.process_time()
    wall, result = timed(function, *args)
    return wall, time.process_time() - cpu, result


def errors(estimate: np.ndarray, truth: np.ndarray) -> str:
    relative = np.abs(estimate / truth - 1.0) * 100
    return f"median {np.nanmedian(relative):6.3f} %  p95 {np.nanpercentile(relative, 95):7.3f} %"


def speed_and_accuracy(subsample: int, quick: bool) -> None:
    rng = np.random.default_rng(0)
    shape = (8, 64, 64) if quick else SHAPE
    n = int(np.prod(shape))
    print(f"== speed: {shape[2]}x{shape[1]}x{shape[0]} = {n} voxels, {subsample} voxels for the per-voxel fitters ==")
    print(
        f"   {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (a shared machine: compare the ratios, "
        f"measured in the same run)"
    )
    for kind in ("ir", "t2"):
        if kind == "ir":
            truth = rng.uniform(100.0, 2500.0, n)
            y = rician(models.ir_signal(truth, 1000.0, TI, efficiency=1.95), 1000.0 / 50, rng)
        else:
            truth = rng.uniform(20.0, 300.0, n)
            y = rician(models.mono_exp_signal(truth, 1000.0, TE), 1000.0 / 100, rng)
        volume = np.ascontiguousarray(y.T.reshape((y.shape[1],) + shape))
        ours_volume(kind, volume[:, :1, :4, :4])  # compile (or load the numba cache) outside the timing
        ours_time, ours_cpu, fitted = timed_cpu(ours_volume, kind, volume)
        fitted = fitted.maps["T1" if kind == "ir" else "T2"].reshape(-1).astype(np.float64)
        pick = rng.choice(n, subsample, replace=False)
        cf_time, cf = timed(curve_fit_ir if kind == "ir" else curve_fit_t2, y[pick], truth[pick])
        if kind == "ir":
            cf_time /= 5.0  # five starts per voxel: quote the speed of one curve_fit call
        qm_pick = pick[: max(20, subsample // 2)]
        qm_time, qm = timed(qmrpy_fit, y[qm_pick], kind)
        rate = n / ours_time
        cf_rate = subsample / cf_time
        label = "IR T1 (7 TI)" if kind == "ir" else "T2 (32 echoes)"
        print(
            f"{label}: MedSeg {rate:10.0f} vox/s ({ours_time:.2f} s for {n}; {n / ours_cpu:.0f} vox per CPU-second "
            f"over {_kernels.thread_count()} threads)"
        )
        print(f"{'':16s}curve_fit {cf_rate:8.0f} vox/s -> x{rate / cf_rate:.0f} (whole volume ~{n / cf_rate:.0f} s)")
        if qm is not None:
            qm_rate = len(qm_pick) / qm_time
            print(f"{'':16s}qmrpy     {qm_rate:8.0f} vox/s -> x{rate / qm_rate:.0f}")
        print(f"{'':16s}accuracy on the same {subsample} voxels: MedSeg {errors(fitted[pick], truth[pick])}")
        print(f"{'':16s}{'':34s}curve_fit {errors(cf, truth[pick])}")
        if qm is not None:
            print(
                f"{'':16s}{'':34s}qmrpy ({len(qm_pick)}) {errors(qm, truth[qm_pick])}  "
                f"[MedSeg same voxels {errors(fitted[qm_pick], truth[qm_pick])}]"
            )
        agreement = np.abs(fitted[pick] / cf - 1.0)
        print(
            f"{'':16s}MedSeg vs curve_fit per voxel: median {np.nanmedian(agreement):.1e}, "
            f"max {np.nanmax(agreement):.1e}"
        )


def monte_carlo(voxels: int, reference_voxels: int) -> None:
    print(
        f"\n== Monte-Carlo: Rician noise, {voxels} realisations per cell; curve_fit, qmrpy and 'MedSeg same' use the "
        f"first {reference_voxels} (identical data); bias = mean relative error, CoV = SD/mean, both % =="
    )
    print(
        f"{'model':5s} {'truth':>6s} {'SNR':>5s} | {'MedSeg all':>10s} {'CoV':>6s} | "
        f"{'MedSeg same':>11s} {'CoV':>6s} | "
        f"{'curve_fit':>9s} {'CoV':>6s} | {'qmrpy':>7s} {'CoV':>6s}"
    )
    rng = np.random.default_rng(7)
    for kind, values in (("IR", (300.0, 800.0, 1500.0)), ("T2", (30.0, 80.0, 200.0))):
        for value in values:
            for snr in (20, 50, 100, 1000):
                truth = np.full(voxels, value)
                clean = (
                    models.ir_signal(truth, 1000.0, TI, efficiency=1.95)
                    if kind == "IR"
                    else models.mono_exp_signal(truth, 1000.0, TE)
                )
                y = rician(clean, 1000.0 / snr, rng)
                estimate = ours(kind.lower(), y)
                head = slice(0, reference_voxels)
                cf = (curve_fit_ir if kind == "IR" else curve_fit_t2)(y[head], truth[head])
                qm = qmrpy_fit(y[head], kind.lower())

                def cell(x: np.ndarray | None, value: float = value) -> str:
                    if x is None:
                        return f"{'n/a':>7s} {'':>6s}"
                    x = x[np.isfinite(x)]
                    return f"{100 * (x.mean() / value - 1):+7.2f} {100 * x.std() / x.mean():6.2f}"

                print(
                    f"{kind:5s} {value:6.0f} {snr:5d} |    {cell(estimate)} |     {cell(estimate[head])} |   "
                    f"{cell(cf)} | {cell(qm)}"
                )


def main() -> None:
    warnings.simplefilter("ignore")  # curve_fit's covariance/overflow warnings on failed voxels
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small volume and fewer Monte-Carlo voxels")
    parser.add_argument("--subsample", type=int, default=200)
    parser.add_argument("--skip-mc", action="store_true")
    args = parser.parse_args()
    speed_and_accuracy(args.subsample, args.quick)
    if not args.skip_mc:
        monte_carlo(500 if args.quick else 2000, 100 if args.quick else 200)


if __name__ == "__main__":
    main()
