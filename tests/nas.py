#!/usr/bin/env python3
"""A test NAS for warden's CoA/Disconnect (RFC 5176), independent of warden's
codec: it checks each request's Request Authenticator and
Message-Authenticator with the shared secret, prints one JSON line per
request, and answers ACK, or NAK (Error-Cause 405) for CoA when --nak-coa.
Loopback only; exits by itself after --seconds.

    nas.py PORT SECRET [--nak-coa] [--seconds 30]
"""
import hashlib, hmac, json, socket, sys, time

port, secret = int(sys.argv[1]), sys.argv[2].encode()
nak_coa = "--nak-coa" in sys.argv
seconds = float(sys.argv[sys.argv.index("--seconds") + 1]) if "--seconds" in sys.argv else 30.0
names = {40: "Disconnect-Request", 43: "CoA-Request"}

s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", port))
print(json.dumps({"listening": port}), flush=True)
end = time.monotonic() + seconds
while time.monotonic() < end:
    s.settimeout(max(0.05, end - time.monotonic()))
    try:
        data, peer = s.recvfrom(4096)
    except socket.timeout:
        break
    t = time.time()
    code, ident, length = data[0], data[1], int.from_bytes(data[2:4], "big")
    data = data[:length]
    attrs, i, ma_at = {}, 20, None
    while i + 2 <= len(data):
        typ, ln = data[i], data[i + 1]
        if ln < 2:
            break
        attrs.setdefault(typ, []).append(data[i + 2:i + ln])
        if typ == 80:
            ma_at = i
        i += ln
    req_auth_ok = hashlib.md5(data[:4] + b"\0" * 16 + data[20:] + secret).digest() == data[4:20]
    ma_ok = None
    if ma_at is not None:
        z = bytearray(data)
        z[4:20] = b"\0" * 16
        z[ma_at + 2:ma_at + 18] = b"\0" * 16
        ma_ok = hmac.new(secret, bytes(z), hashlib.md5).digest() == data[ma_at + 2:ma_at + 18]
    text = lambda t: attrs[t][0].decode(errors="replace") if t in attrs else None
    vlan = attrs[81][0][1:].decode() if 81 in attrs else None
    print(json.dumps({"t": t, "code": names.get(code, code), "request_authenticator_ok": req_auth_ok,
                      "message_authenticator_ok": ma_ok, "acct_session_id": text(44),
                      "calling_station_id": text(31), "event_timestamp": 55 in attrs, "vlan": vlan,
                      "filter_id": text(11)}), flush=True)
    if code == 43 and nak_coa:
        rcode, body = 45, bytes([101, 6]) + (405).to_bytes(4, "big")
    else:
        rcode, body = code + 1, b""
    head = bytes([rcode, ident]) + (20 + len(body)).to_bytes(2, "big")
    resp_auth = hashlib.md5(head + data[4:20] + body + secret).digest()
    s.sendto(head + resp_auth + body, peer)
