"""Segment statistics with Slicer's SegmentStatistics measurement names and units."""

from MedSegLib.statistics.segment_statistics import (
    MEASUREMENTS,
    SegmentStatisticsTable,
    compute_statistics,
    labelmap_statistics,
    scalar_statistics,
)

__all__ = ["MEASUREMENTS", "SegmentStatisticsTable", "compute_statistics", "labelmap_statistics", "scalar_statistics"]
