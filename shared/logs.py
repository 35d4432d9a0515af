"""Logging set-up shared by the services: plain text or one JSON object per line.

Log records carry the job they are about: the gpu agent sets :data:`current_job` in each
job's task, and asyncio tasks and ``asyncio.to_thread`` copy it to everything that job runs.
"""

from __future__ import annotations

import contextvars
import json
import logging
from datetime import datetime, timezone

#: The job a piece of work belongs to, for log records (None outside a job).
current_job: contextvars.ContextVar[int | None] = contextvars.ContextVar("cosma_job", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(job)s: %(message)s"


class JobFilter(logging.Filter):
    """Adds ``job_id`` (and a ``job`` text suffix) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        job_id = getattr(record, "job_id", None) or current_job.get()
        record.job_id = job_id
        record.job = f" [job {job_id}]" if job_id is not None else ""
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if getattr(record, "job_id", None) is not None:
            entry["job_id"] = record.job_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "info", fmt: str = "text") -> dict:
    """Configure the root logger; returns a uvicorn ``log_config`` that uses the same handler."""
    handler = logging.StreamHandler()
    handler.addFilter(JobFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's loggers propagate to the root handler instead of printing their own way.
    return {"version": 1, "disable_existing_loggers": False,
            "loggers": {name: {"handlers": [], "propagate": True, "level": level.upper()}
                        for name in ("uvicorn", "uvicorn.error", "uvicorn.access")}}
