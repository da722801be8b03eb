#!/usr/bin/env bash
# Install headless Chromium for tests/test_browser.py from the system's package manager.
# Idempotent: does nothing when a Chromium/Chrome binary is already on PATH (or $SWEEPLAB_CHROMIUM is set).
set -euo pipefail

for bin in "${SWEEPLAB_CHROMIUM:-}" chromium chromium-browser google-chrome google-chrome-stable; do
    if [ -n "$bin" ] && command -v "$bin" >/dev/null 2>&1; then
        echo "install-chromium: found $(command -v "$bin")"
        exit 0
    fi
done

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "install-chromium: not root and no sudo; the browser test will skip" >&2
        exit 0
    fi
fi

if command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    # Debian ships "chromium"; Ubuntu's is a snap shim, so fall back to chromium-browser.
    $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core \
        || $SUDO apt-get install -y -qq --no-install-recommends chromium-browser
elif command -v dnf >/dev/null 2>&1; then
    $SUDO dnf install -y chromium
elif command -v apk >/dev/null 2>&1; then
    $SUDO apk add --no-cache chromium
else
    echo "install-chromium: no supported package manager; the browser test will skip" >&2
    exit 0
fi
command -v chromium || command -v chromium-browser
