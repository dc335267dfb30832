#!/usr/bin/env python3
"""How fast can deliveries in flight together be made durable on this disk?

Issue 15's burst (1,000 deliveries, 8 in flight) on the journal's file system,
without sockhook: each of --concurrency threads makes --deliveries/concurrency
deliveries of --body bytes durable one after the other, as sockhook's workers
do, under each strategy in turn (alternating, --rounds times, so that other load
on the disk hits every strategy alike). A "group" is the deliveries waiting when
a sync starts; one sync serves them all, as `DirSync` in src/journal.rs does.

  today     the entry written as N.tmp, fdatasync'ed by its own thread, renamed
            to N.entry, then the directory fsync'ed for the group (src/journal.rs)
  own       as today, but each delivery fsyncs the directory itself, at once
            (concurrent fsyncs, which the kernel may batch; no group)
  leader    the entry written as N.tmp; the group's leader fdatasyncs every
            member's file in turn, renames each, fsyncs the directory once
  syncfs    the entry written as N.tmp; the leader calls syncfs(2) on the
            directory (every dirty file of the file system, others' too), renames
            each, fsyncs the directory once
  spare     as today, but into an empty file created (and synced) before the
            clock starts, as a pool of recycled files would: no file created
            while the clock runs
  segment   the entry appended to one file, opened once; the leader fdatasyncs it
            (no file created per delivery; entries would live in segments)

Prints, per strategy, the median over rounds of deliveries per second and of the
median time to durability, and the mean group size; standard library only.
"""

import argparse
import ctypes
import os
import statistics
import subprocess
import tempfile
import threading
import time

LIBC = ctypes.CDLL(None, use_errno=True)


class Group:
    """One sync at a time serves every delivery that joined before it started."""

    def __init__(self, sync):
        self.cond = threading.Condition()
        self.sync = sync
        self.waiting = []
        self.joined = 0
        self.synced = 0
        self.running = False
        self.syncs = 0

    def join(self, member):
        with self.cond:
            self.joined += 1
            mine = self.joined
            self.waiting.append(member)
            while self.synced < mine:
                if self.running:
                    self.cond.wait()
                    continue
                self.running = True
                members, self.waiting, covers = self.waiting, [], self.joined
                self.cond.release()
                try:
                    self.sync(members)
                finally:
                    self.cond.acquire()
                    self.running = False
                    self.synced = covers
                    self.syncs += 1
                    self.cond.notify_all()


def run(strategy, directory, deliveries, concurrency, body):
    """Deliveries per second, median seconds to durability, mean group size."""
    os.makedirs(directory)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    segment = None

    def fsync_dir(members):
        os.fsync(dir_fd)

    def leader(members):
        for fd, tmp, path in members:
            os.fdatasync(fd)
        for fd, tmp, path in members:
            os.rename(tmp, path)
        os.fsync(dir_fd)

    def syncfs(members):
        if LIBC.syncfs(dir_fd) != 0:
            raise OSError(ctypes.get_errno(), "syncfs")
        for fd, tmp, path in members:
            os.rename(tmp, path)
        os.fsync(dir_fd)

    def fdatasync_segment(members):
        os.fdatasync(segment)

    sync = {"today": fsync_dir, "own": None, "spare": fsync_dir, "leader": leader, "syncfs": syncfs, "segment": fdatasync_segment}[strategy]
    if strategy == "segment":
        segment = os.open(os.path.join(directory, "segment"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fsync(dir_fd)
    group = Group(sync)
    latencies = []
    spares = {}
    if strategy == "spare":
        for k in range(concurrency):
            for j in range(deliveries // concurrency):
                tmp = os.path.join(directory, f"{k}-{j}.tmp")
                spares[tmp] = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        LIBC.syncfs(dir_fd)

    def worker(k):
        for j in range(deliveries // concurrency):
            started = time.perf_counter()
            if strategy == "segment":
                os.write(segment, body)
                group.join(None)
            else:
                tmp = os.path.join(directory, f"{k}-{j}.tmp")
                path = os.path.join(directory, f"{k}-{j}.entry")
                fd = spares.pop(tmp, None) or os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                os.write(fd, body)
                if strategy in ("today", "own", "spare"):
                    os.fdatasync(fd)
                    os.rename(tmp, path)
                if strategy == "own":
                    os.fsync(dir_fd)
                    with group.cond:
                        group.syncs += 1
                else:
                    group.join((fd, tmp, path))
                os.close(fd)
            latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    for name in os.listdir(directory):
        os.unlink(os.path.join(directory, name))
    os.close(dir_fd)
    if segment is not None:
        os.close(segment)
    os.rmdir(directory)
    return len(latencies) / elapsed, statistics.median(latencies), len(latencies) / max(group.syncs, 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default="/var/tmp", help="where to write (the journal's file system)")
    parser.add_argument("--deliveries", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--body", type=int, default=1400, help="bytes per entry (head + 1 KiB body)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--strategies", default="today,own,leader,syncfs,spare,segment")
    args = parser.parse_args()
    strategies = args.strategies.split(",")
    fs = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "-T", args.dir], capture_output=True, text=True).stdout.strip()
    print(f"{args.deliveries} deliveries, {args.concurrency} in flight, {args.body} B each, on {fs} "
          f"({args.dir}); load {os.getloadavg()[0]:.2f} at start")
    results = {s: [] for s in strategies}
    with tempfile.TemporaryDirectory(prefix="sync-strategies-", dir=args.dir) as base:
        for r in range(args.rounds):
            for s in strategies:
                results[s].append(run(s, os.path.join(base, f"{s}-{r}"), args.deliveries, args.concurrency,
                                      b"x" * args.body))
    print(f"load {os.getloadavg()[0]:.2f} at end; medians of {args.rounds} rounds")
    print("| strategy | deliveries/s | time to durable | deliveries per sync | each round (deliveries/s) |")
    print("|---|---:|---:|---:|---|")
    for s in strategies:
        rates = [x[0] for x in results[s]]
        print(f"| {s} | {statistics.median(rates):.0f} | {statistics.median(x[1] for x in results[s]) * 1000:.2f} ms "
              f"| {statistics.mean(x[2] for x in results[s]):.1f} | {', '.join(f'{x:.0f}' for x in rates)} |")


if __name__ == "__main__":
    main()
