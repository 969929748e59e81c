"""``report.html``: the Markdown report as one self-contained HTML page, with the plots
(:mod:`compressor.plots`) embedded as base64 PNG after the headline table, the accuracy-vs-latency
plot first and full width. Tables scroll sideways inside their own box instead of running off the
page; headers and long cells wrap.

The page is converted from :func:`compressor.report_md.render_markdown`, so both always say the
same thing. The converter handles exactly what that renderer writes: ``#``/``##`` headings,
pipe tables, ``>`` warnings, fenced code blocks, paragraphs, ``**bold**`` and ```code```.
"""

from __future__ import annotations

import base64
import html
import logging
import re

log = logging.getLogger(__name__)

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1400px;
padding:0 1em;color:#222}
.table-wrap{max-width:100%;overflow-x:auto;margin:.8em 0}
table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;white-space:nowrap}
th{background:#f2f2f2;white-space:normal;vertical-align:bottom;min-width:4em;max-width:12em}
td.long{white-space:normal;min-width:20em;max-width:48em;overflow-wrap:anywhere}
tr:nth-child(even) td{background:#fafafa}
.warning{background:#fde2e1;border:2px solid #c0392b;color:#7b1f17;padding:.8em 1em;margin:1em 0;
font-size:15px}
pre{background:#f5f5f5;padding:.8em;overflow-x:auto;white-space:pre-wrap;overflow-wrap:anywhere}
figure{display:inline-block;vertical-align:top;margin:.5em 1em .5em 0;max-width:100%}
figure.lead{display:block;margin:.5em 0 1em}
figcaption{font-size:12px;color:#555}
img{max-width:100%;height:auto}
"""
CAPTIONS = {"accuracy_vs_latency": "Accuracy vs measured latency: up and to the left is better",
            "accuracy_vs_size": "Accuracy vs size", "latency_vs_batch": "Latency vs batch",
            "speedup_per_target": "Speedup per target", "speedup_per_run": "Speedup per run"}
LEAD = {"accuracy_vs_latency"}  # shown full width, above the other plots
LONG_CELL = 60  # characters: a cell this long (key metrics, commands, paths) wraps


def _inline(text: str) -> str:
    out = html.escape(text, quote=False)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", out)


def _cells(line: str) -> list[str]:
    parts = re.split(r"(?<!\\)\|", line.strip())[1:-1]
    return [p.strip().replace("\\|", "|") for p in parts]


def _td(cell: str) -> str:
    """A table cell; long text (:data:`LONG_CELL`) may wrap so the table fits the page."""
    return (f'<td class="long">{_inline(cell)}</td>' if len(cell) > LONG_CELL
            else f"<td>{_inline(cell)}</td>")


def markdown_to_html(md: str) -> str:
    """HTML for the Markdown subset the report renderers write (see the module doc)."""
    out, lines, i = [], md.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            out.append("<pre><code>" + html.escape("\n".join(lines[i + 1:j])) + "</code></pre>")
            i = j + 1
        elif line.startswith("|"):
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            rows = [_cells(r) for r in lines[i:j]]
            body = [r for k, r in enumerate(rows) if k != 1 or not all(re.fullmatch(r":?-+:?", c) for c in r)]
            head, rest = body[0], body[1:]
            out.append('<div class="table-wrap"><table><thead><tr>'
                       + "".join(f"<th>{_inline(c)}</th>" for c in head)
                       + "</tr></thead><tbody>" + "".join(
                           "<tr>" + "".join(_td(c) for c in r) + "</tr>" for r in rest)
                       + "</tbody></table></div>")
            i = j
        elif m := re.match(r"(#{1,3}) (.*)", line):
            level = len(m.group(1))
            out.append(f"<h{level}>{_inline(m.group(2))}</h{level}>")
            i += 1
        elif line.startswith(">"):
            out.append(f'<div class="warning">{_inline(line.lstrip("> ").strip())}</div>')
            i += 1
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
            i += 1
        else:
            i += 1
    return "\n".join(out)


def figures_html(plots: dict[str, bytes]) -> str:
    """``<figure>`` elements with the PNGs inlined as ``data:`` URIs."""
    figs = []
    for name, png in plots.items():
        data = base64.b64encode(png).decode("ascii")
        caption = CAPTIONS.get(name, name.replace("_", " "))
        lead = ' class="lead"' if name in LEAD else ""
        figs.append(f'<figure{lead}><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    return "\n".join(figs)


def page(title: str, body: str) -> str:
    """A complete HTML document around ``body``."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
            f"{body}\n</body></html>\n")


def safe_plots(make, *args) -> dict[str, bytes]:
    """``make(*args)``, or no plots (logged) when matplotlib is missing or a plot fails."""
    try:
        return make(*args)
    except ImportError as exc:
        log.warning("no plots in the HTML report: %s", exc)
    except (ValueError, TypeError, KeyError, OverflowError) as exc:  # odd values in a report
        log.warning("plots skipped: %s", exc)
    return {}


def with_plots(md: str, plots: dict[str, bytes], after: str = "## Summary") -> str:
    """HTML of ``md`` with a Plots section inserted before the heading that follows
    ``after``'s section (at the end when there is none)."""
    start = md.find(after)
    nxt = md.find("\n## ", start + len(after)) if start >= 0 else -1
    head, tail = (md[:nxt], md[nxt:]) if nxt >= 0 else (md, "")
    figs = f"<h2>Plots</h2>\n{figures_html(plots)}" if plots else ""
    return "\n".join(x for x in (markdown_to_html(head), figs, markdown_to_html(tail)) if x)


def render_html(report: dict) -> str:
    """The run report as one self-contained HTML page (tables, warning banner, plots)."""
    from compressor.plots import report_plots
    from compressor.report_md import render_markdown, report_title
    report = report if isinstance(report, dict) else {}
    return page(report_title(report), with_plots(render_markdown(report), safe_plots(report_plots, report)))
