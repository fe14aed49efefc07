"""A worker stuck in one call is ended, so its process can be replaced.

gunicorn's sync workers had this (`timeout`); granian has none. Every store and FHIR call on the
request path has its own timeout far below this one: reaching it means a bug or a hang nothing
else bounded. The process exits at once (no clean-up: it is stuck) and granian starts another
(respawn_failed_workers).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger("cds_service.ops.server")

EXIT_STUCK = 70  # EX_SOFTWARE


class StuckWorkerWatchdog:
    def __init__(self, busy_since: Callable[[], float | None], timeout_seconds: float, *,
                 interval_seconds: float = 1.0, exit_process: Callable[[int], None] = os._exit):
        self.busy_since = busy_since
        self.timeout = timeout_seconds
        self.interval = interval_seconds
        self.exit_process = exit_process
        self._pid = 0

    def start(self) -> None:
        """Start watching in this process (call it in each worker, after the fork)."""
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        threading.Thread(target=self._watch, name="stuck-worker-watchdog", daemon=True).start()

    def check(self) -> bool:
        """True (after logging and exiting) if the call in progress has run too long."""
        since = self.busy_since()
        if since is None or time.monotonic() - since < self.timeout:
            return False
        log.critical("a call has run for more than %.0f s: ending worker %d so that it is "
                     "replaced", self.timeout, os.getpid())
        for handler in logging.getLogger().handlers:
            handler.flush()
        self.exit_process(EXIT_STUCK)
        return True

    def _watch(self) -> None:
        while not self.check():
            time.sleep(self.interval)
