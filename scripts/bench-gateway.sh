#!/usr/bin/env bash
# bench-gateway.sh compares the gateway with nginx as a plain reverse proxy
# to the same trivial backend, on 127.0.0.1 only: requests/s and p50/p99 at
# 1 and 16 connections for direct, nginx and the gateway (JWT and rate
# limiting on, enterprise tier with a limit that never triggers), then the
# gateway's memory for 10,000 idle keep-alive connections. For reference it
# also compares two servers answering a constant without proxying: the
# backend (Go's net/http, on which the gateway is built) and nginx.
#
#   ./scripts/bench-gateway.sh [seconds per run, default 8] [rounds, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-8}"
rounds="${2:-3}"

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need+=(nginx-light)
if ((${#need[@]})); then
	echo "installing ${need[*]}" >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"

work="$(mktemp -d)"
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	"$NGINX" -p "$work" -c "$work/nginx.conf" -s stop 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

go build -o "$work/" ./cmd/lucid ./cmd/lucidctl ./internal/loadtool

BACK=127.0.0.1:19101 NGX=127.0.0.1:19102 GW=127.0.0.1:19103
"$work/loadtool" backend -addr "$BACK" & pids+=($!)

mkdir -p "$work/logs"
cat >"$work/nginx.conf" <<NGINX
worker_processes 2;
error_log $work/logs/error.log warn;
pid $work/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  upstream backend { server $BACK; keepalive 64; }
  server {
    listen $NGX;
    location = /constant {
      default_type application/json;
      return 200 '{"ok":true}';
    }
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
NGINX
"$NGINX" -p "$work" -c "$work/nginx.conf"

secret="$(head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 48)"
export JWT_SECRET_KEY="$secret"
for s in ENGINE ANCHORING BLOCKS DATACHAIN; do export "LUCID_${s}_URL=http://$BACK"; done
LUCID_ADDR="$GW" LUCID_RATE_ENTERPRISE=10000000 LUCID_LOG_LEVEL=warn AUTH_SERVICE_URL="http://$BACK" \
	"$work/lucid" gateway 2>"$work/gateway.log" & gwpid=$!
pids+=($gwpid)
token="$("$work/lucidctl" token --tier enterprise --sub bench --ttl 1h)"

for i in $(seq 50); do
	curl -fsS -o /dev/null "http://$GW/health" 2>/dev/null && curl -fsS -o /dev/null "http://$NGX/" && break
	sleep 0.1
done

# The two cores are shared by wrk, the backend and the proxy under test, so
# a single run swings by a third. Each configuration is run ROUNDS times,
# interleaved, and the medians are reported.
#
# run NAME URL CONNS [header]: one wrk run, appended to $work/NAME-CONNS as
# "rps p50_us p99_us".
to_us() { awk '{ v = $1; if (v ~ /us$/) { sub(/us$/, "", v); print v } else if (v ~ /ms$/) { sub(/ms$/, "", v); print v * 1000 } else { sub(/s$/, "", v); print v * 1000000 } }' <<<"$1"; }
run() {
	local out rps p50 p99
	out="$(wrk -t "$(( $3 < 2 ? 1 : 2 ))" -c "$3" -d "${secs}s" --latency ${4:+-H "$4"} "$2")"
	rps="$(awk '/Requests\/sec/ {print $2}' <<<"$out")"
	p50="$(to_us "$(awk '$1=="50%" {print $2}' <<<"$out")")"
	p99="$(to_us "$(awk '$1=="99%" {print $2}' <<<"$out")")"
	echo "$rps $p50 $p99" >>"$work/$1-$3"
	printf "  round %s: %-8s %2s conns %9.0f req/s  p50 %7.0f us  p99 %7.0f us\n" "$round" "$1" "$3" "$rps" "$p50" "$p99" >&2
}
# median FILE COLUMN
median() { sort -n -k"$2","$2" "$1" | awk -v c="$2" '{ v[NR] = $c } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo "== gateway vs nginx: ${secs}s per run, $rounds rounds, medians on stdout" >&2
for c in 1 16; do
	for round in $(seq "$rounds"); do
		run direct "http://$BACK/api/v1/anchors/x" "$c"
		run nginx "http://$NGX/api/v1/anchors/x" "$c"
		run gateway "http://$GW/api/v1/anchors/x" "$c" "Authorization: Bearer $token"
		paste "$work/gateway-$c" "$work/nginx-$c" | tail -1 | awk '{ print $1 / $4 }' >>"$work/ratio-$c"
	done
done
# The reference: what net/http itself does against nginx, with no proxy
# in between, at 16 connections.
for round in $(seq "$rounds"); do
	run go-const "http://$BACK/constant" 16
	run ngx-const "http://$NGX/constant" 16
	paste "$work/go-const-16" "$work/ngx-const-16" | tail -1 | awk '{ print $1 / $4 }' >>"$work/ratio-const"
done
printf "%-8s %5s  %12s  %10s  %10s\n" target conns "req/s" "p50" "p99"
for c in 1 16; do
	for t in direct nginx gateway; do
		printf "%-8s %5s  %12.0f  %7.0f us  %7.0f us\n" "$t" "$c" "$(median "$work/$t-$c" 1)" "$(median "$work/$t-$c" 2)" "$(median "$work/$t-$c" 3)"
	done
done
for c in 1 16; do
	printf "gateway/nginx req/s at %2s conns: %.2f (median of %s rounds; %s)\n" "$c" "$(median "$work/ratio-$c" 1)" "$rounds" \
		"$(sort -n "$work/ratio-$c" | awk '{ printf "%s%.2f", (NR > 1 ? " " : ""), $1 }')"
done
printf "reference, a constant answer at 16 conns: net/http %.0f req/s, nginx %.0f req/s, ratio %.2f (median; %s)\n" \
	"$(median "$work/go-const-16" 1)" "$(median "$work/ngx-const-16" 1)" "$(median "$work/ratio-const" 1)" \
	"$(sort -n "$work/ratio-const" | awk '{ printf "%s%.2f", (NR > 1 ? " " : ""), $1 }')"
awk -v g="$(median "$work/gateway-1" 2)" -v d="$(median "$work/direct-1" 2)" \
	'BEGIN { printf "added latency at 1 conn: %.0f us p50 over direct (goal <= 100 us)\n", g - d }'

echo "== memory for 10,000 idle keep-alive connections" >&2
ulimit -n 65536 2>/dev/null || true
rss() { awk '/VmRSS/ {print $2}' "/proc/$gwpid/status"; }
before="$(rss)"
"$work/loadtool" idle -url "http://$GW/api/v1/anchors/x" -n 10000 -hold 5s -header "Authorization: Bearer $token" >/dev/null &
idlepid=$!
sleep 4
held="$(rss)"
wait "$idlepid" || echo "idle connections could not all be opened (ulimit?)" >&2
awk -v b="$before" -v h="$held" 'BEGIN { printf "gateway RSS: %.1f MiB before, %.1f MiB with 10,000 idle connections (%.1f KiB each)\n", b/1024, h/1024, (h-b)/10000 }'
