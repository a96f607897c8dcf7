"""The stress suites print what they survived at the end of the run (tests/stress/harness.py COUNTS)."""

import pytest

from tests.stress.harness import COUNTS, FULL, SEED_ENV, SEEDS, STRESS_ENV


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not COUNTS:
        return
    form = "full form" if FULL else f"CI form; {STRESS_ENV}=1 for the full one"
    terminalreporter.section(f"stress counts ({form})")
    for key, value in COUNTS.items():
        terminalreporter.write_line(f"{key}: {value}")
    for label, seed in SEEDS.items():
        terminalreporter.write_line(f"seed of {label}: {seed} (rerun with {SEED_ENV}={seed})")
