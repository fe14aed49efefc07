"""The screen as one self-contained HTML page: counts and four plots as embedded SVG.

Aggregates only (no identifiers), but derived from PHI, so written owner-only like the
worklist. matplotlib is imported here and only here, when a report is asked for.
"""

from __future__ import annotations

import html
import io
from collections import Counter
from pathlib import Path

from cds_service.screening.engine import TIER_ORDER, ScreenResult
from cds_service.screening.worklist import private_file


class ReportUnavailable(RuntimeError):
    """matplotlib is not installed."""


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, never a window
        from matplotlib import pyplot
    except ImportError as exc:
        raise ReportUnavailable("the HTML report needs matplotlib: pip install "
                                "'cds-service[report]' (or matplotlib)") from exc
    return pyplot


def _svg(figure) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog: the SVG sits inside the page


def _bars(pyplot, title: str, counts: dict[str, int], xlabel: str) -> str:
    figure, axis = pyplot.subplots(figsize=(7, 0.4 * max(3, len(counts)) + 1))
    labels = list(counts)[::-1]
    axis.barh(labels, [counts[k] for k in labels], color="#4c72b0")
    axis.set_title(title)
    axis.set_xlabel(xlabel)
    svg = _svg(figure)
    pyplot.close(figure)
    return svg


def _pth(pyplot, multiples: list[float], limit: float) -> str:
    figure, axis = pyplot.subplots(figsize=(7, 3.5))
    if multiples:
        top = max(max(multiples), limit * 1.5)
        axis.hist(multiples, bins=40, range=(0, top), color="#4c72b0")
    axis.axvline(limit, color="#c44e52", linestyle="--", label=f"{limit:g} × ULN")
    axis.set_title("Latest PTH among dialysis patients (multiple of the assay's ULN)")
    axis.set_xlabel("PTH / upper limit of normal")
    axis.set_ylabel("patients")
    axis.legend()
    svg = _svg(figure)
    pyplot.close(figure)
    return svg


def render(result: ScreenResult, labels: dict[str, str], pth_limit: float) -> str:
    """The page. `labels`: factor and medicine class ids -> their knowledge labels."""
    pyplot = _pyplot()
    in_scope = [o for o in result.outcomes if o.in_scope]
    tiers = Counter(o.tier for o in result.outcomes if o.tier)
    scope = {"patients in the export": result.counts.patients,
             "on maintenance dialysis (in scope)": len(in_scope),
             **{f"flagged {t}": tiers.get(t, 0) for t in TIER_ORDER}}
    prevalence = Counter(f for o in in_scope for f in o.factors)
    medicines = Counter(c for o in in_scope for c in o.medicine_classes)
    multiples = [o.pth_multiple for o in in_scope if o.pth_multiple is not None]
    plots = [
        _bars(pyplot, "Patients in scope and flagged", scope, "patients"),
        _bars(pyplot, "Factor prevalence among dialysis patients",
              {labels.get(k, k): v for k, v in prevalence.most_common()}, "patients"),
        _pth(pyplot, multiples, pth_limit),
        _bars(pyplot, "Medication mix among dialysis patients (current, by class)",
              {labels.get(k, k): v for k, v in medicines.most_common()}, "patients"),
    ]
    c = result.counts
    facts = [("As of", result.as_of.isoformat()), ("Patients read", f"{c.patients:,}"),
             ("Resources read", f"{c.lines:,}"), ("In scope", f"{len(in_scope):,}"),
             ("Flagged", f"{len(result.rows):,}"), ("Unreadable lines", f"{c.unreadable:,}"),
             ("Resources of unknown patients", f"{c.unknown_patient:,}"),
             ("Entered in error", f"{c.entered_in_error:,}"),
             ("Seconds", f"{result.seconds:.1f}"), ("Engine", result.scheduler)]
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                   for k, v in facts)
    figures = "".join(f'<figure class="plot">{svg}</figure>' for svg in plots)
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>Calciphylaxis risk screen</title><style>body{font-family:sans-serif;"
            "max-width:60em;margin:2em auto}th{text-align:left;padding-right:1em}"
            "figure{margin:2em 0}</style></head><body>"
            "<h1>Calciphylaxis risk screen</h1>"
            f"<table>{rows}</table>{figures}</body></html>")


def write_report(result: ScreenResult, path: str | Path, labels: dict[str, str],
                 pth_limit: float) -> None:
    text = render(result, labels, pth_limit)
    with private_file(path) as out:
        out.write(text)
