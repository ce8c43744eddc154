"""The pytest plugin: options, markers, parametrization, records, report and summary hooks.

A good citizen: in a run that collects no conformance test the plugin prints nothing and
changes nothing (no environment variable, no header line); its state is created lazily.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from pytest_invarlock.lanes import AUTO, LANES, Lane, choose, unavailable
from pytest_invarlock.records import PROPERTY, VERDICT, Collector, Record, write_report
from pytest_invarlock.registry import AdapterError, Discovery, discover
from pytest_invarlock.verdicts import DEFAULT_TIMEOUT

MARKER = "invarlock"
LANES_MARKER = "invarlock_lanes"
NO_CASE = "no adapter of lane {lane} is installed: none of {names} declares quantized = True"
#: The parametrized (session-scoped) fixture holding each test's case.
CASE_PARAM = "invarlock_case"


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
        #: under xdist, the adapters and declined models a worker planned (the controller plans nothing)
        self._worker_rows: list[dict[str, Any]] | None = None
        self._worker_not_run: str | None = None
        #: case id -> nodeid of the test that reported the case's load error
        self._load_errors: dict[str, str] = {}
        self._case_by_nodeid: dict[str, Any] = {}
        self._progress_case: str | None = None
        #: why this lane has nothing to run here (no adapter of its kind), once planned
        self.not_run: str | None = None

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
            from pytest_invarlock.hf_adapter.planning import Subjects

            self._subjects = Subjects(self.lane, self.discovery, self.policy)
        return self._subjects

    def cases(self) -> list[Any]:
        """Return the cases of this run, planned once per process."""
        if self._cases is None:
            self._cases = self._plan()
        return self._cases

    def _plan(self) -> list[Any]:
        from pytest_invarlock.hf_adapter.planning import Case

        cases: list[Any] = self.subjects.plan(self.selectors, self.models)
        if not cases:
            names = ", ".join(sorted(self.discovery.adapters)) or "no adapter"
            self.not_run = NO_CASE.format(lane=self.lane.id, names=names)
            cases = [Case("none", "none", "none", None, skip=self.not_run)]
        return cases

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        """Reject unusable selectors, missing models and bad manifests before collecting."""
        try:
            for selector in self.selectors:
                spec = self.subjects.spec(selector)
                if spec.origin == "path":  # a registered adapter's problem shows in its tests
                    spec.check_class()
                    spec.instantiate()
        except AdapterError as exc:
            raise pytest.UsageError(str(exc)) from None
        for model in self.models:
            if not Path(model).is_dir() and (os.sep in model or model.startswith(".")):
                raise pytest.UsageError(f"--invarlock-model={model}: no such directory")
        if self.xfail:
            from pytest_invarlock.expectations import ManifestError, canonical, load

            try:
                entries = [e for e in load(self.xfail) if e.lane in (None, self.lane.id)]
                self.expected = canonical(self.xfail, entries, self.known_adapters())
            except ManifestError as exc:
                raise pytest.UsageError(str(exc)) from None

    def known_adapters(self) -> dict[str, str]:
        """Return every adapter name a manifest may use, mapped to the label records carry."""
        known = {label: label for label in self.discovery.adapters}
        for specs in self.discovery.claims.values():
            for spec in specs:
                try:
                    known.setdefault(spec.qualified, self.subjects.name(spec.qualified))
                except AdapterError:
                    continue
        for selector in self.selectors:
            known[selector] = self.subjects.name(selector)
        return known

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        """Name the lane and the adapters once conformance tests are collected (none: silent)."""
        self._case_by_nodeid = {item.nodeid: case for item in session.items
                                if (case := _case_of(item)) is not None}
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None and self._case_by_nodeid and not hasattr(self.config, "workerinput"):
            for line in self.header_lines():
                tr.write_line(line)

    def header_lines(self) -> list[str]:
        """Return the lane (and why it cannot run here) and every adapter with its source."""
        reason = unavailable(self.lane)
        lines = [f"invarlock: lane {self.lane.id} ({self.lane.description})"
                 + (f" - cannot run here: {reason}" if reason else "")]
        lines += [f"invarlock: adapter {label} = {spec.target} ({spec.distribution} "
                  f"{spec.version})" for label, spec in sorted(self.discovery.adapters.items())]
        lines += [f"invarlock: problem: {p}" for p in self.discovery.problems.values()]
        return lines

    def subject(self, case: Any, nodeid: str) -> Any:
        """Return the loaded subject of ``case``; its load error is reported by one test only."""
        if case.skip:
            pytest.skip(case.skip)
        if case.error:
            _case_error(case.error)
        from pytest_invarlock.errors import CallTimeout

        first = self._load_errors.get(case.id)
        if first is not None and first != nodeid:
            pytest.skip(f"not run: {case.adapter} on {case.model} did not load (the error is "
                        f"reported by {first})")
        try:
            return self.subjects.load(case)
        except (Exception, CallTimeout) as exc:
            self._load_errors[case.id] = nodeid
            error = self.subjects.load_error(case, exc)
        _case_error(error)  # outside the handler: no chained traceback

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Fold each report into the records (the controller also sees every worker's reports)."""
        self.collector.add(report)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logstart(self, nodeid: str, location: tuple[str, int | None, str]) -> None:
        """Start one progress line per (adapter, model) rather than one per test module."""
        case = self._case_by_nodeid.get(nodeid)
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        if case is None or tr is None or not tr.showfspath or tr.showlongtestinfo:
            return
        if case.id != self._progress_case:
            self._progress_case = case.id
            if tr.currentfspath is not None and getattr(tr, "_show_progress_info", False):
                tr._write_progress_information_filling_space()
            tr.ensure_newline()
            tr.write(f"{case.adapter} on {case.model} ")
        # the reporter starts a line with the module's path when it changes: not within a case
        tr.currentfspath = self.config.rootpath / nodeid.split("::")[0]

    def pytest_warning_recorded(self, warning_message: Any, nodeid: str) -> None:
        """Keep the findings of passed checks (under-claims) for their records."""
        from pytest_invarlock.errors import InvarlockNote

        if issubclass(warning_message.category, InvarlockNote):
            self.collector.note(nodeid, str(warning_message.message))

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """Keep a worker's plan (adapters, declined models): the controller plans nothing."""
        output = getattr(node, "workeroutput", {})
        if output.get("invarlock_adapters") is not None and self._worker_rows is None:
            self._worker_rows = output["invarlock_adapters"]
            self._worker_not_run = output.get("invarlock_not_run")

    def rows(self) -> list[dict[str, Any]]:
        """Return the adapters of this run: planned here, or by the workers under xdist."""
        return self.adapter_rows() if self._cases else (self._worker_rows or [])

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Write the lane results file on the controller; remove the scratch directory."""
        workeroutput = getattr(session.config, "workeroutput", None)
        if workeroutput is not None:
            workeroutput["invarlock_adapters"] = self.rows()
            workeroutput["invarlock_not_run"] = self.not_run
        elif self.report and (self.collector.records or self._cases):
            reason = unavailable(self.lane) or self.not_run or self._worker_not_run
            write_report(Path(self.report), self.lane.id, self.lane.device, self.rows(),
                         [] if reason else self.collector.sorted(), not_run=reason)
        if self._subjects is not None:
            self._subjects.close()

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        """Print the check x adapter outcome matrix, expected failures and how to reproduce."""
        records = self.collector.sorted()
        if not records:
            return
        from pytest_invarlock.summary import legend_line, matrix_lines

        tr = terminalreporter
        tr.section(f"invarlock lane {self.lane.id}")
        if self._cases is None:  # under xdist the controller collected nothing: say it here
            for line in self.header_lines():
                tr.write_line(line)
        width = min(max(int(getattr(getattr(tr, "_tw", None), "fullwidth", 100)), 50), 100)
        for line in [*matrix_lines(records, width), legend_line(),
                     *verdict_lines(records, self.policy.strict)]:
            tr.write_line(line)
        for line in declined_lines(self.rows()):
            tr.write_line(line, yellow=True)
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
                text = r.message if r.message.startswith(where) or r.adapter == "none" else (
                    f"{where}: {r.check}: {r.message}")
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
        """Return the adapters of this run with their origin and the models they declined."""
        selectors: dict[str, str] = {}
        for case in self.cases():
            selectors.setdefault(case.adapter, case.selector)
        for label in self.subjects.declined:  # an adapter that took nothing is listed too
            selectors.setdefault(label, self.subjects.selectors[label])
        selectors.pop("none", None)
        rows = []
        for label, selector in sorted(selectors.items()):
            spec = self.subjects.spec(selector)
            declined = [d.as_dict() for d in self.subjects.declined.get(label, [])]
            rows.append({"name": label, "label": label, "target": spec.target,
                         "origin": spec.origin, "distribution": spec.distribution,
                         "version": spec.version, "declined": declined})
        return rows


def _case_error(message: str) -> None:
    """Fail a test because its (adapter, model) cannot run; no manifest entry can excuse it."""
    error = pytest.fail.Exception(message, pytrace=False)
    error.invarlock_case_error = True  # type: ignore[attr-defined]
    raise error


def declined_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Return, per adapter, the models it did not take, grouped by reason (coverage made visible)."""
    lines = []
    for row in rows:
        by_reason: dict[str, list[str]] = {}
        for d in row.get("declined", []):
            by_reason.setdefault(d["reason"], []).append(d["model"])
        if not by_reason:
            continue
        total = sum(map(len, by_reason.values()))
        lines.append(f"invarlock: {row['label']} declined {total} model{'s' * (total != 1)}:")
        lines += [f"  {', '.join(models)}: {reason}" for reason, models in sorted(by_reason.items())]
    return lines


def _case_of(item: pytest.Item) -> Any:
    """Return the case a conformance test runs on (None for any other test)."""
    return getattr(getattr(item, "callspec", None), "params", {}).get(CASE_PARAM)


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add the --invarlock-* options."""
    group = parser.getgroup("invarlock", "model adapter conformance (pytest-invarlock)")
    group.addoption("--invarlock-lane", choices=[*sorted(LANES), AUTO], default="cpu",
                    help="lane to run: cpu (default), cuda, cpu-quant, cuda-quant, or auto "
                         "(cuda when a CUDA device is usable, else cpu)")
    group.addoption("--invarlock-adapter", action="append", metavar="NAME|DIST:NAME|module:Class",
                    help="adapter to verify (repeatable); a name several distributions register "
                         "needs its distribution, e.g. invarlock:hf_causal; default: every "
                         "discovered adapter")
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
    """Register the markers and the run's state (nothing is looked up or loaded yet)."""
    config.addinivalue_line(
        "markers", f"{MARKER}(checks): run the given checks on every (adapter, model) case")
    config.addinivalue_line(
        "markers", f"{LANES_MARKER}(*lanes): run this test only in these lanes (else deselected)")
    run = InvarlockRun(config)
    config.stash[RUN] = run
    config.pluginmanager.register(run, "invarlock-run")


RUN = pytest.StashKey[InvarlockRun]()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize tests marked ``invarlock(checks)`` over cases, then checks."""
    marker = metafunc.definition.get_closest_marker(MARKER)
    if marker is None:
        return
    cases = metafunc.config.stash[RUN].cases()
    # with `-n N --dist loadgroup`, each (adapter, model) loads on one worker only
    params = [pytest.param(c, marks=pytest.mark.xdist_group(c.id), id=c.id) for c in cases]
    metafunc.parametrize(CASE_PARAM, params, indirect=True, scope="session")
    checks = list(marker.args[0])
    metafunc.parametrize("invarlock_check", checks, ids=[c.__name__ for c in checks])


@pytest.fixture(scope="session")
def invarlock_case(request: pytest.FixtureRequest) -> Any:
    """Return this test's (adapter, model) case; session-scoped, so tests group by case."""
    return request.param


@pytest.fixture
def invarlock_subject(invarlock_case: Any, request: pytest.FixtureRequest) -> Any:
    """Return the loaded (adapter, model) of this case; loaded once per process."""
    return request.config.stash[RUN].subject(invarlock_case, request.node.nodeid)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tag every conformance test with its (adapter, model, check); apply expected failures.

    A case that cannot run at all (a plan-time error or skip) keeps one test: its message is
    said once, not once per check.
    """
    run = config.stash[RUN]
    _deselect_other_lanes(config, items, run.lane.id)
    _deselect_repeats(config, items)
    for item in items:
        case, check = _case_of(item), getattr(getattr(item, "callspec", None), "params", {}).get(
            "invarlock_check")
        if case is not None and check is not None:
            from pytest_invarlock.hf_adapter.checks import level_of

            item.user_properties.append((PROPERTY, {
                "adapter": case.adapter, "model": case.model, "check": check.__name__,
                "family": case.family, "role": case.role, "level": level_of(check)}))
            if not (case.error or case.skip):
                _expect(run, item, case, check.__name__)


def _deselect_repeats(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep one test of each case that errors or skips before loading anything."""
    seen: set[str] = set()
    repeats = []
    for item in items:
        case = _case_of(item)
        if case is None or not (case.error or case.skip):
            continue
        if case.id in seen:
            repeats.append(item)
        seen.add(case.id)
    if repeats:
        config.hook.pytest_deselected(items=repeats)
        items[:] = [i for i in items if i not in set(repeats)]


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
    if excinfo is not None and getattr(excinfo.value, "invarlock_case_error", False):
        if hasattr(report, "wasxfail"):  # a manifest entry excuses a check, never a load error
            del report.wasxfail
            report.outcome = "failed"
        return report
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


def _strip(message: str, record: Record) -> str:
    """Drop the ``adapter on model: check:`` prefix the message may already carry."""
    prefix = f"{record.adapter} on {record.model}: {record.check}"
    return message.removeprefix(prefix).lstrip(": ").removeprefix("SHOULD: ")


def verdict_lines(records: list[Record], strict: bool) -> list[str]:
    """Return one line per adapter: conformant (every MUST passed) and hardened (every SHOULD)."""
    lines = []
    for adapter in sorted({r.adapter for r in records} - {"none"}):
        mine = [r for r in records if r.adapter == adapter]
        must = sum(r.outcome == "error" or (r.outcome == "failed" and r.level != "SHOULD")
                   for r in mine)
        should = sum(r.outcome == "finding" or (r.outcome == "failed" and r.level == "SHOULD")
                     for r in mine)
        unjudged = sum(r.outcome == "unjudged" for r in mine)
        if not any(r.outcome in ("passed", "finding", "failed", "error", "xpassed") for r in mine):
            lines.append(f"invarlock: {adapter}: not judged: no check ran ({len(mine)} "
                         f"skipped{f', {unjudged} unjudged' if unjudged else ''})")
            continue
        verdict = "not conformant" if must else "conformant"
        if should:
            verdict += (f", not hardened ({should} SHOULD finding{'s' * (should != 1)}"
                        f"{'; failing under --invarlock-strict' if strict else ''})")
        elif not must:
            verdict += ", hardened"
        if unjudged:
            verdict += f"; the suite could not judge {unjudged} record{'s' * (unjudged != 1)}"
        lines.append(f"invarlock: {adapter}: {verdict}")
    return lines


