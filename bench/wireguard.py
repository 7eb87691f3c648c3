#!/usr/bin/env python3
"""WireGuard plane benchmarks, in two network namespaces this script creates
(and deletes): a gateway side and a peer side joined by a veth pair.
Nothing leaves them. Needs root, wireguard-go, wireguard-tools, iperf3,
mosquitto-clients (installed from Debian if missing).

Throughput: iperf3 TCP from a wireguard-go peer through the tunnel, with
the gateway side played in turn, in the same run, by
  - wireguard-go (the reference),
  - warden, the device compliant (ACL: forward),
  - warden, the device quarantined, the iperf3 server a remediation host
    matched by the last of 10 rules (ACL: every rule scanned per packet).

Flip latency (--flips N): the peer sends a steady UDP stream to a
non-remediation host; the device is flipped noncompliant / compliant N
times over MQTT; for each quarantine, the time from the publish to the
last packet that still got through (the first dropped one follows it).

    python3 bench/wireguard.py [--runs 3] [--seconds 8] [--flips 1000] [--broker mosquitto|embedded]
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GW, PEER = "wgb-gw", "wgb-peer"
WG_IF = "wgbench0"


def sh(*cmd, check=True, **kw):
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)


def ns(name, *cmd, **kw):
    return sh("ip", "netns", "exec", name, *cmd, **kw)


def install():
    need = [p for p, tool in [("wireguard-go", "wireguard-go"), ("wireguard-tools", "wg"), ("iperf3", "iperf3"),
                              ("mosquitto-clients", "mosquitto_pub"), ("mosquitto", "mosquitto"), ("iproute2", "ip")] if not shutil.which(tool)]
    if need:
        sh("apt-get", "update", "-qq")
        sh("apt-get", "install", "-y", "-qq", "--no-install-recommends", *need, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def teardown():
    sh("pkill", "-f", f"wireguard-go {WG_IF}", check=False)
    sh("pkill", "-f", "wireguard-go wgref0", check=False)
    for n in (GW, PEER):
        sh("ip", "netns", "del", n, check=False)


def lab(tmp):
    teardown()
    for n in (GW, PEER):
        sh("ip", "netns", "add", n)
        sh("ip", "-n", n, "link", "set", "lo", "up")
    sh("ip", "link", "add", "wgb-a", "type", "veth", "peer", "name", "wgb-b")
    sh("ip", "link", "set", "wgb-a", "netns", GW)
    sh("ip", "link", "set", "wgb-b", "netns", PEER)
    sh("ip", "-n", GW, "addr", "add", "10.200.0.1/24", "dev", "wgb-a")
    sh("ip", "-n", PEER, "addr", "add", "10.200.0.2/24", "dev", "wgb-b")
    sh("ip", "-n", GW, "link", "set", "wgb-a", "up")
    sh("ip", "-n", PEER, "link", "set", "wgb-b", "up")
    sh("ip", "-n", GW, "addr", "add", "10.98.0.2/32", "dev", "lo")
    keys = {}
    for who in ("server", "peer"):
        k = sh("wg", "genkey").stdout.strip()
        open(os.path.join(tmp, f"{who}.key"), "w").write(k + "\n")
        keys[who] = sh("wg", "pubkey", input=k).stdout.strip()
    return keys


def start_wireguard_go(name, netns, log):
    p = subprocess.Popen(["ip", "netns", "exec", netns, "wireguard-go", name], env={**os.environ, "WG_PROCESS_FOREGROUND": "1"},
                         stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    for _ in range(100):
        if ns(netns, "ip", "link", "show", name, check=False).returncode == 0:
            return p
        time.sleep(0.05)
    raise RuntimeError(f"wireguard-go {name} did not come up")


def peer_up(tmp, keys):
    p = start_wireguard_go(WG_IF, PEER, os.path.join(tmp, "peer-wg.log"))
    ns(PEER, "wg", "set", WG_IF, "private-key", os.path.join(tmp, "peer.key"), "peer", keys["server"],
       "endpoint", "10.200.0.1:51820", "allowed-ips", "10.99.0.0/24,10.98.0.0/24", "persistent-keepalive", "0")
    sh("ip", "-n", PEER, "addr", "add", "10.99.0.2/32", "dev", WG_IF)
    sh("ip", "-n", PEER, "link", "set", WG_IF, "mtu", "1420", "up")
    sh("ip", "-n", PEER, "route", "add", "10.99.0.0/24", "dev", WG_IF)
    sh("ip", "-n", PEER, "route", "add", "10.98.0.0/24", "dev", WG_IF)
    return p


def reference_up(tmp, keys):
    p = start_wireguard_go("wgref0", GW, os.path.join(tmp, "ref-wg.log"))
    ns(GW, "wg", "set", "wgref0", "private-key", os.path.join(tmp, "server.key"), "listen-port", "51820",
       "peer", keys["peer"], "allowed-ips", "10.99.0.2/32")
    sh("ip", "-n", GW, "addr", "add", "10.99.0.1/24", "dev", "wgref0")
    sh("ip", "-n", GW, "link", "set", "wgref0", "mtu", "1420", "up")
    return p


REPORT = ('{{"seq":{seq},"ts":"{ts}","os":"android","os_version":"14.0.1","security_patch":"{patch}",'
          '"encrypted":{enc},"passcode":true,"rooted":false,"kiosk_mode":true,"apps_installed":["com.acme.pos"],'
          '"apps_running":["com.acme.pos"],"wifi_ssid":"ACME-STORE","open_ports":[443],"groups":["pos"],'
          '"agent_version":"3.2.0"}}')


def report(seq, encrypted):
    now = time.time()
    return REPORT.format(seq=seq, ts=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                         patch=time.strftime("%Y-%m-%d", time.gmtime(now - 10 * 86400)), enc=str(encrypted).lower())


BROKER = {"kind": "mosquitto"}


def broker_up(tmp):
    """mosquitto in the gateway namespace (set_tcp_nodelay), as in
    bench/quarantine.py: the embedded rumqttd adds a millisecond-scale tail
    of its own to every MQTT hop (measured by the observer in wgflip)."""
    if BROKER["kind"] != "mosquitto" or BROKER.get("proc"):
        return
    conf = os.path.join(tmp, "mosquitto.conf")
    open(conf, "w").write("listener 1883 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n")
    BROKER["proc"] = subprocess.Popen(["ip", "netns", "exec", GW, "mosquitto", "-c", conf],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)


def warden_up(tmp, keys, quarantined):
    rules = [f'"10.{i}.0.0/16:443"' for i in range(100, 109)] + ['"10.99.0.1/32"']
    conf = os.path.join(tmp, "w.toml")
    broker_up(tmp)
    mqtt = 'broker = "mqtt://127.0.0.1:1883"\n' if BROKER["kind"] == "mosquitto" else 'listen = "127.0.0.1:1883"\nallow_anonymous = true\n'
    open(conf, "w").write(
        '[node]\nstate_dir = "state"\n[mqtt]\n' + mqtt + '[policy]\ndir = "policies"\n'
        '[http]\nlisten = "127.0.0.1:9090"\n'
        f'[wireguard]\nlisten = "10.200.0.1:51820"\nprivate_key_file = "server.key"\ninterface = "warden0"\n'
        f'address = "10.99.0.1/24"\nremediation = [{", ".join(rules)}]\n'
        f'[[wireguard.peers]]\ndevice_id = "bench-1"\npublic_key = "{keys["peer"]}"\nallowed_ips = ["10.99.0.2/32"]\n')
    shutil.rmtree(os.path.join(tmp, "state"), ignore_errors=True)
    w = subprocess.Popen(["ip", "netns", "exec", GW, os.path.join(ROOT, "target/release/warden"), "run", "--config", conf],
                         cwd=tmp, stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "warden.log"), "w"),
                         env={**os.environ, "RUST_LOG": "warn"})
    for _ in range(200):
        if ns(GW, "python3", "-c", "import urllib.request;urllib.request.urlopen('http://127.0.0.1:9090/readyz')",
              check=False).returncode == 0:
            break
        time.sleep(0.05)
    ns(GW, "mosquitto_pub", "-h", "127.0.0.1", "-p", "1883", "-q", "1", "-t", "devices/bench-1/telemetry",
       "-m", report(1, not quarantined))
    time.sleep(0.3)
    return w


def stop(p):
    if p:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


def iperf(seconds):
    server = subprocess.Popen(["ip", "netns", "exec", GW, "iperf3", "-s", "-1", "-B", "10.99.0.1", "-p", "5201"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    try:
        out = ns(PEER, "iperf3", "-c", "10.99.0.1", "-p", "5201", "-t", str(seconds), "-J", timeout=seconds + 30).stdout
        return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9
    finally:
        stop(server)


def cpu_seconds(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def throughput(tmp, keys, runs, seconds):
    results = {"wireguard-go": [], "warden (forward)": [], "warden (quarantined, remediation)": []}
    cpu = {k: [] for k in results}  # gateway-side CPU seconds per Gbit moved
    for r in range(runs):
        for name in results:
            gw = reference_up(tmp, keys) if name == "wireguard-go" else warden_up(tmp, keys, "quarantined" in name)
            # A fresh peer each time: it handshakes with whichever gateway is up.
            peer = peer_up(tmp, keys)
            try:
                ns(PEER, "ping", "-c", "1", "-W", "2", "10.99.0.1", check=False)
                c0, t0 = cpu_seconds(gw.pid), time.monotonic()
                gbps = iperf(seconds)
                cores = (cpu_seconds(gw.pid) - c0) / (time.monotonic() - t0)
                cpu[name].append(cores / gbps)
            finally:
                stop(peer)
                stop(gw)
                time.sleep(0.3)
            results[name].append(gbps)
            print(f"  run {r + 1}: {name:36s} {gbps:.3f} Gbit/s, gateway side {cores:.2f} cores", flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    ref = med["wireguard-go"]
    print(f"\nTCP throughput through the tunnel, median of {runs} x {seconds} s:")
    for k, v in med.items():
        print(f"  {k:36s} {v:.3f} Gbit/s  ({v / ref:.2f}x wireguard-go)  runs: {', '.join(f'{x:.3f}' for x in results[k])}")
    print("Gateway-side CPU per Gbit/s moved (core-seconds per Gbit, median):")
    for k, v in cpu.items():
        print(f"  {k:36s} {statistics.median(v):.2f}")
    fwd, rem = med["warden (forward)"], med["warden (quarantined, remediation)"]
    print(f"  ACL with every rule scanned vs forward: {100 * (fwd - rem) / fwd:+.1f}% throughput cost")


def flips(tmp, keys, count):
    load = sh("cargo", "bench", "--bench", "mqtt_load", "--no-run", "--message-format=json", "--quiet", cwd=ROOT).stdout
    exe = [json.loads(l)["executable"] for l in load.splitlines() if '"executable":"' in l]
    exe = [e for e in exe if os.path.basename(e).startswith("mqtt_load")][0]
    w = warden_up(tmp, keys, quarantined=False)
    peer = peer_up(tmp, keys)
    sender = None
    try:
        ns(PEER, "ping", "-c", "1", "-W", "2", "10.98.0.2", check=False)
        sender = subprocess.Popen(["ip", "netns", "exec", PEER, exe, "udpsend", "10.98.0.2:9999", "20000"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out = ns(GW, exe, "wgflip", "1883", "10.98.0.2:9999", "bench-1", str(count), timeout=600).stdout
        print(out.strip())
        m = ns(GW, "python3", "-c", "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:9090/metrics').read().decode())").stdout
        vals = {l.split(" ")[0]: float(l.split(" ")[1]) for l in m.splitlines() if l and not l.startswith("#")}
        n = vals['warden_enforcement_seconds_count{plane="wireguard"}']
        s = vals['warden_enforcement_seconds_sum{plane="wireguard"}']
        buckets = sorted((float(k.split('le="')[1].split('"')[0].replace("+Inf", "inf")), v) for k, v in vals.items()
                         if k.startswith("warden_enforcement_seconds_bucket") and 'plane="wireguard"' in k)
        p99 = next(le for le, c in buckets if c >= 0.99 * n)
        print(f"warden's own telemetry arrival → ACL in force: mean {1e3 * s / n:.3f} ms, p99 ≤ {1e3 * p99:.2f} ms "
              f"(histogram bucket), over {n:.0f} changes")
    finally:
        stop(sender)
        stop(peer)
        stop(w)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--flips", type=int, default=1000)
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--broker", choices=["mosquitto", "embedded"], default="mosquitto")
    a = ap.parse_args()
    BROKER["kind"] = a.broker
    if os.geteuid() != 0:
        sys.exit("needs root: it creates network namespaces and TUN devices")
    install()
    sh("cargo", "build", "--release", "--quiet", cwd=ROOT)
    tmp = tempfile.mkdtemp(prefix="warden-wg-bench-")
    shutil.copytree(os.path.join(ROOT, "policies"), os.path.join(tmp, "policies"))
    try:
        keys = lab(tmp)
        if not a.skip_throughput:
            throughput(tmp, keys, a.runs, a.seconds)
        if a.flips:
            flips(tmp, keys, a.flips)
    finally:
        stop(BROKER.get("proc"))
        teardown()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
