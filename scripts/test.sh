#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs the real peers
# the integration tests run against, then lints and tests everything.
set -euo pipefail
cd "$(dirname "$0")/.."

# Real peers from Debian: mosquitto (external broker), mosquitto_pub (the
# device side), openssl (a throwaway PKI for the mqtts test), radclient
# (freeradius-utils: the NAS side of the RADIUS tests), python3 (the test
# NAS answering CoA), wireguard-go + wg + ip + ping (the remote peer of the
# WireGuard tests, in network namespaces they create), eapol_test (eapoltest:
# the 802.1X supplicant of the EAP tests), promtool (prometheus: checks the
# alerting rules in docs/prometheus), chromium + chromedriver (the web
# console's browser test). Installed only when missing.
packages=(mosquitto mosquitto-clients openssl freeradius-utils python3 wireguard-go wireguard-tools iproute2 iputils-ping eapoltest prometheus chromium chromium-driver)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if [ ${#missing[@]} -gt 0 ]; then
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The Debian packages start a system mosquitto on 1883 and, where systemd
# runs, a prometheus on 9090 (warden's default API port); the tests need
# neither (they use free ports), and the prometheus server is stopped.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
  $sudo systemctl disable --now prometheus >/dev/null 2>&1 || true
fi

# The OpenAPI test's independent validator, from PyPI: openapi-spec-validator
# (with jsonschema). Debian's python3 is externally managed (PEP 668).
if ! python3 -c "import openapi_spec_validator, jsonschema" 2>/dev/null; then
  python3 -m pip --version >/dev/null 2>&1 || { $sudo apt-get update -qq; DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends python3-pip; }
  python3 -m pip install --quiet openapi-spec-validator 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages openapi-spec-validator
fi

cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
# Unit, integration and corpus-replay tests. (Not --all-targets: that would
# run the bench programs too, which are measurements, not tests; clippy above
# still compiles them.)
cargo test --locked --lib --bins --tests
cargo test --locked --doc
cargo run --locked --quiet -- policy test --dir policies
cargo run --locked --quiet -- check --config examples/warden.toml
