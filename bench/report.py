#!/usr/bin/env python3
"""`warden report --since 30d` over a large audit trail (issue 16): time and peak memory.

    python3 bench/report.py [--devices 1000000] [--events 10000000] [--runs 3]

bench/report_trail.rs writes a synthetic trail (a real hash chain, 64 MiB files) of EVENTS
entries for DEVICES devices over 30 days; then `warden report --since 30d` runs RUNS times
in each format. Reported: wall time (median) and peak RSS (GNU time's %M, of the report
process alone: ru_maxrss of all children would count the compiler), against
the issue's target of 30 s and 1 GiB. Local files only.
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=1_000_000)
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    if not os.path.exists("/usr/bin/time"):
        raise SystemExit("/usr/bin/time not found: apt-get install time")
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    out = subprocess.run(["cargo", "bench", "--bench", "report_trail", "--no-run", "--message-format=json", "--quiet"],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    gen = [json.loads(l)["executable"] for l in out.splitlines() if '"executable":"' in l]
    gen = [e for e in gen if os.path.basename(e).startswith("report_trail")][0]
    tmp = tempfile.mkdtemp(prefix="warden-report-bench-")
    try:
        trail = os.path.join(tmp, "audit")
        print(subprocess.run([gen, trail, str(a.devices), str(a.events), "30"], check=True, capture_output=True,
                             text=True).stdout.strip())
        size = sum(os.path.getsize(os.path.join(trail, f)) for f in os.listdir(trail))
        print(f"trail: {size / 2**30:.2f} GiB")
        for fmt in ("json", "csv", "html"):
            times, peaks = [], []
            for _ in range(a.runs):
                t = time.monotonic()
                p = subprocess.run(["/usr/bin/time", "-f", "maxrss %M", os.path.join(ROOT, "target/release/warden"), "report",
                                    "--dir", trail, "--since", "30d", "--format", fmt,
                                    "--out", os.path.join(tmp, f"report.{fmt}")], capture_output=True, text=True)
                times.append(time.monotonic() - t)
                if p.returncode != 0:
                    raise SystemExit(p.stderr)
                peaks.append(int(p.stderr.strip().splitlines()[-1].split()[-1]) / 1024)
            out_size = os.path.getsize(os.path.join(tmp, f"report.{fmt}"))
            print(f"  {fmt:<4} {statistics.median(times):.1f} s median (runs {', '.join(f'{x:.1f}' for x in times)}), "
                  f"peak RSS {max(peaks):.0f} MiB, output {out_size / 2**20:.1f} MiB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
