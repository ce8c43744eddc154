"""The end-of-run outcome matrix: checks x adapters, laid out to fit the terminal width.

:func:`matrix_lines` renders one row per check and one column per adapter; a cell is the number
of models that passed, then a marker and count for every other outcome that occurred, e.g.
``22 F1 s2`` (:func:`legend_line` explains the markers). ``-`` marks a check with no record for
that adapter. The last line totals the outcomes.

Layouts, chosen so that every line fits ``width`` columns:

* **table**: the whole matrix when it fits, exactly as it always was (header ``check ...``);
* **blocks**: when it does not, the adapter columns are split into stacked blocks of balanced
  width, each introduced by a line naming its adapters (``adapters 1-4 of 8: hf_auto, ...``) and
  repeating the check column (its ``check ...`` header row names them again);
* **listing**: an adapter whose single column does not fit beside the check column (a long
  ``module.path:ClassName`` label) is listed in its place among the blocks instead: a heading
  line ``adapter i of n: label`` (the label alone when that is too long), then one
  ``  check_name  cell`` line per check.

Blocks and listings are separated by an empty line and keep the adapters' sorted order.
Nothing that identifies a row or a column is ever truncated. The one documented exception to
the width: a token that cannot be broken without losing what it identifies (an adapter label in
a listing heading, or a check name) is printed whole on its own line even when it alone is
longer than ``width``. With the suite's check names (at most 45 characters) that only happens
for listing headings whose label is longer than ``width``, or for widths below about 50.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence

from pytest_invarlock.records import Record

#: Every record outcome, in the order the ``total:`` line lists them.
OUTCOMES = ("passed", "failed", "error", "finding", "unjudged", "skipped", "xfailed", "xpassed")

#: The marker of each outcome other than passed, in the order a cell shows them.
_MARKS = (("failed", "F"), ("error", "E"), ("finding", "S"), ("unjudged", "U"), ("xpassed", "XP"),
          ("xfailed", "x"), ("skipped", "s"))

#: What each marker means, for the legend.
_MEANING = {"failed": "failed", "error": "error", "finding": "SHOULD finding",
            "unjudged": "unjudged", "xpassed": "xpass", "xfailed": "xfail", "skipped": "skipped"}

#: The cell of a (check, adapter) pair with no record.
_NONE = "-"
#: Spaces between table columns (each column is right-justified in ``label + _GAP``).
_GAP = 2
#: Indent of the rows under a listing heading, and of a wrapped cell below its check name.
_INDENT = "  "
_WRAP = "      "


def _cell(counts: Counter[str]) -> str:
    """Return ``passed`` followed by the other outcomes that occurred, e.g. ``22 F1 s2``."""
    return " ".join([str(counts["passed"])] + [f"{m}{counts[o]}" for o, m in _MARKS if counts[o]])


def legend_line() -> str:
    """Return one line explaining the cells of the matrix (under 100 columns).

    ``cells: models passed; F failed, E error, S SHOULD finding, U unjudged, XP xpass, x xfail,
    s skipped`` (``-``, no record, is left to the docs: the line would not fit 100 columns).
    """
    marks = ", ".join(f"{m} {_MEANING[o]}" for o, m in _MARKS)
    return f"cells: models passed; {marks}"


def check_order(names: Iterable[str], suite: Sequence[str] | None = None) -> list[str]:
    """Return check names in suite order, unknown names last.

    ``suite`` is every check name in order (default: the profiles' ``checks()``, which imports
    them; an xdist controller gets the list from its workers instead).
    """
    if suite is None:
        from pytest_invarlock.profile import all_checks

        suite = [c.__name__ for c in all_checks()]
    order = {name: i for i, name in enumerate(suite)}
    return sorted(set(names), key=lambda c: (order.get(c, len(order)), c))


def matrix_lines(records: list[Record], width: int = 100,
                 suite: Sequence[str] | None = None) -> list[str]:
    """Return the check x adapter outcome matrix as lines of at most ``width`` columns.

    Rows are checks (suite order, unknown names last), columns adapters (sorted), a cell the
    models passed then the other outcomes' markers (:func:`legend_line`); the last line totals
    the outcomes. The layout (table, stacked blocks, per-adapter listing) is described in the
    module docstring; the output depends only on ``records``, ``width`` and the check order
    (``suite``, see :func:`check_order`). No records: no lines.
    """
    if not records:
        return []
    counts: dict[tuple[str, str], Counter[str]] = {}
    for r in records:
        counts.setdefault((r.check, r.adapter), Counter())[r.outcome] += 1
    cells = {key: _cell(c) for key, c in counts.items()}
    checks = check_order({c for c, _ in counts}, suite)
    adapters = sorted({a for _, a in counts})
    first = max(len(c) for c in checks) + _GAP
    column = {a: max([len(a)] + [len(cells.get((c, a), _NONE)) for c in checks]) + _GAP
              for a in adapters}
    if first + sum(column.values()) <= width:
        lines = _table(checks, adapters, cells, first, column)
    else:
        lines = []
        for chunk in _chunks(adapters, checks, cells, first, column, width):
            lines.extend([""] * bool(lines) + chunk)
    totals = Counter(r.outcome for r in records)
    lines.extend(_wrap("total: ", [f"{totals[o]} {o}" for o in OUTCOMES if totals[o]], width))
    return lines


def _chunks(adapters: list[str], checks: list[str], cells: dict[tuple[str, str], str], first: int,
            column: dict[str, int], width: int) -> list[list[str]]:
    """Return the blocks and listings of a matrix too wide for one table, in adapter order.

    Consecutive adapters whose column fits beside the check column form balanced blocks, each
    introduced by the line naming its adapters; any other adapter becomes a listing.
    """
    chunks = []
    for part in _parts(adapters, lambda a: first + column[a] <= width):
        start = adapters.index(part[0])
        if first + column[part[0]] > width:
            chunks.append(_listing(part[0], start, len(adapters), checks, cells, width))
            continue
        for size in _blocks([column[a] for a in part], width - first):
            block, part = part[:size], part[size:]
            chunks.append(_block_header(block, start, len(adapters), width)
                          + _table(checks, block, cells, first, column))
            start += size
    return chunks


def _table(checks: list[str], adapters: list[str], cells: dict[tuple[str, str], str], first: int,
           column: dict[str, int]) -> list[str]:
    """Return the aligned table of ``adapters``: a ``check`` header row, then a row per check."""
    lines = ["check".ljust(first) + "".join(a.rjust(column[a]) for a in adapters)]
    for check in checks:
        lines.append(check.ljust(first) + "".join(
            cells.get((check, a), _NONE).rjust(column[a]) for a in adapters))
    return lines


def _parts(adapters: list[str], fits: Callable[[str], bool]) -> list[list[str]]:
    """Split ``adapters`` (in order) into runs of ones that fit a table and single ones that do not."""
    parts: list[list[str]] = []
    for a in adapters:
        if fits(a) and parts and fits(parts[-1][0]):
            parts[-1].append(a)
        else:
            parts.append([a])
    return parts


def _block_header(block: list[str], start: int, total: int, width: int) -> list[str]:
    """Return the line naming one block's adapters, e.g. ``adapters 1-4 of 8: hf_auto, ...``.

    It wraps (indented) in the unlikely case the names do not fit ``width``.
    """
    end = start + len(block)
    span = f"adapter {end}" if len(block) == 1 else f"adapters {start + 1}-{end}"
    return _wrap(f"{span} of {total}: ", block, width)


def _blocks(widths: list[int], room: int) -> list[int]:
    """Split consecutive column ``widths`` into the fewest blocks of at most ``room`` columns.

    Among partitions with that fewest number of blocks, the widest block is made as narrow as
    possible (balanced blocks rather than full ones and a straggler). Returns the block sizes;
    every width must be at most ``room``.
    """
    if not widths:
        return []

    def greedy(cap: int) -> list[int]:
        sizes: list[int] = []
        used = cap + 1
        for w in widths:
            if used + w > cap:
                sizes.append(0)
                used = 0
            sizes[-1] += 1
            used += w
        return sizes

    fewest = len(greedy(room))
    low, high = max(widths), room
    while low < high:  # the narrowest cap that needs no more blocks than the room allows
        mid = (low + high) // 2
        if len(greedy(mid)) <= fewest:
            high = mid
        else:
            low = mid + 1
    return greedy(low)


def _listing(adapter: str, index: int, total: int, checks: list[str],
             cells: dict[tuple[str, str], str], width: int) -> list[str]:
    """Return one adapter as a heading line and a ``  check_name  cell`` line per check.

    The heading is ``adapter i of n: label`` when that fits ``width``, else the label alone,
    never cut (the one line allowed past ``width``, when the label alone is longer). Cells are
    aligned when they fit ``width``; a row that does not fit even unaligned puts its cell on the
    next line, indented further.
    """
    heading = f"adapter {index + 1} of {total}: {adapter}"
    lines = [heading if len(heading) <= width else adapter]
    mine = [(c, cells.get((c, adapter), _NONE)) for c in checks]
    name_w = max(len(c) for c, _ in mine)
    cell_w = max(len(v) for _, v in mine)
    for check, value in mine:
        plain = _INDENT + check + " " * _GAP + value
        if len(_INDENT) + name_w + _GAP + cell_w <= width:
            lines.append(_INDENT + check.ljust(name_w) + " " * _GAP + value.rjust(cell_w))
        elif len(plain) <= width:
            lines.append(plain)
        else:
            lines.extend([_INDENT + check, _WRAP + value])
    return lines


def _wrap(prefix: str, items: list[str], width: int) -> list[str]:
    """Join ``items`` with ``", "`` after ``prefix``, continuing on indented lines to fit ``width``."""
    lines: list[str] = []
    line = prefix
    for i, item in enumerate(items):
        piece = item + ("," if i < len(items) - 1 else "")
        if line == prefix:  # nothing on this line yet: the piece goes on it
            line += piece
        elif len(line) + 1 + len(piece) <= width:
            line += " " + piece
        else:
            lines.append(line)
            line = " " * len(prefix) + piece
    return [*lines, line]
