#!/usr/bin/env python3
"""Events per second that the job event stream delivers to 1 and to 100 followers.

    cargo build --release && python3 benches/events.py [--jobs 2000] [--followers 1,100]

For each follower count: a fresh gantry (fake hypervisor, temp data dir), that many `curl -N`
followers of /gantry/v1/events, then JOBS no-op jobs (OP_TEST_DELAY, 3 log entries each)
submitted from 8 threads (all from 127.0.0.1, so the per-address connection cap is raised).
Reported: the floor in the same run (jobs/s and events/s produced
with no follower), and with followers the events/s delivered per follower and in total, timed
from the first submission until every follower holds the last job's final event.
"""
import argparse
import base64
import http.client
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import threading
import time

CTX = ssl.create_default_context()
CTX.check_hostname = False
CTX.verify_mode = ssl.CERT_NONE
AUTH = "Basic " + base64.b64encode(b"admin:admin").decode()
JOB = json.dumps({"ops": [{"OP_ID": "OP_TEST_DELAY", "duration": 0.0001, "repeat": 3}]})


def start(binary, data):
    with open(os.path.join(data, "users"), "w") as f:
        f.write("admin {cleartext}admin write\n")
    proc = subprocess.Popen(
        [binary, "serve", "--port", "0", "--bind", "127.0.0.1", "--data-dir", data,
         "--queue-limit", "100000", "--event-buffer", "200000", "--event-retention", "200000",
         "--max-connections-per-ip", "1000"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    banner = proc.stdout.readline()
    return proc, int(banner.rsplit(":", 1)[1].strip())


def submit_all(port, jobs, threads=8):
    ids, lock = [], threading.Lock()

    def worker(n):
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=CTX)
        for _ in range(n):
            conn.request("POST", "/2/jobs", JOB, {"Authorization": AUTH,
                                                 "Content-Type": "application/json"})
            job = json.loads(conn.getresponse().read())
            with lock:
                ids.append(job)

    ts = [threading.Thread(target=worker, args=(jobs // threads,)) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return ids


def wait_finished(port, last):
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=CTX)
    while True:
        conn.request("GET", f"/2/jobs/{last}")
        if json.loads(conn.getresponse().read()).get("status") == "success":
            return
        time.sleep(0.01)


def run(binary, jobs, followers):
    data = tempfile.mkdtemp(prefix="gantry-events-")
    proc, port = start(binary, data)
    try:
        files = [os.path.join(data, f"follower{i}") for i in range(followers)]
        curls = [subprocess.Popen(["curl", "-skN", "-o", f,
                                   f"https://127.0.0.1:{port}/gantry/v1/events"])
                 for f in files]
        time.sleep(0.5 + followers * 0.01)
        t0 = time.monotonic()
        ids = submit_all(port, jobs)
        last = max(ids)
        wait_finished(port, last)
        produced_at = time.monotonic() - t0
        needle = f'"job_id":{last},"ops":["OP_TEST_DELAY"],"opstatus":["success"]'
        pending = set(files)
        while pending:
            for f in list(pending):
                with open(f, "rb") as fh:
                    fh.seek(max(0, os.path.getsize(f) - 4096))
                    if needle.encode() in fh.read():
                        pending.discard(f)
            if pending:
                time.sleep(0.01)
        elapsed = time.monotonic() - t0
        delivered = 0
        for f in files:
            with open(f, "rb") as fh:
                delivered += fh.read().count(b"event:")
        for c in curls:
            c.kill()
        return len(ids), produced_at, elapsed, delivered
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(data, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--binary", default="target/release/gantry")
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--followers", default="1,100")
    a = p.parse_args()
    n, took, _, _ = run(a.binary, a.jobs, 0)
    # Each job: four status events (queued, waiting, running, success) and three log entries.
    print(f"floor, no follower: {n} jobs in {took:.2f} s = {n / took:,.0f} jobs/s "
          f"({n * 7 / took:,.0f} events/s produced)")
    for count in [int(x) for x in a.followers.split(",")]:
        n, _, elapsed, delivered = run(a.binary, a.jobs, count)
        print(f"{count:>3} follower(s): {delivered:,} events delivered in {elapsed:.2f} s = "
              f"{delivered / elapsed:,.0f} events/s in total, "
              f"{delivered / count / elapsed:,.0f} per follower")


if __name__ == "__main__":
    main()
