"""Logging set-up shared by every job: lines to stderr and to the rule's log file."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def configure_logging(log_file: str | Path | None = None) -> None:
    """Log to stderr and, for workflow jobs, append to the rule's log file (a resumed job keeps its history)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="a"))
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        handlers=handlers,
        force=True,
    )
