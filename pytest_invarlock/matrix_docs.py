"""Render the support matrix for people: Markdown and one self-contained HTML page."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Any

from pytest_invarlock.lanes import LANES

COLUMNS = ("lane_id", "family", "role", "adapter", "runtime", "support_tier", "evidence_status",
           "conformance")
_SHORT = {"published_basis": "published", "supported_experimental": "experimental",
          "community_experimental": "community"}
#: A grid cell with no evidence where the adapter declined the family's models in that runtime.
DECLINED = "n/a (declined)"
#: A grid cell with neither evidence nor a decline: nothing was run for the pair.
NOT_RUN = "not run"
LEGEND = (f"A tier is evidence (`(failing)`: a MUST check failed or errored); `{DECLINED}`: the "
          "adapter declined every model of the family in this runtime (reasons under Declined "
          f"models); `{NOT_RUN}`: no records and no decline for this family and adapter here.")
LANE_HEAD = ["lane", "status", "results file", "device", "Python", "torch", "transformers",
             "commit", "reason"]
DECLINED_HEAD = ["adapter", "model", "family", "role", "runtime", "reason"]


@dataclass(frozen=True)
class Cell:
    """One grid cell: its text, a CSS class and a hover title (HTML only)."""

    text: str
    cls: str = ""
    title: str = ""


def _rows(matrix: dict[str, Any]) -> list[list[str]]:
    rows = []
    for lane in matrix["lanes"]:
        ev = lane["evidence"]
        counts = ", ".join(f"{n} {o}" for o, n in ev["counts"].items())
        rows.append([*(str(lane[c]) for c in COLUMNS), ", ".join(ev["models"]), counts,
                     ", ".join(ev["failing_checks"]) or "-",
                     ", ".join(ev.get("should_findings", [])) or "-"])
    return rows


def _runtimes(matrix: dict[str, Any]) -> list[str]:
    """Return the runtimes with a grid: those with lanes or with declined models of a family."""
    return sorted({lane["runtime"] for lane in matrix["lanes"]}
                  | {d["runtime"] for d in matrix.get("declined", []) if d["family"]})


def _grid(matrix: dict[str, Any], runtime: str) -> tuple[list[str], list[list[Cell]]]:
    """Return (adapters, rows of family then one cell per adapter) for one runtime.

    A cell is the lane's tier when there is evidence, :data:`DECLINED` when there is none and
    the adapter declined models of the family in this runtime, :data:`NOT_RUN` otherwise.
    """
    lanes = [lane for lane in matrix["lanes"] if lane["runtime"] == runtime]
    declines: dict[tuple[str, str], list[str]] = {}
    for item in matrix.get("declined", []):
        if item["runtime"] == runtime and item["family"]:
            declines.setdefault((item["family"], item["adapter"]), []).append(
                f"{item['model']}: {item['reason']}")
    adapters = sorted({lane["adapter"] for lane in lanes} | {a for _, a in declines})
    families = sorted({lane["family"] for lane in lanes} | {f for f, _ in declines})
    cells = {(lane["family"], lane["adapter"]): lane for lane in lanes}
    rows = []
    for family in families:
        row = [Cell(family)]
        for adapter in adapters:
            lane, why = cells.get((family, adapter)), declines.get((family, adapter), [])
            if lane:
                failing = " (failing)" if lane["evidence"]["failing_checks"] else ""
                also = "; declined " + "; ".join(why) if why else ""
                row.append(Cell(_SHORT[lane["support_tier"]] + failing,
                                _SHORT[lane["support_tier"]], lane["lane_id"] + also))
            elif why:
                row.append(Cell(DECLINED, "declined", f"{adapter} declined " + "; ".join(why)))
            else:
                row.append(Cell(NOT_RUN, "notrun", f"no records of {adapter} on {family} in "
                                f"runtime {runtime}"))
        rows.append(row)
    return adapters, rows


#: above this many adapters in a runtime, its grid is drawn as a list of the cells that hold
#: something: a profile whose every adapter has its own families (TransformerLens: one adapter
#: per architecture) would otherwise be a page-wide grid of "not run"
GRID_MAX = 16


def _view(matrix: dict[str, Any], runtime: str) -> tuple[str, list[str], list[list[Cell]]]:
    """Return (title, head, rows) of one runtime: the family x adapter grid, or its list form."""
    adapters, rows = _grid(matrix, runtime)
    if len(adapters) <= GRID_MAX:
        return "Families x adapters", ["family", *adapters], rows
    listed = [[row[0], Cell(adapter), cell] for row in rows
              for adapter, cell in zip(adapters, row[1:], strict=True) if cell.text != NOT_RUN]
    return "Families and their adapters", ["family", "adapter", "evidence"], listed


def _lane_rows(matrix: dict[str, Any]) -> list[list[str]]:
    """Return one row per result file, lane by lane (every lane of LANES, even without a file)."""
    runs = matrix.get("runs", [])
    order = list(LANES) + sorted({r["lane"] for r in runs} - set(LANES))
    rows = []
    for lane in order:
        mine = [r for r in runs if r["lane"] == lane]
        if not mine:
            rows.append([lane, "no results", "", "", "", "", "", "",
                         f"no results file for lane {lane} was merged"])
        for run in mine:
            ran = run["status"] != "not_run"
            packages = run["packages"]
            rows.append([lane, "ran" if ran else "not run here", run["source"], run["device"],
                         run["python"] or "unknown", packages.get("torch") or "not installed",
                         packages.get("transformers") or "not installed",
                         (run["commit"] or "unknown")[:12],
                         "" if ran else run["reason"] or "no reason recorded"])
    return rows


def _declined_rows(matrix: dict[str, Any]) -> list[list[str]]:
    return [[d["adapter"], d["model"], d["family"] or "unknown", d["role"] or "unknown",
             d["runtime"], d["reason"]] for d in matrix.get("declined", [])]


HEAD = [*COLUMNS, "models", "outcomes", "failing checks (MUST)", "findings (SHOULD)"]


def _md_cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
            + ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows])


def markdown(matrix: dict[str, Any]) -> str:
    """Return the matrix as Markdown: tiers, lanes, a family x adapter grid per runtime, lanes."""
    out = ["# Support matrix", "",
           "Generated from lane results by `nox -s support_matrix`; do not edit by hand.", "",
           "## Tiers", ""]
    out += [f"- `{tier}`: {text}" for tier, text in matrix["support_tiers"].items()]
    out += ["", "Rules:", ""] + [f"- {rule}" for rule in matrix["tier_rules"]]
    for conflict in matrix["conflicts"]:
        out.append(f"- conflict: {conflict}")
    out += ["", "## Lanes", "",
            "Each lane's result files: `ran` (with what it ran on), `not run here` (the lane "
            "could not run where it was invoked, and why), `no results` (no file was merged).",
            ""]
    out += _md_table(LANE_HEAD, _lane_rows(matrix))
    for runtime in _runtimes(matrix):
        title, head, rows = _view(matrix, runtime)
        out += ["", f"## {title}, runtime `{runtime}`", "", LEGEND, ""]
        out += _md_table(head, [[c.text for c in row] for row in rows])
    out += ["", "## Declined models", ""]
    declined = matrix.get("declined", [])
    out += [f"- `{d['adapter']}` declined `{d['model']}` (family `{d['family'] or 'unknown'}`, "
            f"role `{d['role'] or 'unknown'}`, runtime `{d['runtime']}`): "
            f"{' '.join(d['reason'].split())}" for d in declined] or [
        "No adapter declined a bundled model."]
    out += ["", "## Every lane", "", *_md_table(HEAD, _rows(matrix))]
    return "\n".join(out) + "\n"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #1b1b1b; }
table { border-collapse: collapse; margin: 1rem 0 2rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
.published_basis, .published, .ran { background: #c8ecc8; }
.supported_experimental, .experimental { background: #e4efff; }
.community_experimental, .community { background: #ffe9c4; }
.declined { background: #eeeeee; color: #555555; font-style: italic; }
.notrun, .noresults { color: #777777; }
.failing { color: #a00000; font-weight: bold; }
"""


def _html_table(head: list[str], rows: list[list[Cell]]) -> str:
    cells = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(
        "<td" + (f' class="{escape(c.cls)}"' if c.cls else "")
        + (f' title="{escape(c.title)}"' if c.title else "")
        + f">{escape(c.text)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def _plain(rows: list[list[str]], classes: list[list[str]]) -> list[list[Cell]]:
    return [[Cell(v, c) for v, c in zip(row, cls, strict=True)]
            for row, cls in zip(rows, classes, strict=True)]


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
    lane_rows = _lane_rows(matrix)
    status_class = {"ran": "ran", "not run here": "notrun", "no results": "noresults"}
    parts += ["<h2>Lanes</h2>", "<p>Each lane's result files: <i>ran</i> (with what it ran on), "
              "<i>not run here</i> (the lane could not run where it was invoked, and why), "
              "<i>no results</i> (no file was merged).</p>",
              _html_table(LANE_HEAD, _plain(lane_rows, [
                  ["", status_class[row[1]], *[""] * 7] for row in lane_rows]))]
    for runtime in _runtimes(matrix):
        title, head, rows = _view(matrix, runtime)
        parts += [f"<h2>{escape(title).replace(' x ', ' &times; ')}, runtime "
                  f"{escape(runtime)}</h2>",
                  f"<p>{escape(LEGEND.replace('`', ''))} Hover a cell for its lane or the "
                  "reasons.</p>", _html_table(head, rows)]
    declined = _declined_rows(matrix)
    parts += ["<h2>Declined models</h2>",
              _html_table(DECLINED_HEAD, _plain(declined, [[""] * 6 for _ in declined]))
              if declined else "<p>No adapter declined a bundled model.</p>"]
    every = _rows(matrix)
    classes = [[""] * 5 + [row[5], "failing" if row[6] == "failing" else ""] + [""] * 3 + [
        "failing" if row[-2] != "-" else "", ""] for row in every]
    parts += ["<h2>Every lane</h2>", _html_table(HEAD, _plain(every, classes)), "</body></html>"]
    return "\n".join(parts) + "\n"
