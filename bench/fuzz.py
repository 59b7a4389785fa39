"""fuzz: schemathesis against the real API until `--requests` requests (20,000 per job store;
smoke: 300) were made (issue 17), with the test suite's checks on every run (tests/fuzz.py):
no 5xx, every response as the OpenAPI document says, no schemathesis error, and afterwards
the server healthy and the job store consistent (no run without its job, no link to a missing
job, every stored job reads back and conforms).

SQLite: one `kala-celery serve`. PostgreSQL: the production layout, `kala-celery api`, a beat
and a worker on PostgreSQL and Redis. The server stays up across the schemathesis runs (each
with the next seed, `--examples` per operation and phase), so the job store grows as it would.
"""

from __future__ import annotations

import time

from bench.common import Report, Servers, log, secs
from tests import fuzz

FULL = 20_000
SMOKE = 300


def _one_store(kind: str, servers: Servers, target: int, examples: int) -> dict:
    home = servers.dir(f"fuzz-{kind}")
    url = None
    if kind == "sqlite":
        server = fuzz.serve_sqlite(home)
    else:
        url = servers.database("postgresql", "fuzz")
        server = fuzz.serve_topology(home, url, servers.fresh_redis())
    outcome = {"runs": 0, "generated": 0, "failures": [], "errors": 0}
    started = time.monotonic()
    try:
        seed = fuzz.SEED
        while len(server.requests()) < target:
            result = fuzz.run_schemathesis(server, home / f"report-{seed}",
                                           max_examples=examples, seed=seed)
            outcome["runs"] += 1
            outcome["generated"] += result.generated
            outcome["failures"] += [f"{f['code']} {f['title']}: {', '.join(f['operations'])}"
                                    for f in result.failures()]
            outcome["errors"] += len(result.errors())
            log(f"{kind}: seed {seed}: {result.generated} test cases, "
                f"{len(server.requests())} requests so far, {len(result.failures())} failures")
            seed += 1
        outcome["seconds"] = time.monotonic() - started
        outcome["requests"] = len(server.requests())
        outcome["5xx"] = len(fuzz.server_errors(server))
        outcome["problems"] = fuzz.consistency_problems(server)
    finally:
        server.stop()
        if url:
            servers.drop(url)
    return outcome


def run(args, servers: Servers) -> Report:
    report = Report("fuzz", smoke=args.smoke)
    target = args.requests or (SMOKE if args.smoke else FULL)
    examples = args.examples or (5 if args.smoke else 100)
    dbs = args.dbs or (["sqlite"] if args.smoke else ["sqlite", "postgresql"])
    t = report.table(f"schemathesis until {target:,} requests per store ({examples} examples "
                     "per operation and phase, stateless and stateful)",
                     ["store", "runs", "requests", "test cases", "took", "requests/s",
                      "5xx", "failures", "errors", "consistency", "clean"])
    failures = []
    for kind in dbs:
        log(f"fuzz {kind} until {target} requests")
        o = _one_store(kind, servers, target, examples)
        clean = not (o["5xx"] or o["failures"] or o["errors"] or o["problems"])
        t.add(kind, o["runs"], f"{o['requests']:,}", f"{o['generated']:,}", secs(o["seconds"]),
              f"{o['requests'] / o['seconds']:.0f}", o["5xx"], len(o["failures"]), o["errors"],
              "; ".join(o["problems"]) or "ok", "yes" if clean else "**no**")
        for failure in o["failures"]:
            report.note(f"{kind}: {failure}")
        if not clean:
            failures.append(kind)
    report.note("requests are counted in the server's access log (schemathesis' user agent); "
                "the worker runs what the fuzzer creates with PATH naming no directory and "
                "every HTTP call sent to a closed proxy port (tests/fuzz.py)")
    report.failures = failures  # type: ignore[attr-defined]
    return report
