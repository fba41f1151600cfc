"""A worker process for the claim tests: claims live streams, renews them, logs every lease.

Usage: python -m tests.claim_worker DB_URL WORKER LEASE LOG_FILE MAX

It holds at most MAX streams, and claims until it has them or none is left, then renews.

Each line of the log is JSON ``[stream_id, token, from_ms, until_ms]``: an interval in which this
worker held the stream's claim, written after the database granted it.
"""

from __future__ import annotations

import json
import sys
import time

from rtms_lifecycle import Claim, ClaimLost, Tracker


def main() -> None:
    url, worker, lease, log_path = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
    most = int(sys.argv[5])
    held: dict[str, Claim] = {}
    with Tracker(url) as tracker, open(log_path, "a", buffering=1) as log:
        while True:
            claim = None
            while len(held) < most:
                claim = tracker.claim(worker, lease=lease)
                if claim is None:
                    break
                held[claim.stream_id] = claim
                log.write(
                    json.dumps([claim.stream_id, claim.token, claim.claimed_at, claim.expires_at])
                    + "\n"
                )
            for sid, mine in list(held.items()):
                try:
                    renewed = tracker.renew(mine)
                except ClaimLost:
                    del held[sid]
                    continue
                held[sid] = renewed
                log.write(
                    json.dumps([sid, renewed.token, renewed.renewed_at, renewed.expires_at]) + "\n"
                )
            if claim is None:
                time.sleep(lease / 10)


if __name__ == "__main__":
    main()
