"""Compile a module's numba kernels on first use, in place.

Importing numba costs ~1 s, which ``medseg --help`` and Slicer's module scan should not pay, so kernels are
written as plain Python functions and replaced by compiled dispatchers in the module's globals the first
time they are needed. Callers compiled later see the dispatchers (numba resolves globals at compile time).
Without numba the Python versions stay (correct, slow).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence


def compile_kernels_in_place(
    namespace: Dict[str, Any],
    names: Sequence[str],
    options: Callable[[str], Dict[str, Any]] = lambda name: {},
    prepare: Optional[Callable[[Any], None]] = None,
) -> None:
    """Replace ``namespace[name]`` for each of ``names`` by ``numba.njit(cache=True, nogil=True, **options(name))``
    of it; ``prepare(numba)`` runs first (e.g. to put ``numba.prange`` or an intrinsic into the namespace).
    Only the first call per module does anything (the flag ``_numba_compiled`` in the namespace)."""
    if namespace.get("_numba_compiled"):
        return
    namespace["_numba_compiled"] = True
    try:
        import numba
    except ImportError:  # pragma: no cover - declared dependency
        return
    if prepare is not None:
        prepare(numba)
    for name in names:
        namespace[name] = numba.njit(cache=True, nogil=True, **options(name))(namespace[name])


def compile_parallel_kernels(namespace: Dict[str, Any], names: Sequence[str], parallel: Sequence[str]) -> None:
    """:func:`compile_kernels_in_place` with ``parallel=True`` for the kernels named in ``parallel``, which
    loop over ``_prange`` in the module: ``numba.prange`` once compiled, plain ``range`` without numba."""
    compile_kernels_in_place(
        namespace,
        names,
        options=lambda name: {"parallel": name in parallel},
        prepare=lambda numba: namespace.update(_prange=numba.prange),
    )
