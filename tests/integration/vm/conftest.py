"""VM tier plumbing: on a failed VM test, attach the guest's jobworkerd journal (and the tail of the
whole journal) to the report; at the end, print the tier's figures (build, image, boot, run)."""

from __future__ import annotations

from pathlib import Path

import pytest

STATE_KEY = pytest.StashKey[dict]()


def _state(config) -> dict:
    if STATE_KEY not in config.stash:
        config.stash[STATE_KEY] = {"out": None, "figures": {}}
    return config.stash[STATE_KEY]


@pytest.fixture(scope="session")
def vm_state(request) -> dict:
    """Shared with the hooks below: the guest's out/ directory and the tier's figures."""
    return _state(request.config)


def guest_journal(out: Path | None, whole_tail: int = 150) -> str:
    if out is None:
        return "(the guest did not run)"
    parts = []
    unit = out / "jobworkerd-journal.txt"
    if unit.exists():
        parts.append("--- journalctl -u jobworkerd ---\n" + unit.read_text(errors="replace")[-20000:])
    whole = out / "journal.txt"
    if whole.exists():
        lines = whole.read_text(errors="replace").splitlines()
        parts.append(f"--- journalctl -b (last {whole_tail} lines) ---\n" + "\n".join(lines[-whole_tail:]))
    if not parts:
        serial = out / "serial.log"
        tail = serial.read_text(errors="replace").splitlines()[-80:] if serial.exists() else []
        parts.append("--- no journal; serial console tail ---\n" + "\n".join(tail))
    return "\n".join(parts)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    state = _state(item.config)
    if report.failed and item.get_closest_marker("vm") and state["out"] is not None and not state.get("journal_shown"):
        state["journal_shown"] = True  # once per session: every failing check would repeat it
        report.sections.append(("guest journal", guest_journal(state["out"])))


def pytest_terminal_summary(terminalreporter):
    state = _state(terminalreporter.config)
    figures = state["figures"]
    if not figures:
        return
    terminalreporter.section("VM tier figures")
    for key, value in figures.items():
        terminalreporter.write_line(f"{key}: {value}")
    if state["out"] is not None:
        terminalreporter.write_line(f"guest results, transcript and journal: {state['out']}")
