"""Run in child processes by the concurrency test: an app of its own posting feedback from
several threads, as a gunicorn worker would."""

from __future__ import annotations

import random
import threading
from collections import Counter
from pathlib import Path


def post_feedback(database_url: str, instance_dir: str, service_id: str, entries: list[dict],
                  threads: int, seed: int) -> dict:
    """Post every entry, in a shuffled order and in batches of 1 to 4, from `threads` threads
    of one app; returns the status codes and the stored/duplicates totals."""
    from cds_service.bootstrap import create_app, service_of
    from cds_service.ops.config import Settings

    # Eight writers at once wait on each other's locks: allow them more than production's 50 ms.
    app = create_app(Settings(database_url=database_url, instance_dir=Path(instance_dir),
                              feedback_store_timeout_seconds=5.0))
    rng = random.Random(seed)
    order = entries[:]
    rng.shuffle(order)
    batches, start = [], 0
    while start < len(order):
        size = rng.randint(1, 4)
        batches.append(order[start:start + size])
        start += size
    totals: Counter = Counter()
    lock = threading.Lock()
    barrier = threading.Barrier(threads)

    def work(mine: list[list[dict]]) -> None:
        client = app.test_client()
        barrier.wait()  # start together: the point is to collide
        for batch in mine:
            response = client.post(f"/cds-services/{service_id}/feedback",
                                   json={"feedback": batch})
            body = response.get_json() or {}
            with lock:
                totals[f"status_{response.status_code}"] += 1
                totals["stored"] += body.get("stored", 0)
                totals["duplicates"] += body.get("duplicates", 0)

    workers = [threading.Thread(target=work, args=(batches[i::threads],))
               for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    service_of(app).feedback.recorder.close()
    service_of(app).feedback.store.dispose()
    return dict(totals)
