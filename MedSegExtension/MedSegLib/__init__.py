"""MedSegLib: Qt-free logic of the MedSeg 3D Slicer extension, also usable headless.

Nothing heavy is imported here: ``import MedSegLib`` must stay cheap inside Slicer's module
scan and for ``medseg --help``.
"""

import os as _os
import sys as _sys

__version__ = "0.1.0"

# numba's parallel kernels (windowing, morphology) would pick the GNU OpenMP threading layer on Linux, which
# aborts any child forked afterwards ("fork() called from a process already using GNU OpenMP"): the DICOM
# indexer's process pool forks, and so do users' scripts. "forksafe" selects TBB where installed, else
# numba's own workqueue. A choice made by the user (environment or numba.config) is kept.
if "NUMBA_THREADING_LAYER" not in _os.environ:
    _os.environ["NUMBA_THREADING_LAYER"] = "forksafe"
    if "numba" in _sys.modules:  # imported before us (e.g. by another Slicer module): configure it directly
        _config = getattr(_sys.modules["numba"], "config", None)
        if _config is not None and getattr(_config, "THREADING_LAYER", "default") == "default":
            _config.THREADING_LAYER = "forksafe"
