#!/bin/sh
# Install what the app needs on Debian/Ubuntu: the system packages listed in packages.txt (the
# same list a Hugging Face Space installs) and the Python packages in requirements.txt.
#
#   sh scripts/install.sh && python app.py
#
# Works as root (containers, where there is often no sudo) and as a user with sudo.
set -eu
cd "$(dirname "$0")/.."

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
else
    echo "error: installing system packages needs root; run this as root or install sudo" >&2
    exit 1
fi

packages=$(grep -v '^[[:space:]]*#' packages.txt | tr -s '[:space:]' ' ')
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
# shellcheck disable=SC2086  # one word per package
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $packages
python -m pip install -r requirements.txt
