#!/usr/bin/env python3
"""Reconciliation at fleet scale: what reconciling 1,000,000 RADIUS sessions
costs warden, and what it does to MAB latency while it runs.

One warden (release build) with RADIUS on loopback; bench/radius_load.rs
drives it. In the same run:
  1. MAB p50/p99 with no sessions (window --window, --seconds each run);
  2. --sessions Accounting-Starts fill the session table (one MAC each);
  3. warden's CPU over --seconds idle with that table: the background
     sweep (20,000 sessions/s) is all it does;
  4. MAB p50/p99 with the table (the background sweep running);
  5. MAB p50/p99 across an urgent pass over every session (SIGHUP: a policy
     reload), the pass's wall time from the signal to its log line, and
     warden's CPU during it.
There is no FreeRADIUS column: it keeps no per-session access to reconcile.
Loopback only; bounded.

    python3 bench/reconcile.py [--sessions 1000000] [--runs 3] [--seconds 5] [--window 8]
"""
import argparse, os, re, signal, statistics, subprocess, sys, tempfile, shutil, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import radius as rb  # noqa: E402  (build(), free_udp_port(), load(), SECRET)

ROOT = rb.ROOT
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def start(exe, tmp, port):
    d = tempfile.mkdtemp(dir=tmp)
    shutil.copytree(os.path.join(ROOT, "policies"), os.path.join(d, "policies"))
    with open(os.path.join(d, "w.toml"), "w") as f:
        f.write(f'[node]\nstate_dir = "state"\n[mqtt]\nlisten = "127.0.0.1:{rb.free_udp_port()}"\n'
                f'[http]\nlisten = "127.0.0.1:{rb.free_udp_port()}"\n'
                f'[radius]\nauth_listen = "127.0.0.1:{port}"\nacct_listen = "127.0.0.1:{port + 1}"\n'
                f'[[radius.clients]]\nname = "bench"\naddress = "127.0.0.1"\nsecret = "{rb.SECRET}"\n'
                f'coa_port = {rb.free_udp_port()}\n')
    log = os.path.join(d, "log")
    proc = subprocess.Popen([exe, "run", "--config", os.path.join(d, "w.toml")], stdout=subprocess.DEVNULL,
                            stderr=open(log, "w"),
                            env={**os.environ, "RUST_LOG": "warn,warden::gateway::radius_enforce=info"})
    time.sleep(1.5)
    return proc, log


def passes(log):
    with open(log) as f:
        return f.read().count("RADIUS sessions reconciled")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--window", type=int, default=8)
    a = ap.parse_args()
    exe, gen = rb.build()
    tmp = tempfile.mkdtemp(prefix="warden-reconcile-bench-")
    port = rb.free_udp_port()
    proc, log = start(exe, tmp, port)
    try:
        empty = [rb.load(gen, port, "mab", a.window, a.seconds) for _ in range(a.runs)]
        t0 = time.monotonic()
        out = subprocess.run([gen, f"127.0.0.1:{port + 1}", rb.SECRET, "acct", "64", "600", str(a.sessions)],
                             check=True, capture_output=True, text=True).stdout
        fill = time.monotonic() - t0
        m = re.search(r"accept (\d+)", out)
        if int(m.group(1)) != a.sessions:
            raise SystemExit(f"not every Accounting-Start was answered: {out}")
        idle = []
        for _ in range(a.runs):
            c0 = cpu_seconds(proc.pid)
            time.sleep(a.seconds)
            idle.append((cpu_seconds(proc.pid) - c0) / a.seconds)
        full = [rb.load(gen, port, "mab", a.window, a.seconds) for _ in range(a.runs)]
        urgent = []
        for _ in range(a.runs):
            before = passes(log)
            load = subprocess.Popen([gen, f"127.0.0.1:{port}", rb.SECRET, "mab", str(a.window), str(a.seconds)],
                                    stdout=subprocess.PIPE, text=True)
            time.sleep(0.5)
            c0, t0 = cpu_seconds(proc.pid), time.monotonic()
            proc.send_signal(signal.SIGHUP)
            while passes(log) == before and time.monotonic() - t0 < 60:
                time.sleep(0.005)
            took = time.monotonic() - t0
            cpu = cpu_seconds(proc.pid) - c0
            text = load.communicate()[0]
            m = re.search(r"(\d+) req/s\s+p50 ([\d.]+) ms\s+p99 ([\d.]+) ms", text)
            urgent.append((int(m.group(1)), float(m.group(2)), float(m.group(3)), took, cpu))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    med = statistics.median
    print(f"sessions: {a.sessions}, filled in {fill:.1f} s ({a.sessions / fill:,.0f} Accounting-Starts/s)")
    print(f"MAB, window {a.window}, no sessions:      p50 {med(r[1] for r in empty):.3f} ms  p99 {med(r[2] for r in empty):.3f} ms  "
          f"({med(r[0] for r in empty):,.0f} req/s)")
    print(f"MAB, {a.sessions:,} sessions (background sweep): p50 {med(r[1] for r in full):.3f} ms  "
          f"p99 {med(r[2] for r in full):.3f} ms  ({med(r[0] for r in full):,.0f} req/s)")
    print(f"MAB across an urgent pass over every session: p50 {med(r[1] for r in urgent):.3f} ms  "
          f"p99 {med(r[2] for r in urgent):.3f} ms  ({med(r[0] for r in urgent):,.0f} req/s)")
    print(f"urgent pass: {med(r[3] for r in urgent):.2f} s wall (medians of {a.runs}; "
          f"runs {', '.join(f'{r[3]:.2f}' for r in urgent)}); warden CPU during it "
          f"{med(r[4] for r in urgent):.2f} s (MAB load included)")
    print(f"idle with the table (background sweep only): {med(idle) * 100:.1f}% of a core "
          f"(runs {', '.join(f'{x * 100:.1f}' for x in idle)})")


if __name__ == "__main__":
    main()
