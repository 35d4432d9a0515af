"""The dashboard in a real browser (Debian's chromium via Playwright) against a served core
with FAKE agents: live updates, actions with the token, escaping, the job page's QC."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from conftest import TOKEN
from dashboard_browser import HOSTILE, LAPTOP, PHONE, browser, cluster, shots  # noqa: F401
from shared.jobs import JobState
from shared.qc import FrameFilter, FrameSummary, QcReport, QcThresholds, ReconSummary
from shared.stitches import StitchJobResult, StitchReport, StitchState

from services.core.api.deps import TOKEN_COOKIE
from services.gpu_agent.qc import plots
from services.gpu_agent.qc.frames import FrameRow, flag_summary, judge
from services.gpu_agent.qc.verdict import decide

pytestmark = pytest.mark.timeout(180)

IDENTITY = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]


def expect(locator):
    from playwright.sync_api import expect as pw_expect

    return pw_expect(locator)


def no_horizontal_overflow(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")


def test_overview_and_a_job_that_updates_live_in_the_jobs_table(browser, cluster, shots):
    page = browser.new_page()
    page.goto(cluster.url + "/")
    gpu_card = page.locator("article.node[data-node='gpu-1']")
    expect(gpu_card.locator(".state")).to_have_text("online")  # refreshed live once the scheduler polled it
    expect(gpu_card).to_contain_text("FAKE GPU")
    expect(gpu_card).to_contain_text("VRAM 4576 MiB used / 20000 MiB free of 24576 MiB")
    storage_card = page.locator("article.node[data-node='st']")
    expect(storage_card).to_contain_text("/mnt/portablessd")
    expect(storage_card).to_contain_text("disk 750000 MiB used / 250000 MiB free of 1000000 MiB")
    expect(storage_card).to_contain_text("extractions 1 of 2 running")
    expect(page.locator("[data-count='done']")).to_have_text("0")
    page.screenshot(path=shots / "overview-laptop.png", full_page=True)

    page.click("nav >> text=Jobs")
    expect(page.locator("#no-jobs")).to_be_visible()
    page.evaluate("window.notReloaded = true")
    job_id = cluster.submit()
    row = page.locator(f"#job-{job_id}")
    expect(row).to_be_visible()  # from the SSE event, without a reload
    cluster.wait_placed(job_id)

    cluster.gpu.report(job_id, JobState.extracting, "extracting", 0.4, message="frames 8 of 20")
    expect(row.locator(".state")).to_have_text("extracting")
    expect(row.locator(".pct")).to_have_text("40%")
    cluster.gpu.report(job_id, JobState.extracting, "extracting", 0.75, message="frames 15 of 20")
    expect(row.locator(".pct")).to_have_text("75%")  # a progress change alone: no event, the poll sees it
    expect(row.locator(".message")).to_have_text("frames 15 of 20")
    cluster.gpu.report(job_id, JobState.done, "done", 1.0)
    expect(row.locator(".state")).to_have_text("done")
    assert page.evaluate("window.notReloaded") is True
    page.screenshot(path=shots / "jobs-laptop.png", full_page=True)

    page.set_viewport_size(PHONE)
    assert no_horizontal_overflow(page)
    page.screenshot(path=shots / "jobs-phone.png", full_page=True)
    page.goto(cluster.url + "/")
    expect(page.locator("[data-count='done']")).to_have_text("1")
    assert no_horizontal_overflow(page)
    page.screenshot(path=shots / "overview-phone.png", full_page=True)
    page.close()


def test_cancel_retry_delete_from_the_job_page_asking_for_the_token_once(browser, cluster, shots):
    browser.clear_cookies()
    job_id = cluster.submit()
    cluster.wait_placed(job_id)
    page = browser.new_page()
    page.goto(f"{cluster.url}/jobs/{job_id}")
    expect(page.locator("#job-state")).to_have_text("assigned")

    page.click("button[data-action='cancel']")
    expect(page.locator("#token-form")).to_be_visible()
    page.fill("#token-input", "not-the-token")
    page.click("#token-save")
    expect(page.locator("#token-form")).to_be_visible()  # refused (401): asked again
    page.fill("#token-input", TOKEN)
    page.click("#token-save")
    expect(page.locator("#job-state")).to_have_text("cancelled")
    assert TOKEN not in page.evaluate("document.cookie")  # HttpOnly: a script cannot read it
    assert cluster.job(job_id)["state"] == "cancelled" and job_id in cluster.gpu.deletes
    timeline = page.locator(".timeline li")
    expect(timeline.last).to_contain_text("cancelled")

    page.click("button[data-action='retry']")  # the cookie is kept: no question this time
    expect(page.locator("#job-state")).not_to_have_text("cancelled")
    assert cluster.job(job_id)["attempt"] == 2
    page.once("dialog", lambda d: d.accept())  # "Delete job N and its files on the gpu node?"
    page.click("button[data-action='delete']")
    page.wait_for_url(f"{cluster.url}/jobs")
    expect(page.locator(f"#job-{job_id}")).to_have_count(0)
    assert cluster.api.get(f"/api/v1/jobs/{job_id}").status_code == 404
    page.close()


def test_a_hostile_file_name_is_text_and_submits_from_the_videos_page(browser, cluster, shots):
    browser.add_cookies([{"name": TOKEN_COOKIE, "value": TOKEN, "url": cluster.url}])
    page = browser.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(cluster.url + "/videos")
    hostile = page.locator("td.what", has_text=HOSTILE)
    expect(hostile).to_have_text(HOSTILE)
    expect(page.locator("td.what", has_text="100GOPRO/GX0042")).to_be_visible()  # chapters as one recording
    assert page.locator("img:not(.thumb)").count() == 0
    page.set_viewport_size(PHONE)
    assert no_horizontal_overflow(page)
    page.screenshot(path=shots / "videos-phone.png", full_page=True)
    page.set_viewport_size(LAPTOP)

    page.locator("tr", has=hostile).locator("input.pick").check()
    page.check("input.pick-file[data-path='100GOPRO/GX020042.MP4']")  # one chapter on its own
    page.fill("input[name=fps]", "1")
    page.fill("input[name=max_frames]", "5")
    expect(page.locator("#selected-count")).to_have_text("2")
    page.click("#submit-jobs")  # the token is in the cookie already: no question
    links = page.locator("#submitted a")
    expect(links).to_have_count(2)
    ids = {text.split(":", 1)[1].rsplit(" (", 1)[0].strip(): int(text.split(":")[0].split()[1])
           for text in links.all_inner_texts()}
    assert sorted(ids) == sorted([HOSTILE, "100GOPRO/GX020042.MP4"])
    job_id, chapter_job = ids[HOSTILE], ids["100GOPRO/GX020042.MP4"]
    job = cluster.job(job_id)
    assert job["videos"] == [{"storage": "st", "path": HOSTILE}] and job["fps"] == 1 and job["max_frames"] == 5
    assert cluster.job(chapter_job)["videos"] == [{"storage": "st", "path": "100GOPRO/GX020042.MP4"}]

    page.click("nav >> text=Jobs")
    expect(page.locator(f"#job-{job_id} td.what")).to_have_text(HOSTILE)
    page.goto(f"{cluster.url}/jobs/{job_id}")
    expect(page.locator("ol.videos li")).to_have_text(f"st: {HOSTILE}")
    assert page.locator("img").count() == 0 and dialogs == []
    page.close()
    for done_with in (job_id, chapter_job):
        assert cluster.api.post(f"/api/v1/jobs/{done_with}/cancel",
                                headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_the_job_page_shows_the_qc_verdict_its_reasons_and_plots(browser, cluster, shots):
    job_id = cluster.submit()
    report, svg = qc_files(job_id)
    cluster.wait_placed(job_id)
    cluster.gpu.files.update({"qc.json": report.model_dump_json().encode(), "sharpness.svg": svg.encode(),
                              "reconstruction.ply": b"ply\n", "cameras.json": b"{}", "report.html": b"<p>r</p>",
                              "backend_log.txt": "".join(f"line {i} <b>\n" for i in range(1, 101)).encode()})
    cluster.gpu.report(job_id, JobState.done, "done", 1.0, files=sorted(cluster.gpu.files))
    cluster.wait_job(job_id, lambda j: j["state"] == "done", "done")

    page = browser.new_page()
    page.goto(f"{cluster.url}/jobs/{job_id}")
    expect(page.locator("#verdict")).to_have_text("warn")
    reason = report.verdict.reasons[0]
    expect(page.locator("#reasons")).to_contain_text(reason.message)
    page.wait_for_function("() => { const i = document.querySelector('.plots img');"
                           " return i && i.complete && i.naturalWidth > 0; }")
    assert page.locator(".plots img").get_attribute("src") == f"/api/v1/jobs/{job_id}/files/sharpness.svg"
    for text, href in (("point cloud (PLY)", f"/api/v1/jobs/{job_id}/files/reconstruction.ply"),
                       ("model with cameras (GLB)", f"/api/v1/jobs/{job_id}/reconstruction.glb"),
                       ("cameras (JSON)", f"/api/v1/jobs/{job_id}/files/cameras.json"),
                       ("QC report (HTML)", f"/api/v1/jobs/{job_id}/files/report.html")):
        assert page.get_by_role("link", name=text, exact=True).get_attribute("href") == href
    expect(page.locator("#viewer-link")).to_have_attribute("href", f"http://127.0.0.1:{8100 + job_id}/")
    # The backend log's tail: its last 60 lines, as text (the <b> is not markup).
    expect(page.locator("#log-tail")).to_contain_text("line 100 <b>")
    tail = page.locator("#log-tail").inner_text().splitlines()
    assert len(tail) == 60 and tail[0] == "line 41 <b>"
    page.screenshot(path=shots / "job-laptop.png", full_page=True)
    page.set_viewport_size(PHONE)
    assert no_horizontal_overflow(page)
    page.screenshot(path=shots / "job-phone.png", full_page=True)

    page.set_viewport_size(LAPTOP)
    page.click("nav >> text=Jobs")
    expect(page.locator(f"#job-{job_id} td.qc a")).to_have_text("warn")  # read from its qc.json
    page.close()


def qc_files(job_id: int) -> tuple[QcReport, str]:
    """A real qc.json and sharpness plot, judged by the gpu agent's own QC code: 40 frames,
    8 of them blurry (20 %: a warning)."""
    thresholds, frame_filter = QcThresholds(), FrameFilter()
    rows = [FrameRow(frame=i, name=f"frame_{i:06d}.jpg", video=0, t_s=i / 2, width=640, height=360,
                     sharpness=0.01 if i % 5 == 0 else 0.2, brightness=110.0, contrast=40.0, dark_share=0.0,
                     bright_share=0.0, diff_prev=None if i == 1 else 0.9, black=False, duplicate=False)
            for i in range(1, 41)]
    judge(rows, thresholds, frame_filter)
    frames = FrameSummary(count=len(rows), width=640, height=360, sample_fps=2.0,
                          **{flag: flag_summary(rows, flag) for flag in ("blurry", "black", "duplicate", "exposure")},
                          kept=len(rows), dropped=0)
    recon = ReconSummary(backend="colmap", frames_used=40, frames_registered=40, registered_share=1.0, points=5000,
                         trajectory_length=10.0, median_step=0.25)
    verdict = decide(frames, recon, thresholds)
    assert verdict.status == "warn", verdict
    report = QcReport(job_id=job_id, created_at=datetime.now(timezone.utc), thresholds=thresholds,
                      filter=frame_filter, frames=frames, reconstruction=recon, verdict=verdict,
                      plots=["sharpness.svg"], report="report.html")
    return report, plots.sharpness_chart(rows, thresholds)


def test_stitch_finished_jobs_and_see_the_residuals(browser, cluster, shots):
    first, second = cluster.finished_job(), cluster.finished_job()
    page = browser.new_page()
    page.goto(cluster.url + "/stitches")
    page.check(f"input.stitch-pick[value='{second}']")  # ticked first: the reference
    page.check(f"input.stitch-pick[value='{first}']")
    expect(page.locator("#stitch-order")).to_have_text(f"{second}, {first}")
    page.fill("input[name=frames_per_job]", "8")
    page.click("#stitch-submit")
    card = page.locator("article.stitch").first
    expect(card).to_contain_text("matching frames")
    stitch_id = int(card.get_attribute("data-stitch"))
    spec = cluster.gpu.stitch_specs[stitch_id]
    assert [j.job_id for j in spec.jobs] == [second, first] and spec.frames_per_job == 8

    results = [StitchJobResult(agent_url=cluster.gpu.url, job_id=job_id, matrix=IDENTITY, scale=scale,
                               cross_matches=matches, shared_frames=8, rmse=rmse, rmse_relative=rel)
               for job_id, scale, matches, rmse, rel in ((second, 1.0, 0, 0.0, None), (first, 0.5, 412, 0.0123, 0.004))]
    report = StitchReport(stitch_id=stitch_id, created_at=datetime.now(timezone.utc),
                          ply=f"stitch_{stitch_id}.ply", jobs=results)
    cluster.gpu.stitches[stitch_id] = StitchState(stitch_id=stitch_id, state="done", message="stitched",
                                                  report=report)
    expect(card.locator(".state")).to_have_text("done")  # followed live, then shown with its residuals
    row = card.locator("table.residuals tr", has=page.locator(f"a[href='/jobs/{first}']"))
    expect(row).to_contain_text("412")
    expect(row).to_contain_text("0.0123")
    expect(row).to_contain_text("0.40 %")
    page.screenshot(path=shots / "stitches-laptop.png", full_page=True)
    page.close()
