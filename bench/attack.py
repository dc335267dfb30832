#!/usr/bin/python3
"""bench/attack.py — issue 9's attacks against sockhook and adnanh/webhook, measured the same way.

Two cases, each run against every responder in turn (see bench/README.md, "Under attack"):

- memory: N clients (default 64) from 127.0.0.2 on, each sending a 25 MiB GitHub delivery with a
  wrong signature and holding its last byte; a valid delivery from 127.0.0.1 meanwhile. Peak RSS,
  peak bytes in memfds (sockhook spools bodies there; they are RAM that RSS does not show), and
  what the clients and the valid delivery got.
- slowloris: 2,000 slow heads from 127.0.0.2-21 (a header line a second, reopened when closed)
  and 300 one-byte-a-second bodies from 127.0.0.22-31; 30 valid deliveries from 127.0.0.1, one
  every 200 ms, each on its own thread with a 60 s limit. Their latency, and peak RSS + memfds.

Standard library only. Every wait is bounded; a case ends within about 90 s.
"""

import argparse
import errno
import hashlib
import hmac
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

MIB = 1 << 20
SECRET = b"attack-bench-secret"
BODY_BYTES = 25 * MIB
PROBE_LIMIT = 60.0
WEBHOOK = "/usr/bin/webhook"
HERE = os.path.dirname(os.path.abspath(__file__))


def log(message):
    print(f"attack: {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- measuring


def usage(pid):
    """(VmRSS bytes, bytes in memfds, sockets) of pid, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) * 1024
        memfd, sockets, seen = 0, 0, set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            path = f"/proc/{pid}/fd/{fd}"
            try:
                link = os.readlink(path)
                if link.startswith("socket:"):
                    sockets += 1
                elif link.startswith("/memfd:"):
                    st = os.stat(path)
                    if st.st_ino not in seen:
                        seen.add(st.st_ino)
                        memfd += st.st_blocks * 512
            except OSError:
                pass
        return rss, memfd, sockets
    except (OSError, StopIteration):
        return None


class Sampler:
    """Samples usage(pid) every `every` s on a thread; keeps the peaks."""

    def __init__(self, pid, every):
        self.pid, self.every = pid, every
        self.peak_total = self.peak_memfd = self.peak_rss = self.peak_sockets = 0
        self.last = (0, 0, 0)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.is_set():
            now = usage(self.pid)
            if now is None:
                return
            rss, memfd, sockets = now
            self.last = now
            self.peak_total = max(self.peak_total, rss + memfd)
            self.peak_memfd = max(self.peak_memfd, memfd)
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_sockets = max(self.peak_sockets, sockets)
            self.stop.wait(self.every)

    def finish(self):
        self.stop.set()
        self.thread.join()
        return {
            "peak_rss_plus_memfd_mib": round(self.peak_total / MIB, 1),
            "peak_memfd_mib": round(self.peak_memfd / MIB, 1),
            "peak_rss_mib": round(self.peak_rss / MIB, 1),
            "peak_sockets": self.peak_sockets,
        }


# ----------------------------------------------------------------------------- responders


class Sockhook:
    """sockhook with a github hook running /bin/true, started as systemd's Accept=no starts it:
    a socket listening with Backlog=1024 (the shipped units') on fd 3, LISTEN_FDS=1, LISTEN_PID."""

    expected = 204

    def __init__(self, label, binary, workdir, args):
        self.label, self.binary, self.args = label, binary, args
        self.dir = tempfile.mkdtemp(prefix="sockhook-", dir=workdir)

    def start(self):
        hooks = os.path.join(self.dir, "hooks.d")
        os.makedirs(hooks, exist_ok=True)
        secret = os.path.join(self.dir, "secret")
        with open(secret, "wb") as f:
            f.write(SECRET)
        with open(os.path.join(hooks, "gh.toml"), "w") as f:
            f.write(f'command = ["/bin/true"]\nauth = "github"\nsecret = "{secret}"\n')
        key = os.path.join(self.dir, "key")
        with open(key, "w") as f:
            f.write("0123456789abcdef0123456789abcdef\n")
        os.chmod(key, 0o600)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1024)
        self.port = self.listener.getsockname()[1]
        self.log = open(os.path.join(self.dir, "log"), "wb")
        argv = ["/bin/sh", "-c", 'LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@"', self.binary,
                "serve", "--hooks", hooks, "--key", key, "--idle-timeout", "600", *self.args]
        env = {"PATH": "/usr/bin:/bin", "LISTEN_FDS": "1"}
        self.pid = os.posix_spawn("/bin/sh", argv, env, file_actions=[
            (os.POSIX_SPAWN_DUP2, self.listener.fileno(), 3),
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, self.log.fileno(), 1),
            (os.POSIX_SPAWN_DUP2, self.log.fileno(), 2),
        ])

    def stop(self):
        os.kill(self.pid, 9)
        os.waitpid(self.pid, 0)
        self.listener.close()
        self.log.close()


class Webhook:
    """Debian's adnanh/webhook with the equivalent hook (payload-hmac-sha256 on
    X-Hub-Signature-256, /bin/true), as bench.py runs it; it answers 200."""

    expected = 200

    def __init__(self, workdir):
        self.label = "adnanh/webhook"
        self.dir = tempfile.mkdtemp(prefix="webhook-", dir=workdir)

    def start(self):
        hooks = os.path.join(self.dir, "hooks.json")
        with open(hooks, "w") as f:
            json.dump([{
                "id": "gh",
                "execute-command": "/bin/true",
                "trigger-rule-mismatch-http-response-code": 401,
                "trigger-rule": {"match": {
                    "type": "payload-hmac-sha256",
                    "secret": SECRET.decode(),
                    "parameter": {"source": "header", "name": "X-Hub-Signature-256"},
                }},
            }], f)
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.log = open(os.path.join(self.dir, "log"), "wb")
        self.process = subprocess.Popen(
            [WEBHOOK, "-hooks", hooks, "-ip", "127.0.0.1", "-port", str(self.port)],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        self.pid = self.process.pid
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("webhook does not listen")
                time.sleep(0.02)

    def stop(self):
        self.process.kill()
        self.process.wait(timeout=10)
        self.log.close()


# ----------------------------------------------------------------------------- clients


PATH = "/hooks/gh"  # sockhook's hooks.d/gh.toml, webhook's hook id gh under its /hooks/


def head(path, length, signature):
    return (f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {length}\r\n"
            f"X-Hub-Signature-256: sha256={signature}\r\nX-GitHub-Event: push\r\n"
            # sockhook closes after every response anyway; webhook keeps the connection open
            # without this, and the end of the response is read as EOF.
            "Content-Type: application/json\r\nConnection: close\r\n\r\n").encode()


def sign(body):
    return hmac.new(SECRET, body, hashlib.sha256).hexdigest()


def connect_from(source, port, blocking=True):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((source, 0))
    if blocking:
        s.settimeout(PROBE_LIMIT)  # a full backlog drops SYNs: connect would retry for 2 minutes
        s.connect(("127.0.0.1", port))
    else:
        s.setblocking(False)
        err = s.connect_ex(("127.0.0.1", port))
        if err not in (0, errno.EINPROGRESS):
            s.close()
            raise OSError(err, os.strerror(err))
    return s


def status_of(data):
    while data.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"):
        data = data[len(b"HTTP/1.1 100 Continue\r\n\r\n"):]
    try:
        return int(data[9:12])
    except ValueError:
        return 0


def valid_delivery(port, path, n, limit=PROBE_LIMIT):
    """A valid delivery from 127.0.0.1: (status or an error's name, seconds to the end of the response)."""
    body = json.dumps({"probe": n}).encode()
    started = time.monotonic()
    try:
        s = connect_from("127.0.0.1", port)
        s.settimeout(max(0.1, started + limit - time.monotonic()))
        s.sendall(head(path, len(body), sign(body)) + body)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        return status_of(data), time.monotonic() - started
    except OSError as e:
        return type(e).__name__, time.monotonic() - started


def latencies(results, expected):
    ok = sorted(t for status, t in results if status == expected)
    statuses = {}
    for status, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    out = {"statuses": statuses, "answered": len(ok), "sent": len(results)}
    if ok:
        p99 = ok[min(len(ok), max(1, -(-99 * len(ok) // 100))) - 1]
        out.update(median_ms=round(statistics.median(ok) * 1000, 1), p99_ms=round(p99 * 1000, 1),
                   max_ms=round(ok[-1] * 1000, 1))
    return out


# ----------------------------------------------------------------------------- cases


def memory_case(responder, clients):
    """clients x 25 MiB fake-signed deliveries holding the last byte, a valid one meanwhile."""
    sampler = Sampler(responder.pid, 0.02)
    fake = head(PATH, BODY_BYTES, "0" * 64)
    chunk = b"x" * (256 * 1024)
    release = threading.Event()
    outcome = [None] * clients
    sent_all = [threading.Event() for _ in range(clients)]

    def client(i):
        try:
            s = connect_from(f"127.0.0.{2 + i}", responder.port)
            s.sendall(fake)
            left = BODY_BYTES - 1
            s.setblocking(False)
            answer = b""
            deadline = time.monotonic() + PROBE_LIMIT
            while left and time.monotonic() < deadline:
                try:
                    answer += s.recv(4096)
                    outcome[i] = f"answered {status_of(answer)} after {BODY_BYTES - 1 - left} body bytes"
                    break
                except BlockingIOError:
                    pass
                try:
                    left -= s.send(chunk[:left])
                except BlockingIOError:
                    time.sleep(0.001)  # pacing: the responder reads at its pace
            if outcome[i] is None:
                outcome[i] = "holding the last byte" if not left else "still sending at the limit"
            sent_all[i].set()
            release.wait(PROBE_LIMIT)
            s.close()
        except OSError as e:
            outcome[i] = type(e).__name__
            sent_all[i].set()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for e in sent_all:
        e.wait(max(0.0, started + PROBE_LIMIT + 10 - time.monotonic()))
    settled = time.monotonic() - started
    time.sleep(1.0)  # the held bodies as they stand: a second of samples before the valid delivery
    valid = valid_delivery(responder.port, PATH, 0)
    release.set()
    for t in threads:
        t.join(PROBE_LIMIT)
    figures = sampler.finish()
    kinds = {}
    for o in outcome:
        key = o.split(" after ")[0] if o else "none"
        kinds[key] = kinds.get(key, 0) + 1
    figures.update(clients=clients, client_outcomes=kinds, attack_settled_s=round(settled, 1),
                   valid_status=valid[0], valid_ms=round(valid[1] * 1000, 1))
    return figures


class SlowAttack:
    """Slow heads and slow bodies on non-blocking sockets, one thread; a closed one is opened
    again at the next pass (every 100 ms); each sends a little every second."""

    def __init__(self, port, path, heads, bodies):
        self.port, self.path = port, path
        self.conns = [{"kind": "head", "source": f"127.0.0.{2 + i % 20}", "sock": None} for i in range(heads)]
        self.conns += [{"kind": "body", "source": f"127.0.0.{22 + i % 10}", "sock": None} for i in range(bodies)]
        self.stop = threading.Event()
        self.open = 0
        self.opened = 0
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def opening(self, kind):
        if kind == "head":
            return f"POST {self.path} HTTP/1.1\r\nHost: attack\r\n".encode()
        return head(self.path, 1000, "0" * 64)

    def step(self, c, tick):
        """One pass over one connection: notice an answer or a close, trickle, reopen."""
        s = c["sock"]
        if s is not None:
            try:
                s.recv(4096)  # an answer (408, 503) or EOF: the responder is done with it
                s.close()
                s = c["sock"] = None
            except BlockingIOError:
                if not c["sent"]:
                    try:
                        s.send(self.opening(c["kind"]))
                        c["sent"] = True
                    except (BlockingIOError, OSError):
                        pass
                elif tick:
                    try:
                        s.send(b"X-a: b\r\n" if c["kind"] == "head" else b"x")
                    except (BlockingIOError, OSError):
                        pass
            except OSError:
                s.close()
                s = c["sock"] = None
        if s is None:
            try:
                c["sock"] = connect_from(c["source"], self.port, blocking=False)
                c["sent"] = False
                self.opened += 1
            except OSError:
                return 0
        return 1

    def run(self):
        next_tick = time.monotonic() + 1
        while not self.stop.is_set():
            tick = time.monotonic() >= next_tick
            if tick:
                next_tick += 1
            self.open = sum(self.step(c, tick) for c in self.conns)
            self.stop.wait(0.1)  # pacing: slow on purpose
        for c in self.conns:
            if c["sock"] is not None:
                c["sock"].close()

    def finish(self):
        self.stop.set()
        self.thread.join()


def slowloris_case(responder, heads, bodies, probes):
    sampler = Sampler(responder.pid, 0.2)
    attack = SlowAttack(responder.port, PATH, heads, bodies)
    deadline = time.monotonic() + 10
    while attack.open < heads + bodies and time.monotonic() < deadline:
        time.sleep(0.05)
    results = [None] * probes

    def one(n):
        results[n] = valid_delivery(responder.port, PATH, n)

    threads = []
    for n in range(probes):
        t = threading.Thread(target=one, args=(n,), daemon=True)
        t.start()
        threads.append(t)
        time.sleep(0.2)  # pacing: one probe every 200 ms
    for t in threads:
        t.join(PROBE_LIMIT + 5)
    held = sampler.last[2]
    attack.finish()
    figures = sampler.finish()
    figures.update(latencies(results, responder.expected))
    figures.update(attack_connections=heads + bodies, attack_open_client_side=attack.open,
                   sockets_at_the_end=held, connections_opened=attack.opened)
    return figures


# ----------------------------------------------------------------------------- report


def report(results, args):
    lines = ["# Under attack (issue 9)", "",
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {os.getloadavg()[0]:.2f} "
             f"on {os.cpu_count()} cores. `bench/attack.py {' '.join(sys.argv[1:])}`", "",
             f"## memory: {args.clients} clients x 25 MiB with a wrong signature, holding the last byte",
             "", "| responder | peak memfds | peak RSS + memfds | clients | valid delivery from 127.0.0.1 |",
             "|---|---|---|---|---|"]
    for label, r in results.items():
        m = r.get("memory")
        if m:
            lines.append(f"| {label} | {m['peak_memfd_mib']} MiB | {m['peak_rss_plus_memfd_mib']} MiB | "
                         f"{m['client_outcomes']} | {m['valid_status']} in {m['valid_ms']} ms |")
    lines += ["", f"## slowloris: {args.heads} slow heads + {args.bodies} slow bodies, {args.probes} valid deliveries",
              "", "| responder | answered | median | p99 | max | statuses | peak RSS + memfds | peak sockets |",
              "|---|---|---|---|---|---|---|---|"]
    for label, r in results.items():
        s = r.get("slowloris")
        if s:
            lines.append(f"| {label} | {s['answered']}/{s['sent']} | {s.get('median_ms', '-')} ms | "
                         f"{s.get('p99_ms', '-')} ms | {s.get('max_ms', '-')} ms | {s['statuses']} | "
                         f"{s['peak_rss_plus_memfd_mib']} MiB | {s['peak_sockets']} |")
    lines += ["", "Latency: connect to the end of the response, of the deliveries answered as expected "
              "(sockhook 204, webhook 200); a delivery not answered within 60 s counts under its error. "
              "memfds: bytes held by the responder's memfds (st_blocks), sampled every 20 ms (memory) or "
              "200 ms (slowloris) from /proc, as the tests do; webhook keeps bodies on its heap (RSS).", ""]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sockhook", default=os.path.join(HERE, "..", "target", "release", "sockhook"))
    p.add_argument("--sockhook-args", default="", help="extra serve options, space-separated")
    p.add_argument("--before", help="another sockhook binary, measured too (e.g. one built from an older commit)")
    p.add_argument("--before-label", default="sockhook (before)")
    p.add_argument("--no-webhook", action="store_true")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--heads", type=int, default=2000)
    p.add_argument("--bodies", type=int, default=300)
    p.add_argument("--probes", type=int, default=30)
    p.add_argument("--quick", action="store_true", help="16 clients, 400 heads, 60 bodies, 10 probes")
    p.add_argument("--out", default=os.path.join(HERE, "results", "attack"))
    args = p.parse_args()
    if args.quick:
        args.clients, args.heads, args.bodies, args.probes = 16, 400, 60, 10
        if args.out == os.path.join(HERE, "results", "attack"):
            args.out = os.path.join(HERE, "results", "attack-quick")
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4 * (args.heads + args.bodies) + 1024
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(want, soft), max(want, hard)))
    workdir = tempfile.mkdtemp(prefix="sockhook-attack-")
    responders = []
    if os.path.exists(args.sockhook):
        binary = os.path.abspath(args.sockhook)
        responders.append(Sockhook("sockhook", binary, workdir, args.sockhook_args.split()))
        # Every slow connection admitted (100 per source address), as tests/attack.rs's slots test.
        responders.append(Sockhook("sockhook, 128 per source", binary, workdir,
                                   args.sockhook_args.split() + ["--max-connections-per-source", "128"]))
    else:
        log(f"no sockhook binary at {args.sockhook}: measuring without it")
    if args.before:
        responders.append(Sockhook(args.before_label, os.path.abspath(args.before), workdir, []))
    if not args.no_webhook:
        if os.path.exists(WEBHOOK):
            responders.append(Webhook(workdir))
        else:
            log("no /usr/bin/webhook (Debian package webhook): measuring without it")
    results = {}
    for r in responders:
        results[r.label] = {}
        for case in ("memory", "slowloris"):
            log(f"{r.label}: {case}")
            r.start()
            try:
                if case == "memory":
                    results[r.label][case] = memory_case(r, args.clients)
                else:
                    results[r.label][case] = slowloris_case(r, args.heads, args.bodies, args.probes)
            finally:
                r.stop()
            log(f"{r.label}: {case}: {results[r.label][case]}")
    text = report(results, args)
    print(text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".md", "w") as f:
        f.write(text)
    with open(args.out + ".json", "w") as f:
        json.dump({"args": vars(args), "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
