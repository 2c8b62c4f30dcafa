"""Shared fixtures for the whole test suite, and the rule that makes a green CI run mean something.

Under CI (``CI=true``, which CI runners set and ``.ci/run`` exports) a skipped test is reported as a
failure: a missing tool, missing data or a missing extra would otherwise turn the product's checks
into "skipped" and the run green. The only exceptions are in :data:`ALLOWED_SKIPS`, each with its
reason. Locally a skip stays a skip, and every skipped test is listed at the end of the run.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

REPO_ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}

# node id pattern (fnmatch) -> why CI may skip it. Keep this short: every entry is a check CI never runs.
ALLOWED_SKIPS: dict[str, str] = {}

# A fixed seed under CI (a failure replays with the same examples); locally Hypothesis explores, and
# either way a failure prints the @reproduce_failure blob that replays it.
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True, database=None)
hypothesis_settings.register_profile("dev", print_blob=True)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if IN_CI else "dev"))


def data_root() -> Path:
    """``$SQUID_DATA_DIR`` or ``<repo>/../shared/data``."""
    return Path(os.environ.get("SQUID_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real data folder; missing data fails the run under CI instead of skipping."""
    root = data_root()
    if not root.is_dir():
        message = f"shared data not found at {root} (set SQUID_DATA_DIR)"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return root


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that reads the real data carries the ``data`` marker, whoever forgot to add it."""
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()) and item.get_closest_marker("data") is None:
            item.add_marker(pytest.mark.data)


def allowed_skip(nodeid: str) -> str | None:
    """The reason CI may skip ``nodeid``, or None when a skip there is a failure."""
    for pattern, reason in ALLOWED_SKIPS.items():
        if fnmatch.fnmatchcase(nodeid, pattern):
            return reason
    return None


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _fail_skip_under_ci(report: pytest.TestReport | pytest.CollectReport) -> None:
    if not IN_CI or not report.skipped or hasattr(report, "wasxfail") or allowed_skip(report.nodeid):
        return
    report.outcome = "failed"
    report.longrepr = (
        f"skipped under CI ({_skip_reason(report)}): a skip is a failure here; "
        "install what it needs, or add it to ALLOWED_SKIPS in tests/conftest.py with a reason"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    _fail_skip_under_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    """A whole module skipped at import (``pytest.importorskip``) counts too."""
    outcome = yield
    _fail_skip_under_ci(outcome.get_result())


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Name every skipped test at the very end, so a local run cannot hide a hole in the coverage."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if not hasattr(r, "wasxfail")]
    if not skipped:
        return
    terminalreporter.section(f"{len(skipped)} skipped (each would fail under CI=true unless allowed)")
    for report in skipped:
        allowed = allowed_skip(report.nodeid)
        note = f"  [allowed in CI: {allowed}]" if allowed else ""
        terminalreporter.write_line(f"{report.nodeid}: {_skip_reason(report)}{note}")
