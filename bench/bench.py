#!/usr/bin/python3
"""Side-by-side benchmark of sockhook against the tools it replaces, on loopback.

Responders: sockhook started the way systemd's socket activation starts it (cold: one
activation per request; warm: one activation serves a whole case), the floor (bench/floor/
floor.c: the least a correct responder can do, started exactly as sockhook is), the seed's
netcat recipe (restarted after every request, as its `Restart=always` unit does) and
adnanh/webhook (Debian's `webhook`, started once); and over HTTPS, sockhook cold and warm on a
socket named `https` against `webhook -secure`, with the same certificate. Every request is
HMAC-signed the way GitHub signs it, and every responder that checks signatures checks it.
See bench/README.md for what is measured and how.

Standard library only, plus matplotlib for the chart.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import fcntl
import hashlib
import hmac
import json
import math
import os
import platform
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid

KIB = 1024
MIB = 1024 * KIB
BODY_SIZES = (0, KIB, 64 * KIB, MIB, 25 * MIB)
HOOK_NAME = "bench"
HOOK_PATH = "/hooks/" + HOOK_NAME  # the same path on sockhook and on adnanh/webhook
SECRET = b"bench-secret-not-a-real-one-0123456789"
NETCAT = "/bin/nc.openbsd"
WEBHOOK = "/usr/bin/webhook"
RESPONSE_204 = r"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"

REQUEST_TIMEOUT = 60.0  # seconds one request may take before it counts as a timeout
READY_TIMEOUT = 30.0  # seconds to wait for a responder to be able to take a request
ACTIVATION_LIMIT = 900.0  # seconds an activation may live before the benchmark kills it
CASE_TIME_LIMIT = 300.0  # seconds a case may take; it stops early (and says so) after that
SAMPLE_INTERVAL = 0.002  # seconds between two reads of the responders' /proc/PID/status
WARM_IDLE_TIMEOUT = "2"  # sockhook --idle-timeout for warm runs (one activation per case)
COLD_IDLE_TIMEOUTS = ("0.05", "0.1", "1")  # tried in this order; the first accepted is used
CLK_TCK = os.sysconf("SC_CLK_TCK")

COLD = "sockhook cold"
WARM = "sockhook warm"
FLOOR_COLD = "floor cold"
FLOOR_WARM = "floor warm"
NETCAT_RECIPE = "netcat recipe"
ADNANH_WEBHOOK = "adnanh/webhook"
# HTTPS: every request a new connection with a full handshake (no session resumption), the
# same EC P-256 certificate for both, which the clients verify
COLD_TLS = "sockhook cold https"
WARM_TLS = "sockhook warm https"
WEBHOOK_TLS = "webhook https"
# the delivery journal (issue 15): every accepted delivery synced to disk before its 204; the
# state directory on this machine's disk (ext4 under /tmp here) and on tmpfs (/dev/shm)
COLD_JOURNAL = "sockhook cold journal"
WARM_JOURNAL = "sockhook warm journal"
WARM_JOURNAL_TMPFS = "sockhook warm journal tmpfs"
JOURNALED = (COLD_JOURNAL, WARM_JOURNAL, WARM_JOURNAL_TMPFS)
# sockhook warm with a hook whose `events` filter leaves out the deliveries sent (`push`): every
# request is read, authenticated and spooled as for sockhook warm, then answered 200 and nothing
# runs. The floor runs nothing either, so this is the responder against the floor alone; the
# difference to sockhook warm is what running /bin/true per request costs the next request on
# this machine's cores.
WARM_FILTERED = "sockhook warm filtered"
RESPONDERS = (COLD, WARM, FLOOR_COLD, FLOOR_WARM, NETCAT_RECIPE, ADNANH_WEBHOOK, COLD_TLS, WARM_TLS, WEBHOOK_TLS,
              COLD_JOURNAL, WARM_JOURNAL, WARM_JOURNAL_TMPFS, WARM_FILTERED)
SOCKHOOKS = (COLD, WARM)
SOCKHOOKS_TLS = (COLD_TLS, WARM_TLS)
FLOORS = (FLOOR_COLD, FLOOR_WARM)
# ratio columns: sockhook ÷ another responder, each against the one it is comparable with:
# the floor started the same way first, then the peers
RATIOS = (("cold ÷ floor", COLD, FLOOR_COLD), ("warm ÷ floor", WARM, FLOOR_WARM),
          ("warm ÷ webhook", WARM, ADNANH_WEBHOOK), ("cold ÷ webhook", COLD, ADNANH_WEBHOOK),
          ("cold ÷ netcat", COLD, NETCAT_RECIPE),
          ("warm https ÷ webhook https", WARM_TLS, WEBHOOK_TLS), ("cold https ÷ webhook https", COLD_TLS, WEBHOOK_TLS),
          ("warm https ÷ warm", WARM_TLS, WARM),
          ("warm journal ÷ warm", WARM_JOURNAL, WARM), ("warm journal tmpfs ÷ warm", WARM_JOURNAL_TMPFS, WARM),
          ("cold journal ÷ cold", COLD_JOURNAL, COLD),
          ("warm filtered ÷ floor", WARM_FILTERED, FLOOR_WARM))
# what each responder's latency is divided by in the chart's "÷ floor" panels: the floor
# started the same way (one process per request, or one process for the case)
FLOOR_OF = {COLD: FLOOR_COLD, WARM: FLOOR_WARM, NETCAT_RECIPE: FLOOR_COLD, ADNANH_WEBHOOK: FLOOR_WARM,
            WARM_FILTERED: FLOOR_WARM}
FLOOR_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "floor", "floor.c")
BURST_CONCURRENCIES = (8, 64)
# sockhook's --max-connections-per-source default (src/limits.rs).
DEFAULT_PER_SOURCE = 32

FAILURE_CLASSES = ("reset", "broken pipe", "refused", "incomplete", "timeout", "wrong status", "other")


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- /proc


def process_status(pid: int) -> tuple[str, int, int] | None:
    """(Name, VmRSS KiB, VmHWM KiB) of a live process; None once it has exited."""
    try:
        with open(f"/proc/{pid}/status") as f:
            text = f.read()
    except OSError:
        return None
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("Name", "VmRSS", "VmHWM"):
            fields[key] = value.strip()
    if "VmHWM" not in fields:  # a zombie has no memory any more
        return None
    return fields["Name"], int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def process_stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (field 3, state, comes first)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def children_of(pid: int) -> list[int]:
    """Direct children of pid (this kernel has no /proc/PID/task/TID/children)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = process_stat_fields(int(entry))
            if fields and int(fields[1]) == pid:
                found.append(int(entry))
    return found


def process_tree(root: int, depth: int = 4) -> list[int]:
    """root and its descendants, a few generations deep."""
    tree, generation = [root], [root]
    for _ in range(depth):
        generation = [child for parent in generation for child in children_of(parent)]
        tree += generation
    return tree


def resident_kib_of_tree(root: int) -> int:
    """Sum of VmRSS over root and its descendants."""
    total = 0
    for pid in process_tree(root):
        status = process_status(pid)
        if status:
            total += status[1]
    return total


def memfd_kib(pid: int) -> tuple[int, int]:
    """(KiB of memory held by the memfds pid has open, number of its open fds).

    sockhook spools bodies to memfds and write()s them without mapping them, so their pages
    are in neither VmRSS nor /proc/PID/smaps(_rollup) (both count mapped pages only), yet
    they are RAM (shmem, charged to the writer's cgroup). st_blocks of each distinct memfd is
    what it holds; st_size would also count holes."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return 0, 0
    total, seen = 0, set()
    for fd in fds:
        path = f"/proc/{pid}/fd/{fd}"
        try:
            if not os.readlink(path).startswith("/memfd:"):
                continue
            st = os.stat(path)
        except OSError:  # closed meanwhile
            continue
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total // 1024, len(fds)


def cpu_seconds_of_process(pid: int) -> float:
    """utime + stime of pid plus that of its children it has reaped (cutime + cstime)."""
    fields = process_stat_fields(pid)
    if fields is None:
        raise RuntimeError(f"process {pid} is gone")
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLK_TCK


def listening_socket_inode(port: int) -> int | None:
    """Inode of the socket in LISTEN state on 127.0.0.1:port (or the wildcard address), if any."""
    suffix = f":{port:04X}"
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if parts[1].endswith(suffix) and parts[3] == "0A" and parts[1][:8] in ("0100007F", "00000000"):
                return int(parts[9])
    return None


def port_is_listening(port: int) -> bool:
    return listening_socket_inode(port) is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.0005) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def wait_for_exit(pid: int, timeout: float) -> tuple[int, os.struct_rusage]:
    """Reap pid (a child of ours), killing it if it outlives timeout; (exit code, rusage)."""
    pidfd = os.pidfd_open(pid)
    try:
        if not select.select([pidfd], [], [], timeout)[0]:
            log(f"process {pid} still running after {timeout:.0f} s: killing it")
            os.kill(pid, signal.SIGKILL)
    finally:
        os.close(pidfd)
    _, status, usage = os.wait4(pid, 0)
    return os.waitstatus_to_exitcode(status), usage


# How the stand-in for systemd starts sockhook: LISTEN_PID must be the pid of the process that
# runs sockhook, known only once it exists, so a shell sets it and execs sockhook in its place
# (posix_spawn, unlike Python's fork, costs the parent nothing; the shell costs well under 1 ms,
# measured in every run with /bin/true in sockhook's place and shown in the report).
LAUNCHER = ["/bin/sh", "-c", 'LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@"']
ACTIVATION_ENV = {"PATH": "/usr/bin:/bin", "LISTEN_FDS": "1"}


def spawn_process(argv, env, null_fd: int, log_fd: int, fd3: int | None = None, setsid=False) -> int:
    """posix_spawn argv with stdin and stdout on /dev/null, stderr on log_fd, and fd3 (if given)
    as file descriptor 3; every other descriptor of ours is close-on-exec."""
    actions = [(os.POSIX_SPAWN_DUP2, null_fd, 0), (os.POSIX_SPAWN_DUP2, null_fd, 1), (os.POSIX_SPAWN_DUP2, log_fd, 2)]
    if fd3 is not None:
        if fd3 == 3:
            raise ValueError("fd 3 must be passed from another descriptor")  # dup2(3, 3) keeps CLOEXEC
        actions.append((os.POSIX_SPAWN_DUP2, fd3, 3))
    return os.posix_spawn(argv[0], argv, env, file_actions=actions, setsid=setsid)


def duplicate_above_3(fd: int) -> int:
    """A close-on-exec duplicate numbered 10 or more, to be moved onto fd 3 in a child."""
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)


def measure_activation_overhead(workdir: str, count: int = 30) -> dict:
    """What the stand-in for systemd costs per activation: /bin/true started exactly as
    sockhook is (launcher, fd 3, LISTEN_*), wall time to its exit and its CPU time."""
    null_fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    walls, cpus = [], []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        fd = duplicate_above_3(listener.fileno())
        for _ in range(count):
            started = time.perf_counter()
            pid = spawn_process(LAUNCHER + ["/bin/true"], ACTIVATION_ENV, null_fd, null_fd, fd3=fd)
            _, usage = wait_for_exit(pid, 10)
            walls.append(time.perf_counter() - started)
            cpus.append(usage.ru_utime + usage.ru_stime)
        os.close(fd)
    os.close(null_fd)
    return {"wall_ms_median": round(sorted(walls)[count // 2] * 1e3, 3),
            "cpu_ms_median": round(sorted(cpus)[count // 2] * 1e3, 3)}


# --------------------------------------------------------------------------- memory


@dataclasses.dataclass
class Peak:
    """Peak memory of one process run, KiB."""

    rss: int  # VmHWM (summed over the processes followed)
    total: int  # RSS + memfds: max(rss, the largest VmRSS + memfd bytes sampled at one time)
    memfd: int  # the most memfd memory sampled at one time


class PeakMemorySampler:
    """Follows the peak resident memory (VmHWM) of short-lived responder processes, and for
    those that spool to memfds (sockhook), RSS + memfds.

    VmHWM is a process's own high-water mark since its exec, so the last value read before it
    exits is its peak, provided nothing grows after that read. sockhook idles (its idle
    timeout) before it exits, and netcat's memory does not change while it answers, so a read
    every SAMPLE_INTERVAL sees the peak. Processes are only counted once they have exec'ed
    the expected program (before that they are copies of their parent).

    memfds have no high-water mark: each sample adds the memfds' size to VmRSS at that moment,
    and the peak of that sum counts. A spooled body lives from its first byte until the action
    has it, several samples for large bodies. Listing the fds costs a readlink each, so with
    many fds open (a burst) they are listed every few samples only (one per 8 fds), which
    keeps the sampler's own CPU from slowing the responder it measures.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watches: dict[int, dict] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_until_stopped, name="sampler", daemon=True)
        self._thread.start()

    def watch(self, root: int, root_name: str, descendant_names: tuple[str, ...] = (), memfds=False) -> None:
        with self._lock:
            self._watches[root] = {
                "root_name": root_name,
                "descendant_names": descendant_names,
                "descendants": [],
                "peaks": {},
                "scanned": 0.0,
                "memfds": memfds,
                "memfd_kib": 0,
                "memfd_skip": 0,
                "memfd_peak": 0,
                "total_peak": 0,
            }

    def forget(self, root: int) -> Peak:
        """Stop following root; the sum of the peaks of root and its followed descendants."""
        with self._lock:
            watch = self._watches.pop(root)
        rss = sum(watch["peaks"].values())
        return Peak(rss=rss, total=max(rss, watch["total_peak"]), memfd=watch["memfd_peak"])

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _sample_until_stopped(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            with self._lock:
                for root, watch in self._watches.items():
                    self._sample(root, watch)

    @staticmethod
    def _sample(root: int, watch: dict) -> None:
        def note(pid: int, names: tuple[str, ...]) -> bool:
            status = process_status(pid)
            if status is None:
                return False
            name, rss, hwm = status
            if name in names:
                watch["peaks"][pid] = max(hwm, watch["peaks"].get(pid, 0))
                if pid == root and watch["memfds"]:
                    if watch["memfd_skip"] > 0:
                        watch["memfd_skip"] -= 1
                    else:
                        watch["memfd_kib"], fds = memfd_kib(pid)
                        watch["memfd_skip"] = fds // 8
                        watch["memfd_peak"] = max(watch["memfd_peak"], watch["memfd_kib"])
                    watch["total_peak"] = max(watch["total_peak"], rss + watch["memfd_kib"])
            return True

        note(root, (watch["root_name"],))
        if not watch["descendant_names"]:
            return
        alive = [pid for pid in watch["descendants"] if note(pid, watch["descendant_names"])]
        now = time.monotonic()
        if not alive and now - watch["scanned"] > 0.005:
            watch["scanned"] = now
            watch["descendants"] = [
                pid for pid in process_tree(root, depth=2)[1:] if note(pid, watch["descendant_names"])
            ]
        else:
            watch["descendants"] = alive


# --------------------------------------------------------------------------- responders


@dataclasses.dataclass
class Run:
    """One process run of a responder: an activation of sockhook, an iteration of netcat."""

    pid: int
    started: float
    ended: float
    cpu_seconds: float  # the process and the children it reaped (the action /bin/true)
    peak: Peak
    exit_code: int


@dataclasses.dataclass
class CaseUsage:
    cpu_seconds: float
    peak_kib: int  # RSS (VmHWM)
    runs: int  # activations / iterations during the case (None for a long-running server)
    exit_codes: list[int]
    actions: int | None = None  # runs of the action, where the responder's log tells
    peak_total_kib: int | None = None  # RSS + memfds; None: the same as peak_kib (no memfds)
    peak_memfd_kib: int = 0


def usage_of_runs(runs: list[Run], actions: int | None = None) -> CaseUsage:
    return CaseUsage(
        cpu_seconds=sum(run.cpu_seconds for run in runs),
        peak_kib=max((run.peak.rss for run in runs), default=0),
        runs=len(runs),
        exit_codes=sorted({run.exit_code for run in runs}),
        actions=actions,
        peak_total_kib=max((run.peak.total for run in runs), default=0),
        peak_memfd_kib=max((run.peak.memfd for run in runs), default=0),
    )


class Responder:
    label = ""
    expected_status = 0
    port = 0
    checks_signatures = True
    cafile: str | None = None  # HTTPS: the certificate clients verify the responder with

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def wait_until_ready(self) -> None: ...
    def begin_case(self) -> None: ...
    def end_case(self) -> CaseUsage: ...
    def idle_memory(self) -> dict: ...


class Activated(Responder):
    """sockhook, or the floor, under a stand-in for systemd's socket activation with Accept=no.

    The benchmark owns the listening socket. When a connection is pending on it (poll says
    readable) and no activation is running, it starts the responder with the socket on fd 3,
    LISTEN_FDS=1 and LISTEN_PID set to its pid, and does not poll again until that
    activation has exited, exactly as systemd does; pending connections wait in the backlog,
    none is ever refused. Cold: a short idle timeout and a client that waits for the previous
    activation to exit, so every request pays the process start. Warm: one activation serves
    the whole case (its first, unmeasured request starts it). argv ends with
    `--idle-timeout`, whose value is added.
    """

    expected_status = 204

    def __init__(self, label, argv, idle_timeout, cold, logfile, sampler, logs_runs=True, cafile=None):
        self.label = label
        self.cafile = cafile  # HTTPS: the socket is passed as systemd passes one named `https`
        self.binary = argv[0]
        self.comm = os.path.basename(argv[0])[:15]
        self.argv = argv + [idle_timeout]
        self.logs_runs = logs_runs  # sockhook logs each run of the action; the floor runs none
        self.idle_timeout = float(idle_timeout)
        self.cold = cold
        self.sampler = sampler
        self.logfile = logfile
        self.runs: list[Run] = []
        self.idle = threading.Event()
        self.idle.set()
        self._stop = threading.Event()
        self._case_started = 0.0

    def start(self) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4096)
        self.port = self.listener.getsockname()[1]
        self._pass_fd = duplicate_above_3(self.listener.fileno())
        self._log_fd = os.open(self.logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        self._null_fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._activate_on_pending_connections, name=self.label, daemon=True)
        self._thread.start()

    def spawn(self, listener_fd: int) -> int:
        """Start the responder with listener_fd as fd 3 and LISTEN_* set, as systemd does."""
        env = dict(ACTIVATION_ENV, LISTEN_FDNAMES="https") if self.cafile else ACTIVATION_ENV
        return spawn_process(LAUNCHER + self.argv, env, self._null_fd, self._log_fd, fd3=listener_fd)

    def _activate_on_pending_connections(self) -> None:
        poller = select.poll()
        poller.register(self.listener.fileno(), select.POLLIN)
        for _ in range(10**7):  # bounded; the stop event ends it long before
            if self._stop.is_set():
                return
            if not poller.poll(100):
                continue
            self.idle.clear()
            started = time.monotonic()
            pid = self.spawn(self._pass_fd)
            self.sampler.watch(pid, self.comm, memfds=True)
            exit_code, usage = wait_for_exit(pid, ACTIVATION_LIMIT)
            peak = self.sampler.forget(pid)
            self.runs.append(Run(pid, started, time.monotonic(), usage.ru_utime + usage.ru_stime, peak, exit_code))
            if exit_code != 0:
                log(f"{self.label}: activation {pid} exited {exit_code} (see {self.logfile})")
            self.idle.set()

    def wait_until_ready(self) -> None:
        if self.cold and not self.idle.wait(READY_TIMEOUT + self.idle_timeout):
            raise RuntimeError(f"{self.label}: activation still running")

    def begin_case(self) -> None:
        self.idle.wait(READY_TIMEOUT + self.idle_timeout)
        self._case_started = time.monotonic()
        self._log_offset = os.path.getsize(self.logfile)

    def _actions_run_since_case_began(self) -> int | None:
        """sockhook logs `hook NAME: run PID started` for each run of a command; triggers that
        arrive while the command runs coalesce into one follow-up run. The floor runs none."""
        if not self.logs_runs:
            return None
        with open(self.logfile, "rb") as f:
            f.seek(self._log_offset)
            return len(re.findall(rb"hook \S+: run \d+ started", f.read()))

    def end_case(self) -> CaseUsage:
        time.sleep(0.01)  # let the activator see a connection that is still pending
        if not self.idle.wait(READY_TIMEOUT + self.idle_timeout):
            raise RuntimeError(f"{self.label}: activation did not exit when idle")
        runs = [run for run in self.runs if run.started >= self._case_started]
        return usage_of_runs(runs, self._actions_run_since_case_began())

    def idle_memory(self) -> dict:
        """Nothing is resident while idle: check that no sockhook process of ours exists."""
        self.idle.wait(READY_TIMEOUT + self.idle_timeout)
        ours = [pid for pid in children_of(os.getpid()) if (process_status(pid) or ("",))[0] == self.comm]
        return {"kib": 0 if not ours else sum(process_status(p)[1] for p in ours), "processes": len(ours)}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=ACTIVATION_LIMIT)
        self.listener.close()
        os.close(self._pass_fd)
        os.close(self._log_fd)
        os.close(self._null_fd)


class NetcatRecipe(Responder):
    """The seed's recipe, `printf 204 | nc -l -p PORT -q 0; action`, as its unit runs it.

    The seed's unit (Restart=always) starts a fresh `bash -c` for every request; so does this,
    immediately after the previous one exits (systemd would also wait RestartSec=100ms, which
    would only add refused connections). `-q 0` is netcat-openbsd's nearest to GNU nc's `-c`:
    close as soon as the response is written, unread request bytes or not. The action is
    /bin/true, as for the other responders.
    """

    label = NETCAT_RECIPE
    expected_status = 204
    checks_signatures = False

    def __init__(self, logfile, sampler):
        self.sampler = sampler
        self.logfile = logfile
        self.runs: list[Run] = []
        self._stop = threading.Event()
        self._current = 0
        self._used_listener = None
        self._case_started = 0.0

    def start(self) -> None:
        self.port = free_port()
        self.script = (
            f"printf '{RESPONSE_204}' | {NETCAT} -l -s 127.0.0.1 -p {self.port} -q 0 >/dev/null; /bin/true"
        )
        self._log_fd = os.open(self.logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        self._null_fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._restart_after_each_request, name=self.label, daemon=True)
        self._thread.start()
        wait_for(lambda: port_is_listening(self.port), READY_TIMEOUT, "netcat to listen")

    def _restart_after_each_request(self) -> None:
        for _ in range(10**7):  # bounded; the stop event ends it long before
            if self._stop.is_set():
                return
            started = time.monotonic()
            # a session of its own, so that stop() can end bash and nc together
            shell = spawn_process(["/bin/bash", "-c", self.script], {"PATH": "/usr/bin:/bin"},
                                  self._null_fd, self._log_fd, setsid=True)
            self._current = shell
            self.sampler.watch(shell, "bash", (os.path.basename(NETCAT),))
            exit_code, usage = wait_for_exit(shell, ACTIVATION_LIMIT)
            peak = self.sampler.forget(shell)
            if not self._stop.is_set():
                self.runs.append(Run(shell, started, time.monotonic(), usage.ru_utime + usage.ru_stime, peak, exit_code))

    def wait_until_ready(self) -> None:
        """Wait until a new netcat listens, so that sequential cases measure the race, not
        refusals: its listening socket must not be the one the previous request went to."""

        def new_listener() -> bool:
            inode = listening_socket_inode(self.port)
            return inode is not None and inode != self._used_listener

        wait_for(new_listener, READY_TIMEOUT, "netcat to listen again")
        self._used_listener = listening_socket_inode(self.port)

    def begin_case(self) -> None:
        wait_for(lambda: port_is_listening(self.port), READY_TIMEOUT, "netcat to listen")
        self._case_started = time.monotonic()

    def end_case(self) -> CaseUsage:
        self.wait_until_ready()  # the last request's bash, nc and action have finished
        self._used_listener = None  # the next case's first request may use this listener
        time.sleep(0.01)
        runs = [run for run in self.runs if run.ended > self._case_started]
        usage = usage_of_runs(runs)
        usage.peak_total_kib = None  # netcat spools nothing: RSS is all of it
        return usage

    def idle_memory(self) -> dict:
        wait_for(lambda: port_is_listening(self.port), READY_TIMEOUT, "netcat to listen")
        time.sleep(0.2)
        tree = process_tree(self._current)
        return {"kib": resident_kib_of_tree(self._current), "processes": len(tree)}

    def stop(self) -> None:
        self._stop.set()
        for _ in range(100):  # the loop may be starting one more bash right now
            try:
                os.killpg(self._current, signal.SIGTERM)
            except ProcessLookupError:
                pass
            self._thread.join(timeout=0.2)
            if not self._thread.is_alive():
                break
        os.close(self._log_fd)
        os.close(self._null_fd)


class AdnanhWebhook(Responder):
    """adnanh/webhook with the equivalent hook: GitHub's HMAC-SHA256 check, then /bin/true.

    Started once and kept running, as it is deployed. CPU is read from /proc/PID/stat
    (including the /bin/true children it reaped); peak memory is VmHWM, reset before every
    case by writing 5 to /proc/PID/clear_refs.
    """

    label = ADNANH_WEBHOOK
    expected_status = 200

    def __init__(self, workdir, logfile, tls: tuple[str, str] | None = None):
        """tls: (certificate, key) for `-secure`."""
        self.hooks_file = os.path.join(workdir, "webhook-hooks.json")
        self.logfile = logfile
        self.tls = tls
        if tls:
            self.label = WEBHOOK_TLS
            self.cafile = tls[0]
        self._cpu_before = 0.0
        self._hwm_resettable = True

    def start(self) -> None:
        hook = {
            "id": HOOK_NAME,
            "execute-command": "/bin/true",
            "trigger-rule-mismatch-http-response-code": 401,
            "trigger-rule": {
                "match": {
                    "type": "payload-hmac-sha256",
                    "secret": SECRET.decode(),
                    "parameter": {"source": "header", "name": "X-Hub-Signature-256"},
                }
            },
        }
        with open(self.hooks_file, "w") as f:
            json.dump([hook], f, indent=1)
        self.port = free_port()
        self._log = open(self.logfile, "ab")
        self.process = subprocess.Popen(
            [WEBHOOK, "-hooks", self.hooks_file, "-ip", "127.0.0.1", "-port", str(self.port)]
            + (["-secure", "-cert", self.tls[0], "-key", self.tls[1]] if self.tls else []),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            start_new_session=True,
        )
        wait_for(lambda: port_is_listening(self.port), READY_TIMEOUT, "webhook to listen", interval=0.01)

    def _wait_for_actions(self) -> None:
        wait_for(lambda: not children_of(self.process.pid), READY_TIMEOUT, "webhook's actions", interval=0.005)

    def begin_case(self) -> None:
        self._wait_for_actions()
        self._cpu_before = cpu_seconds_of_process(self.process.pid)
        try:
            with open(f"/proc/{self.process.pid}/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current VmRSS
        except OSError:
            self._hwm_resettable = False

    def end_case(self) -> CaseUsage:
        self._wait_for_actions()
        time.sleep(0.02)
        status = process_status(self.process.pid)
        return CaseUsage(
            cpu_seconds=cpu_seconds_of_process(self.process.pid) - self._cpu_before,
            peak_kib=status[2] if status else 0,
            runs=None,
            exit_codes=[],
        )

    def idle_memory(self) -> dict:
        self._wait_for_actions()
        time.sleep(1.0)
        return {"kib": resident_kib_of_tree(self.process.pid), "processes": len(process_tree(self.process.pid))}

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self._log.close()


# --------------------------------------------------------------------------- clients


@dataclasses.dataclass
class Outcome:
    latency: float | None  # seconds, for successful requests
    failure: str | None  # one of FAILURE_CLASSES, None on success
    detail: str = ""
    reset_after_response: bool = False  # the whole response arrived, then an RST


@dataclasses.dataclass
class Body:
    size: int
    data: bytes
    file: str
    signature: str  # X-Hub-Signature-256 value

    @classmethod
    def make(cls, size: int, workdir: str) -> "Body":
        """A JSON document of exactly size bytes (empty for 0), as GitHub sends."""
        data = b"" if size == 0 else (b'{"pad":"' + b"x" * (size - 10) + b'"}')[:size]
        path = os.path.join(workdir, f"body-{size}.json")
        with open(path, "wb") as f:
            f.write(data)
        return cls(size, data, path, "sha256=" + hmac.new(SECRET, data, hashlib.sha256).hexdigest())


def request_headers(body: Body, signature: str | None = None) -> list[tuple[str, str]]:
    return [
        ("Content-Type", "application/json"),
        ("X-GitHub-Event", "push"),
        ("X-GitHub-Delivery", str(uuid.uuid4())),
        ("X-Hub-Signature-256", signature or body.signature),
    ]


CURL_FAILURES = {7: "refused", 52: "incomplete", 18: "incomplete", 28: "timeout", 56: "incomplete"}


def classify_curl_failure(code: int, stderr: str) -> str:
    if "Connection reset" in stderr:
        return "reset"
    if "Broken pipe" in stderr:
        return "broken pipe"
    if "Connection refused" in stderr:
        return "refused"
    return CURL_FAILURES.get(code, "other")


def send_with_curl(port: int, body: Body, expected_status: int, expect_100: bool = False, signature=None,
                   cafile: str | None = None) -> Outcome:
    """One request by curl; the latency is curl's own time_total (connect to last byte).
    With cafile, over HTTPS to `localhost`, verified against cafile."""
    argv = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{time_total}", "--max-time", str(REQUEST_TIMEOUT)]
    if cafile:
        argv += ["--cacert", cafile, "--resolve", f"localhost:{port}:127.0.0.1"]
    for name, value in request_headers(body, signature):
        argv += ["-H", f"{name}: {value}"]
    # curl adds `Expect: 100-continue` by itself above 1 MiB; only the Expect case has it
    argv += ["-H", "Expect: 100-continue" if expect_100 else "Expect:"]
    url = f"https://localhost:{port}{HOOK_PATH}" if cafile else f"http://127.0.0.1:{port}{HOOK_PATH}"
    argv += ["--data-binary", "@" + body.file, url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=REQUEST_TIMEOUT + 10)
    if done.returncode != 0:
        return Outcome(None, classify_curl_failure(done.returncode, done.stderr), done.stderr.strip()[-200:])
    status, seconds = done.stdout.split()
    if int(status) != expected_status:
        return Outcome(None, "wrong status", f"status {status}")
    return Outcome(float(seconds), None)


TLS_CONTEXTS: dict[str, ssl.SSLContext] = {}


def tls_context(cafile: str) -> ssl.SSLContext:
    """A verifying client context trusting cafile only, made once per file."""
    if cafile not in TLS_CONTEXTS:
        context = ssl.create_default_context(cafile=cafile)
        context.set_alpn_protocols(["http/1.1"])
        TLS_CONTEXTS[cafile] = context
    return TLS_CONTEXTS[cafile]


def send_raw(port: int, body: Body, expected_status: int, signature=None, cafile: str | None = None) -> Outcome:
    """One request by a client that writes the whole request before it reads anything, as
    phone apps do; the latency runs from connect() to the end of the response (EOF). With
    cafile, over HTTPS (the handshake included), verified against cafile for `localhost`."""
    head = f"POST {HOOK_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: sockhook-bench\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in request_headers(body, signature))
    head += f"Content-Length: {body.size}\r\nConnection: close\r\n\r\n"
    request = head.encode() + body.data  # one write: no Nagle/delayed-ACK stall between head and body
    received = b""
    started = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT) as raw:
            s = tls_context(cafile).wrap_socket(raw, server_hostname="localhost") if cafile else raw
            s.sendall(request)
            try:
                for _ in range(1000):  # a response is far shorter than 1000 reads
                    try:
                        chunk = s.recv(65536)
                    except ssl.SSLEOFError:
                        # EOF without close_notify: what webhook -secure does (Go closes so)
                        chunk = b""
                    if not chunk:
                        break
                    received += chunk
            except ConnectionResetError:
                if not response_is_complete(received):
                    raise
                return check_status(received, expected_status, time.perf_counter() - started, reset_after=True)
    except ConnectionRefusedError:
        return Outcome(None, "refused")
    except BrokenPipeError:
        return Outcome(None, "broken pipe")
    except ConnectionResetError:
        return Outcome(None, "reset", f"{len(received)} response bytes before the reset")
    except socket.timeout:
        return Outcome(None, "timeout")
    except ssl.SSLError as e:
        return Outcome(None, "other", f"TLS: {e}")
    except OSError as e:
        return Outcome(None, "other", str(e))
    if not response_is_complete(received):
        return Outcome(None, "incomplete", repr(received[:80]))
    return check_status(received, expected_status, time.perf_counter() - started)


def response_is_complete(received: bytes) -> bool:
    """A final (non-1xx) response head has arrived, and its Content-Length body if it has one."""
    rest = received
    for _ in range(10):  # skip interim 1xx responses
        head, sep, rest = rest.partition(b"\r\n\r\n")
        if not sep:
            return False
        if not head.startswith(b"HTTP/1.1 1"):
            break
    else:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(rest) >= int(value)
    return True


def check_status(received: bytes, expected_status: int, latency: float, reset_after=False) -> Outcome:
    statuses = [int(line.split()[1]) for line in received.split(b"\r\n") if line.startswith(b"HTTP/1.")]
    final = [s for s in statuses if s >= 200]
    if not final or final[0] != expected_status:
        return Outcome(None, "wrong status", f"statuses {statuses}")
    return Outcome(latency, None, reset_after_response=reset_after)


# --------------------------------------------------------------------------- cases


@dataclasses.dataclass
class Case:
    name: str
    client: str  # "curl" or "raw"
    body_size: int
    requests: int
    expect_100: bool = False
    concurrency: int = 1  # > 1: a burst, sent without waiting for the responder to be ready


def size_label(size: int) -> str:
    if size >= MIB:
        return f"{size // MIB} MiB"
    if size >= KIB:
        return f"{size // KIB} KiB"
    return f"{size} B"


def plan_cases(args) -> list[Case]:
    """In order of body size, so that the peak memory of the long-running webhook in a case
    reflects that case's body and not a larger one before it; 25 MiB comes last."""
    def sized(size: int) -> list[Case]:
        count = args.requests_25m if size >= 25 * MIB else args.requests
        return [Case(f"{client} {size_label(size)}", client, size, count) for client in ("curl", "raw")]

    cases = [case for size in args.sizes if size < 25 * MIB for case in sized(size)]
    cases.append(Case("curl 1 MiB, Expect: 100-continue", "curl", MIB, args.requests_expect, expect_100=True))
    for concurrency in args.concurrency:
        cases.append(Case(f"burst {args.burst} × {concurrency}, 1 KiB", "raw", KIB, args.burst, concurrency=concurrency))
    return cases + [case for size in args.sizes if size >= 25 * MIB for case in sized(size)]


def send_one(case: Case, responder: Responder, body: Body) -> Outcome:
    if case.client == "curl":
        return send_with_curl(responder.port, body, responder.expected_status, case.expect_100,
                              cafile=responder.cafile)
    return send_raw(responder.port, body, responder.expected_status, cafile=responder.cafile)


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    return sorted_values[max(0, math.ceil(fraction * len(sorted_values)) - 1)]


def run_case(case: Case, responder: Responder, body: Body) -> dict:
    """Runs case against responder: one unmeasured warm-up request (not for bursts), then
    the measured ones; returns the figures and the raw latencies."""
    responder.begin_case()
    deadline = time.monotonic() + CASE_TIME_LIMIT
    outcomes: list[Outcome] = []
    wall_started = time.perf_counter()
    if case.concurrency == 1:
        for i in range(case.requests + 1):
            if time.monotonic() > deadline:
                log(f"{responder.label}, {case.name}: time limit reached after {len(outcomes)} requests")
                break
            responder.wait_until_ready()
            outcome = send_one(case, responder, body)
            if i > 0:
                outcomes.append(outcome)
            elif outcome.failure:
                log(f"{responder.label}, {case.name}: warm-up request failed: {outcome.failure} {outcome.detail}")
    else:
        responder.wait_until_ready()
        with concurrent.futures.ThreadPoolExecutor(case.concurrency) as pool:
            outcomes = list(pool.map(lambda _: send_raw(responder.port, body, responder.expected_status,
                                                        cafile=responder.cafile), range(case.requests)))
    wall = time.perf_counter() - wall_started
    usage = responder.end_case()
    # requests that reached the responder: refused ones never reached a process
    served = len(outcomes) - sum(1 for o in outcomes if o.failure == "refused") + (case.concurrency == 1)
    latencies = sorted(o.latency for o in outcomes if o.failure is None)
    failures = {cls: sum(1 for o in outcomes if o.failure == cls) for cls in FAILURE_CLASSES}
    details = sorted({o.detail for o in outcomes if o.failure and o.detail})[:5]
    return {
        "requests": len(outcomes),
        "answered": len(latencies),
        "failures": {k: v for k, v in failures.items() if v},
        "failure_examples": details,
        "resets_after_complete_response": sum(1 for o in outcomes if o.reset_after_response),
        "latency_ms_median": round(percentile(latencies, 0.5) * 1e3, 3) if latencies else None,
        "latency_ms_p99": round(percentile(latencies, 0.99) * 1e3, 3) if latencies else None,
        "requests_reaching_responder": served,
        "cpu_ms_per_request": round(usage.cpu_seconds / served * 1e3, 3) if served else None,
        "peak_rss_kib": usage.peak_kib,
        # RSS + spooled memfds; for responders without memfds (netcat, webhook) the RSS
        "peak_memory_kib": usage.peak_kib if usage.peak_total_kib is None else usage.peak_total_kib,
        "peak_memfd_kib": usage.peak_memfd_kib,
        "process_runs": usage.runs,
        "actions_run": usage.actions,
        "exit_codes": usage.exit_codes,
        "wall_seconds": round(wall, 3),
        "throughput_per_s": round(len(latencies) / wall, 1) if case.concurrency > 1 else None,
        "latencies_ms": [round(x * 1e3, 3) for x in latencies] if case.concurrency == 1 else "not kept for bursts",
    }


# --------------------------------------------------------------------------- set-up


def write_sockhook_config(workdir: str) -> tuple[str, str]:
    hooks_dir = os.path.join(workdir, "hooks.d")
    os.makedirs(hooks_dir, exist_ok=True)
    secret_file = os.path.join(workdir, "secret")
    key_file = os.path.join(workdir, "key")
    for path, content in ((secret_file, SECRET), (key_file, os.urandom(32).hex().encode() + b"\n")):
        with open(path, "wb") as f:
            f.write(content)
        os.chmod(path, 0o600)
    hook = ('command = ["/bin/true"]\n'
            'auth = "github"\n'
            f'secret = "{secret_file}"\n'
            "max_body = 26214400\n")
    with open(os.path.join(hooks_dir, HOOK_NAME + ".toml"), "w") as f:
        f.write(hook)
    # WARM_FILTERED's: the same hook for `ping` events only; the benchmark sends `push`
    filtered_dir = filtered_hooks_dir(workdir)
    os.makedirs(filtered_dir, exist_ok=True)
    with open(os.path.join(filtered_dir, HOOK_NAME + ".toml"), "w") as f:
        f.write(hook + 'events = ["ping"]\n')
    return hooks_dir, key_file


def filtered_hooks_dir(workdir: str) -> str:
    return os.path.join(workdir, "hooks-filtered.d")


def choose_cold_idle_timeout(binary, hooks_dir, key_file, workdir) -> str:
    """The shortest --idle-timeout this sockhook accepts: an activation given a listening
    socket and no connection must exit 0 within a few seconds."""
    null_fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    log_fd = os.open(os.path.join(workdir, "probe.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    try:
        for candidate in COLD_IDLE_TIMEOUTS:
            argv = LAUNCHER + [binary, "serve", "--hooks", hooks_dir, "--key", key_file, "--idle-timeout", candidate]
            with socket.socket() as listener:
                listener.bind(("127.0.0.1", 0))
                listener.listen(16)
                fd = duplicate_above_3(listener.fileno())
                pid = spawn_process(argv, ACTIVATION_ENV, null_fd, log_fd, fd3=fd)
                exit_code, _ = wait_for_exit(pid, 3 + float(candidate))
                os.close(fd)
            if exit_code == 0:
                return candidate
            log(f"sockhook refused --idle-timeout {candidate} (exit {exit_code})")
    finally:
        os.close(null_fd)
        os.close(log_fd)
    raise RuntimeError(f"sockhook accepted none of --idle-timeout {COLD_IDLE_TIMEOUTS}; see {workdir}/probe.log")


def build_floor(workdir: str) -> tuple[str | None, str]:
    """Compiles bench/floor/floor.c with OpenSSL's libcrypto.a, statically (a dynamically
    loaded libcrypto costs about 0.8 ms per exec); (the binary, or None and why not)."""
    out = os.path.join(workdir, "floor")
    argv = ["cc", "-O2", "-Wall", "-Wextra", "-static", "-s", "-o", out, FLOOR_SOURCE, "-lcrypto"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"{' '.join(argv)}: {e}"
    if done.returncode != 0:
        return None, f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[-400:]}"
    return out, ""


def cpu_flags() -> set[str]:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def floor_note(cold_idle: str) -> str:
    """What the floor is and which SHA-256 code it runs on this CPU."""
    flags = cpu_flags()
    masked = os.environ.get("OPENSSL_ia32cap")
    if "sha_ni" in flags and not masked:
        sha = "SHA-NI (the CPU has sha_ni; OpenSSL's SHA-256 then runs sha256_block_data_order_shaext)"
    elif masked:
        sha = f"whatever OPENSSL_ia32cap={masked} leaves"
    else:
        sha = "AVX2/SSSE3 code (this CPU has no SHA-NI)"
    return ("The floor (bench/floor/floor.c, static OpenSSL) reads the whole request, checks the HMAC-SHA256 of "
            f"the body with {sha}, answers 204, half-closes, drains and closes, and runs nothing. It is started "
            f"exactly as sockhook is: floor cold with --idle-timeout {cold_idle}, floor warm with {WARM_IDLE_TIMEOUT}. "
            "sockhook's (and the peers') CPU includes the action /bin/true; the floor runs none.")


def make_certificate(workdir: str) -> tuple[str, str]:
    """A self-signed EC P-256 certificate for localhost and 127.0.0.1 and its key (the
    clients trust the certificate itself): (certificate, key)."""
    cert, key = os.path.join(workdir, "tls.crt"), os.path.join(workdir, "tls.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    os.chmod(key, 0o600)
    return cert, key


def sanity_check(responder: Responder, body: Body) -> dict:
    """A request with a wrong signature must be refused, and a right one accepted."""
    wrong = "sha256=" + hmac.new(b"not the secret", body.data, hashlib.sha256).hexdigest()
    responder.begin_case()
    responder.wait_until_ready()
    refused = send_raw(responder.port, body, responder.expected_status, signature=wrong, cafile=responder.cafile)
    responder.wait_until_ready()
    accepted = send_raw(responder.port, body, responder.expected_status, cafile=responder.cafile)
    responder.end_case()
    refused_ok = refused.failure == "wrong status" or not responder.checks_signatures
    return {
        "wrong signature": refused.detail or "accepted" + ("" if responder.checks_signatures else " (checks nothing)"),
        "right signature": "accepted" if accepted.failure is None else f"{accepted.failure} {accepted.detail}",
        "ok": refused_ok and accepted.failure is None,
    }


def sockhook_version(binary: str) -> str:
    try:
        return subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def package_version(package: str) -> str:
    done = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True)
    return done.stdout.strip() or "?"


# --------------------------------------------------------------------------- report


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


def ratio(numerator, denominator) -> str:
    if numerator is None or denominator in (None, 0):
        return "—"
    return f"{numerator / denominator:.2f}×"


def failure_cell(result: dict | None) -> str:
    if result is None:
        return "—"
    failed = sum(result["failures"].values())
    cell = f"{failed}/{result['requests']}"
    if failed:
        cell += ": " + ", ".join(f"{n} {cls}" for cls, n in result["failures"].items())
    return cell


def markdown_report(report: dict) -> str:
    results, present = report["results"], report["responders"]
    cases = report["cases"]
    ratios = [(a, b) for _, a, b in RATIOS if a in present and b in present]
    head = ["case"] + present + [label for label, a, b in RATIOS if a in present and b in present]

    def table(title, cell, value=None, note=""):
        columns = head if value else head[: 1 + len(present)]
        lines = [f"### {title}", ""] + ([note, ""] if note else [])
        lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for case in cases:
            row = [case] + [cell(results[r].get(case)) for r in present]
            if value:
                row += [ratio(value(results[a].get(case)), value(results[b].get(case))) for a, b in ratios]
            lines.append("| " + " | ".join(row) + " |")
        return "\n".join(lines) + "\n"

    get = lambda key: (lambda res: res[key] if res else None)  # noqa: E731
    fmt = lambda x, unit="": "—" if x is None else f"{x:.2f}{unit}"  # noqa: E731
    out = [f"# sockhook benchmark, {report['date']}", ""]
    out.append(
        f"{report['host']}. sockhook: {report['versions'].get('sockhook', 'not run')}; "
        f"webhook {report['versions']['webhook']}; netcat-openbsd {report['versions']['netcat-openbsd']}; "
        f"curl {report['versions']['curl']}. Produced by `{report['command']}` in {report['elapsed_s']:.0f} s."
    )
    if report.get("notes"):
        out += [""] + [f"- {note}" for note in report["notes"]]
    out += ["", "## Summary", ""]
    summary_head = ["", *present]
    out += ["| " + " | ".join(summary_head) + " |", "|" + "---|" * len(summary_head)]
    total_fail = lambda r: (  # noqa: E731
        f"{sum(sum(c['failures'].values()) for c in results[r].values())}/"
        f"{sum(c['requests'] for c in results[r].values())}"
    )
    out.append("| client-visible failures, all cases | " + " | ".join(total_fail(r) for r in present) + " |")
    idle = report["idle_memory"]

    def idle_cell(r):
        figure = idle.get(r, {})
        if not figure:
            return "—"
        if figure["processes"] == 0:
            return "0 (no process)"
        after = report["idle_memory_after_load"].get(r, {})
        text = f"{mib(figure['kib'])}, {figure['processes']} processes"
        return text + (f"; {mib(after['kib'])} after the run" if after else "")

    out.append("| memory while idle | " + " | ".join(idle_cell(r) for r in present) + " |")
    peak = lambda r, key: max((c.get(key, c["peak_rss_kib"]) for c in results[r].values()), default=0)  # noqa: E731
    out.append("| peak RSS, any case | " + " | ".join(mib(peak(r, "peak_rss_kib")) for r in present) + " |")
    out.append("| peak RSS + spooled memfds, any case | "
               + " | ".join(mib(peak(r, "peak_memory_kib")) for r in present) + " |")
    for b in [c for c in cases if c.startswith("burst")]:
        cell = lambda r: (  # noqa: E731
            f"{results[r][b]['answered']}/{results[r][b]['requests']} answered, {results[r][b]['throughput_per_s']} req/s"
            if b in results[r] else "—"
        )
        out.append(f"| {b} | " + " | ".join(cell(r) for r in present) + " |")
    out.append("| program size | " + " | ".join(report["binary_sizes"].get(r, "—") for r in present) + " |")
    out.append("")
    out.append(table("Latency, median / p99 (ms); ratios of medians",
                     lambda res: "—" if not res or res["latency_ms_median"] is None else f"{res['latency_ms_median']:.2f} / {res['latency_ms_p99']:.2f}",
                     get("latency_ms_median")))
    out.append(table("Client-visible failures", failure_cell, None,
                     "Classes: reset, broken pipe, refused, incomplete, timeout, wrong status."))
    def cpu_cell(res):
        cell = fmt(get("cpu_ms_per_request")(res))
        if res and res.get("actions_run") is not None and res["actions_run"] < res["requests_reaching_responder"]:
            cell += f" ({res['actions_run']} actions for {res['requests_reaching_responder']})"
        return cell

    out.append(table("CPU time per request (ms), responder and its action", cpu_cell, get("cpu_ms_per_request"),
                     "sockhook coalesces triggers that arrive while the action runs into one follow-up run, "
                     "so it may run fewer actions than it answers requests (in brackets where it did, warm-up "
                     "included); netcat and webhook run one per request; the floor runs none, so the ratios "
                     "to the floor include sockhook's runs of /bin/true."))

    def memory_cell(res):
        if not res:
            return "—"
        total = res.get("peak_memory_kib", res["peak_rss_kib"])
        memfd = res.get("peak_memfd_kib", 0)
        return f"{total / 1024:.1f}" + (f" ({memfd / 1024:.1f} memfd)" if memfd >= 1024 else "")

    out.append(table("Peak memory of the responder's processes: RSS + spooled memfds (MiB)", memory_cell,
                     lambda res: res.get("peak_memory_kib", res["peak_rss_kib"]) if res else None,
                     "sockhook spools each body to a memfd, which is RAM but not in RSS (it is never mapped): "
                     "the figure is the peak of VmRSS + the memfds' allocated size sampled together, at least "
                     "VmHWM; in brackets the memfd part where it reached 1 MiB. webhook holds bodies in its "
                     "heap and netcat reads none, so RSS is all of theirs."))
    out.append(table("Peak resident memory (VmHWM) alone (MiB)",
                     lambda res: "—" if not res else f"{res['peak_rss_kib'] / 1024:.1f}", get("peak_rss_kib")))
    checks = checks_against_the_goals(report)
    if checks:
        out += ["### Against the goals of issue 17 (and issue 5's that still apply)", "",
                "| issue | goal | measured | |", "|---|---|---|---|"]
        out += [f"| {issue} | {what} | {measured} | {'pass' if ok else '**miss**'} |"
                for issue, what, measured, ok in checks]
        out += ["", "The goal under a real systemd (shipped units vs the floor as a service vs no sandboxing) "
                "is measured by `make bench-systemd`: bench/results/systemd.md.", ""]
    for r in present:
        sanity = report["sanity"].get(r)
        if sanity and not sanity["ok"]:
            out.append(f"**Sanity check failed for {r}:** {sanity}\n")
    return "\n".join(out)


def filesystem_of(path: str) -> str:
    """The type of the file system that holds path, from /proc/self/mounts (longest mount point)."""
    best = ("", "?")
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            point, kind = fields[1], fields[2]
            if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) > len(best[0]):
                best = (point, kind)
    return best[1]


def checks_against_the_goals(report: dict) -> list[tuple[str, str, str, bool]]:
    """Issue 17's goals, and issue 5's bar where it still applies, criterion by criterion:
    (issue, criterion, what was measured, met). Ratios are of medians from this one run."""
    results, present, info = report["results"], report["responders"], report["case_info"]
    ours = [r for r in SOCKHOOKS if r in present]
    if not ours:
        return []
    checks = []
    sized = [c for c in report["cases"] if info[c]["concurrency"] == 1 and not info[c]["expect_100"]]

    def worst_ratio(mine: str, other: str, cases: list[str]):
        pairs = [(results[mine][c]["latency_ms_median"], results[other][c]["latency_ms_median"], c) for c in cases
                 if c in results[mine] and c in results[other]]
        pairs = [(a / b, c) for a, b, c in pairs if a is not None and b]
        return max(pairs) if pairs else None

    def ratio_goal(mine, other, cases, bound, what):
        worst = worst_ratio(mine, other, cases)
        if worst:
            checks.append(("17", what, f"worst {worst[0]:.2f}× ({worst[1]})", worst[0] <= bound))

    if WARM in present and FLOOR_WARM in present:
        ratio_goal(WARM, FLOOR_WARM, [c for c in sized if info[c]["body_size"] >= MIB], 1.3,
                   "warm, 1 MiB and 25 MiB: median ≤ 1.3× the floor's (warm)")
        ratio_goal(WARM, FLOOR_WARM, [c for c in sized if info[c]["body_size"] <= 64 * KIB], 1.2,
                   "warm, 0 B–64 KiB: median ≤ 1.2× the floor's (warm)")
    if WARM_FILTERED in present and FLOOR_WARM in present:
        # not goals: where sockhook warm's misses come from (the responder, or its runs of /bin/true)
        ratio_goal(WARM_FILTERED, FLOOR_WARM, [c for c in sized if info[c]["body_size"] >= MIB], 1.3,
                   "(diagnostic) nothing run, warm filtered: 1 MiB and 25 MiB ≤ 1.3× the floor's (warm)")
        ratio_goal(WARM_FILTERED, FLOOR_WARM, [c for c in sized if info[c]["body_size"] <= 64 * KIB], 1.2,
                   "(diagnostic) nothing run, warm filtered: 0 B–64 KiB ≤ 1.2× the floor's (warm)")
    if COLD in present and FLOOR_COLD in present:
        ratio_goal(COLD, FLOOR_COLD, [c for c in sized if info[c]["body_size"] == 0], 1.25,
                   "cold, 0 B: median ≤ 1.25× the floor's started the same way")
    for c in [c for c in report["cases"] if info[c]["concurrency"] > 1]:
        peer = results.get(ADNANH_WEBHOOK, {}).get(c)
        for r in ours:
            res = results[r].get(c)
            floor = results.get(FLOOR_OF[r], {}).get(c)
            if not res:
                continue
            parts = [f"{res['answered']}/{res['requests']}, {res['throughput_per_s']} req/s"]
            ok = res["answered"] == res["requests"]
            if peer:
                parts.append(f"{res['throughput_per_s'] / peer['throughput_per_s']:.2f}× webhook's")
                ok = ok and res["throughput_per_s"] >= 2 * peer["throughput_per_s"]
            if floor and floor["throughput_per_s"]:
                parts.append(f"{res['throughput_per_s'] / floor['throughput_per_s']:.2f}× the floor's")
                ok = ok and res["throughput_per_s"] >= 0.7 * floor["throughput_per_s"]
            checks.append(("17", f"{c}: every request answered, throughput ≥ 2× adnanh/webhook's and ≥ 0.7× "
                                 f"the floor's ({r})", ", ".join(parts), ok))
    peak_case = max(((results[r][c].get("peak_memory_kib", results[r][c]["peak_rss_kib"]), r, c)
                     for r in ours for c in results[r]), default=None)
    if peak_case:
        kib, r, c = peak_case
        peer_peak = max((res["peak_rss_kib"] for res in results.get(ADNANH_WEBHOOK, {}).values()), default=None)
        checks.append(("17", "peak memory reported as RSS + spooled memfds, per case (no bound)",
                       f"largest {mib(kib)} ({r}, {c})" + (f"; adnanh/webhook {mib(peer_peak)}" if peer_peak else ""),
                       True))
    size = report.get("sockhook_binary_bytes")
    if size:
        checks.append(("17", "release binary ≤ 2.5 MiB stripped (issue 5 had 1 MiB, before TLS)",
                       f"{size / 1024:.0f} KiB", size <= 2.5 * MIB))
    failed = {r: sum(sum(c["failures"].values()) for c in results[r].values()) for r in ours}
    checks.append(("5", "0 client-visible failures, every case", ", ".join(f"{r}: {n}" for r, n in failed.items()),
                   not any(failed.values())))
    idle = {r: report["idle_memory"][r]["processes"] for r in ours}
    checks.append(("5", "nothing resident while idle", ", ".join(f"{r}: {n} processes" for r, n in idle.items()),
                   not any(idle.values())))
    peak_case = max(((results[r][c]["peak_rss_kib"], r, c) for r in ours for c in results[r]), default=None)
    if peak_case:
        kib, r, c = peak_case
        checks.append(("5", "peak RSS of an activation ≤ 4 MiB, 25 MiB body included (RSS alone)",
                       f"largest {mib(kib)} ({r}, {c})", kib <= 4 * 1024))
    if ADNANH_WEBHOOK in present and WARM in present:
        worst = worst_ratio(WARM, ADNANH_WEBHOOK, sized)
        if worst:
            checks.append(("5", "warm median latency ≤ adnanh/webhook's, every size",
                           f"worst warm ÷ webhook {worst[0]:.2f}× ({worst[1]})", worst[0] <= 1))
    if ADNANH_WEBHOOK in present and COLD in present:
        small = [c for c in sized if info[c]["body_size"] <= 64 * KIB]
        worst = worst_ratio(COLD, ADNANH_WEBHOOK, small)
        if worst:
            checks.append(("5", "cold median latency ≤ 2× adnanh/webhook's warm, 0–64 KiB",
                           f"worst cold ÷ webhook {worst[0]:.2f}× ({worst[1]})", worst[0] <= 2))
    if COLD_JOURNAL in present and FLOOR_COLD in present:
        worst = worst_ratio(COLD_JOURNAL, FLOOR_COLD, [c for c in sized if info[c]["body_size"] == 0])
        if worst:
            checks.append(("17", "cold, 0 B, with the journal: median ≤ 1.25× the floor's started the same way",
                           f"worst {worst[0]:.2f}× ({worst[1]})", worst[0] <= 1.25))
    for c in [c for c in report["cases"] if info[c]["concurrency"] > 1]:
        peer = results.get(ADNANH_WEBHOOK, {}).get(c)
        for r in (WARM_JOURNAL, WARM_JOURNAL_TMPFS):
            res = results.get(r, {}).get(c)
            if res and peer:
                ok = res["answered"] == res["requests"] and res["throughput_per_s"] >= peer["throughput_per_s"]
                checks.append(("15", f"{c}: with the journal, every request answered, throughput ≥ adnanh/webhook's "
                                     f"({r})",
                               f"{res['answered']}/{res['requests']}, {res['throughput_per_s']} req/s, "
                               f"{res['throughput_per_s'] / peer['throughput_per_s']:.2f}× webhook's", ok))
    if WEBHOOK_TLS in present and WARM_TLS in present:
        worst = worst_ratio(WARM_TLS, WEBHOOK_TLS, sized)
        if worst:
            checks.append(("12", "warm HTTPS median latency ≤ webhook -secure's, every size",
                           f"worst warm https ÷ webhook https {worst[0]:.2f}× ({worst[1]})", worst[0] <= 1))
    for c in [c for c in report["cases"] if info[c]["expect_100"]]:
        for r in ours:
            res = results[r].get(c)
            if res and res["latency_ms_p99"] is not None:
                checks.append(("5", f"Expect: 100-continue at 1 MiB answered in ≤ 50 ms ({r})",
                               f"median {res['latency_ms_median']:.1f} ms, p99 {res['latency_ms_p99']:.1f} ms",
                               res["latency_ms_p99"] <= 50 and not res["failures"]))
    return checks


COLOURS = {COLD: "#1b7837", WARM: "#7fbf7b", FLOOR_COLD: "#252525", FLOOR_WARM: "#8c8c8c",
           NETCAT_RECIPE: "#e08214", ADNANH_WEBHOOK: "#2166ac",
           COLD_TLS: "#762a83", WARM_TLS: "#c2a5cf", WEBHOOK_TLS: "#67a9cf",
           COLD_JOURNAL: "#8c510a", WARM_JOURNAL: "#d8b365", WARM_JOURNAL_TMPFS: "#f6e8c3",
           WARM_FILTERED: "#a6dba0"}
MARKERS = {COLD: "o", WARM: "s", FLOOR_COLD: "v", FLOOR_WARM: "P", NETCAT_RECIPE: "^", ADNANH_WEBHOOK: "D",
           COLD_TLS: "o", WARM_TLS: "s", WEBHOOK_TLS: "D", COLD_JOURNAL: "o", WARM_JOURNAL: "s",
           WARM_JOURNAL_TMPFS: "x", WARM_FILTERED: "*"}
LINESTYLES = {FLOOR_COLD: "--", FLOOR_WARM: "--", COLD_TLS: ":", WARM_TLS: ":", WEBHOOK_TLS: ":",
              COLD_JOURNAL: "-.", WARM_JOURNAL: "-.", WARM_JOURNAL_TMPFS: "-.", WARM_FILTERED: ":"}


def responder_ticks(ax, names: list[str]) -> None:
    """One tick per responder; past six of them, upright and smaller, so that they do not overlap."""
    crowded = len(names) > 6
    ax.set_xticks(range(len(names)), [n if crowded else tick_label(n) for n in names],
                  rotation=90 if crowded else 0, fontsize=7 if crowded else None)


def tick_label(responder: str) -> str:
    """A responder's name on two lines, to fit six of them under one chart."""
    return responder.replace(" ", "\n", 1).replace("/", "/\n", 1)


FAILURE_HATCHES = {"reset": "\\\\", "broken pipe": "//", "refused": "..", "incomplete": "xx", "timeout": "--",
                   "wrong status": "++", "other": "oo"}


def failure_classes_chart(ax, results: dict, present: list[str]) -> None:
    """Stacked bars: failed requests per responder, by class, as % of all requests sent."""
    bottoms = [0.0] * len(present)
    sent = [sum(c["requests"] for c in results[r].values()) for r in present]
    for cls in FAILURE_CLASSES:
        counts = [sum(c["failures"].get(cls, 0) for c in results[r].values()) for r in present]
        if not any(counts):
            continue
        heights = [100 * n / total if total else 0 for n, total in zip(counts, sent)]
        ax.bar(range(len(present)), heights, bottom=bottoms, color=[COLOURS[r] for r in present],
               edgecolor="black", hatch=FAILURE_HATCHES[cls], label=cls)
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    for i, r in enumerate(present):
        failed = sum(sum(c["failures"].values()) for c in results[r].values())
        ax.annotate(f"{failed}/{sent[i]}", (i, bottoms[i]), ha="center", va="bottom", fontsize=10,
                    xytext=(0, 2), textcoords="offset points")
    responder_ticks(ax, present)
    ax.set_title("Client-visible failures, all cases")
    ax.set_ylabel("% of requests sent")
    ax.set_xlim(-0.6, len(present) - 0.4)
    ax.set_ylim(0, max(max(bottoms, default=0) * 1.15, 1))
    if any(bottoms):
        from matplotlib.patches import Patch

        used = [cls for cls in FAILURE_CLASSES if any(c["failures"].get(cls) for r in present for c in results[r].values())]
        ax.legend([Patch(facecolor="white", edgecolor="black", hatch=FAILURE_HATCHES[cls]) for cls in used], used,
                  title="class", loc="upper left")


def idle_memory_chart(ax, report: dict, present: list[str]) -> None:
    """Two bars per responder: resident memory while idle at the start and after all cases."""
    width = 0.38
    for offset, key, hatch, when in ((-width / 2, "idle_memory", "", "at the start"),
                                      (width / 2, "idle_memory_after_load", "//", "after the run")):
        names = [r for r in present if r in report[key]]
        xs = [present.index(r) + offset for r in names]
        values = [report[key][r]["kib"] / 1024 for r in names]
        drawn = ax.bar(xs, values, width, color=[COLOURS[r] for r in names], edgecolor="black", hatch=hatch,
                       label=when)
        for rect, value in zip(drawn, values):
            ax.annotate("none" if value == 0 else f"{value:.1f}", (rect.get_x() + rect.get_width() / 2, value),
                        ha="center", va="bottom", fontsize=9, xytext=(0, 2), textcoords="offset points")
    responder_ticks(ax, present)
    ax.set_title("Memory while idle (none: no process at all)")
    ax.set_ylabel("MiB resident")
    ax.margins(y=0.15)
    from matplotlib.patches import Patch

    ax.legend([Patch(facecolor="white", edgecolor="black", hatch=h) for h in ("", "//")],
              ["at the start", "after the run"], loc="upper left")


def draw_chart(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import FuncFormatter

    plain_numbers = FuncFormatter(lambda value, _: f"{value:g}")
    results, present = report["results"], report["responders"]
    sizes = report["sizes"]
    fig, axes = plt.subplots(3, 4, figsize=(21, 14))
    fig.suptitle(f"sockhook between the floor and its peers — loopback, {report['date']}", fontsize=15)

    def size_axis(ax, title, ylabel):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([max(s, 100) for s in sizes], [size_label(s) for s in sizes])
        ax.minorticks_off()
        ax.yaxis.set_major_formatter(plain_numbers)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("request body size")
        ax.grid(True, which="major", alpha=0.3)

    def by_size(ax, client, key, title, ylabel, scale=1.0):
        for r in present:
            xs, ys = [], []
            for size in sizes:
                res = results[r].get(f"{client} {size_label(size)}")
                if res and res.get(key):  # 0 only where a clock tick is coarser than the figure
                    xs.append(max(size, 100))
                    ys.append(res[key] * scale)
            ax.plot(xs, ys, marker=MARKERS[r], color=COLOURS[r], label=r, linewidth=2,
                    linestyle=LINESTYLES.get(r, "-"))
        size_axis(ax, title, ylabel)

    def over_floor(ax, client):
        """Each responder's median latency ÷ that of the floor started the same way."""
        drawn = False
        for r in present:
            floor = FLOOR_OF.get(r)
            if floor not in present:
                continue
            xs, ys = [], []
            for size in sizes:
                case = f"{client} {size_label(size)}"
                mine, base = results[r].get(case), results[floor].get(case)
                if mine and base and mine["latency_ms_median"] and base["latency_ms_median"]:
                    xs.append(max(size, 100))
                    ys.append(mine["latency_ms_median"] / base["latency_ms_median"])
            if xs:
                drawn = True
                ax.plot(xs, ys, marker=MARKERS[r], color=COLOURS[r], linewidth=2,
                        label=f"{r} ÷ {floor}")
                ax.annotate(f"{ys[-1]:.2f}×", (xs[-1], ys[-1]), xytext=(4, 0), textcoords="offset points",
                            color=COLOURS[r], fontsize=9, va="center")
        size_axis(ax, f"Latency ÷ the floor started the same way — {client}", "ratio of medians (log)")
        if not drawn:
            return
        ax.axhline(1, color="black", linewidth=2.5)
        ax.axhspan(1, 1.2, color="#1b7837", alpha=0.10, linewidth=0)
        for bound, style, text, dy, va in ((1.2, ":", "goal ≤ 64 KiB: 1.2×", -2, "top"),
                                           (1.3, "--", "goal ≥ 1 MiB: 1.3×", 2, "bottom")):
            ax.axhline(bound, color="grey", linestyle=style, linewidth=1)
            ax.annotate(text, (max(sizes[0], 100), bound), xytext=(2, dy), textcoords="offset points",
                        color="grey", fontsize=8, ha="left", va=va)
        ax.annotate("the floor = 1", (max(sizes[0], 100), 1), xytext=(2, -14), textcoords="offset points",
                    fontsize=9, ha="left", va="top")
        low, high = ax.get_ylim()
        ax.set_ylim(min(low, 0.5), max(high, 2))
        ticks = [0.1, 0.2, 0.5, 1, 1.2, 1.5, 2, 3, 5, 10, 20, 50, 100, 200, 500]
        ax.set_yticks([t for t in ticks if ax.get_ylim()[0] <= t <= ax.get_ylim()[1]])
        ax.legend(loc="lower left", fontsize=8)

    over_floor(axes[0, 0], "curl")
    over_floor(axes[0, 1], "raw")
    by_size(axes[0, 2], "curl", "latency_ms_median", "Latency, median — curl", "ms (log)")
    by_size(axes[0, 3], "raw", "latency_ms_median", "Latency, median — client writes all, then reads", "ms (log)")
    axes[0, 2].legend(loc="upper left", fontsize=8)
    by_size(axes[1, 0], "raw", "peak_memory_kib", "Peak memory: RSS + spooled memfds (raw client)", "MiB (log)",
            1 / 1024)
    axes[1, 0].axhline(4, color="grey", linestyle="--", linewidth=1)
    axes[1, 0].annotate("issue 5's bar for RSS: 4 MiB", (max(sizes), 4), xytext=(0, -3), textcoords="offset points",
                        color="grey", ha="right", va="top", fontsize=8)
    low, high = axes[1, 0].get_ylim()
    axes[1, 0].set_yticks([t for i in range(-2, 12) for t in (2**i, 1.5 * 2**i) if low <= t <= high])
    by_size(axes[1, 1], "raw", "cpu_ms_per_request", "CPU per request, incl. action (floor: none) — raw",
            "ms (log)")

    def bars(ax, values, title, ylabel, labels=None):
        names = [r for r in present if values.get(r) is not None]
        heights = [values[r] for r in names]
        drawn = ax.bar(range(len(names)), heights, color=[COLOURS[r] for r in names])
        responder_ticks(ax, names)
        for rect, r in zip(drawn, names):
            text = labels[r] if labels else f"{values[r]:.3g}"
            ax.annotate(text, (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                        ha="center", va="bottom", fontsize=9, xytext=(0, 2), textcoords="offset points")
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.margins(y=0.18)

    failure_classes_chart(axes[1, 2], results, present)
    idle_memory_chart(axes[1, 3], report, present)

    bursts = [c for c in report["cases"] if c.startswith("burst")][:2]
    for ax, burst in zip((axes[2, 0], axes[2, 1]), bursts):
        answered = {r: results[r][burst]["throughput_per_s"] for r in present if burst in results[r]}
        labels = {r: f"{answered[r]:.0f}/s\n{results[r][burst]['answered']}/{results[r][burst]['requests']}"
                  for r in answered}
        bars(ax, answered, burst + " (answered/sent)", "answered requests per second", labels)
        if FLOOR_WARM in answered:
            ax.axhline(0.7 * answered[FLOOR_WARM], color="grey", linestyle="--", linewidth=1)
            ax.annotate("goal: 0.7× floor warm", (-0.4, 0.7 * answered[FLOOR_WARM]), xytext=(0, 3),
                        textcoords="offset points", color="grey", fontsize=8)
    for ax in (axes[2, 0], axes[2, 1])[len(bursts):]:
        ax.axis("off")
    expect = [c for c in report["cases"] if "Expect" in c]
    if expect:
        median = {r: results[r][expect[0]]["latency_ms_median"] for r in present if expect[0] in results[r]}
        bars(axes[2, 2], median, "Expect: 100-continue, 1 MiB, median", "ms",
             {r: ("all failed" if v is None else f"{v:.1f} ms") for r, v in median.items()})
        axes[2, 2].axhline(50, color="grey", linestyle="--", linewidth=1)
        axes[2, 2].annotate("issue 5's bar: 50 ms", (-0.4, 50), xytext=(0, 3), textcoords="offset points",
                            color="grey", fontsize=8)
    else:
        axes[2, 2].axis("off")
    goals_panel(axes[2, 3], report)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)
    try:  # a 64-colour palette: a third of the size, no visible difference
        from PIL import Image

        with Image.open(path) as image:
            small = image.convert("RGB").quantize(colors=64)
        small.save(path, optimize=True)
    except ImportError:
        pass


def goals_panel(ax, report: dict) -> None:
    """Issue 17's goals (and issue 5's kept ones), one line each, green pass or red miss."""
    ax.axis("off")
    ax.set_title("Goals, from this run")
    checks = checks_against_the_goals(report)
    if not checks:
        ax.text(0, 1, "sockhook not run", va="top")
        return
    # two lines per goal while they fit at 7.5 points, else one line each, smaller
    two_lines = len(checks) <= 12
    y = 1.0
    step = 1.0 / (len(checks) + 1)
    for issue, what, measured, ok in checks:
        short = what.split(":")[0] if len(what) > 60 else what
        verdict = f"#{issue} {'pass' if ok else 'MISS'}  {short[:58]}"
        text = f"{verdict}\n        {measured[:64]}" if two_lines else f"{verdict}: {measured[:44]}"
        ax.text(0, y, text, va="top", fontsize=7.5 if two_lines else 5.5, family="monospace",
                color="#1b7837" if ok else "#b2182b", transform=ax.transAxes)
        y -= step


# --------------------------------------------------------------------------- main


def compact_number_lists(text: str) -> str:
    """Puts each list of numbers in indented JSON on one line."""
    return re.sub(r"\[[-\d.,\s]+\]", lambda m: "[" + ", ".join(m.group(0)[1:-1].split()).replace(",,", ",") + "]", text)


def parse_arguments(argv):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sockhook", default=os.path.join(repo, "target/release/sockhook"),
                   help="sockhook binary (default: target/release/sockhook); without it, only the peers run")
    p.add_argument("--quick", action="store_true", help="a smoke run (about 100 s on 2 cores): few requests, no 25 MiB")
    p.add_argument("--responders", default=",".join(RESPONDERS),
                   help=f"comma-separated subset of: {', '.join(RESPONDERS)}")
    p.add_argument("--requests", type=int, help="requests per case up to 1 MiB (default 300; --quick 8)")
    p.add_argument("--requests-25m", type=int, help="requests per 25 MiB case (default 10; --quick: no 25 MiB case)")
    p.add_argument("--requests-expect", type=int, help="requests in the Expect case (default 30; --quick 3)")
    p.add_argument("--burst", type=int, help="requests in each burst (default 1000; --quick 100)")
    p.add_argument("--concurrency", default=",".join(map(str, BURST_CONCURRENCIES)),
                   help="concurrency of the bursts, comma-separated: one burst each (default 8,64)")
    p.add_argument("--floor", help="a floor binary already built (default: build bench/floor/floor.c)")
    p.add_argument("--out", help="output path without extension (default bench/results/latest, "
                                 "or bench/results/quick with --quick)")
    p.add_argument("--report-from", metavar="JSON",
                   help="measure nothing: write the table and chart again from a JSON of an earlier run")
    p.add_argument("--keep-workdir", action="store_true", help="keep the temporary directory (logs, configs)")
    args = p.parse_args(argv)
    defaults = {"requests": 8, "requests_25m": 0, "requests_expect": 3, "burst": 100} if args.quick else \
        {"requests": 300, "requests_25m": 10, "requests_expect": 30, "burst": 1000}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.sizes = [s for s in BODY_SIZES if s < 25 * MIB or args.requests_25m > 0]
    args.out = args.out or os.path.join(repo, "bench/results", "quick" if args.quick else "latest")
    args.responders = [r.strip() for r in args.responders.split(",") if r.strip()]
    try:
        args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    except ValueError:
        p.error(f"--concurrency: not a list of numbers: {args.concurrency}")
    unknown = set(args.responders) - set(RESPONDERS)
    if unknown:
        p.error(f"unknown responders: {', '.join(sorted(unknown))}")
    return args


def write_report(report: dict, out: str) -> None:
    """Prints the Markdown tables and writes out.md, out.json and out.png."""
    markdown = markdown_report(report)
    print(markdown)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".md", "w") as f:
        f.write(markdown)
    with open(out + ".json", "w") as f:
        f.write(compact_number_lists(json.dumps(report, indent=1, ensure_ascii=False)) + "\n")
    try:
        draw_chart(report, out + ".png")
    except ImportError:
        log("matplotlib is missing: no chart (apt-get install python3-matplotlib)")
    log(f"wrote {out}.md, .json, .png")


def main(argv) -> int:
    args = parse_arguments(argv)
    if args.report_from:
        with open(args.report_from) as f:
            write_report(json.load(f), args.out)
        return 0
    begun = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="sockhook-bench-")
    sampler = PeakMemorySampler()
    notes = []
    report = {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "host": f"{platform.node()}, Linux {platform.release()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f} at start",
        "command": " ".join(["bench/run", *argv]),
        "versions": {"webhook": package_version("webhook"), "netcat-openbsd": package_version("netcat-openbsd"),
                     "curl": package_version("curl")},
        "binary_sizes": {},
        "sizes": args.sizes,
    }
    responders: list[Responder] = []
    wanted = args.responders
    hooks_dir, key_file = write_sockhook_config(workdir)
    cold_idle = COLD_IDLE_TIMEOUTS[0]
    tls_files = make_certificate(workdir) if {COLD_TLS, WARM_TLS, WEBHOOK_TLS} & set(wanted) else None
    if tls_files:
        notes.append("HTTPS: every request is a new connection with a full handshake (no session resumption), "
                     "TLS 1.3, an EC P-256 certificate for `localhost`, verified by the client (curl --cacert, "
                     "Python's ssl); sockhook gets it with --tls-cert/--tls-key on a socket passed with "
                     "LISTEN_FDNAMES=https, webhook with -secure -cert -key. The raw client, like a phone app, keeps "
                     "Nagle's algorithm on: where its last TLS record waits for the server's delayed ACK it pays "
                     "about 40 ms, with either server (curl sets TCP_NODELAY and never does).")
    if {COLD, WARM, COLD_TLS, WARM_TLS, *JOURNALED} & set(wanted):
        if os.access(args.sockhook, os.X_OK):
            check = subprocess.run([args.sockhook, "check", "--hooks", hooks_dir, "--key", key_file],
                                   capture_output=True, text=True, timeout=30)
            if check.returncode != 0:
                log(f"sockhook check failed ({check.returncode}): {check.stdout}{check.stderr}")
            report["versions"]["sockhook"] = sockhook_version(args.sockhook)
            size = os.path.getsize(args.sockhook)
            report["sockhook_binary_bytes"] = size
            for r in (COLD, WARM, COLD_TLS, WARM_TLS, *JOURNALED, WARM_FILTERED):
                report["binary_sizes"][r] = f"{size / 1024:.0f} KiB"
            overhead = measure_activation_overhead(workdir)
            report["activation_overhead"] = overhead
            notes.append(
                f"The stand-in for systemd (posix_spawn of `{LAUNCHER[0]} -c '{LAUNCHER[2]}' sockhook …`, which sets "
                f"LISTEN_PID) costs {overhead['wall_ms_median']:.2f} ms and {overhead['cpu_ms_median']:.2f} ms CPU per "
                "activation (median, /bin/true in sockhook's place); cold figures include it, as they would include "
                "systemd's own fork and exec.")
            if {COLD, COLD_TLS, COLD_JOURNAL} & set(wanted):
                cold_idle = choose_cold_idle_timeout(args.sockhook, hooks_dir, key_file, workdir)
                notes.append(f"sockhook cold runs with --idle-timeout {cold_idle}, warm with {WARM_IDLE_TIMEOUT}.")
            sockhook_argv = [args.sockhook, "serve", "--hooks", hooks_dir, "--key", key_file]
            # Every client here is 127.0.0.1: a burst wider than sockhook's per-source limit (32 by
            # default, a defence against one address holding the slots) would be answered 503 in part,
            # by design. The limit is raised to twice the widest burst (a connection counts until
            # sockhook has closed it, after the client, answered, may have opened the next), so
            # that the burst measures throughput.
            per_source = 2 * max(args.concurrency, default=1)
            if per_source > DEFAULT_PER_SOURCE:
                sockhook_argv += ["--max-connections-per-source", str(per_source)]
                notes.append(f"sockhook runs with --max-connections-per-source {per_source} (default "
                             f"{DEFAULT_PER_SOURCE}): every client is 127.0.0.1, and a connection counts until "
                             "sockhook has closed it, while the client, answered, opens the next; with the default "
                             f"(measured in a run with 64) a burst of {per_source // 2} from one address is answered "
                             "503 in part.")
            sockhook_argv.append("--idle-timeout")
            if COLD in wanted:
                responders.append(Activated(COLD, sockhook_argv, cold_idle, True,
                                            os.path.join(workdir, "sockhook-cold.log"), sampler))
            if WARM in wanted:
                responders.append(Activated(WARM, sockhook_argv, WARM_IDLE_TIMEOUT, False,
                                            os.path.join(workdir, "sockhook-warm.log"), sampler))
            if WARM_FILTERED in wanted:
                filtered_argv = list(sockhook_argv)
                filtered_argv[filtered_argv.index("--hooks") + 1] = filtered_hooks_dir(workdir)
                filtered = Activated(WARM_FILTERED, filtered_argv, WARM_IDLE_TIMEOUT, False,
                                     os.path.join(workdir, "sockhook-warm-filtered.log"), sampler, logs_runs=False)
                filtered.expected_status = 200  # authenticated, then left out by the events filter
                responders.append(filtered)
                notes.append(f"{WARM_FILTERED}: sockhook warm with the hook's `events = [\"ping\"]`; the deliveries "
                             "are `push`, so each is read, authenticated and spooled as for sockhook warm, then "
                             "answered 200 and nothing runs, as the floor runs nothing: the responder alone against "
                             "the floor.")
            # The journal: a state directory per responder, on disk (under the workdir) or tmpfs.
            journal_dirs = {COLD_JOURNAL: os.path.join(workdir, "state-cold"),
                            WARM_JOURNAL: os.path.join(workdir, "state-warm"),
                            WARM_JOURNAL_TMPFS: tempfile.mkdtemp(prefix="sockhook-bench-state-", dir="/dev/shm")
                            if os.path.isdir("/dev/shm") else os.path.join(workdir, "state-shm")}
            report["journal_dirs"] = journal_dirs
            if set(JOURNALED) & set(wanted):
                notes.append("sockhook … journal: with --state DIR, each accepted delivery is written to DIR, "
                             "fdatasync'ed and renamed into place, and DIR fsync'ed, before its 204 (issue 15); "
                             f"DIR is on this machine's disk ({filesystem_of(workdir)}) for cold and warm journal, "
                             f"on {filesystem_of(journal_dirs[WARM_JOURNAL_TMPFS])} for warm journal tmpfs.")
            for r, cold in ((COLD_JOURNAL, True), (WARM_JOURNAL, False), (WARM_JOURNAL_TMPFS, False)):
                if r in wanted:
                    argv = sockhook_argv[:-1] + ["--state", journal_dirs[r], "--idle-timeout"]
                    responders.append(Activated(r, argv, cold_idle if cold else WARM_IDLE_TIMEOUT, cold,
                                                os.path.join(workdir, f"{r.replace(' ', '-')}.log"), sampler))
            if tls_files:
                cert, key = tls_files
                tls_argv = sockhook_argv[:-1] + ["--tls-cert", cert, "--tls-key", key, "--idle-timeout"]
                if COLD_TLS in wanted:
                    responders.append(Activated(COLD_TLS, tls_argv, cold_idle, True,
                                                os.path.join(workdir, "sockhook-cold-https.log"), sampler, cafile=cert))
                if WARM_TLS in wanted:
                    responders.append(Activated(WARM_TLS, tls_argv, WARM_IDLE_TIMEOUT, False,
                                                os.path.join(workdir, "sockhook-warm-https.log"), sampler, cafile=cert))
        else:
            log(f"no sockhook binary at {args.sockhook}: running the peers only")
            notes.append(f"sockhook not run: no binary at {args.sockhook}.")
    if set(FLOORS) & set(wanted):
        floor, why = (args.floor, "") if args.floor else build_floor(workdir)
        if floor:
            report["versions"]["floor"] = f"bench/floor/floor.c, OpenSSL {package_version('libssl-dev')} (libcrypto.a)"
            for r in FLOORS:
                report["binary_sizes"][r] = f"{os.path.getsize(floor) / 1024:.0f} KiB (static)"
            notes.append(floor_note(cold_idle))
            floor_argv = [floor, "--secret", os.path.join(workdir, "secret"), "--idle-timeout"]
            if FLOOR_COLD in wanted:
                responders.append(Activated(FLOOR_COLD, floor_argv, cold_idle, True,
                                            os.path.join(workdir, "floor-cold.log"), sampler, logs_runs=False))
            if FLOOR_WARM in wanted:
                responders.append(Activated(FLOOR_WARM, floor_argv, WARM_IDLE_TIMEOUT, False,
                                            os.path.join(workdir, "floor-warm.log"), sampler, logs_runs=False))
        else:
            log(f"the floor was not built: {why}")
            notes.append(f"The floor not run: it could not be built ({why}).")
    if NETCAT_RECIPE in wanted:
        responders.append(NetcatRecipe(os.path.join(workdir, "netcat.log"), sampler))
        report["binary_sizes"][NETCAT_RECIPE] = f"{os.path.getsize(NETCAT) / 1024:.0f} KiB (+ bash)"
    if ADNANH_WEBHOOK in wanted:
        responders.append(AdnanhWebhook(workdir, os.path.join(workdir, "webhook.log")))
        report["binary_sizes"][ADNANH_WEBHOOK] = f"{os.path.getsize(WEBHOOK) / 1024:.0f} KiB"
    if WEBHOOK_TLS in wanted and tls_files:
        responders.append(AdnanhWebhook(workdir, os.path.join(workdir, "webhook-https.log"), tls=tls_files))
        report["binary_sizes"][WEBHOOK_TLS] = f"{os.path.getsize(WEBHOOK) / 1024:.0f} KiB"
    if not responders:
        log("nothing to run")
        return 1

    cases = plan_cases(args)
    bodies = {size: Body.make(size, workdir) for size in {c.body_size for c in cases}}
    report.update(responders=[r.label for r in responders], cases=[c.name for c in cases],
                  case_info={c.name: dataclasses.asdict(c) for c in cases},
                  results={r.label: {} for r in responders}, sanity={}, idle_memory={},
                  idle_memory_after_load={}, notes=notes)
    started: list[Responder] = []
    try:
        for responder in responders:
            responder.start()
            started.append(responder)
            report["sanity"][responder.label] = sanity_check(responder, bodies[KIB])
            log(f"{responder.label} on port {responder.port}: signature check {report['sanity'][responder.label]}")
            report["idle_memory"][responder.label] = responder.idle_memory()
        for case in cases:
            for responder in responders:  # interleaved, so that the machine's noise hits all alike
                result = run_case(case, responder, bodies[case.body_size])
                report["results"][responder.label][case.name] = result
                log(f"{responder.label:15} {case.name:34} median {result['latency_ms_median']} ms, "
                    f"p99 {result['latency_ms_p99']} ms, failures {result['failures'] or 0}, "
                    f"cpu {result['cpu_ms_per_request']} ms/req, peak {result['peak_rss_kib']} KiB, "
                    f"runs {result['process_runs']}")
        for responder in responders:
            report["idle_memory_after_load"][responder.label] = responder.idle_memory()
    finally:
        for responder in started:
            try:
                responder.stop()
            except Exception as e:  # keep stopping the others
                log(f"stopping {responder.label}: {e}")
        sampler.stop()
        if args.keep_workdir:
            log(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        for state in report.get("journal_dirs", {}).values():
            if not state.startswith(workdir) and not args.keep_workdir:
                shutil.rmtree(state, ignore_errors=True)

    report["elapsed_s"] = time.monotonic() - begun
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
