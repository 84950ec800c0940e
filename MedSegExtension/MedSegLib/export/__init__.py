"""DICOM export and import of results: SEG, Parametric Map, Secondary Capture, statistics, de-identification.

Results must reach the PACS in the objects clinicians' viewers read: segmentations as DICOM SEG with coded
terminology, quantitative maps as Parametric Maps with real-world value units, each referencing its source series.
All writers use highdicom (no Qt, no CTK) and validate what they write.
"""
