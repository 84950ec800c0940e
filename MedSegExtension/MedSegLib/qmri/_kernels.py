"""Compiled per-voxel refinement for the exponential bases (numba; the engine falls back to numpy without it).

Why a kernel: after the grid matmul, every voxel needs ~10 exact cost evaluations in float64. In numpy each is a
pass over (V, N) temporaries; here a voxel's evaluations stay in registers, equally spaced echo times need one
``exp`` per evaluation (powers by multiplication), and both IR polarity candidates are refined exactly.

Basis kinds (columns of Phi for rate r = 1/theta): 0 ``[e^(-t r)]``; 1 ``[e^(-t r), 1]``; 2 ``[1, e^(-t r)]``;
3 ``[1 + e^(-TR r), e^(-t r)]`` (IR with per-image TR).
"""

from __future__ import annotations

import math

import numpy as np

try:  # numba is a runtime dependency; without it the engine uses its numpy path
    import numba
except ImportError:  # pragma: no cover - declared dependency
    numba = None

KIND_EXP, KIND_EXP_OFFSET, KIND_IR, KIND_IR_TR = 0, 1, 2, 3


def _jit(**options):
    def wrap(function):
        if numba is None:
            return function
        return numba.njit(cache=True, nogil=True, **options)(function)

    return wrap


@_jit()
def _cost(y, cut, times, tr, kind, uniform, u):
    """(RSS, c1, c2, degenerate) of the best amplitudes at theta = e^u for one voxel.

    The sums are accumulated with the varying column only (``e`` = e^(-t r)) and the model kind is resolved
    after the loop, so the loop body has no branches: sums of 1, e, e^2, y, e*y (and the TR column for kind 3).
    """
    n = y.shape[0]
    rate = math.exp(-u)
    s_e = 0.0
    s_ee = 0.0
    s_y = 0.0
    s_ey = 0.0
    yy = 0.0
    if uniform:
        value = math.exp(-times[0] * rate)
        step = math.exp(-(times[1] - times[0]) * rate)
        for i in range(n):
            yi = y[i]
            if i < cut:
                yi = -yi
            s_e += value
            s_ee += value * value
            s_y += yi
            s_ey += value * yi
            yy += yi * yi
            value *= step
    else:
        for i in range(n):
            yi = y[i]
            if i < cut:
                yi = -yi
            e = math.exp(-times[i] * rate)
            s_e += e
            s_ee += e * e
            s_y += yi
            s_ey += e * yi
            yy += yi * yi
    if kind == 0:  # [e]
        if s_ee <= 1e-300:
            return yy, 0.0, 0.0, True
        c1 = s_ey / s_ee
        return yy - c1 * s_ey, c1, 0.0, False
    if kind == 1:  # [e, 1]
        a11, a12, a22, r1, r2 = s_ee, s_e, float(n), s_ey, s_y
    elif kind == 2:  # [1, e]
        a11, a12, a22, r1, r2 = float(n), s_e, s_ee, s_y, s_ey
    else:  # [1 + e^(-TR r), e]
        a11 = 0.0
        a12 = 0.0
        r1 = 0.0
        for i in range(n):
            yi = -y[i] if i < cut else y[i]
            f1 = 1.0 + math.exp(-tr[i] * rate)
            a11 += f1 * f1
            a12 += f1 * math.exp(-times[i] * rate)
            r1 += f1 * yi
        a22, r2 = s_ee, s_ey
    det = a11 * a22 - a12 * a12
    if det <= 1e-12 * a11 * a22:
        c1 = r1 / a11 if a11 > 0 else 0.0
        return yy - c1 * r1, c1, 0.0, True
    c1 = (a22 * r1 - a12 * r2) / det
    c2 = (a11 * r2 - a12 * r1) / det
    return yy - c1 * r1 - c2 * r2, c1, c2, False


@_jit()
def _grid_parabola(y, cut, g, times, tr, kind, uniform, log_lo, step, n_grid):
    """(u, cost estimate, on grid edge): parabola through the exact costs at the grid neighbours of ``g``."""
    edge = g == 0 or g == n_grid - 1
    if edge:
        u = log_lo + step * g
        return u, _cost(y, cut, times, tr, kind, uniform, u)[0], True
    u = log_lo + step * g
    c_minus = _cost(y, cut, times, tr, kind, uniform, u - step)[0]
    c_zero = _cost(y, cut, times, tr, kind, uniform, u)[0]
    c_plus = _cost(y, cut, times, tr, kind, uniform, u + step)[0]
    curvature = c_minus - 2.0 * c_zero + c_plus
    estimate = c_zero
    if curvature > 0:
        delta = min(max(0.5 * (c_minus - c_plus) / curvature, -1.0), 1.0)
        u += step * delta
        estimate = c_zero - 0.25 * (c_minus - c_plus) * delta
    return u, estimate, False


@_jit()
def _refine_one(y, cut, u, edge, times, tr, kind, uniform, log_lo, log_hi, step, rounds):
    """``rounds`` bracketed parabolic steps from ``u``; returns (u, rss, c1, c2, degenerate, bracketed, at_bound)."""
    h = step / 4.0
    bracketed = True
    for _ in range(rounds):
        c_minus = _cost(y, cut, times, tr, kind, uniform, min(max(u - h, log_lo), log_hi))[0]
        c_zero = _cost(y, cut, times, tr, kind, uniform, min(max(u, log_lo), log_hi))[0]
        c_plus = _cost(y, cut, times, tr, kind, uniform, min(max(u + h, log_lo), log_hi))[0]
        bracketed = c_zero <= c_minus and c_zero <= c_plus
        if bracketed:
            curvature = c_minus - 2.0 * c_zero + c_plus
            if curvature > 0:
                delta = 0.5 * (c_minus - c_plus) / curvature
                u += h * min(max(delta, -1.0), 1.0)
            h /= 4.0
        elif c_minus < c_plus:
            u -= h
        else:
            u += h
    u = min(max(u, log_lo), log_hi)
    rss, c1, c2, degenerate = _cost(y, cut, times, tr, kind, uniform, u)
    at_bound = u <= log_lo + 1e-9 or u >= log_hi - 1e-9 or (edge and not bracketed)
    return u, max(rss, 0.0), c1, c2, degenerate, bracketed, at_bound


@_jit()
def _gn_pass(y, cut, times, tr, kind, uniform, u):
    """One pass over the samples at theta = e^u: (RSS, c1, c2, degenerate, Gauss-Newton step in u).

    Variable projection with Kaufman's Jacobian: J = (I - P) dPhi/du c; the step J.r / J.J uses only sums, and
    dPhi/du = t r e^(-t r) needs no extra exponential.
    """
    n = y.shape[0]
    rate = math.exp(-u)
    value = 0.0
    factor = 0.0
    if uniform:
        value = math.exp(-times[0] * rate)
        factor = math.exp(-(times[1] - times[0]) * rate)
    a11 = 0.0
    a12 = 0.0
    a22 = 0.0
    r1 = 0.0
    r2 = 0.0
    yy = 0.0
    d1y = 0.0
    d2y = 0.0
    d1f1 = 0.0
    d1f2 = 0.0
    d2f1 = 0.0
    d2f2 = 0.0
    d1d1 = 0.0
    d1d2 = 0.0
    d2d2 = 0.0
    for i in range(n):
        yi = y[i]
        if i < cut:
            yi = -yi
        if uniform:
            e = value
            value *= factor
        else:
            e = math.exp(-times[i] * rate)
        de = times[i] * rate * e
        if kind == 0:
            f1, f2, d1, d2 = e, 0.0, de, 0.0
        elif kind == 1:
            f1, f2, d1, d2 = e, 1.0, de, 0.0
        elif kind == 2:
            f1, f2, d1, d2 = 1.0, e, 0.0, de
        else:
            e_tr = math.exp(-tr[i] * rate)
            f1, f2, d1, d2 = 1.0 + e_tr, e, tr[i] * rate * e_tr, de
        yy += yi * yi
        a11 += f1 * f1
        a12 += f1 * f2
        a22 += f2 * f2
        r1 += f1 * yi
        r2 += f2 * yi
        d1y += d1 * yi
        d2y += d2 * yi
        d1f1 += d1 * f1
        d1f2 += d1 * f2
        d2f1 += d2 * f1
        d2f2 += d2 * f2
        d1d1 += d1 * d1
        d1d2 += d1 * d2
        d2d2 += d2 * d2
    if kind == 0:
        if a11 <= 1e-300:
            return yy, 0.0, 0.0, True, 0.0
        c1 = r1 / a11
        c2 = 0.0
        rss = yy - c1 * r1
        jr = c1 * (d1y - c1 * d1f1)
        jj = c1 * c1 * (d1d1 - d1f1 * d1f1 / a11)
    else:
        det = a11 * a22 - a12 * a12
        if det <= 1e-12 * a11 * a22:
            c1 = r1 / a11 if a11 > 0 else 0.0
            return yy - c1 * r1, c1, 0.0, True, 0.0
        c1 = (a22 * r1 - a12 * r2) / det
        c2 = (a11 * r2 - a12 * r1) / det
        rss = yy - c1 * r1 - c2 * r2
        gy = c1 * d1y + c2 * d2y
        gf1 = c1 * d1f1 + c2 * d2f1
        gf2 = c1 * d1f2 + c2 * d2f2
        gg = c1 * c1 * d1d1 + 2.0 * c1 * c2 * d1d2 + c2 * c2 * d2d2
        jr = gy - c1 * gf1 - c2 * gf2
        # (gf1, gf2) A^-1 (gf1, gf2)^T with A = [[a11, a12], [a12, a22]]
        projected = (a22 * gf1 * gf1 - 2.0 * a12 * gf1 * gf2 + a11 * gf2 * gf2) / det
        jj = gg - projected
    step = jr / jj if jj > 0 else 0.0
    return rss, c1, c2, False, step


@_jit()
def _gauss_newton(y, cut, g, times, tr, kind, uniform, log_lo, log_hi, step, n_grid, iterations):
    """Safeguarded Gauss-Newton on the reduced cost from grid position ``g`` (fractional: the grid parabola's
    vertex), steps capped at one grid step and halved back towards the best point when the cost rises.
    Returns (u, rss, c1, c2, degenerate, converged, at_bound)."""
    edge = g <= 0.0 or g >= n_grid - 1
    u = min(max(log_lo + step * g, log_lo), log_hi)
    best_u = u
    best = _gn_pass(y, cut, times, tr, kind, uniform, u)
    converged = False
    delta = min(max(best[4], -step), step)
    for _ in range(iterations):
        if abs(delta) < 1e-7:  # relative change of theta below 1e-7
            converged = True
            break
        trial_u = min(max(best_u + delta, log_lo), log_hi)
        trial = _gn_pass(y, cut, times, tr, kind, uniform, trial_u)
        if trial[0] <= best[0]:
            best_u = trial_u
            best = trial
            delta = min(max(trial[4], -step), step)
        else:
            delta *= 0.5
    rss, c1, c2, degenerate = best[0], best[1], best[2], best[3]
    at_bound = best_u <= log_lo + 1e-9 or best_u >= log_hi - 1e-9 or (edge and not converged)
    return best_u, max(rss, 0.0), c1, c2, degenerate, converged, at_bound


def _refine_all(y, cuts, g_best, times, tr, kind, uniform, log_lo, log_hi, step, n_grid, rounds, results):
    n_vox = y.shape[0]
    n_cand = cuts.shape[1]
    for v in _prange(n_vox):
        best_rss = np.inf
        for c in range(n_cand):  # every polarity candidate is refined exactly: near-ties are common at the null
            u, rss, c1, c2, degenerate, bracketed, at_bound = _gauss_newton(
                y[v], cuts[v, c], g_best[v, c], times, tr, kind, uniform, log_lo, log_hi, step, n_grid, rounds
            )
            if rss < best_rss:
                best_rss = rss
                results[v, 0] = u
                results[v, 1] = rss
                results[v, 2] = c1
                results[v, 3] = c2
                results[v, 4] = 1.0 if degenerate else 0.0
                results[v, 5] = 1.0 if bracketed else 0.0
                results[v, 6] = 1.0 if at_bound else 0.0
                results[v, 7] = cuts[v, c]


if numba is not None:
    _prange = numba.prange
    _refine_all = numba.njit(cache=True, parallel=True)(_refine_all)
else:  # pragma: no cover
    _prange = range


def refine(
    y: np.ndarray,
    cuts: np.ndarray,
    g_best: np.ndarray,
    times: np.ndarray,
    tr: np.ndarray | None,
    kind: int,
    log_lo: float,
    log_hi: float,
    step: float,
    n_grid: int,
    rounds: int,
) -> np.ndarray:
    """Per voxel: (u, rss, c1, c2, degenerate, bracketed, at_bound, cut) for the best of the candidate sign cuts."""
    times = np.ascontiguousarray(times, dtype=np.float64)
    spacing = np.diff(times)
    uniform = bool(len(times) >= 3 and spacing[0] > 0 and np.all(np.abs(spacing - spacing[0]) <= 1e-9 * spacing[0]))
    tr_array = np.ascontiguousarray(times if tr is None else tr, dtype=np.float64)
    results = np.empty((len(y), 8))
    _refine_all(
        np.ascontiguousarray(y, dtype=np.float64),
        np.ascontiguousarray(cuts, dtype=np.int64),
        np.ascontiguousarray(g_best, dtype=np.float64),
        times,
        tr_array,
        int(kind),
        uniform,
        float(log_lo),
        float(log_hi),
        float(step),
        int(n_grid),
        int(rounds),
        results,
    )
    return results


AVAILABLE = numba is not None
