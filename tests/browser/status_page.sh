#!/usr/bin/env bash
# The status page in a real headless Chromium (see status_page.py).
# Usage: tests/browser/status_page.sh [BUILD_DIR]; exit 0 passed, 1 failed, 77 skipped (no
# chromium). The screenshot is left at BUILD_DIR/status-page.png.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exec python3 "$here/status_page.py" "$@"
