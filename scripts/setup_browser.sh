#!/usr/bin/env bash
# Install what the browser test (tests/test_browser.py) needs beyond the Python extras:
# Debian's chromium (the test drives it through Python's playwright with
# executable_path=/usr/bin/chromium; `playwright install` downloads browsers and cannot work here).
# Idempotent and quiet when chromium is already there; never fails the build: where chromium cannot
# be installed it says why, and the browser test then skips with that reason.
set -u

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup_browser: apt-get not found; not installing chromium (the browser test will be skipped)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "setup_browser: not root and no passwordless sudo; not installing chromium (the browser test will be skipped)"
        exit 0
    fi
fi

echo "setup_browser: installing chromium with apt-get"
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get update -qq >/tmp/setup_browser_apt.log 2>&1; then
    echo "setup_browser: apt-get update failed (see /tmp/setup_browser_apt.log); the browser test will be skipped"
    exit 0
fi
if ! $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >>/tmp/setup_browser_apt.log 2>&1; then
    echo "setup_browser: apt-get install chromium failed (see /tmp/setup_browser_apt.log); the browser test will be skipped"
    exit 0
fi
echo "setup_browser: $("$CHROMIUM" --version 2>/dev/null || echo "chromium installed")"
