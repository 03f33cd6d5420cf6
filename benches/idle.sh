#!/usr/bin/env bash
# Idle memory of the daemon (issue 12): one tenant, four sources, polling the built-in simulator
# with no backlog. Prints VmRSS, RssAnon and RssFile after SECONDS (default 95), and with
# SMAPS=1 the resident KiB of each mapping (the binary, the heap, libc).
# Usage: benches/idle.sh path/to/m365-ingest [SECONDS]
set -euo pipefail
bin=${1:?usage: benches/idle.sh path/to/m365-ingest [SECONDS]}
secs=${2:-95}
dir=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
"$bin" sim --listen "127.0.0.1:$port" --alerts 0 >"$dir/sim.out" 2>&1 &
sim=$!
trap 'kill "$sim" ${run:-} 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 1 100); do grep -q client_secret "$dir/sim.out" && break; sleep 0.1; done
if ! grep -q client_secret "$dir/sim.out"; then
  echo "the simulator did not start on 127.0.0.1:$port within 10 s:" >&2
  cat "$dir/sim.out" >&2
  exit 1
fi
value() { grep "^  $1 " "$dir/sim.out" | sed 's/.*= "\(.*\)"/\1/'; }
cat >"$dir/config.toml" <<TOML
[store]
url = "sqlite://$dir/store.db"
[server]
listen = "127.0.0.1:0"
[log]
level = "warn"
[forward]
url = "$(value forward.url)"
api_key = "idle-bench"
[tenants.idle]
tenant_id = "$(value tenant_id)"
client_id = "$(value client_id)"
client_secret = "$(value client_secret)"
login_url = "$(value login_url)"
graph_url = "$(value graph_url)"
cloud_apps_url = "$(value cloud_apps_url)"
[tenants.idle.sources.alerts]
interval = "10s"
[tenants.idle.sources.incidents]
interval = "10s"
[tenants.idle.sources.submissions]
interval = "10s"
[tenants.idle.sources.cloud_apps]
interval = "10s"
TOML
"$bin" run --config "$dir/config.toml" >"$dir/run.out" 2>&1 &
run=$!
sleep "$secs"
if ! kill -0 "$run" 2>/dev/null; then
  echo "the daemon stopped:" >&2
  tail -5 "$dir/run.out" >&2
  exit 1
fi
if [ -n "${SMAPS:-}" ]; then
  awk '/^[0-9a-f]+-[0-9a-f]+ /{name=$6} /^Rss:/{kb[name]+=$2}
       END{for (n in kb) if (kb[n] > 200) print kb[n], (n == "" ? "[anonymous]" : n)}' \
    "/proc/$run/smaps" | sort -rn
fi
grep -E "VmRSS|RssAnon|RssFile" "/proc/$run/status" | tr -s ' \t' ' ' | tr '\n' ' '
echo
