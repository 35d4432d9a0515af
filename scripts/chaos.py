"""Seeded chaos run: N small jobs on a real loopback cluster while M random faults hit it.

The cluster: a core (SQLite, short lease and tick), a storage agent and two gpu agents
(colmap on the CPU), each a real ``cosma-qc`` process. Each gpu agent is registered with the
core through a TCP proxy (tests/reliability/tcp_proxy.py), so its link can be cut.

Faults, drawn from ``random.Random(seed)``, one at a time with a random gap between them:

* ``kill_gpu``: SIGKILL a gpu agent, restart it on the same port and work root;
* ``kill_storage``: SIGKILL the storage agent, restart it;
* ``kill_core``: SIGKILL the core, restart it on the same database;
* ``cut_link``: cut the core's link to a gpu agent for longer than the lease, then restore it.

Afterwards the run waits for quiescence (every job final, no agent running anything, no link
cut) and checks: all N jobs present; each ``done`` or ``failed`` with a reason; exactly one
``done`` event per done job (none for a failed one), at the job's final node and attempt, and
no event after a final one; on the agents, every attempt other than the accepted one is not
running, and one that still finished while cut off was never taken by the core (the event
check); the outputs of each done job are complete (the PLY fetched through the core parses,
``cameras.json`` parses, the frames are numbered 1..n with n the frames expected).

    .venv/bin/python scripts/chaos.py --seed 7 --jobs 20 --faults 10

Prints N, M, the faults with their times, the outcome counts; exit status 1 on any violation.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "reliability")]
sys.path.append(str(REPO / "tests"))  # after REPO: tests/shared is not shared/

from service_procs import Service
from tcp_proxy import TcpProxy

from shared.auth import auth_headers, new_token

FINAL = ("done", "failed", "cancelled")
FAULT_KINDS = ("kill_gpu", "kill_storage", "kill_core", "cut_link")


def leftovers(base: Path) -> list[int]:
    """Processes this run's services started and left behind: backends working in a gpu agent's
    folder, ffmpeg reading its videos (found in /proc by their command lines)."""
    needles = [str(base / "gpu-"), str(base / "videos")]
    ancestors, pid = set(), os.getpid()
    while pid > 1:  # never this process or whatever started it (their arguments name the folder too)
        ancestors.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in ancestors:
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if "services.cli" not in cmdline and any(n in cmdline for n in needles):
                    found.append(int(entry))
    return found


def rss_mib(pid: int) -> float:
    """Resident memory of a process (VmRSS in /proc), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no VmRSS for pid {pid}")


class Node(Service):
    """A service process (tests/reliability/service_procs.py) under its node name: storage-1, gpu-2, core."""

    def __init__(self, node: str, role: str, args: list[str], base: Path, token: str):
        super().__init__(role, [*args, "--node-id", node, "--log-level", "info"], base, env={"COSMA_TOKEN": token})
        self.node = node


@dataclass
class ClusterSettings:
    gpu_agents: int = 2
    lease_s: float = 6.0
    tick_interval_s: float = 0.5
    poll_timeout_s: float = 2.0
    max_attempts: int = 5
    backend_threads: int = 1
    colmap_max_features: int = 1024
    proxied: bool = True  # each gpu agent behind a TCP proxy whose link can be cut
    database_url: str | None = None  # none: SQLite in the run's folder


class Cluster:
    """A core, a storage agent and gpu agents as real processes on loopback, stopped together."""

    def __init__(self, base: Path, videos: Path, settings: ClusterSettings, token: str | None = None):
        self.base, self.videos, self.settings = base, videos, settings
        self.token = token or new_token()
        self.auth = auth_headers(self.token)
        s = settings
        core_args = ["--data-dir", str(base / "core"), "--tick-interval-s", str(s.tick_interval_s),
                     "--poll-timeout-s", str(s.poll_timeout_s), "--request-timeout-s", str(max(5.0, s.poll_timeout_s)),
                     "--lease-s", str(s.lease_s), "--max-attempts", str(s.max_attempts)]
        if s.database_url:
            core_args += ["--database-url", s.database_url]
        self.core = Node("core", "core", core_args, base, self.token)
        self.storage = Node("storage-1", "storage-agent", ["--root", str(videos)], base, self.token)
        self.gpus = [Node(f"gpu-{i + 1}", "gpu-agent",
                          ["--workdir", str(base / f"gpu-{i + 1}"), "--backend-threads", str(s.backend_threads),
                           "--colmap-max-features", str(s.colmap_max_features), "--disk-reserve-mib", "0"],
                          base, self.token)
                     for i in range(s.gpu_agents)]
        self.proxies: dict[str, TcpProxy] = {}
        self.started: list[Node] = []

    @property
    def services(self) -> list[Node]:
        return [self.storage, *self.gpus, self.core]

    def service(self, name: str) -> Node:
        return next(s for s in self.services if s.node == name)

    def workdir(self, gpu: Node) -> Path:
        return self.base / gpu.node

    def start(self) -> None:
        for service in self.services:
            self.started.append(service)
            service.start()
        self.register()

    def register(self) -> None:
        self.post("/api/v1/nodes", {"name": self.storage.node, "role": "storage", "url": self.storage.url})
        for gpu in self.gpus:
            url = gpu.url
            if self.settings.proxied:
                proxy = self.proxies[gpu.node] = TcpProxy(gpu.port).start()
                url = proxy.url
            self.post("/api/v1/nodes", {"name": gpu.node, "role": "gpu", "url": url})

    def post(self, path: str, body: dict) -> dict:
        resp = httpx.post(f"{self.core.url}{path}", json=body, headers=self.auth, timeout=60)
        if resp.status_code >= 400:
            raise RuntimeError(f"POST {path} answered HTTP {resp.status_code}: {resp.text[:500]}")
        return resp.json()

    def get(self, path: str, **params) -> dict:
        resp = httpx.get(f"{self.core.url}{path}", params=params, headers=self.auth, timeout=30)
        resp.raise_for_status()
        return resp.json()

    def submit(self, video: str, *, fps: float, width: int) -> int:
        return self.post("/api/v1/jobs", {"videos": [{"storage": self.storage.node, "path": video}],
                                          "fps": fps, "width": width, "backend": "colmap"})["id"]

    def agent_jobs(self, gpu: Node) -> list[dict]:
        resp = httpx.get(f"{gpu.url}/status", headers=self.auth, timeout=10)
        resp.raise_for_status()
        return resp.json()["jobs"]

    def stop(self) -> None:
        for proxy in self.proxies.values():
            with contextlib.suppress(Exception):
                proxy.stop()
        for service in reversed(self.started):
            service.stop()
        # A backend a SIGKILLed agent left running is reaped by the restarted agent; one still
        # running now (an agent killed at the very end) was started by this run.
        deadline = time.monotonic() + 10
        while leftovers(self.base) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in leftovers(self.base):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def render_videos(folder: Path, count: int, *, seconds: float, fps: float, width: int, height: int) -> tuple[list[str], int]:
    """``count`` small synthetic survey videos (different seabeds); their names and frames each."""
    from services.demo.synth import render_survey

    names, frames = [], 0
    for i in range(count):
        sample = render_survey(folder, name=f"GX01{i + 1:04d}.MP4", seconds=seconds, fps=fps,
                               width=width, height=height, seed=i)
        names.append(sample.video.name)
        frames = sample.frames
    return names, frames


#: The jobs of every script here: small survey videos, a few seconds of colmap each on one core.
JOB_FPS, JOB_WIDTH = 5.0, 320


def run_folder(parser: argparse.ArgumentParser, prefix: str) -> tuple[argparse.Namespace, Path]:
    """Add ``--dir`` to ``parser``, parse; the arguments and the run's folder (made if not given)."""
    parser.add_argument("--dir", type=Path, default=None, help="folder for the run (default: a new temporary one)")
    args = parser.parse_args()
    return args, (args.dir or Path(tempfile.mkdtemp(prefix=prefix))).resolve()


@dataclass
class Fault:
    kind: str
    target: str
    gap_s: float  # wait after the previous fault recovered (or after the start)
    hold_s: float  # how long the service stays down or the link stays cut
    mode: str = ""  # cut_link: "blackhole" or "reset" (see tcp_proxy.TcpProxy.cut)
    at_s: float | None = None  # seconds after the run's start, when injected
    note: str = ""

    def line(self) -> str:
        if self.kind == "cut_link":
            what = f"cut ({self.mode}) the core's link to {self.target}, restored after"
        else:
            what = f"SIGKILL {self.target}, restarted after"
        return f"t={self.at_s:6.1f} s  {what} {self.hold_s:.1f} s{self.note}"


def draw_faults(rng: random.Random, count: int, gpus: list[str], lease_s: float,
                gap_s: tuple[float, float]) -> list[Fault]:
    """The fault schedule: kinds, targets, gaps and hold times, all from ``rng``."""
    faults = []
    for _ in range(count):
        kind, gap = rng.choice(FAULT_KINDS), rng.uniform(*gap_s)
        if kind == "kill_gpu":
            faults.append(Fault(kind, rng.choice(gpus), gap, rng.uniform(0.5, 3.0)))
        elif kind == "kill_storage":
            faults.append(Fault(kind, "storage-1", gap, rng.uniform(0.5, 3.0)))
        elif kind == "kill_core":
            faults.append(Fault(kind, "core", gap, rng.uniform(0.5, 3.0)))
        else:  # longer than the lease, so the job is taken back
            faults.append(Fault(kind, rng.choice(gpus), gap, lease_s + rng.uniform(2.0, 6.0),
                                mode=rng.choice(("blackhole", "reset"))))
    return faults


def inject(cluster: Cluster, fault: Fault) -> None:
    """Inject one fault and undo it after its hold time (restart, or restore the link)."""
    target = cluster.service(fault.target)
    if target in cluster.gpus:
        with contextlib.suppress(httpx.HTTPError):
            doing = ", ".join(f"job {j['job_id']} {j['state']}" for j in cluster.agent_jobs(target)
                              if j["state"] not in FINAL)
            fault.note = f" ({target.node} was running {doing or 'nothing'})"
    if fault.kind == "cut_link":
        proxy = cluster.proxies[fault.target]
        proxy.cut(mode=fault.mode)
        try:
            time.sleep(fault.hold_s)
        finally:
            proxy.restore()
        return
    target.kill()
    time.sleep(fault.hold_s)
    target.start()


@dataclass
class Outcome:
    jobs: list[dict] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def wait_quiescent(cluster: Cluster, job_ids: list[int], timeout_s: float) -> str | None:
    """Wait until every job is final and no gpu agent runs anything; None, or what is still open."""
    deadline = time.monotonic() + timeout_s
    open_ = "nothing polled yet"
    while time.monotonic() < deadline:
        try:
            jobs = {j["id"]: j for j in cluster.get("/api/v1/jobs", limit=1000)["jobs"]}
            unfinished = [i for i, j in jobs.items() if j["state"] not in FINAL]
            running = [(g.node, j["job_id"], j["attempt"]) for g in cluster.gpus for j in cluster.agent_jobs(g)
                       if j["state"] not in FINAL]
        except httpx.HTTPError as exc:
            open_ = f"a service did not answer: {exc}"
        else:
            if not unfinished and not running:
                return None
            open_ = f"jobs not final: {unfinished}; attempts running on agents: {running}"
        time.sleep(1.0)
    return open_


def check(cluster: Cluster, job_ids: list[int], frames_per_job: int, outcome: Outcome) -> None:
    """The invariants; every breach is appended to ``outcome.violations``."""
    from shared.plyio import read_ply

    bad = outcome.violations.append
    listed = {j["id"]: j for j in cluster.get("/api/v1/jobs", limit=1000)["jobs"]}
    missing = sorted(set(job_ids) - set(listed))
    if missing:
        bad(f"lost jobs: {missing} are not in the core's list")
    extra = sorted(set(listed) - set(job_ids))
    if extra:  # a submission cut mid-request may have created its job before it was sent again
        outcome.notes.append(f"jobs created by a submission whose answer was lost: {extra}")
    outcome.jobs = [listed[i] for i in sorted(listed)]
    retried: dict[int, int] = {}  # job → attempts it took, when more than one
    for job in outcome.jobs:
        outcome.counts[job["state"]] = outcome.counts.get(job["state"], 0) + 1
        jid = job["id"]
        if job["state"] not in ("done", "failed"):
            bad(f"job {jid} ended {job['state']}, not done or failed")
        if job["state"] == "failed" and not (job.get("error") or "").strip():
            bad(f"job {jid} failed without a reason")
        events = cluster.get(f"/api/v1/jobs/{jid}/events")["events"]
        finals = [e for e in events if e["state"] in FINAL]
        dones = [e for e in events if e["state"] == "done"]
        if len(finals) != 1 or events[-1]["state"] != job["state"]:
            bad(f"job {jid}: {len(finals)} final events, last event {events[-1]['state']} "
                f"(expected exactly one final event, the last, {job['state']})")
        if job["state"] == "done":
            if len(dones) != 1:
                bad(f"job {jid} completed {len(dones)} times in its history")
            elif (dones[0]["node"], dones[0]["attempt"]) != (job["node"], job["attempt"]):
                bad(f"job {jid}: done recorded for {dones[0]['node']} attempt {dones[0]['attempt']}, "
                    f"but the job is at {job['node']} attempt {job['attempt']}")
        elif dones:
            bad(f"job {jid} is {job['state']} but its history has a done event")
        if job["attempt"] > 1:
            retried[jid] = job["attempt"]
    outcome.notes.append(f"jobs that took more than one attempt: {len(retried)}"
                         + (f" ({', '.join(f'job {j}: {n}' for j, n in retried.items())})" if retried else ""))
    check_agents(cluster, outcome)
    for job in outcome.jobs:
        if job["state"] == "done":
            check_outputs(cluster, job, frames_per_job, read_ply, bad)


def check_agents(cluster: Cluster, outcome: Outcome) -> None:
    """Each attempt on each agent (its job folders' state.json) against what the core accepted."""
    final = {j["id"]: j for j in outcome.jobs}
    stale_done, stale_dropped = [], []
    for gpu in cluster.gpus:
        for state_file in sorted(cluster.workdir(gpu).glob("job_*/state.json")):
            held = json.loads(state_file.read_text())
            job = final.get(held["job_id"])
            if job is None:
                continue
            accepted = job["state"] == "done" and (job["node"], job["attempt"]) == (gpu.node, held["attempt"])
            if accepted:
                if held["state"] != "done":
                    outcome.violations.append(f"job {job['id']} is done at the core, but {gpu.node} holds "
                                              f"attempt {held['attempt']} {held['state']}")
            elif held["state"] not in FINAL:
                outcome.violations.append(f"{gpu.node} still runs job {job['id']} attempt {held['attempt']}")
            elif held["state"] == "done":
                stale_done.append(f"job {job['id']} attempt {held['attempt']} on {gpu.node}")
            elif (gpu.node, held["attempt"]) != (job["node"], job["attempt"]):
                stale_dropped.append(f"job {job['id']} attempt {held['attempt']} on {gpu.node} ({held['state']})")
    outcome.notes.append(f"stale attempts dropped by the agents (fenced or failed): {len(stale_dropped)}"
                         + (f": {', '.join(stale_dropped)}" if stale_dropped else ""))
    outcome.notes.append(f"stale attempts that finished on an agent anyway, never recorded by the core: "
                         f"{len(stale_done)}" + (f": {', '.join(stale_done)}" if stale_done else ""))


def check_outputs(cluster: Cluster, job: dict, frames_per_job: int, read_ply, bad) -> None:
    jid = job["id"]
    files = {url.rsplit("/", 1)[-1] for url in job.get("files", [])}
    for name in ("reconstruction.ply", "cameras.json"):
        if name not in files:
            bad(f"job {jid} is done without {name} (files: {job.get('files')})")
            return
    resp = httpx.get(f"{cluster.core.url}/api/v1/jobs/{jid}/files/reconstruction.ply", headers=cluster.auth, timeout=60)
    if resp.status_code != 200:
        bad(f"job {jid}: reconstruction.ply answered HTTP {resp.status_code} through the core")
        return
    ply = cluster.base / "outputs" / f"job_{jid}.ply"
    ply.parent.mkdir(exist_ok=True)
    ply.write_bytes(resp.content)
    try:
        points = len(read_ply(ply)["x"])
    except ValueError as exc:
        bad(f"job {jid}: reconstruction.ply does not parse: {exc}")
        return
    if points == 0:
        bad(f"job {jid}: reconstruction.ply has no points")
    job_dir = cluster.workdir(cluster.service(job["node"])) / f"job_{jid}"
    try:
        json.loads((job_dir / "cameras.json").read_text())
    except (OSError, ValueError) as exc:
        bad(f"job {jid}: cameras.json unreadable: {exc}")
    names = sorted(p.name for p in job_dir.glob("frame_*.jpg"))
    if names != [f"frame_{i:06d}.jpg" for i in range(1, frames_per_job + 1)]:
        bad(f"job {jid}: frames {names[:3]}…{names[-3:]} ({len(names)}), expected frame_000001..{frames_per_job:06d}")


class Submitter(threading.Thread):
    """Submits the jobs spread over the fault window (so faults meet running work), retrying
    while the core is down or answers an error; a request cut mid-way is sent again too, and
    counted: it may have created a job (the checks allow that many extra jobs)."""

    def __init__(self, cluster: Cluster, videos: list[str], count: int, window_s: float, *, fps: float, width: int):
        super().__init__(name="submitter", daemon=True)
        self.cluster, self.videos, self.count, self.window_s = cluster, videos, count, window_s
        self.fps, self.width = fps, width
        self.ids: list[int] = []
        self.unsure = 0
        self.error: str | None = None

    def run(self) -> None:
        t0 = time.monotonic()
        for i in range(self.count):
            time.sleep(max(0.0, t0 + i * self.window_s / self.count - time.monotonic()))
            deadline = time.monotonic() + 120
            while True:
                try:
                    self.ids.append(self.cluster.submit(self.videos[i % len(self.videos)], fps=self.fps,
                                                        width=self.width))
                    break
                except (httpx.HTTPError, RuntimeError) as exc:
                    # Refused (core down) or answered with an error (storage down: 503): no job
                    # was made. Cut mid-request: perhaps one was.
                    if isinstance(exc, httpx.TransportError) and not isinstance(exc, httpx.ConnectError):
                        self.unsure += 1
                    if time.monotonic() > deadline:
                        self.error = f"job {i + 1} could not be submitted for 120 s: {exc}"
                        return
                    time.sleep(0.5)


def run_chaos(*, seed: int, jobs: int, faults: int, base: Path, settings: ClusterSettings | None = None,
              gap_s: tuple[float, float] = (2.0, 6.0), video_seconds: float = 2.0, fps: float = JOB_FPS,
              width: int = JOB_WIDTH, max_seconds: float = 1800.0, log=print) -> Outcome:
    """One chaos run in ``base``; the outcome (violations empty when every invariant held)."""
    settings = settings or ClusterSettings()
    rng = random.Random(seed)
    outcome = Outcome()
    started = time.monotonic()
    videos, frames = render_videos(base / "videos", 2, seconds=video_seconds, fps=fps, width=width,
                                   height=width * 9 // 16 // 2 * 2)
    cluster = Cluster(base, base / "videos", settings)
    outcome.faults = draw_faults(rng, faults, [g.node for g in cluster.gpus], settings.lease_s, gap_s)
    window_s = sum(f.gap_s + f.hold_s for f in outcome.faults)
    try:
        cluster.start()
        t0 = time.monotonic()
        submitter = Submitter(cluster, videos, jobs, 0.7 * window_s, fps=fps, width=width)
        submitter.start()
        log(f"submitting {jobs} jobs over {0.7 * window_s:.0f} s; injecting {faults} faults (seed {seed})")
        for fault in outcome.faults:
            time.sleep(fault.gap_s)
            if time.monotonic() - started > max_seconds:
                outcome.violations.append(f"out of time before fault {fault.kind} {fault.target}")
                break
            fault.at_s = time.monotonic() - t0
            inject(cluster, fault)
            log(fault.line())
        submitter.join(timeout=max(1.0, max_seconds - (time.monotonic() - started)))
        if submitter.error or submitter.is_alive():
            outcome.violations.append(submitter.error or "the jobs were not all submitted in time")
        if submitter.unsure:
            outcome.notes.append(f"{submitter.unsure} submission(s) cut mid-request and sent again")
        job_ids = submitter.ids
        left_s = max(60.0, max_seconds - (time.monotonic() - started))
        still_open = wait_quiescent(cluster, job_ids, left_s)
        if still_open:
            outcome.violations.append(f"not quiescent after {left_s:.0f} s: {still_open}")
        outcome.seconds = time.monotonic() - t0
        check(cluster, job_ids, frames, outcome)
        if len(outcome.jobs) > len(job_ids) + submitter.unsure:
            outcome.violations.append(f"the core holds {len(outcome.jobs)} jobs; {len(job_ids)} were submitted")
    finally:
        cluster.stop()
    return outcome


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=7, help="seed of the fault schedule (default: 7)")
    parser.add_argument("--jobs", type=int, default=20, help="jobs submitted (N, default: 20)")
    parser.add_argument("--faults", type=int, default=10, help="faults injected (M, default: 10)")
    parser.add_argument("--lease-s", type=float, default=6.0, help="the core's lease (default: 6)")
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="bound on the whole run (default: 1800)")
    args, base = run_folder(parser, "cosma-chaos-")
    print(f"chaos run in {base} (logs in {base / 'logs'}); load average {os.getloadavg()[0]:.2f}", flush=True)
    outcome = run_chaos(seed=args.seed, jobs=args.jobs, faults=args.faults, base=base,
                        settings=ClusterSettings(lease_s=args.lease_s), max_seconds=args.max_seconds,
                        log=lambda line: print(line, flush=True))
    print(f"N={args.jobs} jobs, M={len([f for f in outcome.faults if f.at_s is not None])} faults, seed {args.seed}, "
          f"{outcome.seconds:.0f} s from first submission to checked; load average {os.getloadavg()[0]:.2f}")
    print("outcomes: " + ", ".join(f"{state} {count}" for state, count in sorted(outcome.counts.items())))
    for job in outcome.jobs:
        if job["state"] != "done":
            print(f"  job {job['id']} {job['state']}: {job.get('error')}")
    for note in outcome.notes:
        print(note)
    for violation in outcome.violations:
        print(f"VIOLATION: {violation}")
    print("all invariants held" if not outcome.violations else f"{len(outcome.violations)} violation(s)")
    return 1 if outcome.violations else 0


if __name__ == "__main__":
    sys.exit(main())
