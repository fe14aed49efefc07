"""The report as text, JSON or one self-contained HTML file with a chart (PNG, base64 inline).

The chart is drawn offline with matplotlib's Agg backend through the object API (no pyplot:
no global state, no display needed).
"""

from __future__ import annotations

import base64
import io

import orjson
from jinja2 import Environment, select_autoescape

from cds_service.feedback.report import Counts, Report

COLUMNS = ("shown", "accepted", "overridden", "ignored")
TIERS = ("critical", "warning", "info")


def _rate(counts: Counts) -> str:
    rate = counts.acceptance_rate
    return "-" if rate is None else f"{rate:.0%}"


def render_json(report: Report, labels: dict[str, str] | None = None) -> str:
    return orjson.dumps(report.as_dict(labels), option=orjson.OPT_INDENT_2).decode()


def render_text(report: Report, labels: dict[str, str] | None = None) -> str:
    labels = labels or {}
    lines = [f"Calciphylaxis CDS: cards shown and what became of them "
             f"({'since ' + report.since.date().isoformat() if report.since else 'all time'})",
             ""]

    def section(title: str, rows: list[tuple[str, Counts]]) -> None:
        width = max([len(title), *(len(name) for name, _ in rows)])
        lines.append(f"{title:<{width}}  " + "  ".join(f"{c:>10}" for c in COLUMNS)
                     + f"  {'accepted %':>10}")
        for name, counts in rows:
            lines.append(f"{name:<{width}}  " + "  ".join(
                f"{getattr(counts, c):>10}" for c in COLUMNS) + f"  {_rate(counts):>10}")
        lines.append("")

    section("Service", [*sorted(report.services.items()), ("(all)", report.total)])
    section("Tier", [(tier, report.tiers[tier]) for tier in TIERS if tier in report.tiers])
    section("Factor (rule)", [(f"{rule} ({labels[rule]})" if rule in labels else rule, counts)
                              for rule, counts in sorted(report.rules.items())])
    section("ISO week", [(week, report.weeks[week].total) for week in sorted(report.weeks)])
    lines.append("Override reason  overridden")
    for key, reason in sorted(report.override_reasons.items(), key=lambda kv: -kv[1].overridden):
        name = f"{reason.display} ({reason.code})" if reason.display else reason.code or key
        lines.append(f"  {reason.overridden:>6}  {name}")
    if not report.override_reasons:
        lines.append("  none")
    lines += ["", *quieted_lines(report, labels), "", *reconciliation_lines(report)]
    return "\n".join(lines) + "\n"


def quieted_lines(report: Report, labels: dict[str, str]) -> list[str]:
    """The repeats spared: cards not shown again after a clinician overrode the same ones."""
    lines = [f"Not shown again after an override (override quieting): {report.quieted.total}"]
    for rule, count in sorted(report.quieted.rules.items(), key=lambda kv: (-kv[1], kv[0])):
        name = f"{rule} ({labels[rule]})" if rule in labels else rule
        lines.append(f"  {count:>6}  {name}")
    return lines


def reconciliation_lines(report: Report) -> list[str]:
    counts = report.reconciliation
    return [
        "Feedback that came before its card's record (not counted above until the record "
        "comes)",
        f"  {counts['reconciled']:>6}  reconciled: the record came and the outcome counts above",
        f"  {counts['awaiting_record']:>6}  awaiting the record (lost with a killed worker, or "
        "not yet written)",
        f"  {counts['mismatched']:>6}  not matching the card once it came (e.g. a suggestion "
        "not on it)",
    ]


class ChartUnavailable(Exception):
    """The HTML report's chart needs matplotlib, the optional `report` extra."""


def require_chart() -> None:
    """Fail before any work when the chart cannot be drawn (matplotlib is imported lazily: the
    service and the text and JSON reports never need it)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ChartUnavailable(
            "the HTML report draws its chart with matplotlib, which is not installed: "
            "pip install 'cds-service[report]' (or use --format text or json)") from exc


def weekly_chart_png(report: Report, labels: dict[str, str] | None = None) -> bytes:
    """Weekly acceptance rate per service (top) and per factor (bottom)."""
    require_chart()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = labels or {}
    weeks = sorted(report.weeks)
    figure = Figure(figsize=(10, 7.5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(2, 1, sharex=True)
    for axes, attribute, title in ((top, "services", "By service"),
                                   (bottom, "rules", "By factor (rule)")):
        names = sorted({name for week in weeks
                        for name in getattr(report.weeks[week], attribute)})
        for name in names:
            rates = [getattr(report.weeks[week], attribute)[name].acceptance_rate
                     if name in getattr(report.weeks[week], attribute) else None
                     for week in weeks]
            axes.plot(range(len(weeks)), [r * 100 if r is not None else float("nan")
                                          for r in rates], marker="o",
                      label=labels.get(name, name))
        axes.set_title(f"Weekly acceptance rate (accepted / shown) — {title.lower()}")
        axes.set_ylabel("accepted %")
        axes.set_ylim(-2, 102)
        axes.grid(alpha=0.3)
        if names:
            axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    bottom.set_xticks(range(len(weeks)), weeks, rotation=45, ha="right")
    if not weeks:
        top.text(0.5, 0.5, "no cards shown", ha="center", va="center",
                 transform=top.transAxes)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


_HTML = Environment(autoescape=select_autoescape(default=True)).from_string("""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Calciphylaxis CDS: card acceptance</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:70em}
table{border-collapse:collapse;margin:0 0 2em}
th,td{padding:.25em .8em;border-bottom:1px solid #ddd;text-align:right}
th:first-child,td:first-child{text-align:left}
img{max-width:100%}
</style></head><body>
<h1>Calciphylaxis CDS: cards shown and what became of them</h1>
<p>{{ "Cards shown since " ~ since if since else "All cards shown" }}; generated {{ generated }}.
A card counts once, with its latest reported outcome; ignored = shown with no feedback.</p>
<img alt="Weekly acceptance rate per service and per factor"
     src="data:image/png;base64,{{ chart }}">
{% for title, rows in tables %}
<h2>{{ title }}</h2>
<table><tr><th></th>{% for c in columns %}<th>{{ c }}</th>{% endfor %}<th>accepted %</th></tr>
{% for name, counts in rows %}<tr><td>{{ name }}</td>{% for c in columns %}
<td>{{ counts[c] }}</td>{% endfor %}<td>{{ rate(counts) }}</td></tr>
{% endfor %}</table>
{% endfor %}
<h2>Override reasons</h2>
<table><tr><th>reason</th><th>system</th><th>overridden</th></tr>
{% for reason in reasons %}<tr><td>{{ reason.display or reason.code or "(comment only)" }}</td>
<td>{{ reason.system or "" }}</td><td>{{ reason.overridden }}</td></tr>
{% else %}<tr><td colspan="3">none</td></tr>{% endfor %}
</table>
<h2>Not shown again after an override</h2>
<p>{{ quieted.total }} cards were not repeated: the clinician had overridden one about the
same factors, with nothing new since (override quieting).</p>
{% if quieted.rules %}<table><tr><th>rule</th><th>not shown again</th></tr>
{% for rule, count in quieted.rules | dictsort(by="value", reverse=true) %}
<tr><td>{{ labels[rule] ~ " (" ~ rule ~ ")" if rule in labels else rule }}</td>
<td>{{ count }}</td></tr>{% endfor %}</table>{% endif %}
<h2>Feedback before its card's record</h2>
<ul>{% for line in reconciliation[1:] %}<li>{{ line.strip() }}</li>{% endfor %}</ul>
</body></html>
""")


def render_html(report: Report, labels: dict[str, str] | None = None) -> str:
    labels = labels or {}
    data = report.as_dict(labels)

    def rows(groups: dict[str, Counts], named: bool = False) -> list:
        return [(f"{labels[k]} ({k})" if named and k in labels else k, groups[k].as_dict())
                for k in sorted(groups)]

    tables = [
        ("By service", [*rows(report.services), ("(all)", report.total.as_dict())]),
        ("By tier", [(tier, report.tiers[tier].as_dict()) for tier in TIERS
                     if tier in report.tiers]),
        ("By factor (rule)", rows(report.rules, named=True)),
        ("By ISO week", [(week, report.weeks[week].total.as_dict())
                         for week in sorted(report.weeks)]),
    ]
    return _HTML.render(
        since=data["since"], generated=data["generated_at"], columns=COLUMNS, tables=tables,
        rate=lambda c: "-" if c["acceptance_rate"] is None else f"{c['acceptance_rate']:.0%}",
        reasons=sorted(report.override_reasons.values(), key=lambda r: -r.overridden),
        reconciliation=reconciliation_lines(report), quieted=report.quieted, labels=labels,
        chart=base64.b64encode(weekly_chart_png(report, labels)).decode("ascii"))
