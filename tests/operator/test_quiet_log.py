"""Kopf's "<handler> succeeded." after every timer tick and every status export is not logged (a line
per model every 2 s at a thousand models); every other line of Kopf's per-object logger is."""
from __future__ import annotations

import logging

import pytest

from shm_operator import handlers


@pytest.fixture
def kopf_lines():
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())
    logger = logging.getLogger("kopf.objects")
    keep, level = Keep(), logger.level
    logger.addHandler(keep)
    logger.setLevel(logging.INFO)
    yield seen
    logger.removeHandler(keep)
    logger.setLevel(level)


def test_routine_successes_are_dropped_and_the_rest_kept(kopf_lines):
    logger = logging.getLogger("kopf.objects")
    for message in ("Timer 'tick' succeeded.", "Handler 'export_status' succeeded.",
                    "Handler 'reconcile' succeeded.", "Timer 'tick' failed temporarily: registry unreachable",
                    "Creation is processed: 1 succeeded; 0 failed."):
        logger.info(message)
    logger.error("Timer 'tick' failed with an exception and will try again in 5 seconds: boom")
    assert kopf_lines == ["Handler 'reconcile' succeeded.", "Timer 'tick' failed temporarily: registry unreachable",
                          "Creation is processed: 1 succeeded; 0 failed.",
                          "Timer 'tick' failed with an exception and will try again in 5 seconds: boom"]
    assert handlers.ROUTINE_SUCCESSES == {"Timer 'tick' succeeded.", "Handler 'export_status' succeeded."}
