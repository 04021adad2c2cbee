#!/usr/bin/env bash
# bench-gateway.sh measures the gateway against nginx and Caddy as plain
# reverse proxies to the same trivial backend, on 127.0.0.1 only, in one run:
#
#   - requests/s, p50 and p99 at 1 and 16 connections for direct (the
#     backend), nginx, Caddy, fasthttp (a bare proxy on the library the
#     gateway is built on: HostClient.Do, no checks, no headers of its own,
#     the floor of that foundation), eventloop (a bare proxy on epoll event
#     loops with fasthttp's header parsing: the floor of a design with no
#     goroutine per connection) and the gateway (JWT and rate limiting
#     on, enterprise tier with a limit that never triggers), over several
#     interleaved rounds: the median and the spread (min-max) of req/s;
#   - CPU per request of each server process, from utime+stime in
#     /proc/PID/stat (all threads; nginx's master and workers summed), over
#     each run, divided by the requests wrk completed;
#   - gateway/nginx, caddy/nginx, fasthttp/nginx and eventloop/nginx req/s
#     ratios, and at 1 connection the p50 latency each proxy adds over
#     direct;
#   - resident memory per idle keep-alive connection: 10,000 for the gateway
#     and Caddy, 3,000 for nginx (its 2 x 4096 worker_connections stay as
#     configured);
#   - for reference, the backend's own server (Go's net/http) and nginx
#     answering a constant with no proxying: the ceiling of net/http.
#
#   ./scripts/bench-gateway.sh [seconds per run, default 5] [rounds, default 5]
#
# stdout is the result: one row a line, words separated by spaces, the first
# word the row's kind; lines starting with # name the columns. Progress and
# every single run go to stderr. It installs wrk, nginx-light and caddy with
# apt-get when missing, and uses the fixed ports 127.0.0.1:19101-19106.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-5}"
rounds="${2:-5}"

BACK=127.0.0.1:19101 NGX=127.0.0.1:19102 GW=127.0.0.1:19103 CADDY=127.0.0.1:19104 FH=127.0.0.1:19105 EV=127.0.0.1:19106

die() {
	echo "bench-gateway: $*" >&2
	exit 1
}

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need+=(nginx-light)
command -v caddy >/dev/null || need+=(caddy)
if ((${#need[@]})); then
	echo "installing ${need[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y -qq --no-install-recommends "${need[@]}" >&2 ||
		{ apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends "${need[@]}" >&2; }
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
CADDYBIN="$(command -v caddy)"

# A listener left by an earlier run that was killed hard would be measured
# instead of ours.
for a in "$BACK" "$NGX" "$GW" "$CADDY" "$FH" "$EV"; do
	if (exec 3<>"/dev/tcp/${a%:*}/${a#*:}") 2>/dev/null; then
		die "something already listens on $a; stop it first"
	fi
done

# 10,000 idle connections need as many descriptors in the holder and in
# the server; Go raises its own soft limit, nginx inherits this one.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

work="$(mktemp -d)"
pids=()  # the long-lived processes this script started and must stop
helper= # the idle-connection holder while it runs

alive() { [[ -r /proc/$1/stat ]] && [[ "$(awk '{ sub(/^.*\) /, ""); print $1 }' "/proc/$1/stat" 2>/dev/null)" != Z ]]; }
# stop PID...: SIGTERM, then SIGKILL whatever is still there after 5 s.
stop() {
	local p left
	for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
	for _ in $(seq 50); do
		left=0
		for p in "$@"; do alive "$p" && left=1; done
		((left)) || return 0
		sleep 0.1
	done
	for p in "$@"; do kill -KILL "$p" 2>/dev/null || true; done
}
nginx_pids() {
	local m
	m="$(cat "$work/nginx.pid" 2>/dev/null)" || return 0
	[[ -n $m ]] || return 0
	echo "$m" $(pgrep -P "$m" || true)
}
cleanup() {
	trap - EXIT INT TERM
	# nginx daemonizes: its master (from the pid file) and workers are
	# stopped by pid like the rest.
	stop ${helper:+"$helper"} "${pids[@]}" $(nginx_pids)
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "building" >&2
go build -o "$work/" ./cmd/lucid ./cmd/lucidctl ./internal/loadtool

"$work/loadtool" backend -addr "$BACK" >"$work/backend.log" 2>&1 &
backpid=$!
pids+=($backpid)
"$work/loadtool" proxy -addr "$FH" -upstream "$BACK" >"$work/fasthttp.log" 2>&1 &
fhpid=$!
pids+=($fhpid)
"$work/loadtool" eventloop -addr "$EV" -upstream "$BACK" >"$work/eventloop.log" 2>&1 &
evpid=$!
pids+=($evpid)

# nginx's configuration is the reference the gateway's goals are stated
# against: keep it as it is.
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

# Caddy as nginx is set up: plain HTTP, no logs, no admin endpoint, and up
# to 64 idle keep-alive connections to the backend.
cat >"$work/Caddyfile" <<CADDYFILE
{
	admin off
	auto_https off
	log {
		level ERROR
	}
}
http://:${CADDY#*:} {
	bind ${CADDY%:*}
	reverse_proxy $BACK {
		transport http {
			keepalive 2m
			keepalive_idle_conns 64
			keepalive_idle_conns_per_host 64
		}
	}
}
CADDYFILE
HOME="$work" XDG_CONFIG_HOME="$work/config" XDG_DATA_HOME="$work/data" \
	"$CADDYBIN" run --config "$work/Caddyfile" --adapter caddyfile >"$work/caddy.log" 2>&1 &
caddypid=$!
pids+=($caddypid)

random() { head -c 64 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 48; }
JWT_SECRET_KEY="$(random)" LUCID_SERVICE_KEY="$(random)"
export JWT_SECRET_KEY LUCID_SERVICE_KEY
for s in ENGINE ANCHORING BLOCKS DATACHAIN; do export "LUCID_${s}_URL=http://$BACK"; done
# The idle-connection holder opens 10,000 connections from one address.
LUCID_ADDR="$GW" LUCID_RATE_ENTERPRISE=10000000 LUCID_LOG_LEVEL=warn AUTH_SERVICE_URL="http://$BACK" LUCID_CONNS_PER_ADDRESS=20000 LUCID_CONNS_MAX=20000 \
	"$work/lucid" gateway >"$work/gateway.log" 2>&1 &
gwpid=$!
pids+=($gwpid)
token="$("$work/lucidctl" token --tier enterprise --sub bench --ttl 1h)"

PATHQ=/api/v1/anchors/x
declare -A url=(
	[direct]="http://$BACK$PATHQ" [nginx]="http://$NGX$PATHQ" [caddy]="http://$CADDY$PATHQ" [fasthttp]="http://$FH$PATHQ"
	[eventloop]="http://$EV$PATHQ"
	[gateway]="http://$GW$PATHQ"
	[const-backend]="http://$BACK/constant" [const-nginx]="http://$NGX/constant"
)
declare -A hdr=([gateway]="Authorization: Bearer $token")

# Every target must answer 200 before anything is measured.
for t in direct nginx caddy fasthttp eventloop gateway const-nginx; do
	ok=0
	for _ in $(seq 100); do
		if curl -fsS -o /dev/null ${hdr[$t]:+-H "${hdr[$t]}"} "${url[$t]}" 2>/dev/null; then
			ok=1
			break
		fi
		sleep 0.1
	done
	if ((!ok)); then
		tail -n 20 "$work"/*.log "$work/logs/error.log" >&2 2>/dev/null || true
		die "$t (${url[$t]}) does not answer 200"
	fi
done

# pids_of TARGET: the processes that serve TARGET's URL.
pids_of() {
	case "$1" in
	direct | const-backend) echo "$backpid" ;;
	nginx | const-nginx) nginx_pids ;;
	caddy) echo "$caddypid" ;;
	fasthttp) echo "$fhpid" ;;
	eventloop) echo "$evpid" ;;
	gateway) echo "$gwpid" ;;
	esac
}
# ticks PID...: their utime+stime, all threads, in clock ticks.
ticks() { awk '{ sub(/^.*\) /, ""); t += $12 + $13 } END { print t }' $(printf '/proc/%s/stat ' "$@"); }
HZ="$(getconf CLK_TCK)"
to_us() { awk '{ v = $1; if (v ~ /us$/) { sub(/us$/, "", v); print v } else if (v ~ /ms$/) { sub(/ms$/, "", v); print v * 1000 } else { sub(/s$/, "", v); print v * 1000000 } }' <<<"$1"; }

# run TARGET CONNS: one wrk run, appended to $work/res-TARGET-CONNS as
# "rps p50_us p99_us cpu_us_per_req backend_cpu_us_per_req errors", where
# cpu is that of the processes wrk talks to and backend that of the
# backend behind a proxy ("-" when there is none).
run() {
	local t=$1 c=$2 srv back=() s0 s1 b0=0 b1=0 out reqs rps p50 p99 errs cpu bcpu=-
	srv=($(pids_of "$t"))
	[[ $t == nginx || $t == caddy || $t == fasthttp || $t == eventloop || $t == gateway ]] && back=("$backpid")
	s0="$(ticks "${srv[@]}")"
	((${#back[@]})) && b0="$(ticks "${back[@]}")"
	out="$(wrk -t "$((c < 2 ? 1 : 2))" -c "$c" -d "${secs}s" --latency ${hdr[$t]:+-H "${hdr[$t]}"} "${url[$t]}")" ||
		die "wrk failed against $t: $out"
	s1="$(ticks "${srv[@]}")"
	((${#back[@]})) && b1="$(ticks "${back[@]}")"
	reqs="$(awk '/ requests in / { print $1 }' <<<"$out")"
	rps="$(awk '/Requests\/sec/ { print $2 }' <<<"$out")"
	p50="$(to_us "$(awk '$1 == "50%" { print $2 }' <<<"$out")")"
	p99="$(to_us "$(awk '$1 == "99%" { print $2 }' <<<"$out")")"
	errs="$(awk '/Non-2xx/ { n += $NF } /Socket errors/ { gsub(/,/, ""); n += $4 + $6 + $8 + $10 } END { print n + 0 }' <<<"$out")"
	[[ -n $reqs && $reqs -gt 0 ]] || die "wrk completed no request against $t: $out"
	cpu="$(awk -v d="$((s1 - s0))" -v n="$reqs" -v hz="$HZ" 'BEGIN { printf "%.1f", d * 1e6 / hz / n }')"
	((${#back[@]})) && bcpu="$(awk -v d="$((b1 - b0))" -v n="$reqs" -v hz="$HZ" 'BEGIN { printf "%.1f", d * 1e6 / hz / n }')"
	echo "$rps $p50 $p99 $cpu $bcpu $errs" >>"$work/res-$t-$c"
	local warn=""
	((errs == 0)) || warn="  $errs ERRORS (non-2xx or socket)"
	printf "  round %s: %-13s %2s conns %9.0f req/s  p50 %6.0f us  p99 %7.0f us  cpu %5s us/req  backend %5s us/req%s\n" \
		"$round" "$t" "$c" "$rps" "$p50" "$p99" "$cpu" "$bcpu" "$warn" >&2
}
# median FILE COLUMN
median() { sort -g -k"$2","$2" "$1" | awk -v c="$2" '{ v[NR] = $c } END { if (v[1] == "-") print "-"; else print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
col() { awk -v c="$2" '{ print $c }' "$1"; }

# rss PID...: their resident memory summed, KiB; fds PID...: their open descriptors.
rss() { awk '/^VmRSS/ { k += $2 } END { print k }' $(printf '/proc/%s/status ' "$@"); }
fds() {
	local p k=0
	for p in "$@"; do k=$((k + $(find "/proc/$p/fd" -mindepth 1 -maxdepth 1 | wc -l))); done
	echo "$k"
}
# idle_memory TARGET N: the resident memory of TARGET's processes before
# and while loadtool holds N idle keep-alive connections to it, each after
# one answered request.
idle_memory() {
	local t=$1 n=$2 procs before held fds0 ipid out=$work/idle-$1
	procs=($(pids_of "$t"))
	before="$(rss "${procs[@]}")"
	fds0="$(fds "${procs[@]}")"
	: >"$out"
	"$work/loadtool" idle -url "${url[$t]}" -n "$n" -hold 10m ${hdr[$t]:+-header "${hdr[$t]}"} >"$out" 2>&1 &
	ipid=$!
	helper=$ipid
	# The holder says "holding" once every connection has had its answer.
	until grep -q '^holding' "$out"; do
		alive "$ipid" || die "$t: idle connections could not all be opened: $(cat "$out")"
		sleep 0.1
	done
	# And the server holds them: its descriptors (all workers' for nginx).
	for _ in $(seq 100); do
		(($(fds "${procs[@]}") >= fds0 + n)) && break
		sleep 0.1
	done
	(($(fds "${procs[@]}") >= fds0 + n)) || die "$t: the server does not hold the $n connections"
	held="$(rss "${procs[@]}")"
	stop "$ipid"
	helper=
	printf "memory %s %s %s %s %.1f\n" "$t" "$n" "$before" "$held" "$(awk -v b="$before" -v h="$held" -v n="$n" 'BEGIN { print (h - b) / n }')" >>"$work/memory"
	printf "  %-8s %6s idle connections: RSS %6.1f MiB before, %6.1f MiB holding them\n" "$t" "$n" "$(awk -v k="$before" 'BEGIN { print k / 1024 }')" "$(awk -v k="$held" 'BEGIN { print k / 1024 }')" >&2
}

# Memory first, on servers that have answered a handful of requests: what
# the connections themselves cost, not what the load runs left behind.
echo "== resident memory for idle keep-alive connections" >&2
idle_memory gateway 10000
idle_memory caddy 10000
idle_memory nginx 3000

# The two cores are shared by wrk, the backend and the proxy under test, so
# a single run swings by a third: each configuration runs ROUNDS times,
# interleaved, and the medians and spread are reported.
load0="$(cut -d ' ' -f 1-3 /proc/loadavg)"
if awk -v l="${load0%% *}" -v n="$(nproc)" 'BEGIN { exit !(l > n) }'; then
	echo "warning: load average $load0 on $(nproc) cores: other processes are running, the figures will be low and noisy" >&2
fi
# stolen: the CPU time of this VM that its host gave to others ("steal" in
# /proc/stat) and all of it, in ticks. On a busy host it slows every
# process unevenly, so the run says how much there was.
stolen() { awk '/^cpu / { t = 0; for (i = 2; i <= 9; i++) t += $i; print $9, t }' /proc/stat; }
steal0="$(stolen)"
echo "== req/s, latency and CPU: ${secs}s per run, $rounds rounds" >&2
round=warm-up
for t in direct nginx caddy fasthttp eventloop gateway const-backend const-nginx; do
	wrk -t 2 -c 16 -d 1s ${hdr[$t]:+-H "${hdr[$t]}"} "${url[$t]}" >/dev/null
done
for c in 1 16; do
	for round in $(seq "$rounds"); do
		for t in direct nginx caddy fasthttp eventloop gateway; do run "$t" "$c"; done
	done
done
# The reference: the backend's server (net/http) against nginx, both
# answering a constant with no proxy in between.
for round in $(seq "$rounds"); do
	run const-backend 16
	run const-nginx 16
done

steal="$(awk -v a="$steal0" -v b="$(stolen)" 'BEGIN { split(a, x, " "); split(b, y, " "); d = y[2] - x[2]; printf "%.0f", (d > 0 ? 100 * (y[1] - x[1]) / d : 0) }')"
if ((steal > 5)); then
	echo "warning: the hypervisor took $steal % of this VM's CPU time during the runs: the figures are low and noisy" >&2
fi

# fmt_rate KIND TARGET CONNS: one row of medians, spread and errors.
fmt_rate() {
	local f=$work/res-$2-$3
	cpu1() { awk '{ if ($1 == "-") print "-"; else printf "%.1f\n", $1 }' <<<"$1"; }
	printf "%s %s %s %s %.0f %.0f %.0f %.0f %.0f %s %s %s\n" "$1" "${2#const-}" "$3" "$(wc -l <"$f")" \
		"$(median "$f" 1)" "$(col "$f" 1 | sort -g | head -1)" "$(col "$f" 1 | sort -g | tail -1)" \
		"$(median "$f" 2)" "$(median "$f" 3)" "$(cpu1 "$(median "$f" 4)")" "$(cpu1 "$(median "$f" 5)")" "$(col "$f" 6 | awk '{ n += $1 } END { print n }')"
}
# ratio NAME A B CONNS COLUMN OP KIND FORMAT: a KIND row of A OP B (/ or -)
# on COLUMN of the results, the median, then every round in order.
ratio() {
	paste -d ' ' <(col "$work/res-$2-$4" "$5") <(col "$work/res-$3-$4" "$5") |
		awk -v op="$6" '{ print (op == "/") ? $1 / $2 : $1 - $2 }' >"$work/$7-${1//\//-}-$4"
	printf "%s %s %s %s%s\n" "$7" "$1" "$4" "$(median "$work/$7-${1//\//-}-$4" 1 | awk -v f="$8" '{ printf f, $1 }')" \
		"$(awk -v f="$8" '{ printf " " f, $1 }' "$work/$7-${1//\//-}-$4")"
}

echo "# bench-gateway $(date -u +%FT%TZ): ${secs}s per run, $rounds rounds, $(nproc) cores, $("$NGINX" -v 2>&1 | sed 's/.*: //'), caddy $("$CADDYBIN" version | awk '{ print $1 }'), $(go env GOVERSION)"
echo "# load average (this run's own processes included): $load0 before the runs, $(cut -d ' ' -f 1-3 /proc/loadavg) after"
echo "# steal: $steal % of the CPU time during the runs went to other guests of the host"
echo "# rate target conns rounds rps rps_min rps_max p50_us p99_us cpu_us_per_req backend_cpu_us_per_req errors"
for c in 1 16; do
	for t in direct nginx caddy fasthttp eventloop gateway; do fmt_rate rate "$t" "$c"; done
done
echo "# const: the same columns for a constant answer with no proxying, the backend's server (net/http) and nginx"
fmt_rate const const-backend 16
fmt_rate const const-nginx 16
echo "# ratio name conns median round1..roundN (req/s)"
for c in 16 1; do
	ratio gateway/nginx gateway nginx "$c" 1 / ratio %.2f
	ratio caddy/nginx caddy nginx "$c" 1 / ratio %.2f
	ratio fasthttp/nginx fasthttp nginx "$c" 1 / ratio %.2f
	ratio eventloop/nginx eventloop nginx "$c" 1 / ratio %.2f
done
ratio backend/nginx const-backend const-nginx 16 1 / ratio %.2f
echo "# added_p50 proxy conns median_us round1..roundN (p50 over direct's, same round)"
for t in nginx caddy fasthttp eventloop gateway; do ratio "$t" "$t" direct 1 2 - added_p50 %.0f; done
echo "# memory target conns rss_before_kib rss_held_kib kib_per_conn"
cat "$work/memory"
