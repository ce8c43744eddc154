"""Render the support matrix for people: Markdown and one self-contained HTML page."""

from __future__ import annotations

from html import escape
from typing import Any

COLUMNS = ("lane_id", "family", "role", "adapter", "runtime", "support_tier", "evidence_status",
           "conformance")
_SHORT = {"published_basis": "published", "supported_experimental": "experimental",
          "community_experimental": "community"}


def _rows(matrix: dict[str, Any]) -> list[list[str]]:
    rows = []
    for lane in matrix["lanes"]:
        ev = lane["evidence"]
        counts = ", ".join(f"{n} {o}" for o, n in ev["counts"].items())
        rows.append([*(str(lane[c]) for c in COLUMNS), ", ".join(ev["models"]), counts,
                     ", ".join(ev["failing_checks"]) or "-",
                     ", ".join(ev.get("should_findings", [])) or "-"])
    return rows


def _grid(matrix: dict[str, Any], runtime: str) -> tuple[list[str], list[list[str]]]:
    """Return (adapters, rows of family then one tier per adapter) for one runtime."""
    lanes = [lane for lane in matrix["lanes"] if lane["runtime"] == runtime]
    adapters = sorted({lane["adapter"] for lane in lanes})
    cells = {(lane["family"], lane["adapter"]): lane for lane in lanes}
    rows = []
    for family in sorted({lane["family"] for lane in lanes}):
        row = [family]
        for adapter in adapters:
            lane = cells.get((family, adapter))
            row.append(_SHORT[lane["support_tier"]] + (" (failing)" if lane["evidence"][
                "failing_checks"] else "") if lane else "-")
        rows.append(row)
    return adapters, rows


HEAD = [*COLUMNS, "models", "outcomes", "failing checks (MUST)", "findings (SHOULD)"]


def markdown(matrix: dict[str, Any]) -> str:
    """Return the matrix as Markdown: tiers, a family x adapter grid per runtime, every lane."""
    out = ["# Support matrix", "",
           "Generated from lane results by `nox -s support_matrix`; do not edit by hand.", "",
           "## Tiers", ""]
    out += [f"- `{tier}`: {text}" for tier, text in matrix["support_tiers"].items()]
    out += ["", "Rules:", ""] + [f"- {rule}" for rule in matrix["tier_rules"]]
    for conflict in matrix["conflicts"]:
        out.append(f"- conflict: {conflict}")
    for runtime in sorted({lane["runtime"] for lane in matrix["lanes"]}):
        adapters, rows = _grid(matrix, runtime)
        out += ["", f"## Families x adapters, runtime `{runtime}`", "",
                "| family | " + " | ".join(adapters) + " |",
                "|---" * (len(adapters) + 1) + "|"]
        out += ["| " + " | ".join(row) + " |" for row in rows]
    out += ["", "## Every lane", "", "| " + " | ".join(HEAD) + " |", "|---" * len(HEAD) + "|"]
    out += ["| " + " | ".join(r.replace("|", "\\|") for r in row) + " |" for row in _rows(matrix)]
    return "\n".join(out) + "\n"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #1b1b1b; }
table { border-collapse: collapse; margin: 1rem 0 2rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
.published_basis, .published { background: #c8ecc8; }
.supported_experimental, .experimental { background: #e4efff; }
.community_experimental, .community { background: #ffe9c4; }
.failing { color: #a00000; font-weight: bold; }
"""


def _html_table(head: list[str], rows: list[list[str]], classes: list[list[str]]) -> str:
    cells = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f'<td class="{escape(c)}">{escape(v)}</td>' for v, c in zip(
            row, cls, strict=True)) + "</tr>" for row, cls in zip(rows, classes, strict=True))
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def html(matrix: dict[str, Any]) -> str:
    """Return the matrix as one self-contained HTML page (no scripts, no external files)."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>pytest-invarlock support matrix</title>", f"<style>{_STYLE}</style>",
             "</head><body>", "<h1>Support matrix</h1>",
             "<p>Generated from lane results by <code>nox -s support_matrix</code>.</p><ul>"]
    parts += [f"<li><b>{escape(t)}</b>: {escape(d)}</li>"
              for t, d in matrix["support_tiers"].items()]
    parts += ["</ul>"] + [f'<p class="failing">conflict: {escape(c)}</p>'
                          for c in matrix["conflicts"]]
    for runtime in sorted({lane["runtime"] for lane in matrix["lanes"]}):
        adapters, rows = _grid(matrix, runtime)
        classes = [["", *(v.split(" ")[0] for v in row[1:])] for row in rows]
        parts += [f"<h2>Families &times; adapters, runtime {escape(runtime)}</h2>",
                  _html_table(["family", *adapters], rows, classes)]
    rows = _rows(matrix)
    classes = [[""] * 5 + [row[5], "failing" if row[6] == "failing" else ""] + [""] * 3 + [
        "failing" if row[-2] != "-" else "", ""] for row in rows]
    parts += ["<h2>Every lane</h2>", _html_table(HEAD, rows, classes), "</body></html>"]
    return "\n".join(parts) + "\n"
