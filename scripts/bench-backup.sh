#!/usr/bin/env bash
# bench-backup.sh measures lucidctl backup and restore on a local stack
# holding a data chain of SIZE_MIB (default 1100) MiB: a full backup, an
# incremental one after one more session of 10 MiB, and a restore onto
# empty data directories, each with its time and bytes. It starts its own
# stack at port offset 9000 in a scratch directory and removes it after.
#
#   scripts/bench-backup.sh            # or: make bench-backup
#   SIZE_MIB=2048 scripts/bench-backup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${SIZE_MIB:-1100}
per_session=100
work=$(mktemp -d)
bin=$work/bin
mkdir -p "$bin"
cleanup() {
	(cd "$work/project" 2>/dev/null && "$bin/lucidctl" down >/dev/null 2>&1) || true
	rm -rf "$work"
}
trap cleanup EXIT

echo "building lucid and lucidctl" >&2
CGO_ENABLED=0 go build -trimpath -ldflags=-w -o "$bin/lucid" ./cmd/lucid
go build -trimpath -o "$bin/lucidctl" ./cmd/lucidctl
go run filippo.io/age/cmd/age-keygen -o "$work/backup.key" 2>/dev/null
recipient=$(sed -n 's/^# public key: //p' "$work/backup.key")

mkdir -p "$work/project"
cd "$work/project"
cat >lucid.yaml <<YAML
local:
  state_dir: state
  env_file: secrets.env
  port_offset: 9000
backup:
  dir: $work/backups
  recipients: [$recipient]
  identity: $work/backup.key
YAML
: >secrets.env
ctl() { "$bin/lucidctl" "$@"; }
ctl up -d --lucid "$bin/lucid" --wait-timeout 120s >/dev/null
LUCID_TOKEN=$(ctl token --sub bench --tier enterprise --ttl 6h)
export LUCID_TOKEN

push() { # push NAME CHUNKS: a session of CHUNKS random 1 MiB chunks
	local dir=$work/sessions/$1
	mkdir -p "$dir"
	for i in $(seq -w 1 "$2"); do head -c 1048576 /dev/urandom >"$dir/$i"; done
	ctl session push "$dir" --seal >/dev/null 2>&1
	rm -rf "$dir"
}
echo "filling the data chain with $size_mib MiB" >&2
left=$size_mib
n=0
while [ "$left" -gt 0 ]; do
	c=$((left < per_session ? left : per_session))
	n=$((n + 1))
	push "s$n" "$c"
	left=$((left - c))
done

field() { sed -n "/\"totals\"/,/}/p" | sed -n "s/.*\"$1\": *\([0-9]*\).*/\1/p" | head -1; }
timed_backup() { # prints: seconds bytes bytes_sent
	local start end out
	start=$(date +%s.%N)
	out=$(ctl --json backup)
	end=$(date +%s.%N)
	echo "$(awk "BEGIN{print $end - $start}") $(echo "$out" | field bytes) $(echo "$out" | field bytes_sent)"
}
echo "full backup" >&2
read -r full_s full_bytes full_sent < <(timed_backup)
push incremental 10
echo "incremental backup" >&2
read -r inc_s inc_bytes inc_sent < <(timed_backup)

echo "restore onto empty data directories" >&2
ctl down >/dev/null
rm -rf state/offset-9000/data
start=$(date +%s.%N)
ctl restore --yes >/dev/null 2>&1
end=$(date +%s.%N)
restore_s=$(awk "BEGIN{print $end - $start}")
ctl up -d --lucid "$bin/lucid" --wait-timeout 120s >/dev/null
start=$(date +%s.%N)
ctl restore --verify-only >/dev/null 2>&1
end=$(date +%s.%N)
verify_s=$(awk "BEGIN{print $end - $start}")

mib() { awk "BEGIN{printf \"%.1f\", $1 / 1048576}"; }
printf '%-22s %10s %14s %14s\n' "step" "seconds" "MiB in backup" "MiB sent"
printf '%-22s %10.2f %14s %14s\n' "full backup" "$full_s" "$(mib "$full_bytes")" "$(mib "$full_sent")"
printf '%-22s %10.2f %14s %14s\n' "incremental backup" "$inc_s" "$(mib "$inc_bytes")" "$(mib "$inc_sent")"
printf '%-22s %10.2f %14s %14s\n' "restore" "$restore_s" "$(mib "$inc_bytes")" "-"
printf '%-22s %10.2f %14s %14s\n' "checks after restore" "$verify_s" "-" "-"
