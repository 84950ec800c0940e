"""Configured PACS nodes (AE title, host, port, TLS, DICOMweb URL and credentials) in a JSON settings file.

The file is ``$MEDSEG_PACS_CONFIG`` or ``~/.medseg/pacs.json``, shaped like::

    {"calling_aet": "MEDSEG", "nodes": {"orthanc": {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242}}}

so a site configures its archive once and every ``medseg pacs`` call or panel query just names it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Dict, Optional

from MedSegLib.errors import UserInputError

DEFAULT_CALLING_AET = "MEDSEG"
DEFAULT_TIMEOUT_S = 10.0


class PacsError(UserInputError):
    """A network operation failed (unreachable, rejected, timed out, refused by the server): one line, exit 2."""


@dataclasses.dataclass
class PacsNode:
    """One remote DICOM node; either DIMSE (``host``/``port``/``ae_title``) or DICOMweb (``web_url``) or both."""

    name: str = ""
    ae_title: str = ""
    host: str = "127.0.0.1"
    port: int = 104
    calling_aet: str = DEFAULT_CALLING_AET
    timeout_s: float = DEFAULT_TIMEOUT_S
    tls: bool = False
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    #: port of MedSeg's own storage SCP for C-MOVE (the PACS must know calling_aet at this host/port)
    storage_port: int = 11113
    #: AE title the PACS sends C-MOVE results to ("" = calling_aet, MedSeg's own storage SCP)
    move_aet: str = ""
    web_url: str = ""
    username: str = ""
    password: str = ""
    token: str = ""

    def describe(self) -> str:
        """``NAME (AET@host:port)`` for error messages that must say which server failed."""
        label = f"{self.ae_title}@{self.host}:{self.port}"
        return f"{self.name} ({label})" if self.name else label

    def to_dict(self) -> Dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("name")
        return data


def settings_path() -> Path:
    """``$MEDSEG_PACS_CONFIG`` or ``~/.medseg/pacs.json``."""
    return Path(os.environ.get("MEDSEG_PACS_CONFIG") or Path.home() / ".medseg" / "pacs.json")


def _read_settings(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise UserInputError(f"cannot read the PACS settings: {error}", path) from None
    if not isinstance(data, dict):
        raise UserInputError("PACS settings must be a JSON object", path)
    return data


def load_nodes(path: Optional[Path] = None) -> Dict[str, PacsNode]:
    """All configured nodes by name (an absent file means none)."""
    path = path or settings_path()
    data = _read_settings(path)
    default_calling = str(data.get("calling_aet") or DEFAULT_CALLING_AET)
    fields = {f.name for f in dataclasses.fields(PacsNode)}
    nodes: Dict[str, PacsNode] = {}
    for name, values in (data.get("nodes") or {}).items():
        if not isinstance(values, dict):
            raise UserInputError(f"PACS node {name!r} must be a JSON object", path)
        unknown = sorted(set(values) - fields)
        if unknown:
            raise UserInputError(f"PACS node {name!r} has unknown settings {', '.join(unknown)}", path)
        node = PacsNode(name=name, **{"calling_aet": default_calling, **values})
        node.port = int(node.port)
        nodes[name] = node
    return nodes


def save_nodes(nodes: Dict[str, PacsNode], path: Optional[Path] = None, calling_aet: str = DEFAULT_CALLING_AET) -> Path:
    """Write the settings file atomically (the panel's "save node" button and tests use this)."""
    from MedSegLib.atomic import atomic_output

    path = path or settings_path()
    data = {"calling_aet": calling_aet, "nodes": {name: node.to_dict() for name, node in nodes.items()}}
    with atomic_output(path) as temp:
        temp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def resolve_node(
    name: Optional[str] = None,
    host: Optional[str] = None,
    port: Optional[int] = None,
    called_aet: Optional[str] = None,
    calling_aet: Optional[str] = None,
    web_url: Optional[str] = None,
    timeout_s: Optional[float] = None,
    **overrides: Any,
) -> PacsNode:
    """A node from the settings file by name, with command-line values taking precedence; or an ad-hoc node."""
    if name:
        nodes = load_nodes()
        if name not in nodes:
            known = ", ".join(sorted(nodes)) or "none configured"
            raise UserInputError(f"no PACS node named {name!r} in {settings_path()} (nodes: {known})")
        node = dataclasses.replace(nodes[name])
    else:
        node = PacsNode()
        if not web_url and not (host and port and called_aet):
            raise UserInputError("give a configured node name, or --host, --port and --called-aet (or --web URL)")
    for attribute, value in (
        ("host", host),
        ("port", port),
        ("ae_title", called_aet),
        ("calling_aet", calling_aet),
        ("web_url", web_url),
        ("timeout_s", timeout_s),
        *overrides.items(),
    ):
        if value not in (None, ""):
            setattr(node, attribute, value)
    for title in (node.ae_title, node.calling_aet):
        if title and (len(title) > 16 or "\\" in title):
            raise UserInputError(f"AE title {title!r} must be at most 16 characters without backslashes")
    return node
