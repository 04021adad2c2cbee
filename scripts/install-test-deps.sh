#!/usr/bin/env bash
# install-test-deps.sh installs the real servers Lucid's tests run against
# when they are missing: sshd (openssh-server), Redis (redis-server), the
# wrk load generator, qemu-aarch64-static (qemu-user-static, to run the
# arm64 build), a headless Chromium (to render the bench report) and
# docker-compose v1 (its python-dotenv is the second env-file reader that
# envfile's tests check), from Debian's packages. Without root or apt-get it
# only says what is missing; the tests that need a tool then skip, or fail
# when CI=true.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1 || [[ -x "/usr/sbin/$1" ]]; }

need=()
have sshd || need+=(openssh-server)
have redis-server || need+=(redis-server)
have wrk || need+=(wrk)
have qemu-aarch64-static || need+=(qemu-user-static)
have chromium || need+=(chromium)
have docker-compose || need+=(docker-compose)
if ((${#need[@]} == 0)); then
	exit 0
fi

sudo=()
if [[ "$(id -u)" -ne 0 ]]; then
	if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
		sudo=(sudo -n)
	else
		echo "install-test-deps: missing ${need[*]} and not root; tests that need them will skip" >&2
		exit 0
	fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
	echo "install-test-deps: missing ${need[*]} and no apt-get; install them by hand" >&2
	exit 0
fi

echo "install-test-deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq >&2
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
