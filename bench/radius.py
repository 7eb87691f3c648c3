#!/usr/bin/env python3
"""RADIUS at the scale users run: PAP and MAB Access-Requests per second and
latency, warden and FreeRADIUS 3.2 side by side in one run, driven by the
same load generator (bench/radius_load.rs: WINDOW requests in flight spread
over --sources source ports, Message-Authenticator on every request, every
answer checked), with --users users and as many known devices (MACs).
Loopback only; bounded runs.

    python3 bench/radius.py [--users 100000] [--runs 3] [--seconds 5] [--window 64]
                            [--sources 8] [--threads 4] [--storm 48] [--only pap,mab,half,storm]

FreeRADIUS is configured the way its experts would for this comparison: a
radiusd.conf written from scratch with only the `files` and `pap` modules, one
virtual server (authorize { files; pap }), --threads worker threads, no
logging of requests. Its `files` module holds the same users (Cleartext-
Password) and MACs (MAB: Cleartext-Password = the MAC), each with a VLAN reply.

warden gets the same users (plain `password`, each with a `device_id`) and
the same devices, compliant, in its compliance snapshot; logging off
(RUST_LOG=warn), `radius.workers` = one per core.

Besides the two peak-rate columns:
  half:  warden's p50/p99 at half of its own peak MAB and PAP rate;
  storm: MAB at a fixed rate (--storm-rate) while --storm eapol_test
         processes run EAP-TLS authentications back to back against the
         same warden (as many as the machine sustains), against a control
         run with idle-priority busy loops on every core and no EAP; p99
         side by side. The supplicants run at idle priority too: they stand
         in for remote machines, so what is measured is what warden's own
         EAP work does to MAB.
"""
import argparse, json, os, re, shutil, socket, statistics, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "a-long-shared-secret"
# What stands in for other machines (the supplicants of a storm, CPU
# burners) runs under SCHED_IDLE: it takes only CPU that nothing else on
# this box wants, and a waking server thread preempts it at once. A nice
# value alone does not: a niced task may finish its slice (up to a 4 ms
# tick) before the server runs, which put that tick in the p99s measured.
BACKGROUND = ["chrt", "--idle", "0"]


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_tcp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build():
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    out = subprocess.run(["cargo", "bench", "--bench", "radius_load", "--no-run", "--message-format=json", "--quiet"],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    exe = [json.loads(l)["executable"] for l in out.splitlines() if '"executable":"' in l]
    return os.path.join(ROOT, "target/release/warden"), [e for e in exe if "radius_load" in os.path.basename(e)][0]


def mac(i):
    return "aabbcc%06x" % i


def freeradius(tmp, port, users, threads):
    if not shutil.which("freeradius"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "freeradius"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    raddb = os.path.join(tmp, "raddb")
    os.makedirs(raddb, exist_ok=True)
    with open(os.path.join(raddb, "dictionary"), "w") as f:
        f.write("$INCLUDE /usr/share/freeradius/dictionary\n")
    with open(os.path.join(raddb, "clients.conf"), "w") as f:
        f.write(f"client bench {{\n\tipaddr = 127.0.0.1\n\tsecret = {SECRET}\n\trequire_message_authenticator = yes\n}}\n")
    reply = '\tTunnel-Type = VLAN, Tunnel-Medium-Type = IEEE-802, Tunnel-Private-Group-Id = "100"\n\n'
    with open(os.path.join(raddb, "users"), "w") as f:
        for i in range(users):
            f.write(f'user{i:07d}\tCleartext-Password := "pw-{i}"\n{reply}')
            f.write(f'{mac(i)}\tCleartext-Password := "{mac(i)}"\n{reply}')
    with open(os.path.join(raddb, "radiusd.conf"), "w") as f:
        f.write(f"""
prefix = /usr
exec_prefix = /usr
sysconfdir = /etc
localstatedir = /var
sbindir = /usr/sbin
logdir = {tmp}
raddbdir = {raddb}
radacctdir = {tmp}
name = freeradius
confdir = {raddb}
modconfdir = {raddb}
run_dir = {tmp}
db_dir = {tmp}
libdir = /usr/lib/freeradius
pidfile = {tmp}/freeradius.pid
max_request_time = 30
cleanup_delay = 5
max_requests = 65536
hostname_lookups = no
log {{
    destination = files
    file = {tmp}/freeradius.log
    auth = no
}}
security {{
    allow_core_dumps = no
    max_attributes = 200
    reject_delay = 0
    status_server = yes
}}
thread pool {{
    start_servers = {threads}
    max_servers = {threads}
    min_spare_servers = {threads}
    max_spare_servers = {threads}
    max_requests_per_server = 0
    auto_limit_acct = no
}}
$INCLUDE clients.conf
modules {{
    files {{
        filename = {raddb}/users
    }}
    pap {{
        normalise = no
    }}
}}
server bench {{
    listen {{
        type = auth
        ipaddr = 127.0.0.1
        port = {port}
    }}
    authorize {{
        files
        pap
    }}
    authenticate {{
        Auth-Type PAP {{
            pap
        }}
    }}
}}
""")
    subprocess.run(["chmod", "-R", "a+rX", tmp], check=True)
    log = open(os.path.join(tmp, "freeradius.out"), "w")
    proc = subprocess.Popen(["freeradius", "-f", "-d", raddb], stdout=log, stderr=log)
    wait_answer(port, proc, os.path.join(tmp, "freeradius.out"))
    return proc


def wait_answer(port, proc, log):
    """Until a Status-Server-free probe: the server answers a MAB request."""
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited:\n{open(log).read()[-3000:]}")
        out = subprocess.run(["radclient", "-r", "1", "-t", "1", f"127.0.0.1:{port}", "auth", SECRET],
                             input=f'User-Name = "{mac(0)}", User-Password = "{mac(0)}", Message-Authenticator = 0x00\n',
                             capture_output=True, text=True)
        if "Access-Accept" in out.stdout:
            return
        time.sleep(0.5)
    raise SystemExit(f"no answer on {port}:\n{open(log).read()[-3000:]}")


def warden_dir(tmp, users, devices=None):
    devices = users if devices is None else devices
    d = tempfile.mkdtemp(dir=tmp)
    shutil.copytree(os.path.join(ROOT, "policies"), os.path.join(d, "policies"))
    with open(os.path.join(d, "users.toml"), "w") as f:
        for i in range(users):
            f.write(f'[[users]]\nname = "user{i:07d}"\npassword = "pw-{i}"\ndevice_id = "dev-{i:07d}"\n')
    os.makedirs(os.path.join(d, "state"))
    write_snapshot(os.path.join(d, "state", "compliance.jsonl"), devices)
    return d


def write_snapshot(path, n, mac=mac, extra=lambda i: {"groups": ["pos"]}):
    """n compliant devices `dev-{i:07d}` (MAC `mac(i)`, report fields from
    `extra(i)` on top), as a JSON-lines snapshot: warden reads one when it
    has no binary snapshot, and writes the binary one from it. Also used by
    bench/restart.py."""
    now = time.time()
    ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    patch = time.strftime("%Y-%m-%d", time.gmtime(now - 10 * 86400))
    with open(path, "w") as f:
        for i in range(n):
            m = ":".join(mac(i)[k:k + 2] for k in range(0, 12, 2))
            report = {"seq": 1, "ts": ts, "os": "android", "os_version": "14.0.1", "security_patch": patch,
                      "encrypted": True, "passcode": True, "rooted": False, "kiosk_mode": True,
                      "apps_installed": ["com.acme.pos"], "apps_running": ["com.acme.pos"],
                      "wifi_ssid": "ACME-STORE", "open_ports": [443], "mac_addresses": [m],
                      "agent_version": "3.2.0", **extra(i)}
            f.write(json.dumps({"id": f"dev-{i:07d}", "last_seen": int(now * 1000), "report": report}) + "\n")


def warden(exe, d, port, extra="", workers=0, log_level="warn", nice=False):
    http = free_tcp_port()
    with open(os.path.join(d, "w.toml"), "w") as f:
        f.write(f'[node]\nstate_dir = "state"\nsnapshot_every = "1h"\n[mqtt]\nlisten = "127.0.0.1:{free_tcp_port()}"\n'
                f'[http]\nlisten = "127.0.0.1:{http}"\n'
                f'[radius]\nauth_listen = "127.0.0.1:{port}"\nacct_listen = "127.0.0.1:{free_udp_port()}"\n'
                f'users_file = "users.toml"\nworkers = {workers}\n'
                f'[[radius.clients]]\nname = "bench"\naddress = "127.0.0.1"\nsecret = "{SECRET}"\n{extra}')
    log = os.path.join(d, "log")
    started = time.time()
    proc = subprocess.Popen((BACKGROUND if nice else []) + [os.path.abspath(exe), "run", "--config", "w.toml"],
                            cwd=d, stdout=subprocess.DEVNULL,
                            stderr=open(log, "w"), env={**os.environ, "RUST_LOG": log_level})
    wait_answer(port, proc, log)
    return proc, time.time() - started


def load(gen, port, mode, window, seconds, users=1, sources=1, rate=None):
    cmd = [gen, f"127.0.0.1:{port}", SECRET, mode, str(window), str(seconds),
           "--population", str(users), "--sources", str(sources)]
    if rate:
        # A paced load sleeps between requests: a spinning generator would
        # take a core from the server and put scheduler slices (ms) in the
        # latency it measures.
        cmd += ["--rate", str(int(rate)), "--blocking"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    m = re.search(r"(\d+) req/s\s+p50 ([\d.]+) ms\s+p99 ([\d.]+) ms\s+accept (\d+)\s+reject (\d+)\s+lost (\d+)\s+bad (\d+)", out)
    rate, p50, p99, acc, rej, lost, bad = m.groups()
    if int(acc) == 0 or int(bad) or int(rej):
        raise SystemExit(f"unexpected answers: {out}")
    return int(rate), float(p50), float(p99), int(lost)


def row(label, rs, base=None):
    rate = statistics.median(r[0] for r in rs)
    ratio = f" ({rate / base:.2f}x)" if base else ""
    return (f"  {label:<34}{rate:>8} req/s{ratio}  p50 {statistics.median(r[1] for r in rs):.3f} ms"
            f"  p99 {statistics.median(r[2] for r in rs):.3f} ms  lost {sum(r[3] for r in rs)}"
            f"  runs: {', '.join(str(r[0]) for r in rs)} (p99 {', '.join(f'{r[2]:.2f}' for r in rs)})")


def storm_clients(exe, tmp, port, n, seconds):
    """n eapol_test loops (EAP-TLS, TLS 1.3) for `seconds`; returns (processes, counter files)."""
    certs = os.path.join(tmp, "certs")
    if not os.path.exists(certs):
        subprocess.run([exe, "certs", "init", "--dir", certs, "--device", "dev-0000001"], check=True,
                       capture_output=True)
    conf = os.path.join(tmp, "tls.conf")
    with open(conf, "w") as f:
        f.write(f'network={{\n  key_mgmt=IEEE8021X\n  eapol_flags=0\n  eap=TLS\n  identity="dev-0000001"\n'
                f'  ca_cert="{certs}/ca.pem"\n  client_cert="{certs}/device.pem"\n  private_key="{certs}/device.key"\n}}\n')
    procs, counts = [], []
    for i in range(n):
        count = os.path.join(tmp, f"storm{i}.count")
        # One eapol_test process re-authenticates until the time is up
        # (-r): every round is a full EAP-TLS handshake (warden resumes no
        # TLS session), without a fork, exec and OpenSSL start per
        # authentication on this small box. Successes are counted from its
        # output.
        # eapol_test's -t bounds its whole run, not one authentication.
        script = (f'timeout {seconds} eapol_test -c {conf} -a 127.0.0.1 -p {port} -s {SECRET} -r 1000000 '
                  f'-t {seconds + 5} '
                  f'2>&1 | grep -c CTRL-EVENT-EAP-SUCCESS > {count}')
        # The supplicants stand in for remote machines: idle priority, so that on
        # this small box they take the CPU warden leaves, and what is
        # measured is what warden's own EAP work does to MAB.
        procs.append(subprocess.Popen(BACKGROUND + ["bash", "-c", script]))
        counts.append(count)
    return procs, counts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--sources", type=int, default=8)
    ap.add_argument("--threads", type=int, default=4, help="FreeRADIUS worker threads")
    ap.add_argument("--storm", type=int, default=48, help="parallel eapol_test processes")
    ap.add_argument("--storm-rate", type=int, default=5000, help="MAB requests/s offered during the storm run")
    ap.add_argument("--scale-devices", type=int, default=1_000_000, help="users and devices of the scale run")
    ap.add_argument("--only", default="pap,mab,half,storm,scale")
    a = ap.parse_args()
    only = set(a.only.split(","))
    exe, gen = build()
    if "storm" in only:
        subprocess.run(["bash", "-c", "command -v eapol_test || apt-get install -y -qq eapoltest"], check=True,
                       capture_output=True)
    tmp = tempfile.mkdtemp(prefix="warden-radius-bench-")
    results = {}
    modes = [m for m in ("pap", "mab") if m in only]
    ready = 0.0
    if modes or "half" in only or "storm" in only:
        print(f"preparing {a.users} users and devices...", flush=True)
        wdir = warden_dir(tmp, a.users)
    if modes or "half" in only:
        fr_port, w_port = free_udp_port(), free_udp_port()
        fr = freeradius(tmp, fr_port, a.users, a.threads) if modes else None
        w, ready = warden(exe, wdir, w_port)
        try:
            # Runs alternate between the two servers, so drift in the machine's
            # load hits both alike.
            for _ in range(a.runs):
                for mode in modes:
                    for name, port in (("FreeRADIUS 3.2", fr_port), ("warden", w_port)):
                        results.setdefault((name, mode), []).append(
                            load(gen, port, mode, a.window, a.seconds, a.users, a.sources))
            if "half" in only:
                for mode in ("mab", "pap"):
                    if ("warden", mode) not in results:
                        results[("warden", mode)] = [load(gen, w_port, mode, a.window, a.seconds, a.users, a.sources)]
                    peak = statistics.median(r[0] for r in results[("warden", mode)])
                    results[("half", mode)] = [load(gen, w_port, mode, a.window, a.seconds, a.users, a.sources,
                                                    rate=peak / 2) for _ in range(a.runs)]
                    results[("half", mode + "_rate")] = peak / 2
        finally:
            if fr:
                fr.terminate()
                fr.wait(30)
            w.terminate()
            w.wait(30)
        print(f"RADIUS Access-Requests, {a.users} users and devices, window {a.window} over {a.sources} source ports, "
              f"{a.seconds} s runs, median of {a.runs}; FreeRADIUS {a.threads} threads; warden ready in {ready:.1f} s")
        for mode in modes:
            base = statistics.median(r[0] for r in results[("FreeRADIUS 3.2", mode)])
            for name in ("FreeRADIUS 3.2", "warden"):
                print(row(f"{mode.upper()} {name}", results[(name, mode)], base))
        for mode in ("mab", "pap"):
            if ("half", mode) in results:
                print(row(f"{mode.upper()} warden at {int(results[('half', mode + '_rate')])}/s (half)",
                          results[("half", mode)]))

    if "storm" in only:
        port = free_udp_port()
        certs = os.path.join(tmp, "certs")
        subprocess.run([exe, "certs", "init", "--dir", certs, "--device", "dev-0000001"], check=True, capture_output=True)
        eap = f'[eap]\nserver_cert = "{certs}/server.pem"\nserver_key = "{certs}/server.key"\nclient_ca = "{certs}/ca.pem"\n'
        w, _ = warden(exe, wdir, port, eap)
        # The same storm aimed at another warden (idle priority, like the
        # supplicants): the clients' work is the same, the server's EAP work
        # is elsewhere. The difference from the storm on the measured warden
        # is what its own EAP work does to MAB.
        other_port = free_udp_port()
        other, _ = warden(exe, warden_dir(tmp, 1), other_port, eap, nice=True)
        calm, elsewhere, stormy, auths = [], [], [], []

        def storm_run(target, into):
            procs, counts = storm_clients(exe, tmp, target, a.storm, a.seconds + 2)
            time.sleep(1)
            into.append(load(gen, port, "mab", a.window, a.seconds, a.users, a.sources, rate=a.storm_rate))
            for p in procs:
                p.wait(60)
            return sum(int(open(c).read().strip() or 0) for c in counts) / (a.seconds + 2)

        try:
            # Warm-up, not counted: the first run after a start pays for
            # page faults and cold caches (it was the
            # slowest control run in every set).
            load(gen, port, "mab", a.window, 2, a.users, a.sources, rate=a.storm_rate)
            for _ in range(a.runs):
                # The control: the same idle-priority background CPU load as the
                # storm's supplicants, without EAP. Without it, idle vCPUs
                # of this VM add milliseconds of wake-up to the calm run.
                b = burners(a.seconds + 2)
                calm.append(load(gen, port, "mab", a.window, a.seconds, a.users, a.sources, rate=a.storm_rate))
                stop(b)
                storm_run(other_port, elsewhere)
                auths.append(storm_run(port, stormy))
        finally:
            for p in (w, other):
                p.terminate()
                p.wait(30)
        print(f"MAB at {a.storm_rate}/s offered; {a.storm} eapol_test processes (EAP-TLS 1.3), idle priority:")
        print(row("MAB, idle CPU burners (control)", calm))
        print(row("MAB, storm on another warden", elsewhere))
        print(row("MAB, storm on this warden", stormy))
        print(f"  EAP-TLS authentications completed by this warden during the storm: {statistics.median(auths):.0f}/s "
              f"(runs: {', '.join(f'{x:.0f}' for x in auths)})")
        p99 = lambda rs: statistics.median(r[2] for r in rs)  # noqa: E731
        print(f"  p99 ratio, storm on this warden over: the burners {p99(stormy) / p99(calm):.2f}x,"
              f" the storm on another warden {p99(stormy) / p99(elsewhere):.2f}x")
    if "scale" in only:
        scale(exe, gen, tmp, a)
    shutil.rmtree(tmp, ignore_errors=True)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def burners(seconds):
    """Idle-priority busy loops on every core: keeps this VM's vCPUs from idling, so
    both sides of a latency comparison see the same machine."""
    return [subprocess.Popen(["timeout", str(seconds)] + BACKGROUND + ["sh", "-c", "while :; do :; done"])
            for _ in range(os.cpu_count() or 2)]


def stop(procs):
    for p in procs:
        p.terminate()  # timeout passes SIGTERM on to its loop
        p.wait()


def scale(exe, gen, tmp, a):
    n = a.scale_devices
    print(f"preparing {n} users and devices...", flush=True)
    d = warden_dir(tmp, n)
    # 1. The users file: load and check.
    times, peaks = [], []
    with open(os.path.join(d, "check.toml"), "w") as f:
        f.write(f'[node]\nstate_dir = "state"\n[policy]\ndir = "policies"\n[radius]\nusers_file = "users.toml"\n'
                f'[[radius.clients]]\nname = "b"\naddress = "127.0.0.1"\nsecret = "{SECRET}"\n')
    for _ in range(a.runs):
        out = subprocess.run(["/usr/bin/time", "-f", "%e %M", exe, "check", "--config", "check.toml"], cwd=d,
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(out.stderr)
        e, m = out.stderr.strip().splitlines()[-1].split()
        times.append(float(e))
        peaks.append(int(m) / 1024)
    print(f"users file of {n}: warden check {statistics.median(times):.2f} s (runs: {', '.join(f'{t:.2f}' for t in times)}),"
          f" peak RSS {statistics.median(peaks):.0f} MiB")
    # 2. Memory per user: warden with and without the users file, same devices.
    port = free_udp_port()

    def settled_rss():
        w, ready = warden(exe, d, port)
        time.sleep(2)
        rss = rss_kib(w.pid)
        w.terminate()
        w.wait(60)
        return rss, ready

    with_users, ready = settled_rss()
    os.rename(os.path.join(d, "users.toml"), os.path.join(d, "users.full"))
    open(os.path.join(d, "users.toml"), "w").close()
    without, _ = settled_rss()
    os.rename(os.path.join(d, "users.full"), os.path.join(d, "users.toml"))
    print(f"RSS with {n} users and {n} devices {with_users / 1024:.0f} MiB, without users {without / 1024:.0f} MiB:"
          f" {(with_users - without) * 1024 / n:.0f} bytes per user; warden ready in {ready:.1f} s")
    # 3. MAB p99 while every device is re-evaluated (a policy file touched).
    w, _ = warden(exe, d, port, log_level="warn,warden::gateway::compliance_task=info")
    calm, reload, took = [], [], []
    log = os.path.join(d, "log")
    try:
        for _ in range(a.runs):
            b = burners(a.seconds + 2)
            calm.append(load(gen, port, "mab", a.window, a.seconds, n, a.sources, rate=a.storm_rate))
            stop(b)
            b = burners(a.seconds + 2)
            before = open(log).read().count("devices re-evaluated")
            cmd = [gen, f"127.0.0.1:{port}", SECRET, "mab", str(a.window), str(a.seconds), "--population", str(n),
                   "--sources", str(a.sources), "--rate", str(a.storm_rate), "--blocking"]
            g = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
            time.sleep(0.5)
            policy = sorted(os.listdir(os.path.join(d, "policies")))[0]
            os.utime(os.path.join(d, "policies", policy))
            out = g.communicate()[0]
            stop(b)
            m = re.search(r"(\d+) req/s\s+p50 ([\d.]+) ms\s+p99 ([\d.]+) ms\s+accept (\d+)\s+reject (\d+)\s+lost (\d+)", out)
            reload.append((int(m.group(1)), float(m.group(2)), float(m.group(3)), int(m.group(6))))
            deadline = time.time() + 60
            while open(log).read().count("devices re-evaluated") == before and time.time() < deadline:
                time.sleep(0.2)
            text = re.sub(r"\x1b\[[0-9;]*m", "", open(log).read())
            found = [l for l in text.splitlines() if "devices re-evaluated" in l]
            m = re.search(r"took_ms=(\d+)", found[-1]) if found else None
            took.append(int(m.group(1)) if m else -1)
    finally:
        w.terminate()
        w.wait(60)
    print(f"MAB at {a.storm_rate}/s offered over {n} devices, idle-priority CPU burners on every core in both:")
    print(row("MAB, no reload (control)", calm))
    print(row("MAB across a full re-evaluation", reload))
    print(f"  re-evaluation took {statistics.median(took)} ms (runs: {', '.join(map(str, took))});"
          f" p99 ratio {statistics.median(r[2] for r in reload) / statistics.median(r[2] for r in calm):.2f}x")


if __name__ == "__main__":
    sys.exit(main())
