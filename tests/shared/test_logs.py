"""Log set-up: JSON lines carrying the job id, inherited by tasks and threads of the job."""

from __future__ import annotations

import asyncio
import io
import json
import logging

from shared.logs import configure_logging, current_job


def capture(fmt: str) -> io.StringIO:
    configure_logging("info", fmt)
    stream = io.StringIO()
    logging.getLogger().handlers[0].setStream(stream)
    return stream


def test_json_lines_carry_the_job_of_the_task_and_its_threads():
    stream = capture("json")
    log = logging.getLogger("cosma.test")

    async def job(job_id: int):
        current_job.set(job_id)
        log.info("in the task")
        await asyncio.to_thread(log.warning, "in a thread of job %s", job_id)

    async def main():
        log.info("outside any job")
        await asyncio.gather(job(7), job(8))

    try:
        asyncio.run(main())
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        configure_logging("warning", "text")
    assert lines[0]["message"] == "outside any job" and "job_id" not in lines[0]
    by_message = {(entry["message"], entry.get("job_id")) for entry in lines[1:]}
    assert by_message == {("in the task", 7), ("in the task", 8),
                          ("in a thread of job 7", 7), ("in a thread of job 8", 8)}
    assert all(entry["level"] in ("info", "warning") and entry["time"].endswith("+00:00") for entry in lines)


def test_text_lines_name_the_job():
    stream = capture("text")
    try:
        token = current_job.set(12)
        logging.getLogger("cosma.test").warning("disk almost full")
        current_job.reset(token)
    finally:
        configure_logging("warning", "text")
    assert "[job 12]: disk almost full" in stream.getvalue()
