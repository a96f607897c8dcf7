"""Prints csi-sanity's counts at the end of the run, where `pytest -q` shows them even when it passed."""

import pytest

SUMMARY = pytest.StashKey[str]()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    summary = config.stash.get(SUMMARY, None)
    if summary:
        terminalreporter.write_line(summary)
