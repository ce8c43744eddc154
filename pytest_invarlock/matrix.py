"""Lane results -> ``contracts/support_matrix.json`` (``support-matrix-v1``), deterministically."""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

FORMAT = "support-matrix-v1"
TIERS = {
    "published_basis": "Every check passes on a real checkpoint, with recorded provenance.",
    "supported_experimental": "Every check passes on the repository's fixtures.",
    "community_experimental": "Usable for experiments; no passing evidence in this repository.",
}
TIER_RULES = [
    "published_basis: no check failed or errored, at least one passed, at least one model is a "
    "real checkpoint, and the lane results carry provenance",
    "a real checkpoint: a record whose source is a package or a path (never a bundled "
    "fixture, however it was passed) and that names the model's family; records without a "
    "family are kept under family 'unknown' and never make a lane's real_checkpoint true",
    "a lane is the lane_id each record carries (its profile names it from the subject's "
    "labels, the implementation and the runtime)",
    "supported_experimental: no check failed or errored and at least one passed, on fixtures",
    "community_experimental: anything else (failures, errors, or nothing run)",
    "only MUST checks decide the tier: a failed SHOULD check is a finding, listed under "
    "should_findings, and makes the lane 'conformant' rather than 'hardened'",
    "a record the suite could not judge (no truth for the model) is the suite's gap: listed "
    "under unjudged_checks, never a failure of the adapter",
    "a lane never gains a tier from adapter availability alone: only from records",
    "the same lane in several result files: every record counts, so a failure anywhere "
    "makes the lane failing",
    "a result file whose status is not_run (the lane could not run where it was invoked) adds "
    "no lane: it is listed under runs with its reason",
    "a model an adapter declined (can_handle() False, or load_model raised) is listed under "
    "declined, never counted as evidence for or against the adapter",
]
LABELS = {"published_basis": "Published basis", "supported_experimental":
          "Supported (experimental)", "community_experimental": "Community (experimental)"}
#: where a checkpoint may come from; only these count as a real checkpoint
REAL_SOURCES = ("package", "path")


def lane_id(rec: dict[str, Any], runtime: str) -> str:
    """Return the lane a record counts towards: the ``lane_id`` its profile gave it.

    A record written before records carried one is placed by its labels and implementation.
    """
    given = rec.get("lane_id")
    if given:
        return str(given)
    return f"{rec.get('family') or 'unknown'}-{rec.get('role') or 'unknown'}-{runtime}-{rec['adapter']}"


def kind(rec: dict[str, Any]) -> str:
    """Classify a record as ``failing``, ``finding`` or its outcome as it is.

    ``failing``: a MUST check failed, or a check errored; ``finding``: a SHOULD check failed
    (also when --invarlock-strict made it a failure).
    """
    outcome = rec["outcome"]
    if outcome == "finding" or (outcome == "failed" and rec.get("level") == "SHOULD"):
        return "finding"
    return "failing" if outcome in ("failed", "error") else str(outcome)


def _status(counts: Counter[str]) -> str:
    if counts["failing"]:
        return "failing"
    return "passing" if counts["passed"] or counts["finding"] else "not_run"


def _conformance(counts: Counter[str]) -> str:
    """Return ``hardened``, ``conformant``, ``not_conformant`` or ``not_run``.

    ``hardened``: every MUST and SHOULD check passed; ``conformant``: every MUST check passed.
    """
    status = _status(counts)
    if status != "passing":
        return "not_conformant" if status == "failing" else "not_run"
    return "conformant" if counts["finding"] else "hardened"


def _tier(status: str, real: bool, provenance: bool) -> str:
    if status != "passing":
        return "community_experimental"
    return "published_basis" if real and provenance else "supported_experimental"


def build(results: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Merge ``(source, lane results)`` pairs into a support matrix; input order does not matter.

    A result file whose ``status`` is ``not_run`` adds no lane; it is listed under ``runs``.
    """
    lanes: dict[tuple[str, str, str, str, str], dict[str, Any]] = {}
    runs: list[dict[str, Any]] = []
    declined: dict[tuple[str, ...], dict[str, Any]] = {}
    for source, payload in sorted(results, key=lambda item: (item[0], render(item[1]))):
        runs.append(_run(source, payload))
        for item in _declined(payload):
            declined[_declined_key(item)] = item
        if payload.get("status", "ran") == "not_run":
            continue
        for rec in payload["records"]:
            if rec["adapter"] == "none":  # a model no adapter took: an error, not a lane
                continue
            key = (lane_id(rec, payload["lane"]), rec.get("family") or "unknown",
                   rec.get("role") or "unknown", rec["adapter"], payload["lane"])
            lane = lanes.setdefault(key, {"counts": Counter(), "kinds": Counter(), "models": set(),
                                          "real": set(), "failing": set(), "finding": set(),
                                          "unjudged": set(), "by_source": {}, "provenance": []})
            lane["counts"][rec["outcome"]] += 1
            lane["kinds"][kind(rec)] += 1
            lane["models"].add(rec["model"])
            if (rec.get("family") and rec.get("source") in REAL_SOURCES
                    and kind(rec) in ("passed", "finding")):
                lane["real"].add(rec["model"])
            lane["by_source"].setdefault(source, Counter())[kind(rec)] += 1
            if payload.get("provenance") not in lane["provenance"]:
                lane["provenance"].append(payload.get("provenance"))
            if kind(rec) in ("failing", "finding", "unjudged"):
                lane[kind(rec)].add(rec["check"])
    entries = [_entry(key, lane) for key, lane in sorted(lanes.items())]
    conflicts = [c for key, lane in sorted(lanes.items()) for c in _conflicts(key, lane)]
    return {"format_version": FORMAT, "support_tiers": TIERS, "tier_rules": TIER_RULES,
            "conflicts": conflicts, "lanes": entries, "runs": runs,
            "declined": [declined[k] for k in sorted(declined)]}


def _device(prov: dict[str, Any]) -> str:
    """Return ``cpu`` or ``cuda (NVIDIA H100 ...)``: the device a run used."""
    device = prov.get("device") or {}
    name = device.get("name")
    return str(device.get("type", "unknown")) + (f" ({name})" if name else "")


def _run(source: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Return what one result file says about its run: lane, status, reason, device, versions."""
    prov = payload.get("provenance") or {}
    packages = prov.get("packages") or {}
    status = payload.get("status", "ran")
    return {"source": source, "lane": payload["lane"], "status": status,
            "reason": payload.get("reason") if status == "not_run" else None,
            "device": _device(prov), "python": prov.get("python"),
            "packages": dict(sorted(packages.items())), "commit": prov.get("commit")}


def _declined(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the models the adapters of one result file declined, with the lane as runtime."""
    return [{"adapter": adapter.get("label") or adapter["name"], "model": item["model"],
             "family": item.get("family"), "role": item.get("role"), "runtime": payload["lane"],
             "reason": item["reason"]}
            for adapter in payload.get("adapters", []) for item in adapter.get("declined", [])]


def _declined_key(item: dict[str, Any]) -> tuple[str, ...]:
    return (item["runtime"], item["family"] or "", item["adapter"], item["model"],
            item["role"] or "", item["reason"])


def _conflicts(key: tuple[str, str, str, str, str], lane: dict[str, Any]) -> list[str]:
    verdicts = {src: _status(counts) for src, counts in sorted(lane["by_source"].items())}
    if {"passing", "failing"} <= set(verdicts.values()):
        said = ", ".join(f"{v} in {src}" for src, v in verdicts.items())
        return [f"{key[0]}: {said}; rule: a failure anywhere makes the lane failing"]
    return []


def _provenance(provenances: list[dict[str, Any] | None]) -> dict[str, Any]:
    runs = [r for r in provenances if r]
    names = sorted({name for r in runs for name in r.get("packages") or {}})
    packages = {name: sorted({str(r["packages"].get(name)) for r in runs}) for name in names}
    devices = sorted({_device(r) for r in runs})
    return {"python": sorted({r["python"] for r in runs}), "packages": packages,
            "devices": devices, "commits": sorted({r["commit"] for r in runs if r.get("commit")})}


def _entry(key: tuple[str, str, str, str, str], lane: dict[str, Any]) -> dict[str, Any]:
    lane_name, family, role, adapter, runtime = key
    real = bool(lane["real"])
    status = _status(lane["kinds"])
    tier = _tier(status, real, all(lane["provenance"]))
    return {
        "lane_id": lane_name, "family": family, "role": role,
        "runtime": runtime, "adapter": adapter, "support_tier": tier, "evidence_status": status,
        "conformance": _conformance(lane["kinds"]),
        "docs_label": LABELS[tier], "provenance_source": ", ".join(sorted(lane["by_source"])),
        "provenance": _provenance(lane["provenance"]),
        "evidence": {"models": sorted(lane["models"]), "real_checkpoint": real,
                     "counts": dict(sorted(lane["counts"].items())),
                     "failing_checks": sorted(lane["failing"]),
                     "should_findings": sorted(lane["finding"]),
                     "unjudged_checks": sorted(lane["unjudged"])},
    }


def changed_lanes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Name every lane, run and declined model that differs between two matrices, and how."""
    lines = [f"{field}: differs between the committed file and the evidence"
             for field in sorted((set(old) | set(new)) - {"lanes", "runs", "declined"})
             if old.get(field) != new.get(field)]
    lines += _changed("lane", _by(old, "lanes", _lane_key), _by(new, "lanes", _lane_key))
    lines += _changed("run", _by(old, "runs", _run_key), _by(new, "runs", _run_key))
    lines += _changed("declined", _by(old, "declined", _decline_key),
                      _by(new, "declined", _decline_key))
    return lines


def _lane_key(item: dict[str, Any]) -> str:
    return str(item["lane_id"])


def _run_key(item: dict[str, Any]) -> str:
    return str(item["source"])


def _decline_key(item: dict[str, Any]) -> str:
    return f"{item['adapter']} on {item['model']} ({item['runtime']})"


def _by(matrix: dict[str, Any], field: str, key: Any) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for item in matrix.get(field, []):
        found.setdefault(key(item), []).append(item)
    return found


def _changed(what: str, before: dict[str, list[dict[str, Any]]],
             after: dict[str, list[dict[str, Any]]]) -> list[str]:
    lines = [f"{what} {k}: only in the committed file" for k in sorted(set(before) - set(after))]
    lines += [f"{what} {k}: missing from the committed file" for k in sorted(set(after) - set(before))]
    for k in sorted(set(before) & set(after)):
        if len(before[k]) != 1 or len(after[k]) != 1:
            if before[k] != after[k]:
                lines.append(f"{what} {k}: {before[k]!r} in the committed file, {after[k]!r} "
                             "from the evidence")
            continue
        (old,), (new,) = before[k], after[k]
        for field in sorted(set(old) | set(new)):
            if old.get(field) != new.get(field):
                lines.append(f"{what} {k}: {field} is {old.get(field)!r} in the committed "
                             f"file, {new.get(field)!r} from the evidence")
    return lines


def source_name(path: Path) -> str:
    """Return how the matrix names a result file, whatever its spelling on the command line.

    The resolved path relative to the current directory, with ``/`` separators
    (``results/cpu.json`` for ``$PWD/results/cpu.json``, ``./results/../results/cpu.json``...);
    the resolved absolute path where there is no relative one (another drive on Windows).
    """
    resolved = path.resolve()
    try:
        return Path(os.path.relpath(resolved, Path.cwd().resolve())).as_posix()
    except ValueError:
        return resolved.as_posix()


def render(matrix: dict[str, Any]) -> str:
    """Serialise a matrix the same way every time (sorted keys, two-space indent, final newline)."""
    return json.dumps(matrix, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Merge lane result files into the support matrix, or check the committed one is current."""
    from pytest_invarlock.resources import validate

    parser = argparse.ArgumentParser(prog="python -m pytest_invarlock.matrix",
                                     description=main.__doc__)
    parser.add_argument("results", nargs="+", type=Path, help="lane results JSON files")
    parser.add_argument("--output", type=Path, default=Path("contracts/support_matrix.json"))
    parser.add_argument("--check", action="store_true",
                        help="fail with a diff when an output differs instead of rewriting it")
    parser.add_argument("--docs", type=Path, default=None, metavar="DIR",
                        help="also write DIR/support-matrix.md and DIR/support-matrix.html")
    args = parser.parse_args(argv)
    results: dict[str, dict[str, Any]] = {}
    for path in args.results:
        payload = json.loads(path.read_text(encoding="utf-8"))
        errors = validate(payload, "lane_results")
        if errors:
            print(f"{path}: not valid lane results: {'; '.join(errors[:3])}", file=sys.stderr)
            return 2
        results.setdefault(source_name(path), payload)  # one file named twice counts once
    matrix = build(sorted(results.items()))
    for conflict in matrix["conflicts"]:
        print(f"conflict: {conflict}", file=sys.stderr)
    outputs = {args.output: render(matrix)}
    if args.docs:
        from pytest_invarlock.matrix_docs import html, markdown

        outputs[args.docs / "support-matrix.md"] = markdown(matrix)
        outputs[args.docs / "support-matrix.html"] = html(matrix)
    if args.check:
        return _check(outputs)
    for path, text in outputs.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    return 0


def _check(outputs: dict[Path, str]) -> int:
    stale = 0
    for path, text in outputs.items():
        old = path.read_text(encoding="utf-8") if path.exists() else ""
        if old == text:
            continue
        stale += 1
        if path.suffix == ".json":
            for line in changed_lanes(json.loads(old or "{}"), json.loads(text)):
                print(line)
        sys.stdout.writelines(difflib.unified_diff(
            old.splitlines(True), text.splitlines(True), f"{path} (committed)",
            f"{path} (from evidence)"))
        print(f"{path} is stale; run `nox -s support_matrix` and commit it", file=sys.stderr)
    if not stale:
        print(f"{', '.join(map(str, outputs))} match the evidence")
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
