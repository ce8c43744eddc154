"""The end-of-run matrix fits the terminal: table, stacked blocks, per-adapter listings."""

import random
import re
from collections import Counter

import pytest

from pytest_invarlock.hf_adapter.checks import all_checks
from pytest_invarlock.records import Record
from pytest_invarlock.summary import _MARKS, OUTCOMES, _cell, check_order, legend_line, matrix_lines

REFERENCE = ["hf_auto", "hf_bert", "hf_causal", "hf_gpt2", "hf_llama", "hf_mlm", "hf_multimodal",
             "hf_seq2seq"]
ENTRY_POINT = "pytest-invarlock:hf_causal"
CLASS_PATH = "some.long.module.path.adapters:MyVeryLongAdapterClassName"
CHECKS = [c.__name__ for c in all_checks()]
HEADING = re.compile(r"adapters? (\d+)(?:-(\d+))? of (\d+): ")


def realistic(adapters, models=25, checks=CHECKS):
    """Records of every check on every model, with a sprinkle of failures, findings, skips."""
    records = []
    for a, adapter in enumerate(adapters):
        for c, check in enumerate(checks):
            for m in range(models):
                outcome = "passed"
                if m == 0 and c % 7 == a % 3:
                    outcome = "failed"
                elif m >= models - 2 and c % 5 == 0:
                    outcome = "skipped"
                elif m == 1 and c % 11 == a:
                    outcome = "finding"
                elif m == 2 and c == 3 and a == 0:
                    outcome = "xfailed"
                records.append(Record(adapter, f"model{m}", check, outcome, ""))
    return records


def expected_cells(records):
    counts = {}
    for r in records:
        counts.setdefault((r.check, r.adapter), Counter())[r.outcome] += 1
    return {key: _cell(c) for key, c in counts.items()}


def parse(lines):
    """Read every (check, adapter) cell back from any layout: {(check, adapter): [cells]}."""
    found = {}
    body = lines[:next(i for i, line in enumerate(lines) if line.startswith("total: "))]
    i = 0
    while i < len(body):
        line = body[i]
        if not line:
            i += 1
            continue
        if line.startswith("check ") or (i + 1 < len(body) and body[i + 1].startswith("check ")):
            named = None
            if not line.startswith("check "):  # block header naming the block's adapters
                named = line[HEADING.match(line).end():].split(", ")
                i += 1
            header = body[i]
            labels = header.split()[1:]
            assert named in (None, labels)
            edges = [header.index(label) + len(label) for label in labels]
            i += 1
            while i < len(body) and body[i] and not body[i].startswith("adapter"):
                row = body[i]
                check = row.split()[0]
                starts = [len(check), *edges[:-1]]
                for label, start, end in zip(labels, starts, edges, strict=True):
                    found.setdefault((check, label), []).append(row[start:end].strip())
                i += 1
        else:  # a listing: heading, then indented rows (a cell may wrap onto the next line)
            match = HEADING.match(line)
            adapter = line[match.end():] if match else line
            i += 1
            while i < len(body) and body[i].startswith("  "):
                parts = body[i].split(None, 1)
                if len(parts) == 1:
                    i += 1
                    parts.append(body[i].strip())
                found.setdefault((parts[0], adapter), []).append(parts[1])
                i += 1
    return found


def assert_every_cell_once(lines, records):
    cells = expected_cells(records)
    checks = {r.check for r in records}
    adapters = {r.adapter for r in records}
    found = parse(lines)
    assert set(found) == {(c, a) for c in checks for a in adapters}
    for key, values in found.items():
        assert values == [cells.get(key, "-")], key


def totals(records):
    counts = Counter(r.outcome for r in records)
    return ", ".join(f"{counts[o]} {o}" for o in OUTCOMES if counts[o])


def test_legend_explains_every_marker_in_one_short_line():
    line = legend_line()
    assert len(line) <= 100 and "\n" not in line
    assert line.startswith("cells: models passed")
    for _, mark in _MARKS:
        assert f" {mark} " in line


def test_a_table_that_fits_is_unchanged():
    # the lines the plugin's matrix_lines printed before summary.py (same records, same output)
    records = [Record("hf_gpt2", "m1", "check_describe_layers", "passed", ""),
               Record("hf_gpt2", "m2", "check_describe_layers", "passed", ""),
               Record("hf_gpt2", "m1", "check_can_handle_own_model", "passed", ""),
               Record("hf_gpt2", "m2", "check_can_handle_own_model", "failed", "boom"),
               Record("hf_bert", "m1", "check_describe_layers", "skipped", "n/a"),
               Record("hf_gpt2", "m1", "check_zzz_unknown", "passed", "")]
    assert matrix_lines(records) == [
        "check                         hf_bert  hf_gpt2",
        "check_can_handle_own_model          -     1 F1",
        "check_describe_layers            0 s1        2",
        "check_zzz_unknown                   -        1",
        "total: 4 passed, 1 failed, 1 skipped",
    ]


def test_one_adapter_keeps_the_table_the_plugin_tests_match():
    records = realistic(["hf_causal"])
    lines = matrix_lines(records)
    assert lines[0].startswith("check ") and lines[0].endswith(" hf_causal")
    assert [line.split()[0] for line in lines[1:-1]] == CHECKS
    assert len(lines) == len(CHECKS) + 2 and lines[-1] == "total: " + totals(records)
    assert_every_cell_once(lines, records)


def test_eight_reference_adapters_fit_100_columns_in_balanced_blocks():
    records = realistic(REFERENCE)
    lines = matrix_lines(records, 100)
    assert max(map(len, lines)) <= 100
    assert_every_cell_once(lines, records)
    headers = [line for line in lines if HEADING.match(line)]
    assert headers == ["adapters 1-4 of 8: hf_auto, hf_bert, hf_causal, hf_gpt2",
                       "adapters 5-8 of 8: hf_llama, hf_mlm, hf_multimodal, hf_seq2seq"]
    assert lines.count("") == 1 and lines[-1] == "total: " + totals(records)
    assert sum(line.startswith("check ") for line in lines) == 2
    # every block repeats the check column in suite order
    rows = [line.split()[0] for line in lines if line.startswith("check_")]
    assert rows == CHECKS * 2


def test_eight_reference_adapters_at_60_columns():
    records = realistic(REFERENCE)
    lines = matrix_lines(records, 60)
    assert max(map(len, lines)) <= 60
    assert_every_cell_once(lines, records)
    # hf_multimodal's column (15) does not fit beside the 47-column check column: it is listed
    assert "adapter 7 of 8: hf_multimodal" in lines
    assert "adapter 8 of 8: hf_seq2seq" in lines


@pytest.mark.parametrize("width", [100, 80, 60])
def test_long_labels_are_listed_whole(width):
    records = realistic(["hf_auto", ENTRY_POINT, CLASS_PATH])
    lines = matrix_lines(records, width)
    assert max(map(len, lines)) <= width
    assert_every_cell_once(lines, records)
    assert any(line.endswith(CLASS_PATH) and not line.startswith(" ") for line in lines)
    assert any(ENTRY_POINT in line for line in lines)


def test_a_label_longer_than_the_width_is_the_only_long_line():
    records = realistic(["hf_auto", CLASS_PATH])
    width = 50
    lines = matrix_lines(records, width)
    assert [line for line in lines if len(line) > width] == [CLASS_PATH]
    assert_every_cell_once(lines, records)


def test_cells_too_wide_for_aligned_listing_wrap_below_their_check():
    records = realistic([CLASS_PATH])
    records += [Record(CLASS_PATH, "odd", CHECKS[0], o, "") for o in OUTCOMES]
    lines = matrix_lines(records, 50)
    assert [line for line in lines if len(line) > 50] == [CLASS_PATH]
    assert f"      {_cell(Counter([r.outcome for r in records if r.check == CHECKS[0]]))}" in lines
    assert_every_cell_once(lines, records)


def test_missing_pairs_show_a_dash_in_every_layout():
    records = [r for r in realistic(REFERENCE) if not (r.adapter == "hf_mlm"
                                                       and r.check == CHECKS[5])]
    for width in (200, 100, 60):
        lines = matrix_lines(records, width)
        assert parse(lines)[(CHECKS[5], "hf_mlm")] == ["-"]


def test_total_line_wraps_at_the_width():
    records = [Record("a", "m", "check_x", o, "") for o in OUTCOMES for _ in range(3)]
    lines = matrix_lines(records, 30)
    assert max(map(len, lines)) <= 30
    start = next(i for i, line in enumerate(lines) if line.startswith("total: "))
    joined = " ".join(line.strip() for line in lines[start:])
    assert joined == "total: " + totals(records)
    assert all(line.startswith("       ") for line in lines[start + 1:])


def test_output_is_deterministic():
    records = realistic(["hf_auto", ENTRY_POINT, CLASS_PATH, "hf_bert"], models=3)
    shuffled = list(records)
    random.Random(0).shuffle(shuffled)
    for width in (200, 100, 60, 40):
        assert matrix_lines(records, width) == matrix_lines(shuffled, width)


def test_checks_follow_suite_order_unknown_last():
    assert check_order(["check_zz", CHECKS[3], "check_aa", CHECKS[0]]) == [
        CHECKS[0], CHECKS[3], "check_aa", "check_zz"]


def test_no_records_no_lines():
    assert matrix_lines([]) == []
