"""A pytest plugin (``-p outcomes``): every test's outcome in a run of mitmproxy's suite, written
as JSON to the file ``$MITMPROXY_SUITE_OUTCOMES`` names when the session ends, for run.py to
compare runs test by test (junitxml loses the test ids and folds phases together)."""

from __future__ import annotations

import json
import os

import pytest

#: Worst first: a test's outcome is the worst of its phases (setup, call, teardown).
RANK = {"failed": 0, "skipped": 1, "passed": 2}
#: How much of a failure's text is kept (the runner shows it for a difference it reports).
KEEP_CHARS = 4000

_outcomes: dict[str, dict[str, str]] = {}


def _record(nodeid: str, outcome: str, longrepr: object) -> None:
    known = _outcomes.get(nodeid)
    if known is not None and RANK[known["outcome"]] <= RANK[outcome]:
        return
    _outcomes[nodeid] = {"outcome": outcome}
    if outcome == "failed":
        _outcomes[nodeid]["failure"] = str(longrepr)[-KEEP_CHARS:]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _record(report.nodeid, report.outcome, report.longrepr)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    # A module that cannot be collected: its tests never run, so it counts as failed.
    if report.failed:
        _record(report.nodeid, "failed", report.longrepr)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = os.environ.get("MITMPROXY_SUITE_OUTCOMES")
    if path:
        with open(path, "w", encoding="utf-8") as file:
            json.dump(_outcomes, file, indent=1, sort_keys=True)
