"""One self-contained HTML page (plotly.js inlined once) from facts, headings, tables and figures."""

from __future__ import annotations

import html

import pandas as pd
import plotly.graph_objects as go

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em}}
table{{border-collapse:collapse;font-size:90%}}td,th{{padding:2px 8px;text-align:right}}
pre{{background:#f6f6f6;padding:1em;overflow:auto}}</style></head>
<body><h1>{title}</h1>
{body}
</body></html>
"""


def html_page(title: str, facts: dict[str, object], parts: list[str | pd.DataFrame | go.Figure]) -> str:
    """``facts`` become a bullet list under the title; a str part is a heading, tables and figures are embedded."""
    body = ["<ul>" + "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(str(v))}</li>"
                             for k, v in facts.items() if v) + "</ul>"]
    first_figure = True
    for part in parts:
        if isinstance(part, str):
            body.append(f"<h2>{html.escape(part)}</h2>")
        elif isinstance(part, pd.DataFrame):
            body.append(part.to_html(index=False, float_format=lambda x: f"{x:.4g}", na_rep="–"))
        else:
            body.append(part.to_html(full_html=False, include_plotlyjs=first_figure))
            first_figure = False
    return PAGE.format(title=html.escape(title), body="\n".join(body))
