#!/usr/bin/env bash
# Graceful upgrade of a running tollgate to a new binary, without refusing a connection:
#   deploy/upgrade.sh CONFIG OLD_PID [NEW_BINARY]
# CONFIG must set server.upgrade_sock (the running instance's config). The new
# binary checks the config, starts with `run -u` (it waits on upgrade_sock), the old process
# gets SIGQUIT and hands over its listening sockets, answers what it is serving with
# `Connection: close`, and exits after server.graceful_shutdown_timeout.
set -euo pipefail
usage="usage: deploy/upgrade.sh CONFIG OLD_PID [NEW_BINARY]"
config=${1:?$usage}
old=${2:?$usage}
bin=${3:-tollgate}
# upgrade_sock in block or flow style: `upgrade_sock: /run/x.sock` or `{ upgrade_sock: "…" }`.
sock=$(sed -n 's/.*upgrade_sock:[[:space:]]*"\{0,1\}\([^",} ]*\).*/\1/p' "$config" | head -1)
[ -n "$sock" ] || { echo "$config: set server.upgrade_sock" >&2; exit 2; }
kill -0 "$old" 2>/dev/null || { echo "no running process with pid $old" >&2; exit 1; }
"$bin" check -c "$config"
rm -f "$sock"
nohup "$bin" run -u -c "$config" >>"${TOLLGATE_LOG:-/dev/null}" 2>&1 &
new=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
[ -S "$sock" ] || { echo "the new process did not open $sock" >&2; kill "$new"; exit 1; }
kill -QUIT "$old"
while kill -0 "$old" 2>/dev/null; do sleep 0.2; done
kill -0 "$new" || { echo "the new process exited" >&2; exit 1; }
echo "upgraded: pid $old -> $new"
