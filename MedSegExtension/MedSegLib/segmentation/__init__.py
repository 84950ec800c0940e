"""Classical (non-learning) segmentation: method registry, seeded/threshold/preset methods,
post-processing and output to ``vtkMRMLSegmentationNode``.

Entry points: :func:`segment_volume_node` (MRML) and :func:`run_method` (numpy); the CLI
``medseg segment`` and the MedSegSegmentation panel both build on them.
"""

from MedSegLib.segmentation.api import (
    POST_PARAMS,
    SegmentationResult,
    get_method,
    methods,
    register_method,
    run_method,
    seeds_from_markups,
    segment_volume_node,
)
from MedSegLib.segmentation.core import SeedPoint, SegmentMask

__all__ = [
    "POST_PARAMS",
    "SeedPoint",
    "SegmentMask",
    "SegmentationResult",
    "get_method",
    "methods",
    "register_method",
    "run_method",
    "seeds_from_markups",
    "segment_volume_node",
]
