#!/usr/bin/env bash
# The test suite: install what it needs, then pytest (all CPU, tiny models).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# the browser test of the server's web page (tests/test_serve_browser.py) drives Debian's chromium;
# only the tests need it. Where it cannot be installed that test skips and says why.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing Debian packages for the browser test: chromium chromium-driver"
  { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
    && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
         chromium chromium-driver >/dev/null; } \
    || echo "warning: could not install chromium/chromium-driver; the browser test will skip" >&2
fi
export OMP_NUM_THREADS=1
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
