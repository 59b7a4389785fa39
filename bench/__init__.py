"""kala-celery's benchmark suite: `python -m bench <suite> [--smoke]`.

Suites (one module each): beat_scale, lateness, api, throughput, ceiling, chaos, partitions,
dashboard, metrics, importer, vs_kala, fuzz, wsgi_servers, scale.
Each starts its own PostgreSQL and Redis (tests/servers.py) and processes on 127.0.0.1, bounds
every loop in count and time, stops everything it started, prints a table and RESULTS.md-ready
markdown.
"""

SUITES = ("beat-scale", "lateness", "api", "throughput", "ceiling", "chaos", "partitions",
          "dashboard", "metrics", "import", "vs-kala", "fuzz", "wsgi-servers", "scale")
