"""The benchmark suite's plumbing (bench/suite.py): tables and the RESULTS.md block.

No timing is asserted (speed belongs in bench/): the suite runs its smallest profile on
tiny inputs (a 1-second 320x180 video made here, 30 queued jobs), and the checks are that
it prints a well-formed summary table and rewrites only the marked block of a copy of
bench/RESULTS.md, leaving the real file and every hand-written section alone.
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from conftest import make_test_video, require_ffmpeg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import e2e  # noqa: E402
import memory  # noqa: E402
import suite  # noqa: E402


def tables(text: str) -> list[list[str]]:
    """Every markdown table of ``text``, as lists of its lines."""
    found, current = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            found.append(current)
            current = []
    return found + ([current] if current else [])


def assert_well_formed(table: list[str]) -> None:
    cells = [line.count("|") for line in table]
    assert len(table) >= 3, table  # header, separator, at least one row
    assert set(table[1].replace("|", "").split()) == {"---"}, table
    assert len(set(cells)) == 1, f"rows with different cell counts: {table}"


def outside_block(text: str) -> tuple[str, str]:
    return text[:text.index(suite.BEGIN)], text[text.index(suite.END):]


def test_replace_block_adds_it_once_then_rewrites_only_its_inside():
    hand = "## QC metrics\n\nHand-written.\n\n## Core\n\nAlso hand-written.\n"
    first = suite.replace_block(hand, "| a | b |\n| --- | --- |\n| 1 | 2 |\n")
    assert first.startswith(suite.HEADING) and first.endswith(hand)
    second = suite.replace_block(first, "new figures\n")
    assert outside_block(second) == outside_block(first)
    assert second.count(suite.BEGIN) == second.count(suite.END) == 1
    assert "new figures" in second and "| 1 | 2 |" not in second
    with pytest.raises(SystemExit, match="broken generated block"):
        suite.replace_block(hand + suite.END + "\n", "x")


def test_e2e_and_memory_sections_render_well_formed_tables(monkeypatch):
    """The suite's e2e and memory sections on made-up measurements (their real runs take minutes)."""
    runs = [e2e.JobRun("end to end, streaming on", 50.0, 48.0, 12.0, 3.0, {"core": 1.0, "gpu-agent": 30.0}, 40, "done",
                       streaming=True),
            e2e.JobRun("end to end, streaming off", 60.0, 58.0, 12.0, None, {"core": 1.0, "gpu-agent": 30.0}, 40, "done")]
    result = e2e.E2eResult("synthetic", 40, [(10.0, 8.0)], [(45.0, 80.0)], runs, "stream_reconstruction", ["cmd"])
    mem = memory.MemoryResult({"core": 170_000}, [
        memory.MemoryRun("1-minute video", 60, 60, 30.0, {"core": 175_000, "backend runner": 300_000}),
        memory.MemoryRun("10-minute video", 600, 60, 31.0, {"core": 175_000, "backend runner": 310_000})], ["job"])
    monkeypatch.setattr(e2e, "run_e2e", lambda *args, **kwargs: result)
    monkeypatch.setattr(memory, "run_memory", lambda *args, **kwargs: mem)
    profile = suite.PROFILES["tiny"]
    sections = [suite.run_end_to_end(profile, Path("unused")), suite.run_memory(profile, Path("unused"))]
    text = suite.render(sections, command="cosma-qc bench", profile=profile, info=suite.machine(), load_before="1",
                        load_after="1", total_s=60.0, started=datetime.now(timezone.utc))
    for table in tables(text):
        assert_well_formed(table)
    assert "| end to end, streaming on | **50.0** |" in text and "**1.11**" in text  # 50 s vs the slowest stage, 45 s
    figures = {f.figure: f for section in sections for f in section.figures}
    assert figures["end to end, streaming on / off"].ratio == pytest.approx(50 / 60)
    assert figures["peak RSS backend runner, 10-minute video / 1-minute video"].met is True  # 310/300 <= 1.10
    assert len(memory.table(mem)) == 2 + len(memory.ROLES)


@pytest.mark.timeout(180)
def test_tiny_suite_prints_a_summary_and_rewrites_only_its_block(tmp_path, capsys):
    require_ffmpeg()
    media = tmp_path / "media"
    # The name the extraction benchmark gives its own 1080p video: a tiny one stands in for it.
    make_test_video(media / f"h264_1080p_{suite.PROFILES['tiny'].extraction_seconds}s.mp4", seconds=1.0, fps=30)
    real = suite.RESULTS.read_text()
    copy = tmp_path / "RESULTS.md"
    copy.write_text(real)

    assert suite.main(["--profile", "tiny", "--only", "extraction,core", "--results", str(copy),
                       "--media", str(media)]) == 0

    printed = capsys.readouterr().out
    summary = tables(printed)[0]
    assert_well_formed(summary)
    assert summary[0].split("|")[1].strip() == "figure"
    assert any("extraction h264 fps" in row for row in summary) and any("scheduler" in row for row in summary)

    written = copy.read_text()
    assert suite.RESULTS.read_text() == real  # the real file is untouched
    assert written.count(suite.BEGIN) == written.count(suite.END) == 1
    before, after = outside_block(written)
    if suite.BEGIN in real:
        assert (before, after) == outside_block(real)
    else:
        assert before == f"{suite.HEADING}\n\n"
        assert after == suite.END + "\n\n" + real.lstrip()
    block = written[written.index(suite.BEGIN):written.index(suite.END)]
    assert "Machine:" in block and "Load average" in block and "cosma-qc bench --profile tiny" in block
    for table in tables(block):
        assert_well_formed(table)
    assert {"### Extraction: storage agent → job folder vs plain ffmpeg", "### Core: scheduler tick and API"} <= set(
        block.splitlines())
