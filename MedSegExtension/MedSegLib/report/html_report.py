"""``report.html`` for a pipeline run folder: one file, no network, images embedded as data URIs.

Clinicians open it from a USB stick or a mail attachment, so nothing may point outside the file: no
scripts, no web fonts, no links to the case folders. Content: the run (pipeline, versions, counts), a
cohort table per measurement (e.g. organ volumes, T1 per region) with a plot, then one section per case:
status and reason, input series, steps (with "not available" capabilities listed), images, tables,
outputs with checksums and provenance.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from MedSegLib.errors import UserInputError

REPORT_NAME = "report.html"
_MAX_EMBED_BYTES = 8 * 1024 * 1024  # an image larger than this is listed, not embedded

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#1d3557;color:#fff;padding:18px 28px}header h1{margin:0 0 4px 0;font-size:22px}
header p{margin:2px 0;font-size:13px;opacity:.9}main{padding:10px 28px 40px 28px;max-width:1400px}
section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:14px 18px;margin:16px 0}
h2{font-size:18px;margin:4px 0 10px 0}h3{font-size:15px;margin:14px 0 6px 0}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0 10px 0}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top}th{background:#eef2f6}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.status{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;color:#fff}
.complete,.ok{background:#2a9d8f}.skipped{background:#6c757d}.failed{background:#e63946}
.not-available{background:#f4a261}.reason{color:#b00020;font-weight:600}
figure{display:inline-block;margin:6px 12px 10px 0;vertical-align:top}
figure img{max-width:640px;border:1px solid #ccc;background:#000}figure.plot img{background:#fff}
figcaption{font-size:12px;color:#444;max-width:640px}code{font-size:11.5px}
.small{font-size:12px;color:#555}nav a{color:#1d3557;margin-right:10px;font-size:13px}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _status(text: str) -> str:
    return f'<span class="status {_e(text.replace(" ", "-"))}">{_e(text)}</span>'


def _number(value: Any) -> str:
    if value is None or value == "":
        return ""
    try:
        return f"{float(value):.4g}"
    except (TypeError, ValueError):
        return _e(value)


def _table(columns: Sequence[str], rows: Sequence[Sequence[Any]], table_id: str = "") -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for value in row:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                cells.append(f'<td class="num">{_number(value)}</td>')
            else:
                cells.append(f"<td>{value if isinstance(value, _Raw) else _e(value)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    attribute = f' id="{_e(table_id)}"' if table_id else ""
    return f"<table{attribute}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


class _Raw(str):
    """Already-escaped HTML for a table cell."""


def _image_uri(path: Path) -> Optional[str]:
    suffix = path.suffix.lower()
    mime = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}.get(suffix)
    if mime is None or not path.is_file() or path.stat().st_size > _MAX_EMBED_BYTES:
        return None
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _figure(uri: str, caption: str, plot: bool = False) -> str:
    css = ' class="plot"' if plot else ""
    return f'<figure{css}><img src="{uri}" alt="{_e(caption)}"><figcaption>{_e(caption)}</figcaption></figure>'


def load_run(out_root: Path) -> Dict[str, Any]:
    """The run summary plus every case's manifest (complete) or failure record."""
    summary_path = Path(out_root) / "summary.json"
    if not summary_path.is_file():
        raise UserInputError("not a medseg run folder (no summary.json; run `medseg run` first)", out_root)
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    for entry in summary.get("cases", []):
        manifest_path = Path(out_root) / "cases" / entry["id"] / "manifest.json"
        failure = Path(out_root) / "failed" / f"{entry['id']}.json"
        if entry["status"] in ("complete", "skipped") and manifest_path.is_file():
            entry["manifest"] = json.loads(manifest_path.read_text(encoding="utf-8"))
        elif failure.is_file():
            entry["failure"] = json.loads(failure.read_text(encoding="utf-8"))
    return summary


def cohort_tables(cases: Sequence[Dict[str, Any]]) -> Dict[str, Dict[str, Dict[str, float]]]:
    """measurement group -> column -> case id -> value, from every case's measurements."""
    groups: Dict[str, Dict[str, Dict[str, float]]] = {}
    for entry in cases:
        measured = (entry.get("manifest") or {}).get("measurements") or entry.get("measurements") or {}
        for group, values in measured.items():
            for column, value in values.items():
                groups.setdefault(group, {}).setdefault(column, {})[entry["id"]] = value
    return groups


def _cohort_section(summary: Dict[str, Any]) -> str:
    from MedSegLib.report import plots

    cases = summary.get("cases", [])
    ids = [c["id"] for c in cases]
    rows = [
        [
            _Raw(f'<a href="#case-{_e(c["id"])}">{_e(c["id"])}</a>'),
            _Raw(_status(c["status"])),
            c.get("label", ""),
            c.get("seconds", ""),
            _Raw(f'<span class="reason">{_e(c.get("reason", ""))}</span>') if c["status"] == "failed" else "",
        ]
        for c in cases
    ]
    parts = [
        '<section id="cohort"><h2>Cohort</h2>',
        _table(["Case", "Status", "Input", "Seconds", "Reason"], rows, "cases-table"),
    ]
    for group, columns in cohort_tables(cases).items():
        with_data = [i for i in ids if any(i in values for values in columns.values())]
        table_rows = [[case_id] + [columns[col].get(case_id) for col in columns] for case_id in with_data]
        parts.append(f"<h3>{_e(group)}</h3>")
        parts.append(_table(["Case"] + list(columns), table_rows, f"cohort-{_slug(group)}"))
        series = {col: [columns[col].get(i) for i in with_data] for col in list(columns)[:16]}
        if with_data and any(v is not None for vs in series.values() for v in vs):
            figure = plots.bar_chart(with_data, series, group, f"{group} per case")
            parts.append(_figure(figure.data_uri(), f"{group} per case", plot=True))
    parts.append("</section>")
    return "".join(parts)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _case_section(entry: Dict[str, Any], out_root: Path) -> str:
    case_id = entry["id"]
    manifest = entry.get("manifest") or {}
    failure = entry.get("failure") or {}
    parts = [f'<section id="case-{_e(case_id)}"><h2>{_e(case_id)} {_status(entry["status"])}</h2>']
    if entry.get("label"):
        parts.append(f'<p class="small">Input: {_e(entry["label"])}</p>')
    if entry["status"] == "failed":
        step = entry.get("step") or failure.get("step") or ""
        parts.append(
            f'<p class="reason">Failed{" in step " + _e(step) if step else ""}: {_e(entry.get("reason", ""))}</p>'
        )
    if entry["status"] == "skipped":
        parts.append(f'<p class="small">{_e(entry.get("reason", ""))}</p>')
    provenance = manifest.get("provenance", {})
    series = provenance.get("input_series") or []
    if series:
        parts.append("<h3>Input series</h3>")
        parts.append(
            _table(
                ["Name", "Modality", "Kind", "Instances", "Series Instance UID"],
                [
                    [s.get("name"), s.get("modality"), s.get("kind"), s.get("instances"), s.get("series_instance_uid")]
                    for s in series
                ],
            )
        )
    steps = manifest.get("steps") or entry.get("steps") or []
    if steps:
        parts.append("<h3>Steps</h3>")
        parts.append(
            _table(
                ["Step", "Status", "Seconds", "Note"],
                [
                    [s.get("id"), _Raw(_status(s.get("status", "?"))), s.get("seconds"), s.get("message", "")]
                    for s in steps
                ],
                f"steps-{case_id}",
            )
        )
    images = [o for o in manifest.get("outputs", []) if o.get("kind") == "image"]
    if images:
        parts.append("<h3>Images</h3><div>")
        for output in images:
            uri = _image_uri(out_root / "cases" / case_id / output["path"])
            if uri is not None:
                parts.append(_figure(uri, output.get("caption") or output["path"], output["path"].endswith(".svg")))
            else:
                parts.append(f'<p class="small">{_e(output["path"])} (not embedded)</p>')
        parts.append("</div>")
    for table in manifest.get("tables", []):
        parts.append(f"<h3>{_e(table.get('title', 'Table'))}</h3>")
        parts.append(_table(table["columns"], table["rows"]))
    outputs = [o for o in manifest.get("outputs", []) if o.get("kind") != "image"]
    if outputs:
        parts.append("<h3>Outputs</h3>")
        parts.append(
            _table(
                ["File", "Kind", "Step", "Bytes", "SHA-256"],
                [
                    [
                        o["path"],
                        o.get("kind"),
                        o.get("step"),
                        o.get("bytes"),
                        _Raw(f"<code>{_e(o.get('sha256', '')[:16])}…</code>"),
                    ]
                    for o in outputs
                ],
            )
        )
    if provenance:
        rows = [
            [key, provenance[key]]
            for key in ("medseg_version", "slicer_core_version", "python", "host")
            if key in provenance
        ]
        for name, model in (provenance.get("models") or {}).items():
            rows.append(
                [
                    f"model ({name})",
                    f"{model.get('name')} {model.get('version')} weights sha256 {model.get('weights_sha256', '')}",
                ]
            )
        for fit_id, fit in (provenance.get("qmri") or {}).items():
            rows.append([f"qMRI fit ({fit_id})", json.dumps(fit.get("protocol", {}), default=str)[:300]])
        if provenance.get("input_series_uids"):
            rows.append(["input series UIDs", ", ".join(provenance["input_series_uids"])])
        rows.append(["input hash", manifest.get("input", {}).get("hash", "")])
        rows.append(["pipeline digest", manifest.get("pipeline", {}).get("digest", "")])
        parts.append("<h3>Provenance</h3>" + _table(["Item", "Value"], rows))
    parts.append("</section>")
    return "".join(parts)


def render_report(summary: Dict[str, Any], out_root: Path, title: str = "", intro: str = "") -> str:
    """The whole HTML document (a string) for a loaded run summary."""
    pipeline = summary.get("pipeline", {})
    counts = summary.get("counts", {})
    title = title or f"MedSeg report: {pipeline.get('name', 'pipeline')}"
    header = (
        f"<header><h1>{_e(title)}</h1>"
        f"<p>Pipeline <b>{_e(pipeline.get('name'))}</b> ({len(pipeline.get('steps', []))} steps: "
        f"{_e(', '.join(s['id'] for s in pipeline.get('steps', [])))}) &middot; "
        f"MedSeg {_e(summary.get('medseg_version'))}"
        f" &middot; {_e(summary.get('backend'))} backend, {_e(summary.get('workers'))} worker(s)</p>"
        f"<p>{counts.get('complete', 0)} complete, {counts.get('skipped', 0)} skipped (complete earlier), "
        f"{counts.get('failed', 0)} failed &middot; finished {_e(summary.get('finished'))} in "
        f"{_e(summary.get('seconds'))} s</p></header>"
    )
    nav = (
        "<nav>"
        + "".join(f'<a href="#case-{_e(c["id"])}">{_e(c["id"])}</a>' for c in summary.get("cases", []))
        + "</nav>"
    )
    body = [_cohort_section(summary)] + [_case_section(entry, out_root) for entry in summary.get("cases", [])]
    intro_html = f"<section><p>{intro}</p></section>" if intro else ""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
        "style-src 'unsafe-inline'\">"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>{header}<main>{nav}{intro_html}"
        + "".join(body)
        + "</main></body></html>\n"
    )


def build_report(out_root: Path, output: Optional[Path] = None, title: str = "", intro: str = "") -> Path:
    """Write ``OUT_ROOT/report.html`` (or ``output``) for a ``medseg run`` folder; returns its path."""
    from MedSegLib.atomic import atomic_output

    out_root = Path(out_root)
    summary = load_run(out_root)
    document = render_report(summary, out_root, title, intro)
    target = Path(output) if output else out_root / REPORT_NAME
    with atomic_output(target) as temp:
        temp.write_text(document, encoding="utf-8")
    return target
