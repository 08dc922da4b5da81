#!/usr/bin/env bash
# The whole runner bench against a fresh service started from CHECKOUT (its own data folder, the bench's
# service settings, an admin for the bench to sign in as), written to OUTFILE. Run it for two checkouts
# one after the other (say main from `git archive` and a branch) to compare them side by side:
#
#   bench/runner_service.sh /tmp/before /tmp/before.txt; bench/runner_service.sh . /tmp/after.txt
#
# It uses port 8000 and Kernel Gateway from /tmp/omlweb-bench-kg (bench/README.md says how to make it).
set -euo pipefail
checkout=$(cd "$1" && pwd)
out=$2
shift 2
cd "$checkout"
OMLWEB_DATA_DIR=$(mktemp -d /tmp/omlweb-bench-data.XXXX)
export OMLWEB_DATA_DIR
export DJANGO_SUPERUSER_USERNAME=admin DJANGO_SUPERUSER_PASSWORD=bench-pass-123 DJANGO_SUPERUSER_EMAIL=admin@example.com
# 10,000 rows allowed, 8 runs at once per web process and for the bench's one user (bench/README.md).
export OMLWEB_OUTPUT_SZLIMIT=100000 OMLWEB_RUNNER_MAX_CONCURRENT=8 OMLWEB_RUNNER_QUEUE_TIMEOUT=60
export OMLWEB_USER_MAX_CONCURRENT_RUNS=8
.venv/bin/python bench/runner_bench.py --start-service "bin/serve --bind 127.0.0.1:8000" \
    --service-url http://127.0.0.1:8000 --username admin --password bench-pass-123 \
    --kernel-gateway-python /tmp/omlweb-bench-kg/bin/python --targets floor,runner,service,kernelgw "$@" \
    >"$out" 2>&1
