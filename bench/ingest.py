#!/usr/bin/env python3
"""End-to-end telemetry ingest and verdict latency, warden side by side with
mosquitto in the same run. Loopback only; every loop is bounded.

    python3 bench/ingest.py [--count 200000] [--runs 3]

Ingest: 300-byte reports from 4 publishers (--publishers; bench/mqtt_load.rs) through
  (a) mosquitto to a plain `mosquitto_sub` (the reference ceiling),
  (b) mosquitto to warden (external broker), verdicts applied,
  (c) warden's embedded broker to warden,
at QoS 0 and QoS 1; rate = messages delivered / time from first publish to
last delivery. warden's delivery is read from warden_telemetry_messages_total.
Latency: one device flipped compliant <-> noncompliant, publish -> warden's
retained status message received by the publisher (two broker hops).
"""
import argparse, json, os, shutil, socket, statistics, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, limit=10):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on {port}")


def build():
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    out = subprocess.run(["cargo", "bench", "--bench", "mqtt_load", "--no-run", "--message-format=json", "--quiet"],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    exe = [json.loads(l)["executable"] for l in out.splitlines() if '"executable":"' in l]
    load = [e for e in exe if os.path.basename(e).startswith("mqtt_load")]
    return os.path.join(ROOT, "target/release/warden"), load[0]


class Mosquitto:
    def __init__(self, tmp):
        self.port = free_port()
        conf = os.path.join(tmp, f"mosquitto-{self.port}.conf")
        with open(conf, "w") as f:
            f.write(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "max_queued_messages 1000000\nmax_inflight_messages 1000\nset_tcp_nodelay true\n")
        self.proc = subprocess.Popen(["mosquitto", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


class Warden:
    def __init__(self, exe, tmp, broker_port=None):
        self.dir = tempfile.mkdtemp(dir=tmp)
        shutil.copytree(os.path.join(ROOT, "policies"), os.path.join(self.dir, "policies"))
        self.http = free_port()
        self.mqtt = broker_port or free_port()
        broker = f"mqtt://127.0.0.1:{broker_port}" if broker_port else "embedded"
        with open(os.path.join(self.dir, "warden.toml"), "w") as f:
            f.write(f'[node]\nstate_dir = "state"\n[mqtt]\nbroker = "{broker}"\nlisten = "127.0.0.1:{self.mqtt}"\n'
                    + ('' if broker_port else 'allow_anonymous = true\n') +
                    f'client_id = "warden-bench-{self.http}"\n[http]\nlisten = "127.0.0.1:{self.http}"\n')
        self.proc = subprocess.Popen([exe, "run", "--config", os.path.join(self.dir, "warden.toml")],
                                     stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.dir, "log"), "w"),
                                     env={**os.environ, "RUST_LOG": "warn"})
        end = time.monotonic() + 20
        while time.monotonic() < end:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{self.http}/readyz", timeout=1).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise SystemExit("warden did not become ready")

    def metrics(self):
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.http}/metrics", timeout=5).read().decode()
        return {l.split(" ")[0]: float(l.split(" ")[1]) for l in text.splitlines() if l and not l.startswith("#")}

    def handled(self):
        m = self.metrics()
        return sum(v for k, v in m.items() if k.startswith("warden_telemetry_messages_total"))

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)


def follow(count_fn, n, t0, limit=120):
    """Polls a delivered-count until it reaches n or stops growing for 2 s."""
    last, last_t = 0, t0
    end = time.monotonic() + limit
    while time.monotonic() < end:
        c = count_fn()
        now = time.monotonic()
        if c > last:
            last, last_t = c, now
        if c >= n or now - last_t > 2:
            break
        time.sleep(0.01)
    return last, last_t - t0


PUBLISHERS = 4


def publish(load, port, n, qos, devices):
    subprocess.run([load, "publish", str(port), str(n), str(PUBLISHERS), str(qos), str(devices)], check=True,
                   stdout=subprocess.DEVNULL)


def run_baseline(load, tmp, n, qos, devices):
    b = Mosquitto(tmp)
    out = os.path.join(tmp, f"sub-{b.port}.out")
    sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(b.port), "-q", str(qos), "-t",
                            "devices/+/telemetry", "-C", str(n)], stdout=open(out, "wb"))
    time.sleep(0.5)
    t0 = time.monotonic()
    publish(load, b.port, n, qos, devices)

    def lines():
        with open(out, "rb") as f:
            return f.read().count(b"\n")
    got, secs = follow(lines, n, t0)
    sub.kill()
    b.stop()
    return got, secs


def run_warden(exe, load, tmp, n, qos, devices, external):
    b = Mosquitto(tmp) if external else None
    w = Warden(exe, tmp, b.port if b else None)
    t0 = time.monotonic()
    publish(load, w.mqtt, n, qos, devices)
    got, secs = follow(w.handled, n, t0)
    accepted = w.metrics().get('warden_telemetry_messages_total{result="accepted"}', 0)
    w.stop()
    if b:
        b.stop()
    return got, secs, accepted


def latency(exe, load, tmp, flips, external):
    b = Mosquitto(tmp) if external else None
    w = Warden(exe, tmp, b.port if b else None)
    out = subprocess.run([load, "latency", str(w.mqtt), str(flips)], check=True, capture_output=True, text=True).stdout
    w.stop()
    if b:
        b.stop()
    # "latency over N flips: p50 X ms  p99 Y ms  max Z ms"
    parts = out.split()
    return float(parts[5]), float(parts[8])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--flips", type=int, default=1000)
    ap.add_argument("--latency-only", action="store_true")
    ap.add_argument("--publishers", type=int, default=4,
                    help="publisher connections; the embedded broker takes one report per connection at a time "
                         "(acknowledged once durable), so a fleet's own connections are its parallelism")
    ap.add_argument("--qos", type=int, choices=(0, 1), help="only this QoS")
    ap.add_argument("--exe", help="a warden binary to measure instead of this tree's (an A/B against an older build)")
    ap.add_argument("--load", help="a built bench/mqtt_load binary (with --exe: nothing is built, the tree may change meanwhile)")
    a = ap.parse_args()
    global PUBLISHERS
    PUBLISHERS = a.publishers
    for tool in ("mosquitto", "mosquitto_sub"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found: apt-get install mosquitto mosquitto-clients")
    if a.exe and a.load:
        exe, load = a.exe, a.load
    else:
        exe, load = build()
        exe = a.exe or exe
    tmp = tempfile.mkdtemp(prefix="warden-bench-")
    print(f"ingest: {a.count} x 300-byte reports, {a.publishers} publishers, {a.devices} devices, median of {a.runs} runs")
    for qos in () if a.latency_only else ((a.qos,) if a.qos is not None else (0, 1)):
        rates = {"mosquitto_sub": [], "warden (mosquitto)": [], "warden (embedded)": []}
        for _ in range(a.runs):
            got, secs = run_baseline(load, tmp, a.count, qos, a.devices)
            rates["mosquitto_sub"].append((got / secs, got))
            for name, ext in (("warden (mosquitto)", True), ("warden (embedded)", False)):
                got, secs, acc = run_warden(exe, load, tmp, a.count, qos, a.devices, ext)
                rates[name].append((got / secs, got))
                if acc != got:
                    print(f"  note: {name}: {got - acc:.0f} of {got:.0f} messages not accepted")
        base = statistics.median(r for r, _ in rates["mosquitto_sub"])
        for name, rs in rates.items():
            med = statistics.median(r for r, _ in rs)
            delivered = min(g for _, g in rs)
            print(f"  QoS {qos}  {name:<20} {med:>9.0f} msg/s  ({med / base:.2f}x mosquitto_sub; "
                  f"min delivered {delivered:.0f}/{a.count}; runs: {', '.join(f'{r:.0f}' for r, _ in rs)})")
    print(f"latency: publish -> retained verdict received, {a.flips} flips, median of {a.runs} runs")
    for name, ext in (("embedded broker", False), ("mosquitto", True)):
        res = [latency(exe, load, tmp, a.flips, ext) for _ in range(a.runs)]
        print(f"  {name:<16} p50 {statistics.median(p for p, _ in res):.3f} ms  "
              f"p99 {statistics.median(q for _, q in res):.3f} ms")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
