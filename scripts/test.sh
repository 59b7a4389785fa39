#!/usr/bin/env bash
# The project's test command: installs what is missing, lints, runs pytest.
# Usage: scripts/test.sh [pytest args...]     (from anywhere; runs from the repo root)
set -euo pipefail
cd "$(dirname "$0")/.."

have_initdb() {
    command -v initdb >/dev/null 2>&1 || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

have_chromium() {
    { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; } &&
        { command -v chromedriver >/dev/null 2>&1 || [ -x /usr/lib/chromium/chromedriver ]; }
}

# Debian package names of what is missing: the servers the tests start, the browser the
# dashboard's tests drive (tests/browser.py), Prometheus for the alerting rules, and the
# network and clock tools of the multi-host tests.
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
have_initdb || missing+=(postgresql)
have_chromium || missing+=(chromium chromium-driver fonts-dejavu-core)  # fonts: readable screenshots
# promtool and prometheus: the shipped alerting rules' tests (tests/test_alert_rules.py)
{ command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; } ||
    missing+=(prometheus)
# The multi-host tests (tests/multihost.py): network namespaces (`ip`), partitions (`nft`),
# skewed clocks (libfaketime, and a C compiler for its sleep shim)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v nft >/dev/null 2>&1 || missing+=(nftables)
compgen -G '/usr/lib/*/faketime/libfaketime.so.1' >/dev/null || missing+=(faketime)
command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)

if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "test.sh: these are needed: sudo apt-get install ${missing[*]}" >&2
        exit 1
    fi
    echo "test.sh: installing ${missing[*]} with apt-get" >&2
    # The packages' own services are not needed (the tests start their own servers on free
    # ports) and must not fail the install where no init system runs: forbid service starts
    # for the duration of the install unless a policy is already in place.
    policy=/usr/sbin/policy-rc.d
    added_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 0755 "$policy"
        added_policy=1
    fi
    remove_policy() { if [ -n "$added_policy" ]; then rm -f "$policy"; fi; }
    trap remove_policy EXIT
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
    remove_policy
    trap - EXIT
fi

python3 -m pip install -q -e '.[test]'

# The real Kala, for the differential tests (tests/kala_reference.py): used when it sits beside
# the repository; those tests skip where it does not.
if [ -z "${KALA_REFERENCE_BIN:-}" ] && [ -x ../shared/reference/kala ]; then
    KALA_REFERENCE_BIN="$(cd ../shared/reference && pwd)/kala"
    export KALA_REFERENCE_BIN
fi
python3 -m ruff check kala_celery tests bench

# pytest, where "no test selected" (exit 5, e.g. `scripts/test.sh -k something`) is not a failure
run_pytest() {
    local status=0
    python3 -m pytest "$@" || status=$?
    [ "$status" -eq 0 ] || [ "$status" -eq 5 ]
}

# Tests independent of timing run on four processes (pytest-xdist, a file per process: each has
# its own PostgreSQL and Redis). Tests that assert timings or bounds of seconds (marked
# `serial`) run after them, two files at a time; the heaviest of those (marked `alone`: many
# processes each, and faults) last, one at a time.
failed=0
run_pytest -q -p xdist -n "${KALA_TEST_PROCESSES:-4}" --dist loadfile \
    -m "not serial and not alone" "$@" || failed=1
run_pytest -q -p xdist -n 2 --dist loadfile -m "serial and not alone" "$@" || failed=1
run_pytest -q -m alone "$@" || failed=1
exit "$failed"
