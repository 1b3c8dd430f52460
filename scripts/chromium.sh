#!/usr/bin/env bash
# Headless Chromium from Debian's packages, for the Dagster UI screenshot (scripts/ui_screenshot.py,
# tests/test_ui_screenshot.py). Idempotent.
#
#   scripts/chromium.sh install   apt-get install chromium when it is missing (needs root or sudo)
#   scripts/chromium.sh path      print the browser's path; exit 3 when it is not installed
set -euo pipefail

say() { echo "chromium.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

find_browser() {
    local name
    for name in chromium chromium-browser google-chrome; do
        if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return 0; fi
    done
    return 1
}

cmd_install() {
    if find_browser >/dev/null; then return 0; fi
    local sudo=()
    if [[ "$(id -u)" != 0 ]]; then
        command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null \
            || die "Chromium is not installed; as root run: apt-get install -y --no-install-recommends chromium"
        sudo=(sudo -n)
    fi
    say "installing Debian's chromium (apt-get)"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >&2
    find_browser >/dev/null || die "apt-get installed chromium but no chromium is on PATH"
}

cmd_path() {
    find_browser || { say "chromium is not installed (scripts/chromium.sh install)"; return 3; }
}

case "${1:-install}" in
    install) cmd_install ;;
    path) cmd_path ;;
    *) die "usage: $0 [install|path]" ;;
esac
