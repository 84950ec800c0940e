"""MedSegLib: Qt-free logic of the MedSeg 3D Slicer extension, also usable headless.

Nothing heavy is imported here: ``import MedSegLib`` must stay cheap inside Slicer's module
scan and for ``medseg --help``.
"""

__version__ = "0.1.0"
