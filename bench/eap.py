#!/usr/bin/env python3
"""EAP-TLS and PEAP-MSCHAPv2 full authentications: server CPU time per
authentication and authentications per second, warden and FreeRADIUS 3.2
side by side in one run, same certificates (from `warden certs init`), same
driver (parallel eapol_test processes). Loopback only; bounded runs.

    python3 bench/eap.py [--auths 200] [--parallel 4] [--runs 3]

CPU per authentication is the server process's user+system time
(/proc/PID/stat) over the run, divided by the authentications that
succeeded; the driver's own CPU is not in it. FreeRADIUS (installed from
Debian if missing) runs its stock EAP module on our certificates, TLS 1.2,
no session cache, users in `files`, logging off; warden with logging off.
"""
import argparse, os, shutil, socket, statistics, subprocess, sys, tempfile, time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "a-long-shared-secret"


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def freeradius(tmp, certs, port):
    if not shutil.which("freeradius"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "freeradius"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    outer, tmp = tmp, tempfile.mkdtemp(dir=tmp)  # a fresh copy per start
    raddb = os.path.join(tmp, "raddb")
    shutil.copytree("/etc/freeradius/3.0", raddb, symlinks=True)
    with open(os.path.join(raddb, "clients.conf"), "w") as f:
        f.write(f"client bench {{\n\tipaddr = 127.0.0.1\n\tsecret = {SECRET}\n\trequire_message_authenticator = yes\n}}\n")
    authorize = os.path.join(raddb, "mods-config/files/authorize")
    rest = open(authorize).read()
    open(authorize, "w").write('alice\tCleartext-Password := "correct horse"\n\n' + rest)
    eap = os.path.join(raddb, "mods-enabled/eap")
    if os.path.islink(eap):
        os.remove(eap)
    open(eap, "w").write(f"""eap {{
	default_eap_type = tls
	timer_expire = 60
	ignore_unknown_eap_types = no
	max_sessions = ${{max_requests}}
	tls-config tls-common {{
		private_key_file = {certs}/server.key
		certificate_file = {certs}/server.pem
		ca_file = {certs}/ca.pem
		ca_path = {certs}
		cipher_list = "DEFAULT"
		tls_min_version = "1.2"
		tls_max_version = "1.2"
		ecdh_curve = "prime256v1"
		cache {{
			enable = no
		}}
	}}
	tls {{
		tls = tls-common
	}}
	peap {{
		tls = tls-common
		default_eap_type = mschapv2
		virtual_server = "inner-tunnel"
	}}
	mschapv2 {{
	}}
}}
""")
    site = open("/etc/freeradius/3.0/sites-available/default").read()
    import re
    ports = iter([port, port + 1, port, port + 1])
    site = re.sub(r"(?m)^(\s*)port = 0", lambda m: f"{m.group(1)}port = {next(ports, 0)}", site)
    site = re.sub(r"(?m)^(\s*)ipaddr = \*", r"\1ipaddr = 127.0.0.1", site)
    os.remove(os.path.join(raddb, "sites-enabled/default"))
    open(os.path.join(raddb, "sites-enabled/default"), "w").write(site)
    # FreeRADIUS drops to its own user: it must reach the config and the
    # (throwaway) certificates.
    subprocess.run(["chmod", "-R", "a+rX", outer], check=True)
    proc = subprocess.Popen(["freeradius", "-f", "-d", raddb, "-l", os.path.join(tmp, "freeradius.log")])
    time.sleep(2.5)
    return proc


def warden(tmp, certs, port):
    d = tempfile.mkdtemp(dir=tmp)
    shutil.copytree(os.path.join(ROOT, "policies"), os.path.join(d, "policies"))
    open(os.path.join(d, "users.toml"), "w").write('[[users]]\nname = "alice"\npassword = "correct horse"\n')
    open(os.path.join(d, "w.toml"), "w").write(
        f'[node]\nstate_dir = "state"\n[mqtt]\nlisten = "127.0.0.1:{free_udp_port()}"\n'
        f'[http]\nlisten = "127.0.0.1:{free_udp_port()}"\n'
        f'[radius]\nauth_listen = "127.0.0.1:{port}"\nacct_listen = "127.0.0.1:{port + 1}"\nusers_file = "users.toml"\n'
        f'[[radius.clients]]\nname = "bench"\naddress = "127.0.0.1"\nsecret = "{SECRET}"\n'
        f'[eap]\nserver_cert = "{certs}/server.pem"\nserver_key = "{certs}/server.key"\nclient_ca = "{certs}/ca.pem"\n')
    proc = subprocess.Popen([os.path.join(ROOT, "target/release/warden"), "run", "--config", os.path.join(d, "w.toml")],
                            stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "log"), "w"),
                            env={**os.environ, "RUST_LOG": "warn"})
    time.sleep(1.5)
    return proc


def configs(tmp, certs):
    tls = ("network={\n key_mgmt=IEEE8021X\n eapol_flags=0\n eap=TLS\n identity=\"bench-device\"\n"
           f" ca_cert=\"{certs}/ca.pem\"\n client_cert=\"{certs}/device.pem\"\n private_key=\"{certs}/device.key\"\n"
           " phase1=\"tls_disable_tlsv1_3=1\"\n}\n")
    peap = ("network={\n key_mgmt=IEEE8021X\n eapol_flags=0\n eap=PEAP\n identity=\"alice\"\n password=\"correct horse\"\n"
            f" phase2=\"auth=MSCHAPV2\"\n ca_cert=\"{certs}/ca.pem\"\n phase1=\"tls_disable_tlsv1_3=1\"\n}}\n")
    out = {}
    for name, text in (("EAP-TLS", tls), ("PEAP-MSCHAPv2", peap)):
        path = os.path.join(tmp, f"{name}.conf")
        open(path, "w").write(text)
        out[name] = path
    return out


def drive(conf, port, auths, parallel):
    def one(_):
        r = subprocess.run(["eapol_test", "-c", conf, "-a", "127.0.0.1", "-p", str(port), "-s", SECRET, "-r", "0",
                            "-t", "5"], capture_output=True, text=True)
        return r.returncode == 0 and "\nSUCCESS" in r.stdout
    with ThreadPoolExecutor(parallel) as pool:
        return sum(pool.map(one, range(auths)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--auths", type=int, default=200)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    if not shutil.which("eapol_test"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "eapoltest"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    tmp = tempfile.mkdtemp(prefix="warden-eap-bench-")
    certs = os.path.join(tmp, "certs")
    subprocess.run([os.path.join(ROOT, "target/release/warden"), "certs", "init", "--dir", certs, "--device",
                    "bench-device"], check=True, capture_output=True)
    confs = configs(tmp, certs)
    servers = {"FreeRADIUS 3.2": freeradius, "warden": warden}
    results = {}
    try:
        for r in range(a.runs):
            for name, start in servers.items():
                port = free_udp_port()
                proc = start(tmp, certs, port)
                if proc.poll() is not None:
                    raise SystemExit(f"{name} did not start (see its log under {tmp})")
                try:
                    for method, conf in confs.items():
                        drive(conf, port, 4, 2)  # warm up
                        c0, t0 = cpu(proc.pid), time.monotonic()
                        ok = drive(conf, port, a.auths, a.parallel)
                        c1, t1 = cpu(proc.pid), time.monotonic()
                        if ok < a.auths * 0.95:
                            raise SystemExit(f"{name} {method}: only {ok} of {a.auths} succeeded")
                        ms = 1e3 * (c1 - c0) / ok
                        rate = ok / (t1 - t0)
                        results.setdefault((name, method), []).append((ms, rate))
                        print(f"  run {r + 1}: {name:15s} {method:14s} {ms:.3f} ms CPU/auth  {rate:.0f} auths/s", flush=True)
                finally:
                    proc.terminate()
                    proc.wait(30)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nServer CPU per full authentication, {a.auths} auths x {a.runs} runs, {a.parallel} eapol_test in parallel, TLS 1.2:")
    for method in confs:
        base = statistics.median(x[0] for x in results[("FreeRADIUS 3.2", method)])
        for name in servers:
            rs = results[(name, method)]
            ms = statistics.median(x[0] for x in rs)
            print(f"  {method:14s} {name:15s} {ms:.3f} ms CPU/auth ({ms / base:.2f}x FreeRADIUS)  "
                  f"{statistics.median(x[1] for x in rs):.0f} auths/s  runs: {', '.join(f'{x[0]:.3f}' for x in rs)}")


if __name__ == "__main__":
    sys.exit(main())
