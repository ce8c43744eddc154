"""The pytest plugin: options, markers, parametrization, records, report and summary hooks."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from pytest_invarlock.lanes import AUTO, LANES, Lane, choose, unavailable
from pytest_invarlock.records import PROPERTY, VERDICT, Collector, Record, write_report
from pytest_invarlock.registry import AdapterError, Discovery, discover
from pytest_invarlock.verdicts import DEFAULT_TIMEOUT

OUTCOMES = ("passed", "failed", "error", "finding", "unjudged", "skipped", "xfailed", "xpassed")
MARKER = "invarlock"
LANES_MARKER = "invarlock_lanes"
NO_CASE = "no adapter of lane {lane} is installed: none of {names} declares quantized = True"


class InvarlockRun:
    """Per-process state of a conformance run: lane, discovery, cases, loaded subjects, records."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.lane: Lane = choose(config.getoption("invarlock_lane"))
        self.selectors: list[str] = config.getoption("invarlock_adapter") or []
        self.models: list[str] = config.getoption("invarlock_model") or []
        self.report: str | None = config.getoption("invarlock_report")
        self.xfail: str | None = config.getoption("invarlock_xfail") or config.getini(
            "invarlock_xfail") or None
        self.expected: list[Any] = []
        from pytest_invarlock.verdicts import Policy

        self.policy = Policy(strict=bool(config.getoption("invarlock_strict")),
                             timeout=float(config.getoption("invarlock_timeout")))
        self.collector = Collector()
        self._discovery: Discovery | None = None
        self._subjects: Any = None
        self._cases: list[Any] | None = None

    @property
    def discovery(self) -> Discovery:
        """Return the registered adapters (looked up on first use)."""
        if self._discovery is None:
            self._discovery = discover()
        return self._discovery

    @property
    def subjects(self) -> Any:
        """Return the process-wide loader of (adapter, model) pairs."""
        if self._subjects is None:
            from pytest_invarlock.subjects import Subjects

            self._subjects = Subjects(self.lane, self.discovery, self.policy)
        return self._subjects

    def cases(self) -> list[Any]:
        """Return the cases of this run, planned once per process."""
        if self._cases is None:
            self._cases = self._plan()
        return self._cases

    def _plan(self) -> list[Any]:
        from pytest_invarlock.subjects import Case

        cases = self.subjects.plan(self.selectors, self.models)
        for model in self.models:
            if not any(c.model == self.subjects.label_of(model) for c in cases):
                tried = ", ".join(sorted(self.discovery.adapters))
                error = (f"--invarlock-model={model}: no adapter loads it and accepts it in "
                         f"can_handle() (tried {tried}); name the adapter with "
                         "--invarlock-adapter")
                cases.append(Case("none", "none", self.subjects.label_of(model), model,
                                  error=error))
        if not cases:
            names = ", ".join(sorted(self.discovery.adapters)) or "no adapter"
            reason = NO_CASE.format(lane=self.lane.id, names=names)
            cases = [Case("none", "none", "none", None, skip=reason)]
        return cases

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        """Reject unknown adapters, missing models and bad manifests before collecting."""
        if self.xfail:
            from pytest_invarlock.expectations import ManifestError, load

            try:
                self.expected = load(self.xfail)
            except ManifestError as exc:
                raise pytest.UsageError(str(exc)) from None
        try:
            for selector in self.selectors:
                self.subjects.spec(selector)
        except AdapterError as exc:
            raise pytest.UsageError(str(exc)) from None
        for model in self.models:
            if not Path(model).is_dir() and (os.sep in model or model.startswith(".")):
                raise pytest.UsageError(f"--invarlock-model={model}: no such directory")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Fold each report into the records (the controller also sees every worker's reports)."""
        self.collector.add(report)

    def pytest_warning_recorded(self, warning_message: Any, nodeid: str) -> None:
        """Keep the findings of passed checks (under-claims) for their records."""
        from pytest_invarlock.errors import InvarlockNote

        if issubclass(warning_message.category, InvarlockNote):
            self.collector.note(nodeid, str(warning_message.message))

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Write the lane results file, on the controller only."""
        if self.report and not hasattr(session.config, "workerinput"):
            rows = self.adapter_rows() if self._cases else []
            write_report(Path(self.report), self.lane.id, self.lane.device, rows,
                         self.collector.sorted())

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        """Print the check x adapter outcome matrix, expected failures and how to reproduce."""
        records = self.collector.sorted()
        if not records:
            return
        tr = terminalreporter
        tr.section(f"invarlock lane {self.lane.id}")
        for line in matrix_lines(records):
            tr.write_line(line)
        for line in verdict_lines(records, self.policy.strict):
            tr.write_line(line)
        for r in records:
            if r.outcome == "finding":
                tr.write_line(f"SHOULD {r.adapter} on {r.model}: {r.check}: "
                              f"{_strip(r.message, r)}", yellow=True)
        for r in records:
            if r.outcome == "unjudged":
                tr.write_line(f"UNJUDGED {r.adapter} on {r.model}: {r.check}: "
                              f"{_strip(r.message, r)}", yellow=True)
        for r in records:
            if r.outcome in ("xfailed", "xpassed"):
                tr.write_line(f"{r.outcome.upper()} {r.adapter} on {r.model}: {r.check}: "
                              f"expected to fail: {r.message}")
        if self.expected:
            from pytest_invarlock.expectations import stale

            seen = [(r.adapter, r.model, r.check) for r in records]
            for entry in stale(self.expected, seen, self.lane.id):
                tr.write_line(f"invarlock: stale expected failure in {self.xfail} (matches no "
                              f"test of lane {self.lane.id}): {entry.describe()}", yellow=True)
        for r in records:
            if r.outcome in ("failed", "error"):
                where = f"{r.adapter} on {r.model}"
                text = r.message if r.message.startswith(where) else f"{where}: {r.check}: {r.message}"
                tr.write_line(f"{r.outcome.upper()} {text}")
                tr.write_line(f"  Reproduce: {self.reproduce(r)}")
        if self.report:
            tr.write_line(f"invarlock: results written to {self.report}")

    def reproduce(self, record: Record) -> str:
        """Return the command that re-runs one record's test alone."""
        return (f"pytest '{record.nodeid}' --invarlock-lane={self.lane.id}"
                + "".join(f" --invarlock-adapter={a}" for a in self.selectors)
                + "".join(f" --invarlock-model={m}" for m in self.models))

    def adapter_rows(self) -> list[dict[str, Any]]:
        """Return the adapters of this run with their origin, for headers and reports."""
        first: dict[str, Any] = {}
        for case in self.cases():
            first.setdefault(case.adapter, case)
        first.pop("none", None)
        rows = []
        for name, case in sorted(first.items()):
            spec = self.subjects.spec(case.selector)
            rows.append({"name": name, "target": spec.target, "origin": spec.origin,
                         "distribution": spec.distribution, "version": spec.version})
        return rows


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add the --invarlock-* options."""
    group = parser.getgroup("invarlock", "model adapter conformance (pytest-invarlock)")
    group.addoption("--invarlock-lane", choices=[*sorted(LANES), AUTO], default="cpu",
                    help="lane to run: cpu (default), cuda, cpu-quant, cuda-quant, or auto "
                         "(cuda when a CUDA device is usable, else cpu)")
    group.addoption("--invarlock-adapter", action="append", metavar="NAME|module:Class",
                    help="adapter to verify (repeatable); default: every discovered adapter")
    group.addoption("--invarlock-model", action="append", metavar="PATH",
                    help="checkpoint to verify on (repeatable); default: the bundled fixtures")
    group.addoption("--invarlock-report", metavar="PATH",
                    help="write the lane results (JSON, lane_results.schema.json) to PATH")
    group.addoption("--invarlock-xfail", metavar="PATH",
                    help="expected-failures manifest (JSON, expected_failures.schema.json)")
    group.addoption("--invarlock-strict", action="store_true", default=False,
                    help="fail on SHOULD findings too (by default they are shown, recorded and "
                         "do not fail the run)")
    group.addoption("--invarlock-timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                    help="bound on each check and each model load of one subject; a call that "
                         f"hangs becomes an error naming it (default {DEFAULT_TIMEOUT:g}, 0: none)")
    parser.addini("invarlock_xfail", "expected-failures manifest used when --invarlock-xfail "
                  "is not given")


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker and start the run's state."""
    config.addinivalue_line(
        "markers", f"{MARKER}(checks): run the given checks on every (adapter, model) case")
    config.addinivalue_line(
        "markers", f"{LANES_MARKER}(*lanes): run this test only in these lanes (else deselected)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    run = InvarlockRun(config)
    config.stash[RUN] = run
    config.pluginmanager.register(run, "invarlock-run")


RUN = pytest.StashKey[InvarlockRun]()


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Say which lane runs and which adapters exist, before any result."""
    run = config.stash[RUN]
    reason = unavailable(run.lane)
    lines = [f"invarlock: lane {run.lane.id} ({run.lane.description})"
             + (f" - cannot run here: {reason}" if reason else "")]
    for name, spec in sorted(run.discovery.adapters.items()):
        lines.append(f"invarlock: adapter {name} = {spec.target} ({spec.distribution} "
                     f"{spec.version})")
    lines += [f"invarlock: problem: {p}" for p in run.discovery.problems.values()]
    return lines


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize tests marked ``invarlock(checks)`` over cases, then checks."""
    marker = metafunc.definition.get_closest_marker(MARKER)
    if marker is None:
        return
    cases = metafunc.config.stash[RUN].cases()
    metafunc.parametrize("invarlock_subject", cases, ids=[c.id for c in cases], indirect=True,
                         scope="session")
    checks = list(marker.args[0])
    metafunc.parametrize("invarlock_check", checks, ids=[c.__name__ for c in checks])


@pytest.fixture(scope="session")
def invarlock_subject(request: pytest.FixtureRequest) -> Any:
    """Return the loaded (adapter, model) of this case; loaded once per process."""
    case = request.param
    if case.skip:
        pytest.skip(case.skip)
    if case.error:
        pytest.fail(case.error, pytrace=False)
    from pytest_invarlock.errors import CallTimeout

    try:
        return request.config.stash[RUN].subjects.load(case)
    except (Exception, CallTimeout) as exc:
        pytest.fail(f"{case.adapter} on {case.model}: cannot load the model: {exc!r}",
                    pytrace=False)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tag every conformance test with its (adapter, model, check); apply expected failures."""
    run = config.stash[RUN]
    _deselect_other_lanes(config, items, run.lane.id)
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        case, check = params.get("invarlock_subject"), params.get("invarlock_check")
        if case is not None and check is not None:
            from pytest_invarlock.checks import level_of

            item.user_properties.append((PROPERTY, {
                "adapter": case.adapter, "model": case.model, "check": check.__name__,
                "family": case.family, "role": case.role, "level": level_of(check)}))
            # with `-n N --dist loadgroup`, each (adapter, model) loads on one worker only
            item.add_marker(pytest.mark.xdist_group(case.id))
            _expect(run, item, case, check.__name__)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Record what a conformance test's exception means: a SHOULD finding, a gap, an error.

    A :class:`~pytest_invarlock.testing.ShouldFinding` becomes a pass carrying the finding; a
    :class:`~pytest_invarlock.testing.SuiteCannotJudge` stays a skip marked ``unjudged``; any
    other exception than pytest's fail/skip/xfail is an ``error`` (the check crashed or an
    adapter call hung), not a failed check.
    """
    report = yield
    excinfo = call.excinfo
    if call.when != "call" or excinfo is None or hasattr(report, "wasxfail"):
        return report
    from pytest_invarlock.testing import ShouldFinding, SuiteCannotJudge

    if isinstance(excinfo.value, ShouldFinding):  # also in users' own verify() tests
        report.outcome = "passed"
        report.longrepr = None
        verdict = {"outcome": "finding", "message": str(excinfo.value)}
        report.user_properties = [*report.user_properties, (VERDICT, verdict)]
        return report
    if not any(k == PROPERTY for k, _ in item.user_properties):
        return report
    if isinstance(excinfo.value, SuiteCannotJudge):
        verdict = {"outcome": "unjudged", "message": str(excinfo.value)}
    elif isinstance(excinfo.value, (pytest.fail.Exception, pytest.skip.Exception,
                                    pytest.xfail.Exception)):
        return report
    else:
        verdict = {"outcome": "error"}
        message = getattr(excinfo.value, "invarlock_message", None)
        if message:
            verdict["message"] = str(message)
    report.user_properties = [*report.user_properties, (VERDICT, verdict)]
    return report


def _deselect_other_lanes(config: pytest.Config, items: list[pytest.Item], lane: str) -> None:
    """Deselect tests marked ``invarlock_lanes(...)`` for other lanes (reported as deselected)."""
    outside = [i for i in items if (m := i.get_closest_marker(LANES_MARKER)) and lane not in m.args]
    if outside:
        config.hook.pytest_deselected(items=outside)
        items[:] = [i for i in items if i not in outside]


def _expect(run: InvarlockRun, item: pytest.Item, case: Any, check: str) -> None:
    from pytest_invarlock.expectations import find

    entry = find(run.expected, case.adapter, case.model, check, run.lane.id)
    if entry is not None:
        item.add_marker(pytest.mark.xfail(reason=entry.reason, strict=entry.strict))


_MARKS = (("failed", "F"), ("error", "E"), ("finding", "S"), ("unjudged", "U"), ("xpassed", "XP"),
          ("xfailed", "x"), ("skipped", "s"))


def _strip(message: str, record: Record) -> str:
    """Drop the ``adapter on model: check:`` prefix the message may already carry."""
    prefix = f"{record.adapter} on {record.model}: {record.check}"
    return message.removeprefix(prefix).lstrip(": ").removeprefix("SHOULD: ")


def verdict_lines(records: list[Record], strict: bool) -> list[str]:
    """Return one line per adapter: conformant (every MUST passed) and hardened (every SHOULD)."""
    lines = []
    for adapter in sorted({r.adapter for r in records}):
        mine = [r for r in records if r.adapter == adapter]
        must = sum(r.outcome == "error" or (r.outcome == "failed" and r.level != "SHOULD")
                   for r in mine)
        should = sum(r.outcome == "finding" or (r.outcome == "failed" and r.level == "SHOULD")
                     for r in mine)
        unjudged = sum(r.outcome == "unjudged" for r in mine)
        verdict = ("not conformant" if must else "conformant") + (
            f", not hardened ({should} SHOULD finding{'s' * (should != 1)}"
            f"{'; failing under --invarlock-strict' if strict else ''})" if should
            else ", hardened")
        if unjudged:
            verdict += f"; the suite could not judge {unjudged} record{'s' * (unjudged != 1)}"
        lines.append(f"invarlock: {adapter}: {verdict}")
    return lines


def _cell(counts: Counter[str]) -> str:
    """Return ``passed`` followed by the other outcomes that occurred, e.g. ``22 F1 s2``."""
    return " ".join([str(counts["passed"])] + [f"{m}{counts[o]}" for o, m in _MARKS if counts[o]])


def matrix_lines(records: list[Record]) -> list[str]:
    """Return an aligned check x adapter table: models passed, then F/E/XP/x/s counts."""
    counts: dict[tuple[str, str], Counter[str]] = {}
    for r in records:
        counts.setdefault((r.check, r.adapter), Counter())[r.outcome] += 1
    from pytest_invarlock.checks import all_checks

    order = {c.__name__: i for i, c in enumerate(all_checks())}
    checks = sorted({c for c, _ in counts}, key=lambda c: (order.get(c, len(order)), c))
    adapters = sorted({a for _, a in counts})
    cells = {key: _cell(c) for key, c in counts.items()}
    widths = [max([len(a)] + [len(cells.get((c, a), "")) for c in checks]) + 2 for a in adapters]
    first = max(len(c) for c in checks) + 2
    lines = ["check".ljust(first) + "".join(a.rjust(w) for a, w in zip(adapters, widths,
                                                                          strict=True))]
    for check in checks:
        lines.append(check.ljust(first) + "".join(
            cells.get((check, a), "-").rjust(w) for a, w in zip(adapters, widths, strict=True)))
    totals = Counter(r.outcome for r in records)
    lines.append("total: " + ", ".join(f"{totals[o]} {o}" for o in OUTCOMES if totals[o]))
    return lines
