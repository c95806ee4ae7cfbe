#!/usr/bin/env bash
# Regenerates docs/report.png, the README's picture of `heygem-ray report`:
#   1. renders the bundled example (examples/manifest.csv) plus one row whose audio file
#      is missing, so that a failure shows;
#   2. writes the HTML report of that run;
#   3. opens it in headless Chromium (Debian: `apt-get install chromium`) and saves a
#      screenshot.
# Usage, from anywhere: docs/make_report_screenshot.sh   (needs `make setup` first; ~1 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cp examples/lesson1.wav examples/lesson2.mp3 examples/presenter.mp4 examples/presenter.jpg "$work"/
cp examples/manifest.csv "$work"/manifest.csv
echo 'lesson3-video,lesson3.wav,presenter.mp4,Missing audio file (shows a failure)' >>"$work"/manifest.csv

# Exit status 1 is expected: one row fails on purpose. RAY_ADDRESS=local: a Ray of its
# own, even when another one runs on this machine.
status=0
RAY_ADDRESS=local .venv/bin/heygem-ray submit "$work"/manifest.csv -o "$work"/out \
    --cache-dir "$work"/cache --engines "$work"/engines || status=$?
if [ "$status" -ne 1 ] || [ ! -f "$work"/out/results.parquet ]; then
    echo "submit exited $status; expected 1 (one failed row) and a results table" >&2
    exit 1
fi
.venv/bin/heygem-ray status "$work"/out || true
.venv/bin/heygem-ray report "$work"/out

chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --hide-scrollbars --user-data-dir="$work"/chromium \
    --window-size=1200,1300 --screenshot="$PWD"/docs/report.png "file://$work/out/report.html" 2>/dev/null
echo "wrote $PWD/docs/report.png"
