"""One HTTP client connection (keep-alive) in its own process: `python -m bench.http_load
'<json>'`. Sends requests back to back from `start_at` (epoch seconds) until `seconds` have
passed or `max_requests` were sent; prints one JSON line: count, errors, latencies (s).

Spec: port, method, path, body (a string; "{i}" is replaced by a per-request number),
start_at, seconds, max_requests, expect (status), tag (makes the numbers unique per client).
"""

from __future__ import annotations

import http.client
import json
import sys
import time
from typing import Any


def run(spec: dict[str, Any]) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", spec["port"], timeout=120)
    headers = {"Content-Type": "application/json", "Connection": "keep-alive"}
    body_template = spec.get("body")
    latencies: list[float] = []
    errors: list[str] = []
    sizes = 0
    delay = spec["start_at"] - time.time()
    if delay > 0:
        time.sleep(delay)
    end = time.monotonic() + spec["seconds"]
    i = 0
    while i < spec["max_requests"] and time.monotonic() < end:
        i += 1
        body = body_template.replace("{i}", f"{spec['tag']}-{i}") if body_template else None
        t0 = time.perf_counter()
        try:
            conn.request(spec["method"], spec["path"], body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            errors.append(repr(exc))
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", spec["port"], timeout=120)
            continue
        took = time.perf_counter() - t0
        if response.status != spec["expect"]:
            errors.append(f"{response.status}: {data[:200]!r}")
            continue
        latencies.append(took)
        sizes += len(data)
    conn.close()
    return {"count": len(latencies), "errors": errors[:20], "error_count": len(errors),
            "latencies": latencies, "bytes": sizes}


if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.argv[1]))))
