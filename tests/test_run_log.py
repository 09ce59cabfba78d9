"""train.log: segfuse.* messages with timestamps in the run folder; one run log at a time."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from segfuse.training.logging import attach_log_file, detach_log_file, log_file

STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"


def test_messages_reach_the_file_with_timestamps_only_while_attached(tmp_path: Path) -> None:
    package = logging.getLogger("segfuse")
    level = package.level
    with log_file(tmp_path / "train.log"):
        logging.getLogger("segfuse.somewhere").info("hello %d", 1)
        logging.getLogger("segfuse.somewhere").debug("not at debug")
        logging.getLogger("other.library").warning("not ours")
    logging.getLogger("segfuse.somewhere").info("after")
    lines = (tmp_path / "train.log").read_text().splitlines()
    assert len(lines) == 1 and re.fullmatch(STAMP + r" INFO segfuse\.somewhere: hello 1", lines[0])
    assert package.level == level and not package.handlers


def test_a_stale_run_log_is_closed_by_the_next_and_resume_appends(tmp_path: Path) -> None:
    first = attach_log_file(tmp_path / "a.log")  # a run that raised and never detached
    second = attach_log_file(tmp_path / "b.log")
    logging.getLogger("segfuse.train").warning("only in b")
    detach_log_file(second)
    assert "only in b" not in (tmp_path / "a.log").read_text()
    assert first.stream is None  # closed
    with log_file(tmp_path / "b.log"):
        logging.getLogger("segfuse.train").info("resumed")
    text = (tmp_path / "b.log").read_text()
    assert "WARNING segfuse.train: only in b" in text and text.index("only in b") < text.index("resumed")
    assert not logging.getLogger("segfuse").handlers
