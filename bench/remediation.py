#!/usr/bin/env python3
"""A policy change that makes 100,000 devices violate at once (issue 14): commands
issued and delivered per second, memory per running plan, and what it does to an
unrelated device's publish → Disconnect latency.

    python3 bench/remediation.py [--devices 100000] [--flips 400] [--runs 3]

warden runs behind mosquitto (as in bench/quarantine.py) with the shipped policies and
DEVICES devices from bench/mqtt_load.rs. Three conditions, alternated in each run, while
bench/mqtt_load.rs flips one unrelated device with a RADIUS session (publish → the
Disconnect-Request at its NAS):
  none   no policy change;
  plain  a policy written that every device fails (severity minor: nothing is cut), no
         remediation: the re-evaluation and the verdict changes alone;
  plan   the same rule with a `remediation`: 100,000 plans start and 100,000 commands go
         out, counted by a mosquitto_sub on devices/+/commands.
The policy is removed after each condition and the fleet settles before the next.
Memory per plan: RSS after `plan` minus RSS after `plain`, over the devices.
Loopback only; bounded.
"""
import argparse, json, os, re, shutil, socket, statistics, subprocess, sys, tempfile, threading, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quarantine import SECRET, free_port, metrics  # noqa: E402  the same harness pieces

STORM = """name = "storm"
severity = "minor"
[[rules]]
id = "agent-99"
check = { attr = "agent_version", version_gte = "99.0" }
"""


def wait(what, limit, f):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if f():
            return
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


def rss_mib(pid):
    return int(open(f"/proc/{pid}/statm").read().split()[1]) * 4096 / 2**20


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--flips", type=int, default=400)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    for tool in ("mosquitto", "mosquitto_sub"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found: apt-get install mosquitto mosquitto-clients")
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    out = subprocess.run(["cargo", "bench", "--bench", "mqtt_load", "--no-run", "--message-format=json", "--quiet"],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    load = [json.loads(l)["executable"] for l in out.splitlines() if '"executable":"' in l]
    load = [e for e in load if os.path.basename(e).startswith("mqtt_load")][0]
    tmp = tempfile.mkdtemp(prefix="warden-remediation-")
    shutil.copytree(os.path.join(ROOT, "policies"), os.path.join(tmp, "policies"))
    mqtt, http = free_port(), free_port()
    conf = os.path.join(tmp, "mosquitto.conf")
    with open(conf, "w") as f:
        f.write(f"listener {mqtt} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n"
                "max_queued_messages 2000000\n")
    broker = subprocess.Popen(["mosquitto", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    auth, acct, nas = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    with open(os.path.join(tmp, "w.toml"), "w") as f:
        f.write(f'[node]\nstate_dir = "state"\nsnapshot_every = "1h"\n[mqtt]\nbroker = "mqtt://127.0.0.1:{mqtt}"\n'
                f'[policy]\ndir = "policies"\nstale_after = "1h"\n[http]\nlisten = "127.0.0.1:{http}"\n'
                f'[radius]\nauth_listen = "127.0.0.1:{auth}"\nacct_listen = "127.0.0.1:{acct}"\n'
                f'[[radius.clients]]\nname = "bench"\naddress = "127.0.0.1"\nsecret = "{SECRET}"\n'
                f'coa_port = {nas}\ncoa_mode = "disconnect"\n')
    w = subprocess.Popen([os.path.join(ROOT, "target/release/warden"), "run", "--config", os.path.join(tmp, "w.toml")],
                         stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "log"), "w"),
                         env={**os.environ, "RUST_LOG": "warn"})
    storm = os.path.join(tmp, "policies", "storm.toml")
    try:
        def up():
            try:
                return metrics(http) is not None
            except OSError:
                return False
        wait("warden", 20, up)
        subprocess.run([load, "publish", str(mqtt), str(a.devices), "4", "1", str(a.devices)], check=True,
                       stdout=subprocess.DEVNULL)
        wait("the fleet", 240, lambda: metrics(http).get('warden_devices{verdict="compliant"}', 0) >= a.devices)
        print(f"{a.devices} devices; RSS {rss_mib(w.pid):.0f} MiB")
        p99 = {"none": [], "plain": [], "plan": []}
        rates, per_plan = [], []
        for run in range(a.runs):
            rss = {}
            for cond in ("none", "plain", "plan"):
                sub = None
                if cond == "plan":
                    sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(mqtt), "-q", "1",
                                            "-t", "devices/+/commands", "-C", str(a.devices), "-W", "120"],
                                           stdout=subprocess.DEVNULL)
                    time.sleep(0.5)
                result = {}

                def flips():
                    result["out"] = subprocess.run([load, "quarantine", str(mqtt), str(acct), str(nas), SECRET,
                                                    str(a.flips)], check=True, capture_output=True, text=True).stdout
                t = threading.Thread(target=flips)
                t.start()
                time.sleep(0.3)
                written = time.monotonic()
                if cond != "none":
                    with open(storm, "w") as f:
                        f.write(STORM + ('remediation = "update_agent"\n' if cond == "plan" else ""))
                if sub:
                    sub.wait(150)
                    rates.append(a.devices / (time.monotonic() - written))
                t.join()
                e2e = [float(x) for x in re.findall(r"(?:p50|p99|max) ([0-9.]+) ms", result["out"].splitlines()[0])]
                p99[cond].append(e2e[1])
                if cond != "none":
                    wait("every device failing", 120,
                         lambda: metrics(http).get('warden_devices{verdict="noncompliant"}', 0) >= a.devices)
                    if cond == "plan":
                        wait("every plan", 120, lambda: metrics(http).get("warden_remediation_plans", 0) >= a.devices)
                    time.sleep(1)
                    rss[cond] = rss_mib(w.pid)
                    os.remove(storm)
                    wait("the fleet back", 120,
                         lambda: metrics(http).get('warden_devices{verdict="compliant"}', 0) >= a.devices
                         and metrics(http).get("warden_remediation_plans", 0) == 0)
                print(f"  run {run + 1} {cond:<5} flip p99 {e2e[1]:.3f} ms (p50 {e2e[0]:.3f})"
                      + (f"; commands delivered at {rates[-1]:,.0f}/s" if cond == "plan" else ""))
            per_plan.append((rss["plan"] - rss["plain"]) * 2**20 / a.devices)
        m = metrics(http)
        sent = sum(v for k, v in m.items() if k.startswith("warden_remediation_commands_total") and 'result="sent"' in k)
        dropped = sum(v for k, v in m.items() if k.startswith("warden_remediation_commands_total") and 'result="dropped"' in k)
        print(f"unrelated device, publish → Disconnect p99 (median of {a.runs}): "
              + ", ".join(f"{c} {statistics.median(v):.3f} ms" for c, v in p99.items()))
        print(f"commands: {a.devices} delivered per storm at {statistics.median(rates):,.0f}/s (median; "
              f"runs {', '.join(f'{r:,.0f}' for r in rates)}), {sent:.0f} sent in all, {dropped:.0f} dropped")
        print(f"memory per running plan: {statistics.median(per_plan):.0f} bytes (runs "
              f"{', '.join(f'{b:.0f}' for b in per_plan)})")
    finally:
        w.terminate()
        w.wait(60)
        broker.terminate()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
