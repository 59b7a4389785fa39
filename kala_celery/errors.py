"""Errors the domain raises; the API turns each into its HTTP status."""

from __future__ import annotations

INIT_ERROR = "Error occurred when initializing the job"


class JobError(Exception):
    """A request we refuse; `status` is the HTTP status, str(self) the reason."""

    status = 400


class InvalidJob(JobError):
    """A create/replace body that cannot become a job (400, Kala's init error text)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"{INIT_ERROR}: {reason}")
        self.reason = reason


class NotFound(JobError):
    status = 404


class Conflict(JobError):
    status = 409


class Forbidden(JobError):
    status = 403
