"""The pytest plugin: options, markers, parametrization, records, report and summary hooks.

A good citizen: in a run that collects no conformance test the plugin prints nothing and
changes nothing (no environment variable, no header line); its state is created lazily.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, cast

import pytest

from pytest_invarlock.lanes import AUTO, LANES, Lane, choose, unavailable
from pytest_invarlock.records import PROPERTY, VERDICT, Collector, Record, write_report
from pytest_invarlock.registry import AdapterError, AdapterSpec, Discovery, discover
from pytest_invarlock.verdicts import DEFAULT_TIMEOUT

if TYPE_CHECKING:
    from pytest_invarlock.checking import Check
    from pytest_invarlock.profile import Case, Plan, Profile, Subject
    from pytest_invarlock.subjects import Subjects

MARKER = "invarlock"
LANES_MARKER = "invarlock_lanes"
NO_CASE = "no adapter of lane {lane} is installed: none of {names} declares quantized = True"
#: The parametrized (session-scoped) fixture holding each test's case.
CASE_PARAM = "invarlock_case"
CHECK_PARAM = "invarlock_check"


#: above this many adapters a profile's header says how many, not one line each
HEADER_ADAPTERS = 30


class InvarlockRun:
    """Per-process state of a conformance run: lane, profiles, plans, loaded subjects, records."""

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
        self._discoveries: dict[str, Discovery] = {}
        self._subjects: Subjects | None = None
        self._plans: dict[str, Plan] = {}
        self._routes: dict[str, str] = {}
        #: case id -> nodeid of the test that reported the case's load error / its decline
        self._load_errors: dict[str, str] = {}
        self._declined: dict[str, str] = {}
        self._case_by_nodeid: dict[str, Case] = {}
        self._progress_case: str | None = None
        #: profiles whose tests a worker collected (the controller under xdist collects none)
        self._worker_profiles: set[str] = set()
        #: what the workers planned, by profile (rows) and whether the lane had anything to run
        self._worker_rows: dict[str, list[dict[str, Any]]] = {}
        self._worker_not_run: list[str | None] = []
        self._worker_checks: list[str] | None = None

    # ------------------------------------------------------------------ profiles and plans

    @property
    def profiles(self) -> tuple[Profile[Any], ...]:
        """Return the built-in and registered profiles."""
        from pytest_invarlock.profile import profiles

        return profiles()

    def profile(self, name: str) -> Profile[Any]:
        """Return the profile called ``name``."""
        from pytest_invarlock.profile import by_name

        return by_name(name)

    def discovery(self, profile: Profile[Any]) -> Discovery:
        """Return a profile's registered implementations (looked up on first use)."""
        if profile.name not in self._discoveries:
            self._discoveries[profile.name] = discover(profile.requirements)
        return self._discoveries[profile.name]

    @property
    def subjects(self) -> Subjects:
        """Return the process-wide loader of (implementation, subject) pairs."""
        if self._subjects is None:
            from pytest_invarlock.subjects import Subjects

            self._subjects = Subjects(self.lane, self.policy)
        return self._subjects

    def route(self, selector: str) -> Profile[Any]:
        """Return the profile a selector belongs to.

        The profile it is registered under, or whose protocol its class implements (the first
        profile's error when none claims it).
        """
        if selector not in self._routes:
            self._routes[selector] = self._route(selector).name
        return self.profile(self._routes[selector])

    def _route(self, selector: str) -> Profile[Any]:
        from pytest_invarlock.registry import resolve

        first: AdapterError | None = None
        for profile in self.profiles:
            try:
                spec = resolve(selector, self.discovery(profile))
                if spec.origin == "path":
                    spec.check_class()
                return profile
            except AdapterError as exc:
                first = first or exc
        assert first is not None
        raise first

    def selected(self, selector: str) -> AdapterSpec:
        """Return the implementation a ``--invarlock-adapter`` selector names, in its profile."""
        from pytest_invarlock.registry import resolve

        return resolve(selector, self.discovery(self.route(selector)))

    def spec(self, case: Case) -> AdapterSpec:
        """Return the implementation spec a case was planned from."""
        from pytest_invarlock.registry import resolve

        return resolve(case.selector, self.discovery(self.profile(case.profile)))

    def plan(self, profile: Profile[Any]) -> Plan:
        """Return a profile's plan for this run (made once per process; loads nothing)."""
        if profile.name not in self._plans:
            from pytest_invarlock.profile import Case, Plan, PlanRequest

            selectors = tuple(s for s in self.selectors if self.route(s).name == profile.name)
            if (self.selectors and not selectors) or self.lane.id not in profile.lanes:
                plan = Plan()
            else:
                plan = profile.plan(PlanRequest(self.lane, selectors, tuple(self.models),
                                                self.discovery(profile)))
            if not plan.cases:
                names = ", ".join(sorted(self.discovery(profile).adapters)) or "no adapter"
                if self.lane.id not in profile.lanes:
                    why = (f"profile {profile.name} does not run in lane {self.lane.id} (its "
                           f"lanes: {', '.join(profile.lanes)})")
                elif self.selectors and not selectors:
                    why = (f"no {profile.name} implementation was selected (--invarlock-adapter "
                           f"named {', '.join(self.selectors)}, of other profiles)")
                else:
                    why = NO_CASE.format(lane=self.lane.id, names=names)
                plan.cases = [Case(profile.name, "none", "none", "none", None, skip=why)]
            self._plans[profile.name] = plan
        return self._plans[profile.name]

    def not_run(self, names: set[str]) -> str | None:
        """Return why this lane had nothing to run (no implementation of its kind), if so."""
        plans = [self.plan(self.profile(n)) for n in sorted(names)]
        reasons = [p.cases[0].skip for p in plans if [c.adapter for c in p.cases] == ["none"]]
        return reasons[0] if plans and len(reasons) == len(plans) else None

    # ------------------------------------------------------------------ session start

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        """Reject unusable selectors, missing models and bad manifests before collecting."""
        try:
            for selector in self.selectors:
                spec = self.selected(selector)
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
        """Return every implementation name a manifest may use, mapped to the label records carry."""
        from pytest_invarlock.registry import resolve

        known: dict[str, str] = {}
        for profile in self.profiles:
            discovery = self.discovery(profile)
            known.update({label: label for label in discovery.adapters})
            for specs in discovery.claims.values():
                for spec in specs:
                    try:
                        known.setdefault(spec.qualified, resolve(spec.qualified, discovery).label)
                    except AdapterError:
                        continue
        for selector in self.selectors:
            known[selector] = self.selected(selector).label
        return known

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        """Name the lane and the adapters once conformance tests are collected (none: silent)."""
        self._case_by_nodeid = {item.nodeid: case for item in session.items
                                if (case := _case_of(item)) is not None}
        self._worker_profiles = {case.profile for case in self._case_by_nodeid.values()}
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None and self._case_by_nodeid and not hasattr(self.config, "workerinput"):
            for line in self.header_lines(self._worker_profiles):
                tr.write_line(line)

    def header_lines(self, names: set[str]) -> list[str]:
        """Return the lane (and why it cannot run here) and every implementation with its source."""
        reason = unavailable(self.lane)
        lines = [f"invarlock: lane {self.lane.id} ({self.lane.description})"
                 + (f" - cannot run here: {reason}" if reason else "")]
        for profile in self.profiles:
            if profile.name not in names:
                continue
            discovery = self.discovery(profile)
            if len(discovery.adapters) > HEADER_ADAPTERS:  # a table, not a page, of them
                sources = sorted({f"{s.distribution} {s.version}"
                                  for s in discovery.adapters.values()})
                lines.append(f"invarlock: {profile.name}: {len(discovery.adapters)} adapters "
                             f"({', '.join(sources)}); the records name each one's target")
            else:
                lines += [f"invarlock: adapter {label} = {spec.target} ({spec.distribution} "
                          f"{spec.version})" for label, spec in sorted(discovery.adapters.items())]
            lines += [f"invarlock: problem: {p}" for p in discovery.problems.values()]
        return lines

    # ------------------------------------------------------------------ running a case

    def subject(self, case: Case, nodeid: str) -> Subject[Any]:
        """Return the loaded subject of ``case``; a load error or a decline is said by one test."""
        if case.skip:
            pytest.skip(case.skip)
        if case.error:
            _case_error(case.error)
        from pytest_invarlock.errors import CallTimeout

        first = self._load_errors.get(case.id)
        if first is not None and first != nodeid:
            pytest.skip(f"not run: {case.adapter} on {case.model} did not load (the error is "
                        f"reported by {first})")
        profile = self.profile(case.profile)
        spec = self.spec(case)
        problem = self.discovery(profile).problems.get(case.selector)
        why: str | None = None
        try:
            subject = self.subjects.load(profile, spec, problem, case)
        except (AdapterError, CallTimeout) as exc:  # unusable or hanging: always an error
            error = profile.load_error(case, exc)
        except Exception as exc:
            error = profile.load_error(case, exc)
            if not case.explicit:  # not asked to take this model: its failure is a decline
                why = error.partition(": cannot load the model: ")[2] or error
        else:
            why = self.subjects.declined(profile, subject)
            if why is None:
                return subject
        if why is not None:
            first = self._declined.setdefault(case.id, nodeid)
            if first != nodeid:
                raise _DeclinedRepeat(f"not run: {case.adapter} declined {case.model} (said by "
                                      f"{first})")
            raise _Declined(f"{case.adapter} on {case.model}: declined: {why}")
        self._load_errors[case.id] = nodeid
        _case_error(error)  # outside the handler: no chained traceback

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> Any:
        """Run a conformance test on an xdist worker with its share of the cores (see cores)."""
        if item.nodeid not in self._case_by_nodeid:
            return (yield)
        from pytest_invarlock.cores import threads, worker_share

        with threads(worker_share(getattr(self.config, "workerinput", None))):
            return (yield)

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
        """Keep which profiles a worker ran: the controller collects nothing to know it."""
        output = getattr(node, "workeroutput", {})
        self._worker_profiles.update(output.get("invarlock_profiles", ()))
        for name, rows in output.get("invarlock_rows", {}).items():
            self._worker_rows.setdefault(name, rows)
        if "invarlock_not_run" in output:
            self._worker_not_run.append(output["invarlock_not_run"])
        if "invarlock_checks" in output:  # the summary's check order, without importing checks
            self._worker_checks = list(output["invarlock_checks"])

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        """Honour ``--dist loadgroup`` for conformance tests: one worker per (adapter, model).

        pytest-xdist groups by a ``@group`` suffix it writes into node ids, which pytest 9 no
        longer lets it write (pytest-dev/pytest-xdist#1386), so each case's tests would spread
        over every worker and each worker would load every model. This scheduler groups a
        conformance test by its case (read from the test id, ``[adapter-model-check_x]``) and
        leaves every other test as ``loadgroup`` would.
        """
        if config.getoption("dist", None) != "loadgroup":
            return None
        from pytest_invarlock.xdist_scheduling import case_scheduler

        return case_scheduler(config, log)

    def records(self) -> list[Record]:
        """Return the records of this run, in a stable order."""
        return self.collector.sorted()

    def rows(self, records: list[Record]) -> list[dict[str, Any]]:
        """Return the implementations of this run with their origin and what they declined.

        Built from the plans (which load nothing) and the records, so the controller of an
        xdist run builds the same rows as a single process; it takes the plan rows its workers
        made rather than planning again after the run.
        """
        names = {r.profile for r in records if r.profile} | self._worker_profiles
        runtime: dict[str, list[dict[str, Any]]] = {}
        for r in records:
            if r.outcome == "declined":
                runtime.setdefault(r.adapter, []).append(
                    {"model": r.model, "family": r.family, "role": r.role,
                     "reason": r.message.partition(": declined: ")[2] or r.message})
        rows = []
        for row in self.plan_rows(names):
            declined = row["declined"] + runtime.get(row["label"], [])
            rows.append({**row, "declined": sorted(declined, key=lambda d: d["model"])})
        return rows

    def plan_rows(self, names: set[str]) -> list[dict[str, Any]]:
        """Return one row per implementation the plans of profiles ``names`` name."""
        from pytest_invarlock.registry import resolve

        rows = []
        for profile in self.profiles:
            if profile.name not in names:
                continue
            if profile.name in self._worker_rows:
                rows += self._worker_rows[profile.name]
                continue
            plan = self.plan(profile)
            selectors = {c.adapter: c.selector for c in plan.cases}
            for label in plan.declined:  # an adapter that took nothing is listed too
                selectors.setdefault(label, plan.selectors[label])
            selectors.pop("none", None)
            for label, selector in sorted(selectors.items()):
                spec = resolve(selector, self.discovery(profile))
                rows.append({"name": label, "label": label, "target": spec.target,
                             "origin": spec.origin, "distribution": spec.distribution,
                             "version": spec.version, "profile": profile.name,
                             "declined": [d.as_dict() for d in plan.declined.get(label, [])]})
        return rows

    def took_none(self, records: list[Record]) -> list[str]:
        """Return an error per implementation named explicitly that declined every subject."""
        from pytest_invarlock.profile import ALL_MODELS

        ran = ("passed", "finding", "failed", "error", "xpassed", "xfailed", "unjudged")
        lines = []
        for selector in dict.fromkeys(self.selectors):
            label = self.selected(selector).label
            mine = [r for r in records if r.adapter == label and r.outcome == "declined"]
            if mine and not any(r.adapter == label and r.outcome in ran for r in records):
                listed = "; ".join(r.message.partition(f"{label} on ")[2].replace(
                    ": declined: ", ": ", 1) for r in mine)
                lines.append(f"{label} on {ALL_MODELS}: took none of the {len(mine)} models it "
                             f"was given: {listed}. Pass the models it is for with "
                             "--invarlock-model, or make it accept them")
        if self.models and not self.selectors:  # a named model every adapter declined
            for model in sorted({r.model for r in records if r.outcome == "declined"}):
                mine = [r for r in records if r.model == model]
                if all(r.outcome == "declined" for r in mine):
                    why = "; ".join(r.message.replace(f" on {model}: declined: ", ": ", 1)
                                    for r in mine)
                    lines.append(f"--invarlock-model {model}: no adapter took it ({why}); name "
                                 "the adapter with --invarlock-adapter")
        return lines

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Write the lane results file on the controller; remove the scratch directory."""
        workeroutput = getattr(session.config, "workeroutput", None)
        if workeroutput is None and self.took_none(self.records()) and session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if workeroutput is not None:
            workeroutput["invarlock_profiles"] = sorted(self._worker_profiles)
            if self._worker_profiles:  # the controller takes these instead of planning again
                workeroutput["invarlock_rows"] = {
                    name: self.plan_rows({name}) for name in self._worker_profiles}
                workeroutput["invarlock_not_run"] = self.not_run(self._worker_profiles)
                from pytest_invarlock.profile import all_checks

                workeroutput["invarlock_checks"] = [c.__name__ for c in all_checks()]
        elif self.report and (self.collector.records or self._worker_profiles):
            records = self.records()
            names = {r.profile for r in records if r.profile} | self._worker_profiles
            reason = unavailable(self.lane) or (
                self._worker_not_run[0] if self._worker_not_run else self.not_run(names))
            packages = tuple(dict.fromkeys(
                p for profile in self.profiles if profile.name in names for p in profile.packages))
            write_report(Path(self.report), self.lane.id, self.lane.device, self.rows(records),
                         [] if reason else [r for r in records if r.outcome != "declined"],
                         not_run=reason, packages=packages)
        if self._subjects is not None:
            self._subjects.close()

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        """Print the check x adapter outcome matrix, expected failures and how to reproduce."""
        everything = self.records()
        if not everything:
            return
        records = [r for r in everything if r.outcome != "declined"]
        from pytest_invarlock.summary import legend_line, matrix_lines

        tr = terminalreporter
        tr.section(f"invarlock lane {self.lane.id}")
        if not self._case_by_nodeid:  # under xdist the controller collected nothing: say it here
            for line in self.header_lines({r.profile for r in everything if r.profile}):
                tr.write_line(line)
        width = min(max(int(getattr(getattr(tr, "_tw", None), "fullwidth", 100)), 50), 100)
        for line in [*matrix_lines(records, width, self._worker_checks), legend_line(),
                     *verdict_lines(records, self.policy.strict)]:
            tr.write_line(line)
        for line in declined_lines(self.rows(everything)):
            tr.write_line(line, yellow=True)
        for line in self.took_none(everything):
            tr.write_line(f"ERROR {line}", red=True)
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


class _Declined(pytest.skip.Exception):  # type: ignore[name-defined,misc]
    """The implementation declined the loaded subject: the one visible outcome of the pair."""


class _DeclinedRepeat(pytest.skip.Exception):  # type: ignore[name-defined,misc]
    """Another test of a declined pair: skipped, and no record (the decline is said once)."""


def _case_error(message: str) -> NoReturn:
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


def _param(item: pytest.Item, name: str) -> Any:
    return getattr(getattr(item, "callspec", None), "params", {}).get(name)


def _case_of(item: pytest.Item) -> Case | None:
    """Return the case a conformance test runs on (None for any other test)."""
    return cast("Case | None", _param(item, CASE_PARAM))


def _check_of(item: pytest.Item) -> Check[Any] | None:
    """Return the check a conformance test runs (None for any other test)."""
    return cast("Check[Any] | None", _param(item, CHECK_PARAM))


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add the --invarlock-* options."""
    group = parser.getgroup("invarlock", "model adapter conformance (pytest-invarlock)")
    group.addoption("--invarlock-lane", choices=[*sorted(LANES), AUTO], default="cpu",
                    help="lane to run: " + ", ".join(
                        f"{lane.id} ({lane.description})" for lane in LANES.values())
                    + "; default cpu; or auto (cuda when a CUDA device is usable, else cpu)")
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
    """Parametrize tests marked ``invarlock(checks)`` over their profile's cases and checks.

    The checks of a case are those its profile yields for the implementation, so a subject
    never collects another protocol's skips.
    """
    marker = metafunc.definition.get_closest_marker(MARKER)
    if marker is None:
        return
    from pytest_invarlock.profile import owner

    run = metafunc.config.stash[RUN]
    checks = list(marker.args[0])
    cases = run.plan(owner(checks)).cases
    # session-scoped, so pytest orders the tests of one case together across modules; with
    # `-n N --dist loadgroup`, each (adapter, model) loads on one worker only
    params = [pytest.param(c, marks=pytest.mark.xdist_group(c.id), id=c.id) for c in cases]
    metafunc.parametrize(CASE_PARAM, params, indirect=True, scope="session")
    metafunc.parametrize(CHECK_PARAM, checks, ids=[c.__name__ for c in checks])


@pytest.fixture(scope="session")
def invarlock_case(request: pytest.FixtureRequest) -> Case:
    """Return this test's (adapter, model) case; session-scoped, so tests group by case."""
    return cast("Case", request.param)


@pytest.fixture
def invarlock_subject(invarlock_case: Case, request: pytest.FixtureRequest) -> Subject[Any]:
    """Return the loaded (adapter, model) of this case; loaded once per process."""
    return request.config.stash[RUN].subject(invarlock_case, request.node.nodeid)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tag every conformance test with its (adapter, model, check); apply expected failures.

    A case that cannot run at all (a plan-time error or skip) keeps one test: its message is
    said once, not once per check.
    """
    run = config.stash[RUN]
    _drop_inapplicable(run, items)
    _deselect_other_lanes(config, items, run.lane.id)
    _deselect_repeats(config, items)
    if hasattr(config, "workerinput"):
        _costliest_first(items)
    for item in items:
        case, check = _case_of(item), _check_of(item)
        if case is not None and check is not None:
            from pytest_invarlock.checking import level_of

            profile = run.profile(case.profile)
            item.user_properties.append((PROPERTY, {
                "adapter": case.adapter, "model": case.model, "check": check.__name__,
                "family": case.family, "role": case.role, "level": level_of(check),
                "profile": case.profile, "labels": dict(case.labels), "source": case.source,
                "digest": case.digest, "lane_id": profile.lane_id(case, run.lane.id)}))
            if not (case.error or case.skip):
                _expect(run, item, case, check.__name__)


def _drop_inapplicable(run: InvarlockRun, items: list[pytest.Item]) -> None:
    """Drop the (case, check) tests whose check the profile does not yield for the implementation.

    In the manner of scikit-learn's ``_yield_*_checks``: a check that does not apply to an
    implementation is never collected, rather than collected and skipped.
    """
    applies: dict[tuple[str, str], set[str]] = {}
    kept = []
    for item in items:
        case, check = _case_of(item), _check_of(item)
        if case is None or check is None or case.adapter == "none":
            kept.append(item)
            continue
        key = (case.profile, case.id)
        if key not in applies:
            profile = run.profile(case.profile)
            applies[key] = {c.__name__ for c in profile.yield_checks(case, profile.checks())}
        if check.__name__ in applies[key]:
            kept.append(item)
    items[:] = kept


def _costliest_first(items: list[pytest.Item]) -> None:
    """Order the conformance tests of an xdist worker's collection by their case's cost.

    The scheduler (xdist_scheduling) hands cases out in collection order, so the longest ones
    start first and the short ones fill in at the end: a long case scheduled last would run
    alone while the other workers idle. Every worker sorts the same way (the collections must
    be identical); other tests keep their places, and a run without xdist keeps its order.
    """
    slots = [i for i, item in enumerate(items) if _case_of(item) is not None]
    ordered = sorted((items[i] for i in slots), key=lambda item: -_case_cost(item))
    for slot, item in zip(slots, ordered, strict=True):
        items[slot] = item


def _case_cost(item: pytest.Item) -> float:
    case = _case_of(item)
    return case.cost if case is not None else 0.0


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
    if excinfo is not None and isinstance(excinfo.value, (_Declined, _DeclinedRepeat)):
        drop = isinstance(excinfo.value, _DeclinedRepeat)
        verdict = {"drop": True} if drop else {"outcome": "declined",
                                               "message": str(excinfo.value.msg)}
        report.user_properties = [*report.user_properties, (VERDICT, verdict)]
        return report
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


def _expect(run: InvarlockRun, item: pytest.Item, case: Case, check: str) -> None:
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


