"""Relaxometry signal equations, written once and shared by the fitter, the simulators and the tests.

Times are in ms, angles in degrees, B1 is the factor actual/nominal flip angle. Each separable model also
exposes its basis functions: the signal is ``Phi(theta) @ c`` with one nonlinear parameter ``theta`` (a
relaxation time) and one or two linear amplitudes ``c``, which is what the variable-projection engine needs.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

ArrayLike = np.ndarray | Sequence[float] | float


# ----------------------------------------------------------------------------------------------------------
# Forward models (used for simulation and as documentation of what each fit assumes)


def ir_signal(
    t1_ms: ArrayLike, m0: ArrayLike, ti_ms: ArrayLike, tr_ms: Optional[ArrayLike] = None, efficiency: ArrayLike = 2.0
) -> np.ndarray:
    """Signed IR signal ``M0 (1 - eff e^(-TI/T1) + e^(-TR/T1))``; ``tr_ms=None`` is the long-TR limit.

    The ``+e^(-TR/T1)`` term is the incomplete recovery between inversions (ideal pulses, qMRLab case 2);
    it may differ per image when a protocol lengthens TR with TI. Returns shape ``t1.shape + (n_TI,)``.
    """
    t1 = np.asarray(t1_ms, dtype=np.float64)[..., None]
    ti = np.asarray(ti_ms, dtype=np.float64)
    signal = 1.0 - np.asarray(efficiency, dtype=np.float64)[..., None] * np.exp(-ti / t1)
    if tr_ms is not None:
        signal = signal + np.exp(-np.broadcast_to(np.asarray(tr_ms, dtype=np.float64), ti.shape) / t1)
    return np.asarray(m0, dtype=np.float64)[..., None] * signal


def vfa_signal(t1_ms: ArrayLike, m0: ArrayLike, flip_deg: ArrayLike, tr_ms: float, b1: ArrayLike = 1.0) -> np.ndarray:
    """Spoiled gradient-echo steady state ``M0 sin a (1 - E1) / (1 - E1 cos a)`` with ``a = B1 * a_nominal``."""
    t1 = np.asarray(t1_ms, dtype=np.float64)[..., None]
    alpha = np.deg2rad(np.asarray(flip_deg, dtype=np.float64)) * np.asarray(b1, dtype=np.float64)[..., None]
    e1 = np.exp(-float(tr_ms) / t1)
    return np.asarray(m0, dtype=np.float64)[..., None] * np.sin(alpha) * (1 - e1) / (1 - e1 * np.cos(alpha))


def molli_signal(t1_ms: ArrayLike, a: ArrayLike, b: ArrayLike, ti_ms: ArrayLike) -> np.ndarray:
    """Look-Locker apparent recovery ``A - B e^(-t/T1*)`` with ``T1* = T1 / (B/A - 1)`` (Messroghli 2004)."""
    a = np.asarray(a, dtype=np.float64)[..., None]
    b = np.asarray(b, dtype=np.float64)[..., None]
    t1_star = np.asarray(t1_ms, dtype=np.float64)[..., None] / (b / a - 1.0)
    return a - b * np.exp(-np.asarray(ti_ms, dtype=np.float64) / t1_star)


def mono_exp_signal(t_ms: ArrayLike, m0: ArrayLike, te_ms: ArrayLike, offset: ArrayLike = 0.0) -> np.ndarray:
    """``M0 e^(-TE/T) + C`` (T2 spin echo or T2* gradient echo)."""
    t = np.asarray(t_ms, dtype=np.float64)[..., None]
    return (
        np.asarray(m0, dtype=np.float64)[..., None] * np.exp(-np.asarray(te_ms, dtype=np.float64) / t)
        + np.asarray(offset, dtype=np.float64)[..., None]
    )


def epg_cpmg(
    t2_ms: ArrayLike,
    b1: ArrayLike,
    echo_spacing_ms: float,
    n_echoes: int,
    t1_ms: float = 1000.0,
    refocusing_deg: float = 180.0,
) -> np.ndarray:
    """CPMG echo amplitudes by the extended phase graph (Hennig 1988; Weigel 2015), vectorised over atoms.

    Excitation ``B1*90``, refocusing ``B1*refocusing_deg``, hard pulses, real CPMG arithmetic (the form of
    DECAES ``cpmg_flipmat``). Returns ``broadcast(t2, b1).shape + (n_echoes,)``; with B1 = 1 and 180 degrees
    it is exactly ``e^(-n ESP / T2)``.
    """
    t2, b1 = np.broadcast_arrays(np.asarray(t2_ms, dtype=np.float64), np.asarray(b1, dtype=np.float64))
    shape = t2.shape
    t2 = t2.reshape(-1, 1)
    b1 = b1.reshape(-1, 1)
    n_states = n_echoes + 2
    tau = echo_spacing_ms / 2.0
    e2 = np.exp(-tau / t2)
    e1 = np.exp(-tau / float(t1_ms))
    beta = np.deg2rad(refocusing_deg) * b1
    alpha_ex = np.deg2rad(90.0) * b1
    c2 = np.cos(beta / 2) ** 2
    s2 = np.sin(beta / 2) ** 2
    sb = np.sin(beta)
    cb = np.cos(beta)
    f_plus = np.zeros((t2.shape[0], n_states))
    f_minus = np.zeros_like(f_plus)
    z = np.zeros_like(f_plus)
    f_plus[:, 0] = np.sin(alpha_ex[:, 0])
    f_minus[:, 0] = np.sin(alpha_ex[:, 0])
    z[:, 0] = np.cos(alpha_ex[:, 0])
    echoes = np.empty((t2.shape[0], n_echoes))

    def relax_and_dephase(fp: np.ndarray, fm: np.ndarray, zz: np.ndarray):
        fp = fp * e2
        fm = fm * e2
        zz = zz * e1
        new_fp = np.empty_like(fp)
        new_fm = np.empty_like(fm)
        new_fp[:, 1:] = fp[:, :-1]
        new_fm[:, :-1] = fm[:, 1:]
        new_fm[:, -1] = 0.0
        new_fp[:, 0] = new_fm[:, 0]  # F+_0 after the shift is the conjugate of F-_0 (real here)
        return new_fp, new_fm, zz

    for n in range(n_echoes):
        f_plus, f_minus, z = relax_and_dephase(f_plus, f_minus, z)
        fp = c2 * f_plus + s2 * f_minus + sb * z
        fm = s2 * f_plus + c2 * f_minus - sb * z
        zz = -0.5 * sb * f_plus + 0.5 * sb * f_minus + cb * z
        f_plus, f_minus, z = relax_and_dephase(fp, fm, zz)
        echoes[:, n] = f_plus[:, 0]
    return np.abs(echoes).reshape(shape + (n_echoes,))


# ----------------------------------------------------------------------------------------------------------
# Separable bases for the engine: theta has any shape; the result is theta.shape + (N, K).


def decay(t_ms: np.ndarray, times_ms: np.ndarray) -> np.ndarray:
    """``exp(-times / t)`` with shape ``t.shape + (N,)``.

    float64 ``exp`` costs ~25 ns per value on the target CPUs; for equally spaced times (echo trains) the powers of
    one exponential are built by repeated multiplication instead (~5 ns, relative error ~N * 1e-16).
    """
    t = np.asarray(t_ms, dtype=np.float64)
    times = np.asarray(times_ms, dtype=np.float64)
    n = times.shape[-1] if times.ndim else 1
    if times.ndim == 1 and n >= 4:
        spacing = np.diff(times)
        if np.all(np.abs(spacing - spacing[0]) <= 1e-9 * max(abs(spacing[0]), 1e-12)) and spacing[0] > 0:
            rate = 1.0 / t.reshape(-1)
            step = np.exp(-spacing[0] * rate)
            out = np.empty((n, rate.size))
            out[0] = np.exp(-times[0] * rate)
            for index in range(1, n):
                np.multiply(out[index - 1], step, out=out[index])
            return out.T.reshape(t.shape + (n,))
    return np.exp(-times / t[..., None])


def ir_basis(t1_ms: np.ndarray, ti_ms: np.ndarray, tr_ms: Optional[np.ndarray] = None) -> np.ndarray:
    """IR as ``c1 * (1 + e^(-TR/T1)) + c2 * e^(-TI/T1)``; ``c1 = M0``, ``c2 = -eff * M0``.

    Without TR (or TR the same for every image, when it only rescales c1) the first column is constant.
    """
    t1 = np.asarray(t1_ms, dtype=np.float64)[..., None]
    second = decay(t1[..., 0], ti_ms)
    if tr_ms is None:
        first = np.ones_like(second)
    else:
        first = 1.0 + np.exp(-np.asarray(tr_ms, dtype=np.float64) / t1)
    return np.stack([first, second], axis=-1)


def exp_basis(t_ms: np.ndarray, te_ms: np.ndarray, offset: bool = False) -> np.ndarray:
    """``c1 e^(-TE/T)`` (+ ``c2`` when an offset is fitted)."""
    values = decay(t_ms, te_ms)
    if offset:
        return np.stack([values, np.ones_like(values)], axis=-1)
    return values[..., None]


def vfa_basis(t1_ms: np.ndarray, flip_deg: np.ndarray, tr_ms: float, b1: Optional[np.ndarray] = None) -> np.ndarray:
    """``M0 * sin a (1 - E1)/(1 - E1 cos a)``; ``b1`` broadcasts against ``t1_ms``."""
    t1 = np.asarray(t1_ms, dtype=np.float64)
    scale = np.ones_like(t1) if b1 is None else np.broadcast_to(np.asarray(b1, dtype=np.float64), t1.shape)
    return vfa_signal(t1, np.ones_like(t1), flip_deg, tr_ms, scale)[..., None]
