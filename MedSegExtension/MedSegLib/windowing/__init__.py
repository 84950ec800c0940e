"""CT/MR windowing: preset library, exact VOI LUT functions, fast batch windowing, display and PNG rendering.

Import the submodules directly; this package imports nothing heavy so ``medseg --help`` stays fast:

- :mod:`.voi_lut`: float64 reference definitions (seed formula, DICOM LINEAR / LINEAR_EXACT / SIGMOID,
  explicit VOI LUT Sequence);
- :mod:`.fast_window`: the bit-exact fast path (numba kernels or chunked LUT gathers);
- :mod:`.presets`: the preset library (``Resources/Presets/window_presets.json``) and user files;
- :mod:`.display`: presets on MRML display nodes and in the Volumes module's preset list;
- :mod:`.render`: PNG slices, montages, side-by-side presets and segment overlays.
"""

from __future__ import annotations

from typing import Any


def window(values: Any, level: float, width: float, function: str = "seed", out_dtype: Any = "uint8") -> Any:
    """Shortcut to :func:`MedSegLib.windowing.fast_window.window`."""
    from MedSegLib.windowing.fast_window import window as fast

    return fast(values, level, width, function, out_dtype)
