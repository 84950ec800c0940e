"""Vectorised variable-projection (VARPRO) fitting of separable relaxation models, for whole volumes.

Every relaxometry model here is ``y = Phi(theta) c`` with one nonlinear parameter ``theta`` and one or two linear
amplitudes ``c``. For fixed theta the best ``c`` is a closed-form least-squares solve, so only theta needs a search
(Golub & Pereyra; Barral 2010 RD-NLS is the IR case). The search is:

1. a log-spaced grid scored for all voxels by one matrix product per chunk (orthonormalised bases, so the score
   is ``|Q^T y|^2`` and RSS = ``|y|^2 - score``): the global minimum on the grid, no starting guess;
2. bracketed parabolic refinement in ``log theta`` with exact per-voxel costs in float64 until the bracket is
   ``grid step / 4^rounds`` wide, which lands on the same least-squares minimum as ``curve_fit``.

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
    kernel: Optional[tuple] = None,
) -> SeparableFit:
    """Least-squares fit of ``y (V, N) ~ basis(theta) @ c`` for every voxel, theta searched in [lower, upper].

    ``polarity_restore``: ``y`` is magnitude IR data sorted by TI; the leading samples up to (A) or before (B) the
    minimum are negated and the better candidate is kept (Barral 2010). Voxels whose theta ends on the search
    bound are flagged ``STATUS_AT_BOUND`` (the value is reported, not moved).

    ``kernel = (kind, times, tr)`` names the same basis for the compiled refinement (``_kernels``), which then
    refines every polarity candidate exactly; without numba the numpy path below gives the same answer.
    """
    from MedSegLib.qmri import _kernels

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
        out = None
        if kernel is not None and _kernels.AVAILABLE:
            if polarity_restore:
                cuts = np.stack([k_min + 1, k_min], axis=1)
            else:
                cuts = np.zeros((len(yc), 1), dtype=np.int64)
            g_best = np.stack([_grid_argmax(yc * signs, q32, grid_size, k) for signs in candidates], axis=1)
            try:
                out = _kernels.refine(
                    yc,
                    cuts,
                    g_best,
                    kernel[1],
                    kernel[2],
                    kernel[0],
                    log_lo,
                    log_hi,
                    step,
                    grid_size,
                    4 * refine_rounds,  # Gauss-Newton iterations (one pass each; most voxels stop after 3-4)
                )
            except Exception:  # noqa: BLE001 - numba cannot compile or cache here: the numpy path below is exact too
                _kernels.AVAILABLE = False
        if out is not None:
            theta[start:stop] = np.exp(out[:, 0])
            rss[start:stop] = out[:, 1]
            coefficients[start:stop] = out[:, 2 : 2 + k]
            status_c = np.zeros(len(yc), dtype=np.uint8)
            status_c[out[:, 6] > 0] |= STATUS_AT_BOUND
            status_c[(out[:, 5] == 0) & (out[:, 6] == 0)] |= STATUS_NOT_CONVERGED
            status_c[out[:, 4] > 0] |= STATUS_DEGENERATE
            status[start:stop] = status_c
            if polarity_restore:
                chosen_cut = out[:, 7].astype(np.int64)
                signs_out[start:stop] = np.where(np.arange(n_pts)[None, :] < chosen_cut[:, None], -1, 1)
                restored_out[start:stop] = chosen_cut
            report(progress, stop / n_vox, f"{stop}/{n_vox} voxels")
            continue
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


def _grid_argmax(ys: np.ndarray, q32: np.ndarray, n_grid: int, k: int) -> np.ndarray:
    """Fractional grid index of the best score per voxel: argmax of a float32 matmul plus the vertex of the
    parabola through its neighbours (a starting point only: the exact refinement follows)."""
    products = ys.astype(np.float32) @ q32
    np.square(products, out=products)
    scores = products[:, :n_grid]
    for block in range(1, k):
        scores += products[:, block * n_grid : (block + 1) * n_grid]
    best = np.argmax(scores, axis=1)
    mid = np.clip(best, 1, n_grid - 2)
    rows = np.arange(len(ys))
    s_minus, s_zero, s_plus = scores[rows, mid - 1], scores[rows, mid], scores[rows, mid + 1]
    curvature = s_minus - 2.0 * s_zero + s_plus
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = np.where(curvature < 0, 0.5 * (s_minus - s_plus) / curvature, 0.0)
    delta = np.clip(np.nan_to_num(delta), -0.5, 0.5)
    return np.where(mid == best, best + delta, best.astype(np.float64))


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
