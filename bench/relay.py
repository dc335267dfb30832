#!/usr/bin/env python3
"""bench/relay.py — publish-to-run latency through a relay vs a direct POST.

Direct: a POST to `sockhook serve` (token hook) until its command has the
body. Relay: a POST to a relay (`sockhook serve`, a `publish = true` hook,
a state directory) until the command of the same hook at home (`sockhook
subscribe` over ws:// on loopback, `auth = "relay"`, its own journal) has
the body. Both commands write their stdin to a FIFO the benchmark reads, so
the time ends when the run has the body. Sequential deliveries; loopback
only; the standard library only.

Usage: bench/relay.py --sockhook PATH [--count N] [--quick]
Writes bench/results/relay-latency.{md,json}.
"""

import argparse
import hashlib
import hmac
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
KEY = b"0123456789abcdef0123456789abcdef"


def token(path):
    return hmac.new(KEY, path.encode(), hashlib.sha256).hexdigest()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_line(proc_log, needle, limit=20.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with open(proc_log, "rb") as f:
            if needle.encode() in f.read():
                return
        time.sleep(0.01)
    raise SystemExit(f"bench: {needle!r} not in {proc_log}")


def post(port, path, body):
    request = (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token(path)}\r\n"
        f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(request)
        answer = s.recv(4096)
    if not answer.startswith(b"HTTP/1.1 204"):
        raise SystemExit(f"bench: {path} answered {answer[:60]!r}")


def measure(port, path, fifo, count):
    times = []
    for i in range(count):
        body = b"delivery %d\n" % i
        start = time.perf_counter()
        post(port, path, body)
        # Opening the read end blocks until the run opens the write end.
        with open(fifo, "rb", buffering=0) as f:
            got = f.read()
        end = time.perf_counter()
        if got != body:
            raise SystemExit(f"bench: the run got {got!r}, not {body!r}")
        times.append((end - start) * 1000)
    return times


def summary(times):
    times = sorted(times)
    pick = lambda q: times[min(len(times) - 1, int(q * len(times)))]
    return {
        "count": len(times),
        "min_ms": round(times[0], 2),
        "median_ms": round(statistics.median(times), 2),
        "p90_ms": round(pick(0.90), 2),
        "p99_ms": round(pick(0.99), 2),
        "max_ms": round(times[-1], 2),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sockhook", required=True)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    count = 30 if args.quick else args.count
    binary = os.path.abspath(args.sockhook)
    work = tempfile.mkdtemp(prefix="sockhook-bench-relay-")
    procs = []
    try:
        key = os.path.join(work, "key")
        with open(key, "wb") as f:
            f.write(KEY + b"\n")
        os.chmod(key, 0o600)
        fifo = os.path.join(work, "fifo")
        os.mkfifo(fifo)
        command = json.dumps(["/bin/sh", "-c", f"cat >{fifo}"])
        direct_hooks, relay_hooks, home_hooks = (
            os.path.join(work, d) for d in ("direct.d", "relay.d", "home.d")
        )
        for d in (direct_hooks, relay_hooks, home_hooks):
            os.mkdir(d)
        with open(os.path.join(direct_hooks, "kodi.toml"), "w") as f:
            f.write(f'command = {command}\nauth = "token"\n')
        with open(os.path.join(relay_hooks, "kodi.toml"), "w") as f:
            f.write('publish = true\nauth = "token"\n')
        with open(os.path.join(home_hooks, "kodi.toml"), "w") as f:
            f.write(f'command = {command}\nauth = "relay"\n')
        sub_token = os.path.join(work, "relay-token")
        with open(sub_token, "w") as f:
            f.write(token("/sub/hooks/") + "\n")
        env = {k: v for k, v in os.environ.items() if k not in ("STATE_DIRECTORY", "LISTEN_FDS", "NOTIFY_SOCKET")}

        def start(name, argv):
            log = os.path.join(work, name + ".log")
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=open(log, "wb"), env=env)
            procs.append(proc)
            return log

        direct_port, relay_port = free_port(), free_port()
        log = start("direct", [binary, "serve", "--listen", f"127.0.0.1:{direct_port}", "--hooks", direct_hooks,
                               "--key", key, "--state", os.path.join(work, "direct-state")])
        wait_line(log, "listening on")
        log = start("relay", [binary, "serve", "--listen", f"127.0.0.1:{relay_port}", "--hooks", relay_hooks,
                              "--key", key, "--state", os.path.join(work, "relay-state")])
        wait_line(log, "listening on")
        log = start("home", [binary, "subscribe", f"ws://127.0.0.1:{relay_port}/sub/hooks/", "--token", sub_token,
                             "--hooks", home_hooks, "--state", os.path.join(work, "home-state")])
        wait_line(log, "connected to")
        direct = measure(direct_port, "/hooks/kodi", fifo, count)
        relay = measure(relay_port, "/hooks/kodi", fifo, count)
        load = os.getloadavg()[0]
        results = {"direct": summary(direct), "relay": summary(relay), "load_average": load}
        lines = [
            "# Publish-to-run latency: through a relay vs a direct POST",
            "",
            f"`bench/relay.py`, {count} sequential deliveries each, loopback, {os.cpu_count()} cores, load",
            f"average {load:.1f} at the end; from the POST until the command has read the body (both",
            "journaled: the relay stores, the home side journals, each synced).",
            "",
            "| path | min ms | median ms | p90 ms | p99 ms | max ms |",
            "|---|---|---|---|---|---|",
        ]
        for name, label in (("direct", "direct POST to serve"), ("relay", "POST to relay → subscribe → run")):
            r = results[name]
            lines.append(f"| {label} | {r['min_ms']} | {r['median_ms']} | {r['p90_ms']} | {r['p99_ms']} | {r['max_ms']} |")
        text = "\n".join(lines) + "\n"
        print(text)
        os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
        with open(os.path.join(HERE, "results", "relay-latency.md"), "w") as f:
            f.write(text)
        with open(os.path.join(HERE, "results", "relay-latency.json"), "w") as f:
            json.dump(results, f, indent=2)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
