"""PACS networking: configured nodes, DIMSE (echo, find, get, move, store) and DICOMweb (QIDO, WADO, STOW).

Everything here runs headless (pynetdicom, dicomweb-client, no Qt) so the CLI, the Slicer panel and the tests share
one code path. Retrieved instances go straight into a MedSeg/CTK DICOM database folder. Every network failure is
raised as ``PacsError`` (a ``UserInputError``): one clear line naming the server, never a traceback or a hang.
"""

from MedSegLib.pacs.nodes import PacsError, PacsNode, load_nodes, resolve_node, save_nodes, settings_path

__all__ = ["PacsError", "PacsNode", "load_nodes", "resolve_node", "save_nodes", "settings_path"]
