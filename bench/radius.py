#!/usr/bin/env python3
"""PAP and MAB Access-Requests per second and latency, warden and
FreeRADIUS 3.2 side by side in one run, driven by the same load generator
(bench/radius_load.rs: a window of requests in flight, Message-Authenticator
on every request, every answer checked). Loopback only; bounded runs.

    python3 bench/radius.py [--runs 3] [--seconds 5] [--window 64]

FreeRADIUS (installed from Debian if missing) is configured equivalently:
the same users in its `files` module with the same VLAN reply, the bench
client with require_message_authenticator, logging off. warden runs with
logging off too (RUST_LOG=warn) and, for the record, with its default INFO
log line per access decision.
"""
import argparse, json, os, re, shutil, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "a-long-shared-secret"


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build():
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    out = subprocess.run(["cargo", "bench", "--bench", "radius_load", "--no-run", "--message-format=json", "--quiet"],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    exe = [json.loads(l)["executable"] for l in out.splitlines() if '"executable":"' in l]
    return os.path.join(ROOT, "target/release/warden"), [e for e in exe if "radius_load" in os.path.basename(e)][0]


def freeradius(tmp, port):
    if not shutil.which("freeradius"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "freeradius"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    raddb = os.path.join(tmp, "raddb")
    shutil.copytree("/etc/freeradius/3.0", raddb, symlinks=True)
    with open(os.path.join(raddb, "clients.conf"), "w") as f:
        f.write(f"client bench {{\n\tipaddr = 127.0.0.1\n\tsecret = {SECRET}\n\trequire_message_authenticator = yes\n}}\n")
    users = 'alice\tCleartext-Password := "correct horse"\n\tTunnel-Type = VLAN, Tunnel-Medium-Type = IEEE-802, Tunnel-Private-Group-Id = "100"\n\n'
    for i in range(1000):
        mac = "aabbcc%06x" % i
        users += f'{mac}\tCleartext-Password := "{mac}"\n\tTunnel-Type = VLAN, Tunnel-Medium-Type = IEEE-802, Tunnel-Private-Group-Id = "100"\n\n'
    authorize = os.path.join(raddb, "mods-config/files/authorize")
    with open(authorize) as f:
        rest = f.read()
    with open(authorize, "w") as f:
        f.write(users + rest)
    # Listen on our ports (command-line -p listeners get no virtual server).
    with open("/etc/freeradius/3.0/sites-available/default") as f:
        site = f.read()
    ports = iter([port, port + 1, port, port + 1])
    site = re.sub(r"(?m)^(\s*)port = 0", lambda m: f"{m.group(1)}port = {next(ports, 0)}", site)
    site = re.sub(r"(?m)^(\s*)ipaddr = \*", r"\1ipaddr = 127.0.0.1", site)
    os.remove(os.path.join(raddb, "sites-enabled/default"))
    with open(os.path.join(raddb, "sites-enabled/default"), "w") as f:
        f.write(site)
    subprocess.run(["chmod", "-R", "a+rX", tmp], check=True)
    proc = subprocess.Popen(["freeradius", "-f", "-d", raddb, "-l", os.path.join(tmp, "freeradius.log")])
    time.sleep(2)
    return proc


def warden(exe, tmp, port, log_level):
    d = tempfile.mkdtemp(dir=tmp)
    shutil.copytree(os.path.join(ROOT, "policies"), os.path.join(d, "policies"))
    with open(os.path.join(d, "users.toml"), "w") as f:
        f.write('[[users]]\nname = "alice"\npassword = "correct horse"\n')
    with open(os.path.join(d, "w.toml"), "w") as f:
        f.write(f'[node]\nstate_dir = "state"\n[mqtt]\nlisten = "127.0.0.1:{free_udp_port()}"\n'
                f'[http]\nlisten = "127.0.0.1:{free_udp_port()}"\n'
                f'[radius]\nauth_listen = "127.0.0.1:{port}"\nacct_listen = "127.0.0.1:{port + 1}"\n'
                f'users_file = "users.toml"\n'
                f'[[radius.clients]]\nname = "bench"\naddress = "127.0.0.1"\nsecret = "{SECRET}"\n')
    proc = subprocess.Popen([exe, "run", "--config", os.path.join(d, "w.toml")], stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(d, "log"), "w"), env={**os.environ, "RUST_LOG": log_level})
    time.sleep(1.5)
    return proc


def load(gen, port, mode, window, seconds):
    out = subprocess.run([gen, f"127.0.0.1:{port}", SECRET, mode, str(window), str(seconds)], check=True,
                         capture_output=True, text=True).stdout
    m = re.search(r"(\d+) req/s\s+p50 ([\d.]+) ms\s+p99 ([\d.]+) ms\s+accept (\d+)\s+reject (\d+)\s+lost (\d+)\s+bad (\d+)", out)
    rate, p50, p99, acc, rej, lost, bad = m.groups()
    if int(acc) == 0 or int(bad) or int(rej):
        raise SystemExit(f"unexpected answers: {out}")
    return int(rate), float(p50), float(p99), int(lost)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--window", type=int, default=64)
    a = ap.parse_args()
    exe, gen = build()
    tmp = tempfile.mkdtemp(prefix="warden-radius-bench-")
    results = {}
    for name in ("FreeRADIUS 3.2", "warden (log off)", "warden (INFO log)"):
        port = free_udp_port()
        if name.startswith("FreeRADIUS"):
            proc = freeradius(tmp, port)
        else:
            proc = warden(exe, tmp, port, "warn" if "off" in name else "info")
        try:
            for mode in ("pap", "mab"):
                results[(name, mode)] = [load(gen, port, mode, a.window, a.seconds) for _ in range(a.runs)]
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"RADIUS Access-Requests, window {a.window}, {a.seconds} s runs, median of {a.runs}")
    for mode in ("pap", "mab"):
        base = statistics.median(r[0] for r in results[("FreeRADIUS 3.2", mode)])
        for name in ("FreeRADIUS 3.2", "warden (log off)", "warden (INFO log)"):
            rs = results[(name, mode)]
            rate = statistics.median(r[0] for r in rs)
            print(f"  {mode.upper():<4}{name:<20}{rate:>8} req/s ({rate / base:.2f}x)  p50 {statistics.median(r[1] for r in rs):.3f} ms"
                  f"  p99 {statistics.median(r[2] for r in rs):.3f} ms  lost {sum(r[3] for r in rs)}"
                  f"  runs: {', '.join(str(r[0]) for r in rs)}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
