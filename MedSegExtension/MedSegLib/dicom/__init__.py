"""DICOM support for MedSeg: a CTK-compatible database, header indexing, series loading."""
