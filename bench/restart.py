#!/usr/bin/env python3
"""Restart to ready with a large fleet in the state directory (issue 12: <= 2 s at 1,000,000).

    python3 bench/restart.py [--devices 1000000] [--runs 5] [--exe target/release/warden]

Seeds `state/compliance.jsonl` (a JSON-lines snapshot, as an older warden
wrote it) with N devices, each with a MAC, and a users file-free RADIUS plane;
starts warden once (it reads the JSON snapshot) and stops it with SIGTERM,
which writes its own snapshot. Then, each run: start warden, time until
`/readyz` answers 200 (telemetry subscribed, RADIUS serving) and until a MAB
Access-Request for the last device is accepted, then `kill -9` it. Reports the
median and every run, the state on disk and the resident memory when ready.

There is no reference peer here: FreeRADIUS keeps no per-device state to
restore, and the target is absolute.
"""
import argparse
import json
import re
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import radius  # noqa: E402  (write_snapshot(): the same fleet as the RADIUS bench)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "bench-secret"


def mac(i):
    return f"02{i:010x}"


def seed(d, n):
    shutil.copytree(os.path.join(ROOT, "policies"), os.path.join(d, "policies"))
    os.makedirs(os.path.join(d, "state"))
    # Every identity a restore indexes: MAC, WireGuard key, certificate.
    radius.write_snapshot(os.path.join(d, "state", "compliance.jsonl"), n, mac=mac,
                          extra=lambda i: {"wg_public_key": f"{i:0>43}=", "cert_identity": f"dev-{i:07d}",
                                           "groups": ["pos", f"store-{i % 500}"]})


def config(d):
    http, auth = radius.free_tcp_port(), radius.free_udp_port()
    with open(os.path.join(d, "w.toml"), "w") as f:
        f.write(f'[node]\nstate_dir = "state"\nsnapshot_every = "1h"\n'
                f'[mqtt]\nlisten = "127.0.0.1:{radius.free_tcp_port()}"\nallow_anonymous = true\n'
                f'[http]\nlisten = "127.0.0.1:{http}"\n'
                f'[radius]\nauth_listen = "127.0.0.1:{auth}"\nacct_listen = "127.0.0.1:{radius.free_udp_port()}"\n'
                f'[[radius.clients]]\nname = "bench"\naddress = "127.0.0.1"\nsecret = "{SECRET}"\n')
    return http, auth


def ready(http, proc, log, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"warden exited:\n{open(log).read()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.005)
    raise SystemExit(f"not ready in {timeout} s:\n{open(log).read()[-3000:]}")


def mab_accepted(auth, device):
    m = mac(device)
    out = subprocess.run(["radclient", "-r", "3", "-t", "1", f"127.0.0.1:{auth}", "auth", SECRET],
                         input=f'User-Name = "{m}", User-Password = "{m}", Calling-Station-Id = "{m}", '
                               f'Message-Authenticator = 0x00\n', capture_output=True, text=True)
    return "Access-Accept" in out.stdout


def start(exe, d):
    log = os.path.join(d, "log")
    proc = subprocess.Popen([exe, "run", "--config", "w.toml"], cwd=d, stdout=subprocess.DEVNULL,
                            stderr=open(log, "a"), env={**os.environ, "RUST_LOG": "info"})
    return proc, log


def devices(http):
    with urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith("warden_devices{"))


def journal(exe, d, http, n):
    """n new devices report once into a running warden, which is then killed: the journal holds n records."""
    out = subprocess.run(["cargo", "bench", "--bench", "mqtt_load", "--no-run", "--message-format=json", "--quiet"],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    load = [json.loads(l)["executable"] for l in out.splitlines() if '"executable":"' in l]
    load = [e for e in load if os.path.basename(e).startswith("mqtt_load")][0]
    mqtt = int(re.search(r'listen = "127.0.0.1:(\d+)"', open(os.path.join(d, "w.toml")).read()).group(1))
    proc, log = start(exe, d)
    ready(http, proc, log)
    before = devices(http)
    subprocess.run([load, "publish", str(mqtt), str(n), "4", "0", str(n)], check=True, capture_output=True)
    deadline = time.time() + 300
    while devices(http) < before + n and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)  # QoS 0: the journal is synced every 100 ms
    proc.kill()
    proc.wait()
    state = os.path.join(d, "state")
    size = sum(os.path.getsize(os.path.join(state, f)) for f in os.listdir(state) if f.startswith("journal-"))
    print(f"journal: {n} records written, {size / 1048576:.0f} MiB, warden killed with -9")


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--exe", default=os.path.join(ROOT, "target", "release", "warden"))
    ap.add_argument("--keep", help="seed (if empty) and keep the state in this directory, to profile a start")
    ap.add_argument("--journal", type=int, default=0,
                    help="before the timed runs, N new devices report once (QoS 0, bench/mqtt_load.rs) and "
                         "warden is killed with -9: every start then also replays N journal records")
    a = ap.parse_args()
    exe = os.path.abspath(a.exe)
    if not os.environ.get("BENCH_NO_BUILD"):
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    with tempfile.TemporaryDirectory() as tmp:
        d = a.keep or tmp
        if not os.path.exists(os.path.join(d, "state")):
            os.makedirs(d, exist_ok=True)
            t = time.time()
            seed(d, a.devices)
            print(f"seeded {a.devices} devices as JSON lines in {time.time() - t:.1f} s")
        http, auth = config(d)
        t = time.time()
        proc, log = start(exe, d)
        ready(http, proc, log)
        print(f"first start, from the JSON-lines snapshot: ready in {time.time() - t:.2f} s")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=600)
        state = os.path.join(d, "state")
        size = sum(os.path.getsize(os.path.join(state, f)) for f in os.listdir(state))
        print(f"state on disk after a clean stop: {size / 1048576:.0f} MiB ({sorted(os.listdir(state))})")
        if a.journal:
            journal(exe, d, http, a.journal)
        readies, answers, rss = [], [], []
        for _ in range(a.runs):
            t = time.time()
            proc, log = start(exe, d)
            ready(http, proc, log)
            readies.append(time.time() - t)
            if not mab_accepted(auth, a.devices - 1):
                raise SystemExit(f"the last device was not admitted:\n{open(log).read()[-3000:]}")
            answers.append(time.time() - t)
            rss.append(rss_mib(proc.pid))
            proc.kill()
            proc.wait()
        print(f"restart to ready (/readyz 200), {a.devices} devices"
              f"{f' and {a.journal} journal records' if a.journal else ''}: median {statistics.median(readies):.2f} s "
              f"(runs: {', '.join(f'{r:.2f}' for r in readies)})")
        print(f"  to the last device's MAB Access-Accept: median {statistics.median(answers):.2f} s "
              f"(runs: {', '.join(f'{r:.2f}' for r in answers)})")
        print(f"  resident memory when ready: {statistics.median(rss):.0f} MiB "
              f"({statistics.median(rss) * 1048576 / a.devices:.0f} bytes per device)")
        plain = re.sub(r"\x1b\[[0-9;]*m", "", open(log).read())
        took = [int(m) for m in re.findall(r"compliance table restored.*?took_ms=(\d+)", plain)][-a.runs:]
        if took:
            print(f"  of which the table's restore (log, took_ms): median {statistics.median(took)} ms "
                  f"(runs: {', '.join(map(str, took))})")


if __name__ == "__main__":
    main()
