"""Restore snapshots in a fresh Python process: one long-lived helper per test process.

Spawning Python and importing torch costs seconds, so the parent starts one helper lazily and
sends it requests as JSON lines over stdin; each request re-creates the adapter from its
selector, loads the model afresh with ``load_model``, perturbs every tensor, restores the snapshot
file and answers with a digest of every tensor's bits. The helper answers on a private copy of
its stdout (anything the adapter prints goes to its log), is stopped at exit, and a helper that
dies or does not answer in time is reported as :class:`HelperFailed` with its log's tail.

Run as ``python -m pytest_invarlock.hf_adapter.fresh`` it is the helper itself.
"""

from __future__ import annotations

import atexit
import gc
import hashlib
import importlib
import json
import math
import os
import queue
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path
from typing import IO, Any

#: Seconds to wait for one answer (the first includes starting Python and importing torch).
TIMEOUT_ENV = "INVARLOCK_FRESH_TIMEOUT"
DEFAULT_TIMEOUT = 240.0
#: Set in the helper's environment, so an adapter (or a test) can tell it runs there.
HELPER_ENV = "INVARLOCK_FRESH_HELPER"
#: The seed the helper perturbs with (the parent's snapshot state must differ from it).
PERTURB_SEED = 1234


class HelperFailed(RuntimeError):
    """The helper process died, hung or answered nonsense; the message says which, with its log."""


def digest(t: Any) -> str:
    """Return the sha256 of a tensor's raw bytes (as ``state.bits`` lays them out)."""
    from pytest_invarlock.hf_adapter import state

    return hashlib.sha256(state.bits(t).numpy().tobytes()).hexdigest()


def describe_state(model: Any) -> dict[str, Any]:
    """Return every tensor's dtype, shape, device and bit digest, and the tied groups."""
    from pytest_invarlock.hf_adapter import state

    tensors = {name: {"dtype": str(t.dtype), "shape": list(t.shape), "device": str(t.device),
                      "digest": digest(t)}
               for name, (t, _) in state.named_tensors(model).items()}
    return {"tensors": tensors, "groups": [list(g) for g in state.storage_groups(model)]}


# --------------------------------------------------------------------------- parent side


class Helper:
    """One helper process, started on first use and stopped at exit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._answers: queue.Queue[str | None] = queue.Queue()
        self._log: Path | None = None
        self._next = 0

    def request(self, payload: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """Send one request and return its answer; raise :class:`HelperFailed` on death or hang."""
        limit = timeout if timeout is not None else float(
            os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT))
        with self._lock:
            proc = self._ensure()
            self._next += 1
            ident = self._next
            try:
                assert proc.stdin is not None
                # the parent's sys.path now (a test may have added a directory since the start)
                path = [p or os.getcwd() for p in sys.path]
                torch = sys.modules.get("torch")  # the parent's share of the cores, now
                threads = torch.get_num_threads() if torch is not None else None
                proc.stdin.write(json.dumps({"id": ident, "sys_path": path, "threads": threads,
                                             **payload}) + "\n")
                proc.stdin.flush()
            except OSError as exc:
                raise self._failed(f"could not be sent the request ({exc})") from None
            try:
                return self._answer(proc, ident, limit)
            except HelperFailed:
                raise
            except BaseException:  # interrupted (a deadline, ^C): never reuse a busy helper
                self.stop(kill=True)
                raise

    def _answer(self, proc: subprocess.Popen[str], ident: int, limit: float) -> dict[str, Any]:
        while True:
            try:
                line = self._answers.get(timeout=limit)
            except queue.Empty:
                raise self._failed(f"did not answer within {limit:g} s (set {TIMEOUT_ENV} to "
                                   "wait longer)", kill=True) from None
            if line is None:
                raise self._failed(f"exited with status {proc.wait()} before answering")
            try:
                answer = json.loads(line)
            except json.JSONDecodeError:
                raise self._failed(f"answered something that is not JSON: {line[:200]!r}") \
                    from None
            if isinstance(answer, dict) and answer.get("id") == ident:
                return answer

    def _ensure(self) -> subprocess.Popen[str]:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        handle, log_path = tempfile.mkstemp(prefix="invarlock-fresh-", suffix=".log")
        os.close(handle)
        self._log = Path(log_path)
        env = dict(os.environ)
        torch = sys.modules.get("torch")
        if torch is not None and "OMP_NUM_THREADS" not in env:  # the parent's share of the cores
            env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
        paths = [p or os.getcwd() for p in sys.path]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        env[HELPER_ENV] = "1"
        env["PYTHONUNBUFFERED"] = "1"
        with open(self._log, "w") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "pytest_invarlock.hf_adapter.fresh"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=log, text=True, env=env, bufsize=1)
        self._answers = queue.Queue()
        threading.Thread(target=_pump, args=(self._proc.stdout, self._answers),
                         daemon=True).start()
        return self._proc

    def _failed(self, what: str, kill: bool = False) -> HelperFailed:
        """Stop the helper and return the error saying ``what`` happened, with its log's tail."""
        pid = self._proc.pid if self._proc else "?"
        log = self._log
        self.stop(kill=kill, keep_log=True)
        tail = ""
        if log is not None and log.exists():
            lines = log.read_text(errors="replace").strip().splitlines()[-12:]
            tail = (" Its log ends: " + " | ".join(lines)) if lines else " Its log is empty."
            log.unlink()
        return HelperFailed(f"the fresh-process helper (pid {pid}) {what}.{tail}")

    def stop(self, kill: bool = False, keep_log: bool = False) -> None:
        """Stop the helper: it exits when its stdin closes, and is killed if it does not.

        ``kill`` kills it at once: a helper busy with a request that will never end.
        """
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                if kill:
                    proc.kill()
                if proc.stdin:
                    proc.stdin.close()
                proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
        if self._log is not None and not keep_log:
            self._log.unlink(missing_ok=True)
        self._log = None


def _pump(stream: IO[str] | None, answers: queue.Queue[str | None]) -> None:
    """Forward the helper's answer lines to the parent; ``None`` marks its end."""
    if stream is not None:
        for line in stream:
            answers.put(line)
    answers.put(None)


_HELPER: Helper | None = None


def helper() -> Helper:
    """Return this process's helper (created on first use, stopped at exit)."""
    global _HELPER
    if _HELPER is None:
        _HELPER = Helper()
        # at exit the helper is idle and holds nothing worth a clean shutdown: killing it spares
        # the wait for an interpreter with torch loaded to tear itself down
        atexit.register(_HELPER.stop, kill=True)
    return _HELPER


# --------------------------------------------------------------------------- helper side


def make_adapter(selector: str) -> Any:
    """Return a new instance of the adapter ``selector`` names (name, DIST:NAME or module:Class)."""
    from pytest_invarlock.registry import discover, resolve

    return resolve(selector, discover()).instantiate()


def serve(request: dict[str, Any]) -> dict[str, Any]:
    """Answer one request: load afresh, perturb, restore the snapshot file, digest the state."""
    from pytest_invarlock.hf_adapter import state

    stage = "import"
    try:
        if request.get("threads"):  # as many as the parent may use (cores.py)
            import torch

            torch.set_num_threads(int(request["threads"]))
        missing = [p for p in request.get("sys_path", []) if p not in sys.path]
        if missing:
            sys.path.extend(missing)
            importlib.invalidate_caches()
        adapter = make_adapter(request["selector"])
        stage = "load"
        model = adapter.load_model(request["model_path"], device=request["device"])
        stage = "perturb"
        loaded = describe_state(model)["tensors"]
        state.perturb(model, seed=PERTURB_SEED)
        perturbed = describe_state(model)
        unchanged = [n for n, t in perturbed["tensors"].items() if n in loaded
                     and t["digest"] == loaded[n]["digest"] and math.prod(t["shape"])]
        if unchanged:
            return {"ok": False, "stage": stage,
                    "error": f"the suite could not perturb {unchanged[:3]}"}
        blob = Path(request["blob"]).read_bytes()
        stage = "restore"
        try:
            adapter.restore(model, blob)
        except Exception as exc:
            return {"ok": False, "stage": stage, "error": _error(exc),
                    "untouched": describe_state(model) == perturbed,
                    "message": str(exc).strip()}
        return {"ok": True, **describe_state(model)}
    except Exception as exc:
        return {"ok": False, "stage": stage, "error": _error(exc)}


def _error(exc: BaseException) -> str:
    where = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    at = f" (at {where[0].filename}:{where[0].lineno})" if where else ""
    return "".join(traceback.format_exception_only(exc)).strip() + at


def main() -> None:
    """Serve requests from stdin until it closes; answers go to the original stdout only."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever the adapter prints goes to the log, never into the answers
    sys.stdout = sys.stderr
    import torch  # noqa: F401  (import once, before the first request's clock matters less)

    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        answer = serve(request)
        gc.collect()  # the model of this request is gone before the next one loads
        out.write(json.dumps({"id": request.get("id"), **answer}) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
