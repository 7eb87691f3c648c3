#!/usr/bin/env python3
"""What the audit trail and the event stream cost per verdict change (issue 15), at
20,000 changes/s: CPU, fsyncs/s, disk bytes, and the effect on an unrelated device's
publish → Disconnect p99.

    python3 bench/audit.py [--rate 20000] [--seconds 10] [--devices 20000] [--runs 3]

warden runs behind mosquitto with the shipped policies, a fleet of DEVICES devices
(bench/mqtt_load.rs publish), and a RADIUS client. In each run three conditions are
alternated, each on a fresh warden and state directory:
  off      [audit] enabled = false: the journal alone;
  trail    the audit trail (the default);
  webhook  the trail and one [[events.webhooks]] sink (batch = 100) to a receiver in
           this script that verifies nothing and answers 204.
bench/mqtt_load.rs flap sends RATE reports/s for SECONDS, each flipping a device's
verdict, while bench/mqtt_load.rs quarantine flips one unrelated device with a RADIUS
session (publish → Disconnect-Request at its NAS). Measured over the flap, until every
report is applied: warden's CPU (utime + stime), journal fsyncs
(warden_journal_sync_seconds_count), bytes written (/proc/PID/io write_bytes), audit
entries, webhook events delivered and the backlog left.
Loopback only; bounded.
"""
import argparse, http.server, json, os, re, shutil, socket, statistics, subprocess, sys, tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quarantine import SECRET, free_port, metrics  # noqa: E402  the same harness pieces

HOOK_SECRET = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"


def wait(what, limit, f):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if f():
            return
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


class Receiver(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    events = 0

    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        Receiver.events += body.count(b'"specversion"')
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def proc(pid):
    stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    io = dict(l.split(": ") for l in open(f"/proc/{pid}/io").read().splitlines())
    return cpu, int(io["write_bytes"])


def total(m, prefix):
    return sum(v for k, v in m.items() if k.startswith(prefix))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=20_000)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--devices", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    if not shutil.which("mosquitto"):
        raise SystemExit("mosquitto not found: apt-get install mosquitto")
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    out = subprocess.run(["cargo", "bench", "--bench", "mqtt_load", "--no-run", "--message-format=json", "--quiet"],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    load = [json.loads(l)["executable"] for l in out.splitlines() if '"executable":"' in l]
    load = [e for e in load if os.path.basename(e).startswith("mqtt_load")][0]
    tmp = tempfile.mkdtemp(prefix="warden-audit-bench-")
    shutil.copytree(os.path.join(ROOT, "policies"), os.path.join(tmp, "policies"))
    with open(os.path.join(tmp, "hook.secret"), "w") as f:
        f.write(HOOK_SECRET)
    mqtt = free_port()
    conf = os.path.join(tmp, "mosquitto.conf")
    with open(conf, "w") as f:
        f.write(f"listener {mqtt} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n"
                "max_queued_messages 2000000\nmax_inflight_messages 0\n")
    broker = subprocess.Popen(["mosquitto", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    time.sleep(0.5)
    results = {c: [] for c in ("off", "trail", "webhook")}
    try:
        for run in range(a.runs):
            for cond in results:
                results[cond].append(one(a, load, tmp, mqtt, receiver.server_port, cond, f"{run}-{cond}"))
                r = results[cond][-1]
                print(f"  run {run + 1} {cond:<7} {r['changes_s']:,.0f} changes/s; CPU {r['cpu_us']:.1f} µs/change; "
                      f"{r['fsyncs_s']:.1f} fsyncs/s; {r['bytes']:.0f} bytes/change written; "
                      f"{r['entries']:,.0f} audit entries; {r['delivered']:,.0f} events delivered, backlog "
                      f"{r['backlog']:,.0f}; unrelated Disconnect p99 {r['p99']:.2f} ms (p50 {r['p50']:.2f})", flush=True)
        print(f"medians of {a.runs} runs, {a.rate:,}/s offered for {a.seconds} s over {a.devices:,} devices:")
        for cond, rs in results.items():
            med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
            print(f"  {cond:<7} {med['changes_s']:,.0f} changes/s  CPU {med['cpu_us']:.1f} µs/change  "
                  f"fsyncs {med['fsyncs_s']:.1f}/s  written {med['bytes']:.0f} B/change  "
                  f"audit {med['entries'] / max(med['changes'], 1):.2f} entries/change  "
                  f"p99 {med['p99']:.2f} ms  p50 {med['p50']:.2f} ms  (p99 runs "
                  + ", ".join(f"{r['p99']:.2f}" for r in rs) + ")")
    finally:
        broker.terminate()
        receiver.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def one(a, load, tmp, mqtt, hook_port, cond, tag):
    http_port = free_port()
    auth, acct, nas = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    state = os.path.join(tmp, f"state-{tag}")
    extra = ""
    if cond == "off":
        extra = "[audit]\nenabled = false\n"
    elif cond == "webhook":
        extra = (f'[[events.webhooks]]\nname = "bench"\nurl = "http://127.0.0.1:{hook_port}/hook"\n'
                 f'secret_file = "{tmp}/hook.secret"\nbatch = 100\n')
    cfg = os.path.join(tmp, f"w-{tag}.toml")
    with open(cfg, "w") as f:
        f.write(f'[node]\nstate_dir = "{state}"\nsnapshot_every = "1h"\n'
                f'[mqtt]\nbroker = "mqtt://127.0.0.1:{mqtt}"\nclient_id = "warden-bench-{tag}"\n'
                f'[policy]\ndir = "{tmp}/policies"\nstale_after = "1h"\n[http]\nlisten = "127.0.0.1:{http_port}"\n'
                f'[radius]\nauth_listen = "127.0.0.1:{auth}"\nacct_listen = "127.0.0.1:{acct}"\n'
                f'[[radius.clients]]\nname = "bench"\naddress = "127.0.0.1"\nsecret = "{SECRET}"\n'
                f'coa_port = {nas}\ncoa_mode = "disconnect"\n' + extra)
    w = subprocess.Popen([os.path.join(ROOT, "target/release/warden"), "run", "--config", cfg],
                         stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, f"log-{tag}"), "w"),
                         env={**os.environ, "RUST_LOG": "warn"})
    try:
        def up():
            try:
                return metrics(http_port) is not None
            except OSError:
                return False
        wait("warden", 20, up)
        # A fresh fleet for this warden: each device's seq starts over here.
        subprocess.run([load, "publish", str(mqtt), str(a.devices), "4", "1", str(a.devices)], check=True,
                       stdout=subprocess.DEVNULL)
        wait("the fleet", 120, lambda: metrics(http_port).get('warden_devices{verdict="compliant"}', 0) >= a.devices)
        time.sleep(1)
        m0, (cpu0, w0), t0 = metrics(http_port), proc(w.pid), time.monotonic()
        flips = max(50, a.seconds * 20)
        q = {}
        qt = threading.Thread(target=lambda: q.update(out=subprocess.run(
            [load, "quarantine", str(mqtt), str(acct), str(nas), SECRET, str(flips)],
            check=True, capture_output=True, text=True).stdout))
        qt.start()
        subprocess.run([load, "flap", str(mqtt), str(a.rate), str(a.seconds), str(a.devices), "2"], check=True,
                       stdout=subprocess.DEVNULL)
        want = total(m0, "warden_telemetry_messages_total") + a.rate * a.seconds
        wait("every report applied", 120, lambda: total(metrics(http_port), "warden_telemetry_messages_total") >= want)
        t1 = time.monotonic()
        m1, (cpu1, w1) = metrics(http_port), proc(w.pid)
        qt.join()
        ms = [float(x) for x in re.findall(r"(?:p50|p99|max) ([0-9.]+) ms", q["out"].splitlines()[0])]
        changes = total(m1, "warden_verdict_changes_total") - total(m0, "warden_verdict_changes_total")
        d = lambda k: m1.get(k, 0) - m0.get(k, 0)  # noqa: E731
        return {
            "changes": changes,
            "changes_s": changes / (t1 - t0),
            "cpu_us": (cpu1 - cpu0) / max(changes, 1) * 1e6,
            "fsyncs_s": d("warden_journal_sync_seconds_count") / (t1 - t0),
            "bytes": (w1 - w0) / max(changes, 1),
            "entries": d("warden_audit_entries_total"),
            "delivered": d('warden_webhook_deliveries_total{result="delivered"}'),
            "backlog": m1.get('warden_webhook_backlog{sink="bench"}', 0),
            "p50": ms[0],
            "p99": ms[1],
        }
    finally:
        w.terminate()
        w.wait(60)


if __name__ == "__main__":
    sys.exit(main())
