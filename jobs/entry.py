"""The main of a job driver that reports through marked log lines (evaluation, batch): its
arguments, its queue deadline, and every failure as one `MARK error ...` line the client shows."""

from __future__ import annotations

import logging
from collections.abc import Callable

from cluster.admission import check_deadline
from cluster.errors import Img2ImgError
from cluster.services import driver_args
from cluster.storage import arrow_errors

log = logging.getLogger(__name__)


def marked_main(description: str, mark: str, what: str, run: Callable[[str], object],
                argv: list[str] | None = None) -> int:
    """Parse `--spec JSON --queue-deadline T` (`cluster.services.driver_args`), refuse a job
    that waited past its deadline, then `run(spec_json)` -> the exit code: 0, or 1 after printing
    `MARK error LINE` (an Img2ImgError's line, or `what failed: Type: first line` for anything
    else, whose traceback stays in the job's log)."""
    spec_json, deadline = driver_args(description, argv, logging.WARNING)
    try:
        check_deadline(deadline)
        with arrow_errors():  # a store down past its retries: one line naming it
            run(spec_json)
    except Img2ImgError as e:
        print(f"{mark} error {e}", flush=True)
        return 1
    except Exception as e:
        log.exception("%s failed", what)
        first = (str(e).strip().splitlines() or [""])[0][:300]
        print(f"{mark} error {what} failed: {type(e).__name__}: {first}", flush=True)
        return 1
    return 0
