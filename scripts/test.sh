#!/usr/bin/env bash
# Install (if needed) and run the whole test suite: unit tests and the real-model integration test.
# As root on Debian/Ubuntu it also installs the system packages two tests use: OpenSSH (the
# measured-device runner is tested against a real sshd on loopback) and Chromium (report.html
# is rendered to PNG). Without them those tests skip and say why.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  missing=""
  command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || missing="$missing openssh-server openssh-client"
  command -v chromium >/dev/null 2>&1 || missing="$missing chromium fonts-dejavu-core"
  if [ -n "$missing" ]; then
    echo "installing test system packages:$missing"
    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing) \
      >/tmp/edgeft-apt.log 2>&1 || echo "warning: apt-get install failed (see /tmp/edgeft-apt.log); the ssh/chromium tests will skip"
  fi
fi
bash scripts/setup.sh
. .venv/bin/activate
python -m pytest "$@"
