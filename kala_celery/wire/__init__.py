"""wire: Kala's JSON at the API's edge, byte for byte as Kala writes and reads it.

- kala_json: the documents out (a job, a run, the stats), in Go's encoding/json manner;
- decode: a job body in, with Go's types and error messages (limits: what a client may send);
- go_scanner: a port of Go's JSON scanner, only for Go's syntax error texts.

Pure: may import nothing of kala_celery but errors; api/, web/, store/ and ops/ import it.
"""

from kala_celery.wire.decode import WireError, decode_job, decode_status
from kala_celery.wire.kala_json import (
    JOB_FIELDS,
    METADATA_FIELDS,
    ZERO_DATETIME,
    ZERO_TIME,
    app_stats_document,
    compact_json,
    dumps,
    execution,
    finish_json,
    format_time,
    go_bytes,
    is_zero_time,
    job_document,
    job_json,
    job_values,
    kala_stat,
    sorted_map,
)

__all__ = [
    "JOB_FIELDS",
    "METADATA_FIELDS",
    "ZERO_DATETIME",
    "ZERO_TIME",
    "WireError",
    "app_stats_document",
    "compact_json",
    "decode_job",
    "decode_status",
    "dumps",
    "execution",
    "finish_json",
    "format_time",
    "go_bytes",
    "is_zero_time",
    "job_document",
    "job_json",
    "job_values",
    "kala_stat",
    "sorted_map",
]
