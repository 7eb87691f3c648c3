#!/usr/bin/env python3
"""Quarantine latency: a device's violating report published over MQTT →
the Disconnect-Request received by its NAS, with 1,000,000 devices in the
table. The NAS, the device and the accounting session are played by
bench/mqtt_load.rs (`quarantine` mode), which answers every request with a
signed Disconnect-ACK. Loopback only; bounded.

    python3 bench/quarantine.py [--devices 1000000] [--flips 1000] [--runs 3] [--broker mosquitto|embedded]

The default broker is mosquitto: rumqttd 0.20 (the embedded broker) lost QoS 1 messages to
warden's wildcard subscription when many new topics appeared (20,830 of 30,000 reports from
30,000 new devices delivered; mosquitto: 30,000 of 30,000), so the table could not be filled
through it.
"""
import argparse, json, os, re, shutil, socket, statistics, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "a-long-shared-secret"


def free_port(kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics(http):
    text = urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=10).read().decode()
    return {l.split(" ")[0]: float(l.split(" ")[1]) for l in text.splitlines() if l and not l.startswith("#")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=1_000_000)
    ap.add_argument("--flips", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--broker", choices=["embedded", "mosquitto"], default="mosquitto")
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    out = subprocess.run(["cargo", "bench", "--bench", "mqtt_load", "--no-run", "--message-format=json", "--quiet"],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    load = [json.loads(l)["executable"] for l in out.splitlines() if '"executable":"' in l]
    load = [e for e in load if os.path.basename(e).startswith("mqtt_load")][0]
    tmp = tempfile.mkdtemp(prefix="warden-quarantine-")
    shutil.copytree(os.path.join(ROOT, "policies"), os.path.join(tmp, "policies"))
    mqtt, http = free_port(), free_port()
    broker = None
    if a.broker == "mosquitto":
        conf = os.path.join(tmp, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {mqtt} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n"
                    "max_queued_messages 2000000\n")
        broker = subprocess.Popen(["mosquitto", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
    auth, acct, nas = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    with open(os.path.join(tmp, "w.toml"), "w") as f:
        f.write(f'[node]\nstate_dir = "state"\nsnapshot_every = "1h"\n[mqtt]\n'
                + (f'broker = "mqtt://127.0.0.1:{mqtt}"\n' if broker else f'listen = "127.0.0.1:{mqtt}"\nallow_anonymous = true\n') +
                f'[policy]\ndir = "policies"\nstale_after = "1h"\n[http]\nlisten = "127.0.0.1:{http}"\n'
                f'[radius]\nauth_listen = "127.0.0.1:{auth}"\nacct_listen = "127.0.0.1:{acct}"\n'
                f'[[radius.clients]]\nname = "bench"\naddress = "127.0.0.1"\nsecret = "{SECRET}"\n'
                f'coa_port = {nas}\ncoa_mode = "disconnect"\n')
    w = subprocess.Popen([os.path.join(ROOT, "target/release/warden"), "run", "--config", os.path.join(tmp, "w.toml")],
                         stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "log"), "w"),
                         env={**os.environ, "RUST_LOG": "warn"})
    try:
        end = time.monotonic() + 20
        while time.monotonic() < end:
            try:
                metrics(http)
                break
            except OSError:
                time.sleep(0.1)
        t0 = time.monotonic()
        subprocess.run([load, "publish", str(mqtt), str(a.devices), "4", "1", str(a.devices)], check=True,
                       stdout=subprocess.DEVNULL)
        end = time.monotonic() + 240
        while time.monotonic() < end:
            m = metrics(http)
            n = sum(v for k, v in m.items() if k.startswith("warden_devices{"))
            if n >= a.devices:
                break
            time.sleep(0.5)
        tele = {k: v for k, v in m.items() if k.startswith(("warden_telemetry_messages_total", "warden_status_messages_total")) and v}
        print(f"telemetry: {tele}")
        print(f"{n:.0f} devices in the table after {time.monotonic() - t0:.1f} s; RSS "
              f"{int(open(f'/proc/{w.pid}/statm').read().split()[1]) * 4096 / 2**20:.0f} MiB")
        res, hops = [], []
        for _ in range(a.runs):
            out = subprocess.run([load, "quarantine", str(mqtt), str(acct), str(nas), SECRET, str(a.flips)], check=True,
                                 capture_output=True, text=True).stdout
            (e2e, hop) = [tuple(float(x) for x in re.findall(r"(?:p50|p99|max) ([0-9.]+) ms", l))
                          for l in out.strip().splitlines()]
            res.append(e2e)
            hops.append(hop)
            print("  " + out.strip())
        m = metrics(http)
        share = 1e3 * m['warden_enforcement_seconds_sum{plane="radius"}'] / m['warden_enforcement_seconds_count{plane="radius"}']
        # warden's own p99 from its histogram: the first bucket holding 99 %.
        buckets = sorted((float(k.split('le="')[1].split('"')[0].replace("+Inf", "inf")), v) for k, v in m.items()
                         if k.startswith("warden_enforcement_seconds_bucket") and 'plane="radius"' in k)
        total = buckets[-1][1] if buckets else 0
        own_p99 = next((le for le, c in buckets if c >= 0.99 * total), float("nan"))
        print(f"warden's own arrival → Disconnect sent: p99 ≤ {own_p99 * 1e3:.2f} ms (histogram bucket), over {total:.0f} requests")
        print(f"quarantine latency, {a.flips} flips x {a.runs} runs with {n:.0f} devices: "
              f"p50 {statistics.median(r[0] for r in res):.3f} ms  p99 {statistics.median(r[1] for r in res):.3f} ms  "
              f"(warden's share, arrival → Disconnect sent: mean {share:.3f} ms)")
        print(f"mqtt hop alone (publish → a plain subscriber of the same broker, same run): "
              f"p50 {statistics.median(h[0] for h in hops):.3f} ms  p99 {statistics.median(h[1] for h in hops):.3f} ms")
    finally:
        w.terminate()
        w.wait(60)
        log = open(os.path.join(tmp, "log")).read().splitlines()
        if log:
            print(f"warden logged {len(log)} lines at WARN or above; the first ones:")
            for line in log[:5]:
                print("  " + line[:300])
        if broker:
            broker.terminate()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
