"""Vectorised variable-projection (VARPRO) fitting of separable relaxation models, for whole volumes.

Every relaxometry model here is ``y = Phi(theta) c`` with one nonlinear parameter ``theta`` and one or two linear
amplitudes ``c``. For fixed theta the best ``c`` is a closed-form least-squares solve, so only theta needs a search
(Golub & Pereyra; Barral 2010 RD-NLS is the IR case). The search is:

1. a log-spaced grid scored per voxel with orthonormalised bases (the explained energy is ``|Q^T y|^2`` and
   RSS = ``|y|^2 - score``): the global minimum on the grid, no starting guess;
2. refinement of ``log theta`` inside the bracket of the best grid point to the exact least-squares minimum (the
   one ``curve_fit`` finds): the compiled kernel (``_kernels``, used by ``fit_voxels``) runs safeguarded Newton
   with analytic derivatives of the reduced cost; the numpy path (``fit_separable``) runs bracketed parabolic
   steps.

Polarity restoration for magnitude IR (Barral's RD-NLS-PR) runs the search for the two sign patterns next to the
smallest sample and keeps the better. Deterministic (no random numbers) and chunked so memory stays bounded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from MedSegLib.progress import CancelToken, ProgressCallback, report

# fit-status bits (uint8 map); 0 means fitted and converged
STATUS_OK = 0
STATUS_MASKED = 1
STATUS_INVALID_INPUT = 2
STATUS_AT_BOUND = 4
STATUS_NOT_CONVERGED = 8
STATUS_DEGENERATE = 16
STATUS_POLARITY_AMBIGUOUS = 32
STATUS_OUT_OF_RANGE = 64

STATUS_NAMES = {
    STATUS_MASKED: "masked (not fitted)",
    STATUS_INVALID_INPUT: "invalid input (non-finite or all-zero signal)",
    STATUS_AT_BOUND: "relaxation time at the search bound",
    STATUS_NOT_CONVERGED: "refinement did not converge",
    STATUS_DEGENERATE: "degenerate linear system",
    STATUS_POLARITY_AMBIGUOUS: "IR polarity ambiguous (a sample sits at the null)",
    STATUS_OUT_OF_RANGE: "parameter outside its physical range",
}

Basis = Callable[[np.ndarray], np.ndarray]  # theta (...,) -> (..., N, K)

DEFAULT_CHUNK_VOXELS = 32768


@dataclass
class SeparableFit:
    """Per-voxel result of ``fit_separable`` (all arrays have the voxel count as first dimension)."""

    theta: np.ndarray  # (V,) float64
    coefficients: np.ndarray  # (V, K)
    rss: np.ndarray  # (V,)
    status: np.ndarray  # (V,) uint8
    signs: Optional[np.ndarray] = None  # (V, N) int8 polarity pattern used (magnitude IR), else None
    n_restored: Optional[np.ndarray] = None  # (V,) number of negated leading samples (Barral's idx)


def log_grid(lower: float, upper: float, size: int) -> np.ndarray:
    return np.exp(np.linspace(np.log(lower), np.log(upper), int(size)))


def _orthonormal_grid(phi: np.ndarray) -> np.ndarray:
    """(G, N, K) basis -> (G, N, K) orthonormal columns; directions that are numerically absent become zero."""
    q, r = np.linalg.qr(phi)
    diag = np.abs(np.diagonal(r, axis1=-2, axis2=-1))  # (G, K)
    scale = np.linalg.norm(phi, axis=1).max(axis=-1, keepdims=True) + 1e-300
    return np.ascontiguousarray(q * (diag > 1e-7 * scale)[:, None, :])


def project(phi: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closed-form linear least squares per voxel: (score = y.P.y, coefficients, degenerate flag).

    ``phi`` is (V, N, K) with K in {1, 2}, ``y`` is (V, N); RSS = |y|^2 - score.
    """
    k = phi.shape[-1]
    if k == 1:
        f = phi[..., 0]
        ff = np.einsum("vn,vn->v", f, f)
        fy = np.einsum("vn,vn->v", f, y)
        degenerate = ff <= 1e-300
        ff_safe = np.where(degenerate, 1.0, ff)
        c = fy / ff_safe
        return np.where(degenerate, 0.0, c * fy), np.where(degenerate, 0.0, c)[:, None], degenerate
    if k == 2:
        f1 = phi[..., 0]
        f2 = phi[..., 1]
        a11 = np.einsum("vn,vn->v", f1, f1)
        a12 = np.einsum("vn,vn->v", f1, f2)
        a22 = np.einsum("vn,vn->v", f2, f2)
        r1 = np.einsum("vn,vn->v", f1, y)
        r2 = np.einsum("vn,vn->v", f2, y)
        det = a11 * a22 - a12 * a12
        degenerate = det <= 1e-12 * a11 * a22
        det_safe = np.where(degenerate, 1.0, det)
        c1 = (a22 * r1 - a12 * r2) / det_safe
        c2 = (a11 * r2 - a12 * r1) / det_safe
        # degenerate: fall back to the first column alone
        c1_alone = r1 / np.where(a11 > 0, a11, 1.0)
        c1 = np.where(degenerate, c1_alone, c1)
        c2 = np.where(degenerate, 0.0, c2)
        score = c1 * r1 + c2 * r2
        return score, np.stack([c1, c2], axis=-1), degenerate
    raise ValueError(f"project supports 1 or 2 linear parameters, got {k}")


def refine_log_parameter(
    cost: Callable[[np.ndarray], np.ndarray], u0: np.ndarray, step: float, rounds: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """Bracketed parabolic minimisation of ``cost(u)`` per voxel around ``u0`` (u = log theta).

    Each round evaluates u-h, u, u+h: a bracketed minimum moves u to the parabola's vertex and shrinks h four
    times; otherwise u walks one step downhill. Returns (u, converged); deterministic, fixed work per voxel.
    """
    u = np.array(u0, dtype=np.float64)
    h = np.full_like(u, float(step))
    bracketed_last = np.zeros(u.shape, dtype=bool)
    for _ in range(rounds):
        c_minus = cost(u - h)
        c_zero = cost(u)
        c_plus = cost(u + h)
        bracketed = (c_zero <= c_minus) & (c_zero <= c_plus)
        curvature = c_minus - 2.0 * c_zero + c_plus
        with np.errstate(divide="ignore", invalid="ignore"):
            delta = np.where(curvature > 0, 0.5 * (c_minus - c_plus) / curvature, 0.0)
        delta = np.clip(np.nan_to_num(delta), -1.0, 1.0) * h
        walk = np.where(c_minus < c_plus, -h, h)
        u = np.where(bracketed, u + delta, u + walk)
        h = np.where(bracketed, h / 4.0, h)
        bracketed_last = bracketed
    return u, bracketed_last


def fit_separable(
    y: np.ndarray,
    basis: Basis,
    lower: float,
    upper: float,
    grid_size: int = 160,
    polarity_restore: bool = False,
    refine_rounds: int = 3,
    chunk_voxels: int = DEFAULT_CHUNK_VOXELS,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> SeparableFit:
    """Least-squares fit of ``y (V, N) ~ basis(theta) @ c`` for every voxel, theta searched in [lower, upper].

    ``polarity_restore``: ``y`` is magnitude IR data sorted by TI; the leading samples up to (A) or before (B) the
    minimum are negated and the better candidate is kept (Barral 2010). Voxels whose theta ends on the search
    bound are flagged ``STATUS_AT_BOUND`` (the value is reported, not moved).

    This is the numpy path (``fit_voxels`` uses the compiled kernel when numba is there); both land on the same
    least-squares minimum.
    """
    y = np.asarray(y, dtype=np.float64)
    n_vox, n_pts = y.shape
    grid = log_grid(lower, upper, grid_size)
    step = float(np.log(grid[1] / grid[0]))
    phi_grid = basis(grid)
    k = phi_grid.shape[-1]
    q_by_grid = _orthonormal_grid(phi_grid)  # (G, N, K)
    # (N, K*G), k-major: the score sums K contiguous blocks instead of reducing a tiny trailing axis
    q32 = np.ascontiguousarray(q_by_grid.transpose(1, 2, 0).reshape(n_pts, k * grid_size)).astype(np.float32)
    log_lo, log_hi = np.log(lower), np.log(upper)

    theta = np.empty(n_vox)
    coefficients = np.empty((n_vox, k))
    rss = np.empty(n_vox)
    status = np.zeros(n_vox, dtype=np.uint8)
    signs_out = np.ones((n_vox, n_pts), dtype=np.int8) if polarity_restore else None
    restored_out = np.zeros(n_vox, dtype=np.int16) if polarity_restore else None

    def refine(ys: np.ndarray, yy: np.ndarray, u: np.ndarray) -> tuple:
        def cost(uu: np.ndarray) -> np.ndarray:
            return yy - project(basis(np.exp(np.clip(uu, log_lo, log_hi))), ys)[0]

        converged = np.ones(len(ys), dtype=bool)
        h = step / 4.0
        for _ in range(refine_rounds):
            u, converged = refine_log_parameter(cost, u, h, 1)
            h /= 4.0
        u = np.clip(u, log_lo, log_hi)
        score, coef, degenerate = project(basis(np.exp(u)), ys)
        return np.exp(u), coef, np.maximum(yy - score, 0.0), converged, degenerate

    for start in range(0, n_vox, chunk_voxels):
        if cancel is not None:
            cancel.raise_if_cancelled()
        stop = min(start + chunk_voxels, n_vox)
        yc = y[start:stop]
        yy = np.einsum("vn,vn->v", yc, yc)
        if polarity_restore:
            k_min = np.argmin(yc, axis=1)
            index = np.arange(n_pts)[None, :]
            candidates = [np.where(index <= k_min[:, None], -1.0, 1.0), np.where(index < k_min[:, None], -1.0, 1.0)]
        else:
            candidates = [np.ones((1, n_pts))]
        grid_results = [_grid_search(yc * signs, yy, q32, q_by_grid, step, log_lo) for signs in candidates]
        choice = np.zeros(len(yc), dtype=np.intp)
        ambiguous = np.zeros(len(yc), dtype=bool)
        if len(candidates) == 2:
            rss_a, rss_b = grid_results[0][1], grid_results[1][1]
            choice = (rss_b < rss_a).astype(np.intp)
            ambiguous = np.abs(rss_a - rss_b) <= 0.25 * np.minimum(rss_a, rss_b) + 1e-12 * yy
        signs = np.where(choice[:, None] == 0, candidates[0], candidates[-1])
        u0 = np.where(choice == 0, grid_results[0][0], grid_results[-1][0])
        at_edge = np.where(choice == 0, grid_results[0][2], grid_results[-1][2])
        ys = yc * signs
        theta_c, coef_c, rss_c, converged, degenerate = refine(ys, yy, u0)
        if ambiguous.any():
            # near-ties of the two sign patterns: refine the other one too and keep the lower exact RSS
            sub = np.flatnonzero(ambiguous)
            other = 1 - choice[sub]
            other_signs = np.where(other[:, None] == 0, candidates[0][sub], candidates[-1][sub])
            other_u = np.where(other == 0, grid_results[0][0][sub], grid_results[-1][0][sub])
            result = refine(yc[sub] * other_signs, yy[sub], other_u)
            better = result[2] < rss_c[sub]
            pick = sub[better]
            theta_c[pick] = result[0][better]
            coef_c[pick] = result[1][better]
            rss_c[pick] = result[2][better]
            converged[pick] = result[3][better]
            degenerate[pick] = result[4][better]
            signs[pick] = other_signs[better]
            other_edge = np.where(other == 0, grid_results[0][2][sub], grid_results[-1][2][sub])
            at_edge[pick] = other_edge[better]
        status_c = np.zeros(len(yc), dtype=np.uint8)
        u_final = np.log(theta_c)
        at_bound = at_edge | (u_final <= log_lo + 1e-9) | (u_final >= log_hi - 1e-9)
        status_c[at_bound] |= STATUS_AT_BOUND
        status_c[~converged & ~at_bound] |= STATUS_NOT_CONVERGED
        status_c[degenerate] |= STATUS_DEGENERATE
        theta[start:stop] = theta_c
        coefficients[start:stop] = coef_c
        rss[start:stop] = rss_c
        status[start:stop] = status_c
        if polarity_restore:
            signs_out[start:stop] = signs.astype(np.int8)
            restored_out[start:stop] = (signs < 0).sum(axis=1)
        report(progress, stop / n_vox, f"{stop}/{n_vox} voxels")
    return SeparableFit(theta, coefficients, rss, status, signs_out, restored_out)


def _grid_search(
    ys: np.ndarray, yy: np.ndarray, q32: np.ndarray, q_by_grid: np.ndarray, step: float, log_lo: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grid argmax (float32 matmul) + parabola through the exact float64 scores of its neighbours.

    Returns (log theta estimate, RSS estimate, argmax on the grid edge).
    """
    n_grid, _, k = q_by_grid.shape
    products = ys.astype(np.float32) @ q32
    np.square(products, out=products)
    scores = products[:, :n_grid]
    for block in range(1, k):
        scores += products[:, block * n_grid : (block + 1) * n_grid]
    g_best = np.argmax(scores, axis=1)
    at_edge = (g_best == 0) | (g_best == n_grid - 1)
    g_mid = np.clip(g_best, 1, n_grid - 2)
    exact = []
    for offset in (-1, 0, 1):
        p = np.einsum("vnk,vn->vk", q_by_grid[g_mid + offset], ys)
        exact.append(np.einsum("vk,vk->v", p, p))
    s_minus, s_zero, s_plus = exact
    curvature = s_minus - 2.0 * s_zero + s_plus  # negative at a maximum of the score
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = np.where(curvature < 0, 0.5 * (s_minus - s_plus) / curvature, 0.0)
    delta = np.clip(np.nan_to_num(delta), -1.0, 1.0)
    peak = s_zero - 0.25 * (s_minus - s_plus) * delta
    u = log_lo + step * (g_mid + delta)
    u = np.where(at_edge, log_lo + step * g_best, u)
    return u, np.maximum(yy - np.where(at_edge, scores[np.arange(len(ys)), g_best], peak), 0.0), at_edge


@dataclass
class VoxelFit:
    """Per-voxel result of ``fit_voxels`` (first dimension: the fitted voxels, in ``index`` order)."""

    theta: np.ndarray  # (V,) 0 where the input is invalid
    coefficients: np.ndarray  # (V, K)
    rss: np.ndarray
    status: np.ndarray  # uint8 bits
    r2: np.ndarray  # coefficient of determination of the fitted (magnitude or signed) samples
    rmse: np.ndarray  # sqrt(RSS / N)
    peak: np.ndarray  # max |sample|
    model_min: Optional[np.ndarray] = None  # polarity restoration: min |model| over the samples
    n_restored: Optional[np.ndarray] = None  # polarity restoration: number of negated leading samples


def _grid_basis(basis: Basis, lower: float, upper: float, grid_size: int) -> np.ndarray:
    """(N, K*G) orthonormalised grid basis, k-major (the projections of one column are contiguous)."""
    phi_grid = basis(log_grid(lower, upper, grid_size))
    q_by_grid = _orthonormal_grid(phi_grid)  # (G, N, K)
    n_grid, n_pts, k = q_by_grid.shape
    return np.ascontiguousarray(q_by_grid.transpose(1, 2, 0).reshape(n_pts, k * n_grid))


def fit_voxels(
    data: np.ndarray,
    order: np.ndarray,
    index: np.ndarray,
    times: np.ndarray,
    kind: int,
    basis: Basis,
    lower: float,
    upper: float,
    tr: Optional[np.ndarray] = None,
    grid_size: int = 64,
    absolute: bool = False,
    polarity_restore: bool = False,
    chunk_voxels: int = 4 * DEFAULT_CHUNK_VOXELS,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> VoxelFit:
    """Fit the voxels ``index`` of ``data`` (N, P): sample i of a voxel is image ``order[i]``, at ``times[i]``.

    ``kind`` names ``basis`` for the compiled kernel (``_kernels.KIND_*``); ``absolute`` fits |data|;
    ``polarity_restore`` is RD-NLS-PR for magnitude IR. Inputs that are non-finite or all zero get
    ``STATUS_INVALID_INPUT`` and zeros. Chunks of ``chunk_voxels`` bound the memory and carry progress/cancel.
    """
    from MedSegLib.qmri import _kernels

    direct = data.dtype == np.float64 and data.flags.c_contiguous  # else: a float64 copy of each chunk's voxels
    n_vox = len(index)
    k = basis(np.array([1.0])).shape[-1]
    theta = np.zeros(n_vox)
    coefficients = np.zeros((n_vox, k))
    rss = np.zeros(n_vox)
    status = np.zeros(n_vox, dtype=np.uint8)
    r2 = np.zeros(n_vox)
    rmse = np.zeros(n_vox)
    peak = np.zeros(n_vox)
    model_min = np.zeros(n_vox) if polarity_restore else None
    restored = np.zeros(n_vox, dtype=np.int16) if polarity_restore else None
    q = _grid_basis(basis, lower, upper, grid_size)
    log_lo, log_hi = float(np.log(lower)), float(np.log(upper))
    for start in range(0, n_vox, chunk_voxels):
        if cancel is not None:
            cancel.raise_if_cancelled()
        part = slice(start, min(start + chunk_voxels, n_vox))
        if _kernels.AVAILABLE:
            if direct:
                source, columns = data, index[part]
            else:
                source, columns = _chunk_float64(data, index[part])
            out = _kernels.fit_voxels(
                source, order, columns, q, times, tr, kind, absolute, polarity_restore, log_lo, log_hi
            )
            invalid = out[:, _kernels.OUT_STATUS] == STATUS_INVALID_INPUT
            theta[part] = np.where(invalid, 0.0, np.exp(out[:, _kernels.OUT_U]))
            coefficients[part] = out[:, _kernels.OUT_C1 : _kernels.OUT_C1 + k]
            rss[part] = out[:, _kernels.OUT_RSS]
            status[part] = out[:, _kernels.OUT_STATUS].astype(np.uint8)
            r2[part] = out[:, _kernels.OUT_R2]
            rmse[part] = out[:, _kernels.OUT_RMSE]
            peak[part] = out[:, _kernels.OUT_YMAX]
            if polarity_restore:
                model_min[part] = out[:, _kernels.OUT_MODEL_MIN]
                restored[part] = out[:, _kernels.OUT_CUT].astype(np.int16)
        else:
            _fit_voxels_numpy(
                data, order, index[part], part, times, basis, lower, upper, grid_size, absolute, polarity_restore,
                (theta, coefficients, rss, status, r2, rmse, peak, model_min, restored),
            )  # fmt: skip
        report(progress, part.stop / max(n_vox, 1), f"{part.stop}/{n_vox} voxels")
    return VoxelFit(theta, coefficients, rss, status, r2, rmse, peak, model_min, restored)


def _chunk_float64(data: np.ndarray, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, len(columns)) float64 copy of those voxels (a slice when they are consecutive), and its own index."""
    if len(columns) and columns[-1] - columns[0] == len(columns) - 1:
        block = data[:, columns[0] : columns[-1] + 1]
    else:
        block = data[:, columns]
    return np.ascontiguousarray(block, dtype=np.float64), np.arange(len(columns))


def _fit_voxels_numpy(
    data: np.ndarray,
    order: np.ndarray,
    index: np.ndarray,
    part: slice,
    times: np.ndarray,
    basis: Basis,
    lower: float,
    upper: float,
    grid_size: int,
    absolute: bool,
    polarity_restore: bool,
    outputs: tuple,
) -> None:
    theta, coefficients, rss, status, r2, rmse, peak, model_min, restored = outputs
    y = data[order][:, index].T.astype(np.float64)
    if absolute:
        y = np.abs(y)
    energy = np.einsum("vn,vn->v", y, y)
    peak_c = np.abs(y).max(axis=1)
    invalid = ~np.isfinite(energy) | (peak_c == 0)
    y[invalid] = 0.0
    fit = fit_separable(y, basis, lower, upper, grid_size=grid_size, polarity_restore=polarity_restore)
    fit.status[invalid] = STATUS_INVALID_INPUT
    fit.theta[invalid] = 0.0
    fit.coefficients[invalid] = 0.0
    fit.rss[invalid] = 0.0
    total = y.sum(axis=1)
    ss_tot = energy - total * total / y.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        r2_c = np.where(ss_tot > 0, 1.0 - fit.rss / ss_tot, 0.0)
    theta[part] = fit.theta
    coefficients[part] = fit.coefficients
    rss[part] = fit.rss
    status[part] = fit.status
    r2[part] = np.where(invalid, 0.0, r2_c)
    rmse[part] = np.sqrt(fit.rss / y.shape[1])
    peak[part] = np.where(invalid, 0.0, peak_c)
    if polarity_restore:
        model = np.einsum("vnk,vk->vn", basis(np.maximum(fit.theta, 1e-3)), fit.coefficients)
        model_min[part] = np.where(invalid, 0.0, np.abs(model).min(axis=1))
        restored[part] = np.where(invalid, 0, fit.n_restored)
