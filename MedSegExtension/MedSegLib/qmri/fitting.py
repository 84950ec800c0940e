"""Relaxometry fits on arrays: IR / VFA / Look-Locker T1, mono-exponential / EPG T2, T2*, with quality maps.

Input is ``data`` of shape (N, ...) (N images, any spatial shape, e.g. (N, k, j, i)) plus the acquisition values.
Every fit returns a ``QMRIResult`` whose ``maps`` hold the parameter maps, ``M0``, ``R2`` (coefficient of
determination in the signal domain), ``RMSE`` (sqrt(RSS/N), signal units) and ``status`` (uint8 bitmask, see
``engine.STATUS_*``). Voxels outside the mask or with unusable input are 0 in every map and flagged in ``status``;
fitted values outside their physical range are reported as fitted and flagged, never clipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np

from MedSegLib.progress import CancelToken, ProgressCallback
from MedSegLib.qmri import _kernels, engine, models
from MedSegLib.qmri.engine import (
    STATUS_DEGENERATE,
    STATUS_INVALID_INPUT,
    STATUS_MASKED,
    STATUS_OUT_OF_RANGE,
    STATUS_POLARITY_AMBIGUOUS,
)

UNITS = {"T1": "ms", "T2": "ms", "T2star": "ms", "R2star": "1/s", "T1star": "ms", "RMSE": "signal", "R2": "1"}

# search ranges (ms); a value on the bound is flagged STATUS_AT_BOUND
T1_RANGE_MS = (1.0, 10000.0)
T2_RANGE_MS = (1.0, 5000.0)
T2STAR_RANGE_MS = (0.5, 2000.0)


@dataclass
class QMRIResult:
    """Maps of one fit, each with the spatial shape of the input; ``info`` records how they were made."""

    maps: Dict[str, np.ndarray]
    primary: str  # name of the main parameter map: T1, T2 or T2star
    info: Dict[str, Any] = field(default_factory=dict)

    def status_counts(self) -> Dict[str, int]:
        status = self.maps["status"]
        counts = {"fitted": int(np.count_nonzero(status == 0))}
        for bit, name in engine.STATUS_NAMES.items():
            counts[name] = int(np.count_nonzero(status & bit))
        return counts


# ----------------------------------------------------------------------------------------------------------
# masks


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of the finite values (numpy only, so it also runs without SimpleITK)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0 or values.min() == values.max():
        return float(values.min()) if values.size else 0.0
    hist, edges = np.histogram(values, bins=bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    weight0 = np.cumsum(hist)
    weight1 = weight0[-1] - weight0
    sum0 = np.cumsum(hist * centres)
    mean0 = sum0 / np.maximum(weight0, 1)
    mean1 = (sum0[-1] - sum0) / np.maximum(weight1, 1)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def auto_mask(image: np.ndarray) -> np.ndarray:
    """Foreground by Otsu's threshold on one image (the brightest of a series, so no tissue sits at its null)."""
    from scipy import ndimage

    image = np.abs(np.asarray(image, dtype=np.float64))
    mask = image > otsu_threshold(image)
    labels, count = ndimage.label(mask)
    if count > 1:  # drop isolated noise voxels just above the threshold (islands under 0.1 % of the mask)
        sizes = np.bincount(labels.reshape(-1))
        small = sizes < max(2, 0.001 * mask.sum())
        small[0] = False
        mask[small[labels]] = False
    return mask


def _resolve_mask(mask: Any, data: np.ndarray, reference: str, first: int = 0) -> np.ndarray:
    """``mask`` as a boolean array; "auto" is Otsu on the brightest sample ("max") or on image ``first``."""
    spatial = data.shape[1:]
    if mask is None or (isinstance(mask, str) and mask == "auto"):
        image = np.abs(data).max(axis=0) if reference == "max" else np.abs(data[first])
        return auto_mask(image)
    if isinstance(mask, str) and mask == "none":
        return np.ones(spatial, dtype=bool)
    mask = np.asarray(mask)
    if mask.shape != spatial:
        raise ValueError(f"mask shape {mask.shape} differs from the image shape {spatial}")
    return mask.astype(bool)


# ----------------------------------------------------------------------------------------------------------
# shared driver


def _sorted_times(data: np.ndarray, times: Sequence[float], what: str) -> tuple[np.ndarray, np.ndarray]:
    """(sorted times, sort order of the images); checks the counts agree."""
    times = np.asarray(times, dtype=np.float64).reshape(-1)
    if data.shape[0] != times.size:
        raise ValueError(f"{data.shape[0]} images but {times.size} {what} values")
    if times.size < 2:
        raise ValueError(f"at least two {what} values are needed")
    if not np.all(np.isfinite(times)):
        raise ValueError(f"{what} values must be finite numbers: {times.tolist()}")
    order = np.argsort(times, kind="stable")
    return times[order], order


def _prepare(data: Any, times: Sequence[float], what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(data sorted by ``times``, sorted times, sort order); checks the counts agree."""
    data = np.asarray(data)
    times, order = _sorted_times(data, times, what)
    return data[order], times, order


def _voxels(data: np.ndarray, mask: np.ndarray, absolute: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(V, N) float64 signal of the masked voxels, their flat indices and the invalid-input flags."""
    flat = data.reshape(data.shape[0], -1)
    index = np.flatnonzero(mask.reshape(-1))
    mask_flat = mask.reshape(-1)
    y = np.empty((len(index), flat.shape[0]))
    block = 16384  # transpose in cache-sized blocks: a whole-volume transposing copy is several times slower
    written = 0
    for start in range(0, flat.shape[1], block):
        part = flat[:, start : start + block]
        inside = mask_flat[start : start + block]
        if not inside.all():
            part = part[:, inside]
        y[written : written + part.shape[1]] = np.abs(part.T) if absolute else part.T
        written += part.shape[1]
    # row sums by matrix product: numpy reductions over a short trailing axis are ~10x slower
    magnitude_sum = (y if absolute else np.abs(y)) @ np.ones(y.shape[1])
    invalid = ~np.isfinite(magnitude_sum) | (magnitude_sum == 0)
    y[invalid] = 0.0
    return y, index, invalid


def _goodness(y: np.ndarray, rss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(R^2, RMSE) in the signal domain; R^2 uses the magnitude data's own mean."""
    total = y @ np.ones(y.shape[1])
    ss_tot = np.maximum(np.einsum("vn,vn->v", y, y) - total * total / y.shape[1], 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(ss_tot > 0, 1.0 - rss / ss_tot, 0.0)
    return r2, np.sqrt(rss / y.shape[1])


def _assemble(
    spatial: tuple, index: np.ndarray, mask: np.ndarray, values: Dict[str, np.ndarray], status: np.ndarray
) -> Dict[str, np.ndarray]:
    size = int(np.prod(spatial))
    maps: Dict[str, np.ndarray] = {}
    for name, vector in values.items():
        if len(index) == size:  # every voxel fitted (mask "none"): no scatter
            full = np.asarray(vector, dtype=np.float32).copy()
        else:
            full = np.zeros(size, dtype=np.float32)
            full[index] = vector
        maps[name] = np.nan_to_num(full, copy=False, nan=0.0, posinf=0.0, neginf=0.0).reshape(spatial)
    full_status = np.full(size, STATUS_MASKED, dtype=np.uint8)
    full_status[index] = status
    maps["status"] = full_status.reshape(spatial)
    return maps


def _fit_stack(
    data: np.ndarray,
    order: np.ndarray,
    times: np.ndarray,
    spatial_mask: np.ndarray,
    kind: int,
    basis: Callable[[np.ndarray], np.ndarray],
    bounds: tuple[float, float],
    grid_size: int,
    absolute: bool,
    polarity: bool,
    progress: Optional[ProgressCallback],
    cancel: Optional[CancelToken],
    tr: Optional[np.ndarray] = None,
) -> tuple[engine.VoxelFit, np.ndarray]:
    """Separable fit of the masked voxels of the unsorted stack ``data`` (N, ...); returns (fit, flat indices)."""
    flat = data.reshape(data.shape[0], -1)
    index = np.flatnonzero(spatial_mask.reshape(-1))
    fit = engine.fit_voxels(
        flat,
        order,
        index,
        times,
        kind,
        basis,
        bounds[0],
        bounds[1],
        tr=tr,
        grid_size=grid_size,
        absolute=absolute,
        polarity_restore=polarity,
        progress=progress,
        cancel=cancel,
    )
    return fit, index


# ----------------------------------------------------------------------------------------------------------
# T1


def fit_t1_ir(
    data: Any,
    ti_ms: Sequence[float],
    tr_ms: Optional[Sequence[float] | float] = None,
    magnitude: Optional[bool] = None,
    mask: Any = "auto",
    t1_range_ms: tuple[float, float] = T1_RANGE_MS,
    grid_size: int = 64,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> QMRIResult:
    """Inversion-recovery T1: ``S = M0 (1 + e^(-TR/T1)) - eff M0 e^(-TI/T1)`` (RD-NLS, Barral 2010).

    ``tr_ms`` per image (or one value) adds the incomplete-recovery term; ``None`` or one shared TR is the
    ``a + b e^(-TI/T1)`` model, whose M0 then absorbs the TR factor. Magnitude data get polarity restoration
    (RD-NLS-PR); signed (real, phase-corrected) data are fitted as they are. ``magnitude=None`` decides from the
    data: any negative value means signed images. Maps: T1, M0, efficiency
    (``-b/a``: 2 is a perfect inversion), R2, RMSE, status, restored (number of negated leading images).
    """
    data = np.asarray(data)
    ti, order = _sorted_times(data, ti_ms, "inversion time")
    if magnitude is None:
        magnitude = not bool(np.nanmin(data) < 0)
    tr = None
    if tr_ms is not None:
        tr_values = np.broadcast_to(np.asarray(tr_ms, dtype=np.float64), (len(ti),))[order]
        if np.ptp(tr_values) > 1e-6 * max(abs(tr_values.max()), 1.0):
            tr = tr_values  # per-image TR: carry the term; a shared TR only scales M0
    spatial_mask = _resolve_mask(mask, data, "max")
    fit, index = _fit_stack(
        data,
        order,
        ti,
        spatial_mask,
        _kernels.KIND_IR if tr is None else _kernels.KIND_IR_TR,
        lambda t1: models.ir_basis(t1, ti, tr),
        t1_range_ms,
        grid_size,
        magnitude,
        magnitude,
        progress,
        cancel,
        tr=tr,
    )
    invalid = fit.status == STATUS_INVALID_INPUT
    m0 = fit.coefficients[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        efficiency = np.where(m0 != 0, -fit.coefficients[:, 1] / m0, 0.0)
    status = fit.status
    out_of_range = ~invalid & ((m0 <= 0) | (efficiency < 0.2) | (efficiency > 2.3))
    status[out_of_range] |= STATUS_OUT_OF_RANGE
    if magnitude:
        status[~invalid & (fit.model_min < 0.02 * fit.peak)] |= STATUS_POLARITY_AMBIGUOUS
    values = {"T1": fit.theta, "M0": m0, "efficiency": efficiency, "R2": fit.r2, "RMSE": fit.rmse}
    if fit.n_restored is not None:
        values["restored"] = fit.n_restored.astype(np.float64)
    maps = _assemble(data.shape[1:], index, spatial_mask, values, status)
    info = {"model": "ir", "TI_ms": ti.tolist(), "TR_ms": None if tr is None else tr.tolist(), "magnitude": magnitude}
    return QMRIResult(maps, "T1", info)


def fit_t1_molli(
    data: Any,
    ti_ms: Sequence[float],
    magnitude: Optional[bool] = None,
    mask: Any = "auto",
    time_offset_ms: float = 0.0,
    t1_range_ms: tuple[float, float] = T1_RANGE_MS,
    grid_size: int = 64,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> QMRIResult:
    """Look-Locker / MOLLI: ``S = A - B e^(-t/T1*)``, ``T1 = T1* (B/A - 1)`` (Messroghli 2004).

    ``ti_ms`` are the times since the inversion of each image; when they are trigger-time labels shifted by
    ``time_offset_ms`` from the true inversion delay, B is corrected by ``e^(offset/T1*)`` first. Maps: T1,
    T1star, M0 (= A), B, R2, RMSE, status.
    """
    data = np.asarray(data)
    ti, order = _sorted_times(data, ti_ms, "inversion time")
    if magnitude is None:
        magnitude = not bool(np.nanmin(data) < 0)
    spatial_mask = _resolve_mask(mask, data, "max")
    fit, index = _fit_stack(
        data,
        order,
        ti,
        spatial_mask,
        _kernels.KIND_IR,
        lambda t: models.ir_basis(t, ti),
        t1_range_ms,
        grid_size,
        magnitude,
        magnitude,
        progress,
        cancel,
    )
    invalid = fit.status == STATUS_INVALID_INPUT
    a = fit.coefficients[:, 0]
    t1_star = fit.theta
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        b = -fit.coefficients[:, 1] * np.exp(time_offset_ms / np.where(t1_star > 0, t1_star, 1.0))
        t1 = np.where(a != 0, t1_star * (b / a - 1.0), 0.0)
    status = fit.status
    status[~invalid & ((a <= 0) | (b <= a) | ~np.isfinite(t1))] |= STATUS_OUT_OF_RANGE
    maps = _assemble(
        data.shape[1:],
        index,
        spatial_mask,
        {"T1": t1, "T1star": t1_star, "M0": a, "B": b, "R2": fit.r2, "RMSE": fit.rmse},
        status,
    )
    return QMRIResult(maps, "T1", {"model": "molli", "TI_ms": ti.tolist(), "time_offset_ms": time_offset_ms})


def fit_t1_vfa(
    data: Any,
    flip_deg: Sequence[float],
    tr_ms: float,
    b1: Any = None,
    method: str = "nonlinear",
    mask: Any = "auto",
    t1_range_ms: tuple[float, float] = T1_RANGE_MS,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> QMRIResult:
    """Variable flip angle (DESPOT1) T1 from spoiled gradient echoes with one TR.

    ``linear``: closed-form regression of S/sin a on S/tan a (slope E1 = e^(-TR/T1)); ``nonlinear``: least squares
    on the signal equation, started from the linear answer. ``b1`` (scalar or map) scales the nominal angles;
    without it T1 is biased by about B1^2. Maps: T1, M0, R2, RMSE, status.
    """
    if tr_ms is None or not np.isfinite(tr_ms) or tr_ms <= 0:
        raise ValueError("VFA needs the repetition time TR (ms)")
    if method not in ("linear", "nonlinear"):
        raise ValueError(f"unknown VFA method {method!r} (linear, nonlinear)")
    data, alpha_nominal, _ = _prepare(data, flip_deg, "flip angle")
    spatial_mask = _resolve_mask(mask, data, "max")
    y, index, invalid = _voxels(data, spatial_mask)
    if b1 is None:
        b1_vox = np.ones(len(y))
    else:
        b1_arr = np.asarray(b1, dtype=np.float64)
        b1_vox = np.full(len(y), float(b1_arr)) if b1_arr.ndim == 0 else b1_arr.reshape(-1)[index]
    alpha = np.deg2rad(alpha_nominal)[None, :] * b1_vox[:, None]
    x = y / np.tan(alpha)
    v = y / np.sin(alpha)
    n = y.shape[1]
    sx, sv = x.sum(1), v.sum(1)
    sxx, sxv = (x * x).sum(1), (x * v).sum(1)
    denominator = sxx - sx * sx / n
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = (sxv - sx * sv / n) / denominator
        intercept = (sv - slope * sx) / n
        t1 = -tr_ms / np.log(slope)
        m0 = intercept / (1.0 - slope)
    linear_ok = np.isfinite(t1) & (slope > 0) & (slope < 1) & (denominator > 0)
    status = np.zeros(len(y), dtype=np.uint8)
    log_lo, log_hi = np.log(t1_range_ms[0]), np.log(t1_range_ms[1])
    if method == "nonlinear":

        def cost(u: np.ndarray) -> np.ndarray:
            phi = models.vfa_signal(np.exp(np.clip(u, log_lo, log_hi)), 1.0, alpha_nominal, tr_ms, b1_vox)
            return np.einsum("vn,vn->v", y, y) - engine.project(phi[..., None], y)[0]

        u0 = np.log(np.clip(np.where(linear_ok, t1, 1000.0), t1_range_ms[0], t1_range_ms[1]))
        u, _ = engine.refine_log_parameter(cost, u0, 0.1, rounds=10)
        if cancel is not None:
            cancel.raise_if_cancelled()
        t1 = np.exp(np.clip(u, log_lo, log_hi))
        phi = models.vfa_signal(t1, 1.0, alpha_nominal, tr_ms, b1_vox)
        score, coef, degenerate = engine.project(phi[..., None], y)
        m0 = coef[:, 0]
        rss = np.maximum(np.einsum("vn,vn->v", y, y) - score, 0.0)
        at_bound = (u <= log_lo + 1e-9) | (u >= log_hi - 1e-9)
        status[at_bound] |= engine.STATUS_AT_BOUND
        status[degenerate] |= STATUS_DEGENERATE
    else:
        model = models.vfa_signal(
            np.where(linear_ok, t1, 1.0), np.where(linear_ok, m0, 0.0), alpha_nominal, tr_ms, b1_vox
        )
        rss = ((y - model) ** 2).sum(1)
        status[~linear_ok] |= STATUS_DEGENERATE
    status[~invalid & ~(m0 > 0)] |= STATUS_OUT_OF_RANGE
    status[invalid] = STATUS_INVALID_INPUT
    r2, rmse = _goodness(y, rss)
    maps = _assemble(data.shape[1:], index, spatial_mask, {"T1": t1, "M0": m0, "R2": r2, "RMSE": rmse}, status)
    return QMRIResult(
        maps, "T1", {"model": f"vfa-{method}", "FA_deg": alpha_nominal.tolist(), "TR_ms": tr_ms, "B1": b1 is not None}
    )


# ----------------------------------------------------------------------------------------------------------
# T2 and T2*


def _exp_decay_fit(
    data: Any,
    te_ms: Sequence[float],
    name: str,
    bounds: tuple[float, float],
    method: str,
    offset: bool,
    drop_first_echo: bool,
    mask: Any,
    grid_size: int,
    progress: Optional[ProgressCallback],
    cancel: Optional[CancelToken],
) -> tuple[Dict[str, np.ndarray], tuple, np.ndarray, np.ndarray, np.ndarray, Dict[str, Any]]:
    data = np.asarray(data)
    te, order = _sorted_times(data, te_ms, "echo time")
    spatial_mask = _resolve_mask(mask, data, "first", first=int(order[0]))
    if drop_first_echo:
        if len(te) < 3:
            raise ValueError("dropping the first echo needs at least three echoes")
        order, te = order[1:], te[1:]
    if method in ("mono", "nonlinear"):
        fit, index = _fit_stack(
            data,
            order,
            te,
            spatial_mask,
            _kernels.KIND_EXP_OFFSET if offset else _kernels.KIND_EXP,
            lambda t: models.exp_basis(t, te, offset),
            bounds,
            grid_size,
            True,
            False,
            progress,
            cancel,
        )
        invalid = fit.status == STATUS_INVALID_INPUT
        value, m0, status = fit.theta, fit.coefficients[:, 0], fit.status
        r2, rmse = fit.r2, fit.rmse
        offset_values = fit.coefficients[:, 1] if offset else None
    elif method == "loglinear":
        y, index, invalid = _voxels(data[order], spatial_mask, absolute=True)
        status = np.zeros(len(y), dtype=np.uint8)
        # ln S = ln M0 - TE/T, weighted by S^2 (var(ln S) ~ sigma^2 / S^2); needs S > 0
        positive = np.all(y > 0, axis=1)
        logs = np.log(np.where(y > 0, y, 1.0))
        w = y * y
        sw, st, stt = w.sum(1), (w * te).sum(1), (w * te * te).sum(1)
        sy, sty = (w * logs).sum(1), (w * te * logs).sum(1)
        det = sw * stt - st * st
        with np.errstate(divide="ignore", invalid="ignore"):
            slope = (sw * sty - st * sy) / det
            intercept = (sy - slope * st) / sw
            value = -1.0 / slope
            m0 = np.exp(intercept)
        model = m0[:, None] * np.exp(-te[None, :] / np.where(value > 0, value, 1.0)[:, None])
        rss = ((y - model) ** 2).sum(1)
        offset_values = None
        status[~positive | ~(det > 0)] |= STATUS_DEGENERATE
        status[~(value > 0) | ~np.isfinite(value)] |= STATUS_OUT_OF_RANGE
        value = np.where(np.isfinite(value), value, 0.0)
        r2, rmse = _goodness(y, rss)
    else:
        raise ValueError(f"unknown {name} method {method!r} (mono, loglinear)")
    status[~invalid & ~(m0 > 0)] |= STATUS_OUT_OF_RANGE
    status[invalid] = STATUS_INVALID_INPUT
    values = {name: value, "M0": m0, "R2": r2, "RMSE": rmse}
    if offset_values is not None:
        values["offset"] = offset_values
    info = {"TE_ms": te.tolist(), "method": method, "offset": offset, "drop_first_echo": drop_first_echo}
    return values, data.shape[1:], index, spatial_mask, status, info


def fit_t2(
    data: Any,
    te_ms: Sequence[float],
    method: str = "mono",
    offset: bool = False,
    drop_first_echo: bool = False,
    mask: Any = "auto",
    t2_range_ms: tuple[float, float] = T2_RANGE_MS,
    grid_size: int = 64,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> QMRIResult:
    """Multi-echo spin-echo T2: ``S = M0 e^(-TE/T2) [+ C]`` by least squares (``mono``) or weighted log-linear.

    ``drop_first_echo`` removes the pure spin echo that sits low under imperfect refocusing (Milford 2015);
    ``offset`` absorbs the noise floor. For B1-corrupted trains use ``fit_t2_epg``.
    """
    values, spatial, index, spatial_mask, status, info = _exp_decay_fit(
        data, te_ms, "T2", t2_range_ms, method, offset, drop_first_echo, mask, grid_size, progress, cancel
    )
    info["model"] = f"t2-{method}"
    return QMRIResult(_assemble(spatial, index, spatial_mask, values, status), "T2", info)


def fit_t2star(
    data: Any,
    te_ms: Sequence[float],
    method: str = "mono",
    offset: bool = False,
    mask: Any = "auto",
    t2star_range_ms: tuple[float, float] = T2STAR_RANGE_MS,
    grid_size: int = 64,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> QMRIResult:
    """Multi-echo gradient-echo T2* (magnitude): ``S = S0 e^(-TE/T2*) [+ C]``; adds R2star = 1000/T2* (1/s)."""
    values, spatial, index, spatial_mask, status, info = _exp_decay_fit(
        data, te_ms, "T2star", t2star_range_ms, method, offset, False, mask, grid_size, progress, cancel
    )
    with np.errstate(divide="ignore"):
        values["R2star"] = np.where(values["T2star"] > 0, 1000.0 / values["T2star"], 0.0)
    info["model"] = f"t2star-{method}"
    return QMRIResult(_assemble(spatial, index, spatial_mask, values, status), "T2star", info)


def fit_t2_epg(
    data: Any,
    te_ms: Sequence[float],
    b1: Any = None,
    t1_ms: float = 1000.0,
    refocusing_deg: float = 180.0,
    b1_range: tuple[float, float] = (0.5, 1.0),
    t2_range_ms: tuple[float, float] = (5.0, 2000.0),
    mask: Any = "auto",
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> QMRIResult:
    """Stimulated-echo-corrected T2 by the CPMG extended phase graph with closed-form M0.

    Echo times must be equally spaced (TE_n = n ESP). ``b1=None`` fits B1 on [0.5, 1] (B1 and 2 - B1 give
    identical trains, so the upper half is folded); a scalar or map fixes it. A dictionary over (T2, B1) is matched
    by variable projection, then T2 and B1 are refined by parabolas through the neighbouring atoms.
    Maps: T2, M0, B1, R2, RMSE, status.
    """
    data, te, _ = _prepare(data, te_ms, "echo time")
    spacing = np.diff(te)
    if not np.allclose(spacing, te[0], rtol=1e-3):
        raise ValueError(f"EPG needs equally spaced echoes starting at one spacing: {te.tolist()}")
    esp = float(te[0])
    spatial_mask = _resolve_mask(mask, data, "first")
    y, index, invalid = _voxels(data, spatial_mask, absolute=True)
    n_t2 = 120
    t2_grid = engine.log_grid(t2_range_ms[0], t2_range_ms[1], n_t2)
    fixed_b1 = b1 is not None
    if fixed_b1:
        b1_arr = np.asarray(b1, dtype=np.float64)
        b1_vox = np.full(len(y), float(b1_arr)) if b1_arr.ndim == 0 else b1_arr.reshape(-1)[index]
        b1_vox = np.where(b1_vox > 1.0, 2.0 - b1_vox, b1_vox)
        b1_grid = np.linspace(max(0.3, float(np.nanmin(b1_vox)) - 0.01), 1.0, 36)
    else:
        b1_grid = np.linspace(b1_range[0], b1_range[1], 51)
    atoms = models.epg_cpmg(t2_grid[:, None], b1_grid[None, :], esp, len(te), t1_ms, refocusing_deg)  # (T, B, N)
    norms = np.linalg.norm(atoms, axis=-1)
    unit = (atoms / norms[..., None]).reshape(-1, len(te))
    t2_out = np.zeros(len(y))
    b1_out = np.zeros(len(y))
    m0_out = np.zeros(len(y))
    rss_out = np.zeros(len(y))
    status = np.zeros(len(y), dtype=np.uint8)
    chunk = 8192
    protocol = (esp, len(te), t1_ms, refocusing_deg)
    for start in range(0, len(y), chunk):
        if cancel is not None:
            cancel.raise_if_cancelled()
        yc = y[start : start + chunk]
        b1_chunk = b1_vox[start : start + chunk] if fixed_b1 else None
        sl = slice(start, start + len(yc))
        t2_out[sl], b1_out[sl], m0_out[sl], rss_out[sl], status[sl] = _epg_chunk(
            yc, unit, t2_grid, b1_grid, b1_chunk, protocol, t2_range_ms
        )
        if progress is not None:
            progress(min(1.0, (start + len(yc)) / len(y)), "")
    status[~invalid & ~(m0_out > 0)] |= STATUS_OUT_OF_RANGE
    status[invalid] = STATUS_INVALID_INPUT
    r2, rmse = _goodness(y, rss_out)
    maps = _assemble(
        data.shape[1:],
        index,
        spatial_mask,
        {"T2": t2_out, "M0": m0_out, "B1": b1_out, "R2": r2, "RMSE": rmse},
        status,
    )
    info = {
        "model": "t2-epg",
        "TE_ms": te.tolist(),
        "T1_ms": t1_ms,
        "refocusing_deg": refocusing_deg,
        "B1_fitted": not fixed_b1,
    }
    return QMRIResult(maps, "T2", info)


def _parabola_index(scores: np.ndarray, index_best: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Fractional grid index of the score maximum from (V, 3) scores at index-1, index, index+1."""
    mid = np.clip(index_best, 1, size - 2)
    curvature = scores[:, 0] - 2 * scores[:, 1] + scores[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = np.where(curvature < 0, 0.5 * (scores[:, 0] - scores[:, 2]) / curvature, 0.0)
    edge = (index_best == 0) | (index_best == size - 1)
    return np.where(edge, index_best, mid + np.clip(np.nan_to_num(delta), -1, 1)), edge


def _epg_chunk(
    yc: np.ndarray,
    unit: np.ndarray,
    t2_grid: np.ndarray,
    b1_grid: np.ndarray,
    b1_fixed: Optional[np.ndarray],
    protocol: tuple,
    t2_range_ms: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Dictionary match + alternating exact refinement of T2 and B1 for one chunk of voxels."""
    esp, n_echoes, t1_ms, refocusing_deg = protocol
    n_t2, n_b1 = len(t2_grid), len(b1_grid)
    scores = ((yc @ unit.T) ** 2).reshape(len(yc), n_t2, n_b1)
    rows = np.arange(len(yc))
    if b1_fixed is not None:
        b_best = np.clip(np.searchsorted(b1_grid, b1_fixed), 0, n_b1 - 1)
        t_best = np.argmax(scores[rows, :, b_best], axis=1)
    else:
        t_best, b_best = np.divmod(np.argmax(scores.reshape(len(yc), -1), axis=1), n_b1)
    t_mid = np.clip(t_best, 1, n_t2 - 2)
    t_pos, t_edge = _parabola_index(np.stack([scores[rows, t_mid + d, b_best] for d in (-1, 0, 1)], 1), t_best, n_t2)
    t2_c = np.exp(np.interp(t_pos, np.arange(n_t2), np.log(t2_grid)))
    if b1_fixed is not None:
        b1_c = b1_fixed
        b_edge = np.zeros(len(yc), dtype=bool)
    else:
        b_mid = np.clip(b_best, 1, n_b1 - 2)
        b_pos, b_edge = _parabola_index(
            np.stack([scores[rows, t_best, b_mid + d] for d in (-1, 0, 1)], 1), b_best, n_b1
        )
        b1_c = np.interp(b_pos, np.arange(n_b1), b1_grid)
        b_edge &= b_best == 0  # B1 = 1 is the fold, not a bound
    yy = np.einsum("vn,vn->v", yc, yc)

    def cost_of(t2_values: np.ndarray, b1_values: np.ndarray) -> np.ndarray:
        phi_values = models.epg_cpmg(t2_values, b1_values, esp, n_echoes, t1_ms, refocusing_deg)
        return yy - engine.project(phi_values[..., None], yc)[0]

    # T2 and B1 are correlated: alternate exact 1-D parabolic steps, shrinking the brackets each pass
    u_t2 = np.log(t2_c)
    h_t2 = float(np.log(t2_grid[1] / t2_grid[0])) / 2.0
    h_b1 = float(b1_grid[1] - b1_grid[0]) / 2.0
    for _ in range(3):
        b1_now = b1_c
        u_t2, _ = engine.refine_log_parameter(lambda u, b=b1_now: cost_of(np.exp(u), b), u_t2, h_t2, 1)
        if b1_fixed is None:
            t2_now = np.exp(u_t2)
            b1_c, _ = engine.refine_log_parameter(
                lambda b, t=t2_now: cost_of(t, np.clip(b, b1_grid[0], 1.0)), b1_c, h_b1, 1
            )
            b1_c = np.clip(b1_c, b1_grid[0], 1.0)
        h_t2 /= 4.0
        h_b1 /= 4.0
    t2_c = np.clip(np.exp(u_t2), t2_range_ms[0], t2_range_ms[1])
    phi = models.epg_cpmg(t2_c, b1_c, esp, n_echoes, t1_ms, refocusing_deg)
    score, coef, degenerate = engine.project(phi[..., None], yc)
    status = np.zeros(len(yc), dtype=np.uint8)
    status[t_edge | b_edge] |= engine.STATUS_AT_BOUND
    status[degenerate] |= STATUS_DEGENERATE
    return t2_c, b1_c, coef[:, 0], np.maximum(yy - score, 0.0), status


# ----------------------------------------------------------------------------------------------------------
# statistics


def segment_statistics(
    values: np.ndarray, labels: Dict[str, np.ndarray], status: Optional[np.ndarray] = None
) -> Dict[str, Dict[str, float]]:
    """Mean, SD, median, IQR and voxel counts of ``values`` inside each boolean mask (fitted voxels only)."""
    out: Dict[str, Dict[str, float]] = {}
    for name, region in labels.items():
        inside = np.asarray(region, dtype=bool)
        if status is not None:
            inside = inside & ((status & (STATUS_MASKED | STATUS_INVALID_INPUT)) == 0)
        sample = np.asarray(values, dtype=np.float64)[inside]
        if sample.size == 0:
            out[name] = {
                "count": 0,
                "mean": float("nan"),
                "sd": float("nan"),
                "median": float("nan"),
                "iqr": float("nan"),
            }
            continue
        q1, median, q3 = np.percentile(sample, [25, 50, 75])
        out[name] = {
            "count": int(sample.size),
            "mean": float(sample.mean()),
            "sd": float(sample.std(ddof=1)) if sample.size > 1 else 0.0,
            "median": float(median),
            "iqr": float(q3 - q1),
        }
    return out
