"""Shared fixtures. Every test also fails if anything logged an unhandled error."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from twisted.logger import globalLogPublisher

from tests.support.processes import Processes

# Hypothesis profiles. CI runs with CI=true, so hypothesis loads its built-in "ci"
# profile: derandomize=True and database=None (the same examples on every run, nothing
# kept between runs), print_blob=True, deadline=None. A plain local run gets the
# built-in "default": random examples, failures kept in .hypothesis/ and replayed.
# Both run 100 examples, and the per-test counts (`examples(300)`, see
# tests/support/examples.py) are written for that base, so neither runs fewer than
# it always did. "dev" is for quick local runs, a tenth of every count:
#     HYPOTHESIS_PROFILE=dev python -m pytest    (or --hypothesis-profile=dev)
settings.register_profile("dev", settings.get_profile("default"), max_examples=10)
if os.environ.get("HYPOTHESIS_PROFILE"):
    settings.load_profile(os.environ["HYPOTHESIS_PROFILE"])


def pytest_collection_finish(session: pytest.Session) -> None:
    """Move everything collection made (every test module, Twisted, hypothesis) out
    of the collector's sight. The `gc.collect()` after each test then walks only
    what the test itself made, which is all it is there to find (an unhandled
    Deferred error is logged when its Deferred is collected): 0 ms instead of the
    ~120 ms a full collection of some 235,000 objects took, once per test."""
    gc.collect()
    gc.freeze()


def loggedErrors(action: Callable[[], object]) -> list[dict[str, Any]]:
    """The error events (Failures logged, unhandled Deferred errors) while `action` runs."""
    failures: list[dict[str, Any]] = []
    observer = errorObserver(failures)
    globalLogPublisher.addObserver(observer)
    try:
        action()
    finally:
        globalLogPublisher.removeObserver(observer)
    return failures


def errorObserver(failures: list[dict[str, Any]]) -> Callable[[dict[str, Any]], None]:
    def observer(event: dict[str, Any]) -> None:
        if event.get("log_failure") is not None or event.get("isError"):
            failures.append(event)

    return observer


def failOn(failures: list[dict[str, Any]], what: str) -> None:
    if failures:
        from twisted.logger import formatEvent

        details = []
        for event in failures:
            failure = event.get("log_failure")
            details.append(formatEvent(event) + ("\n" + failure.getTraceback() if failure else ""))
        pytest.fail(what + ":\n" + "\n".join(details))


@pytest.fixture(scope="session", autouse=True)
def noFailuresInWhatOutlivedItsTest() -> Iterator[None]:
    """What outlived its test was frozen when the next test started (see below), out
    of the collector's sight. At the end it is unfrozen and collected, so that an
    unhandled Deferred error in it still fails the run, as it failed whichever
    later test's collection found it before."""
    yield
    failOn(
        loggedErrors(lambda: (gc.unfreeze(), gc.collect())),
        "logged failures when what outlived its test was collected at the end",
    )


REPOSITORY_LEDGER = Path(__file__).resolve().parents[1] / "ccproxy.db"
"""The default ledger of a daemon started in the repository: no test may make it."""


@pytest.fixture(autouse=True)
def noLedgerInTheRepository() -> Iterator[None]:
    """A test that starts a daemon on a config without `ledger:` would write its
    rows into the repository: the harness has no ledger, and the other tests put
    theirs in tmp_path or say `ledger: off`."""
    before = REPOSITORY_LEDGER.exists()
    yield
    if not before and REPOSITORY_LEDGER.exists():
        pytest.fail(
            f"the test wrote {REPOSITORY_LEDGER}: give its daemon ledger: off or a tmp path"
        )


@pytest.fixture(autouse=True)
def noLoggedFailures() -> Iterator[list[dict[str, Any]]]:
    """Collect error events (Failures logged, unhandled Deferred errors) and fail on them.

    Tests that expect one remove it from the yielded list.

    Before the test, what earlier tests left that is garbage by now (a fixture's
    value, released after their teardown) is collected, and an error it logs fails
    this test, as it did when this test's own collection found it; what is still
    alive is then frozen. So the collection after the test walks only what the test
    made, not everything every earlier test kept (hypothesis's caches, modules
    imported late, reports): that took 20-60 ms a test by the end of the suite.
    """
    failOn(loggedErrors(gc.collect), "logged failures left by an earlier test")
    gc.freeze()
    failures: list[dict[str, Any]] = []
    observer = errorObserver(failures)
    globalLogPublisher.addObserver(observer)
    try:
        yield failures
        gc.collect()
    finally:
        globalLogPublisher.removeObserver(observer)
    failOn(failures, "logged failures")


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """The subprocesses a test starts (tests/support/processes.py), stopped after it."""
    running = Processes(tmp_path)
    try:
        yield running
    finally:
        running.close()
