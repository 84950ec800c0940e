"""Self-contained HTML reports of pipeline runs and the demo (images embedded, no network access).

``build_report(OUTDIR)`` reads ``summary.json`` and each case's ``manifest.json`` written by
:mod:`MedSegLib.pipeline` and writes ``OUTDIR/report.html``; :mod:`.plots` draws the figures.
"""

from MedSegLib.report.html_report import REPORT_NAME, build_report, load_run, render_report

__all__ = ["REPORT_NAME", "build_report", "load_run", "render_report"]
