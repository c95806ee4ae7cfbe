#!/usr/bin/env bash
# Regenerates docs/report.png, the README's picture of `heygem-ray report`:
#   1. renders the bundled example (examples/manifest.csv) plus a row whose reference is a
#      presenter talking in the take (composed by tests/helpers/footage.py), so that a
#      reference warning shows, and one row whose audio file is missing, so that a failure shows;
#   2. writes the HTML report of that run;
#   3. opens it in headless Chromium (Debian: `apt-get install chromium`) and saves a
#      screenshot.
# Usage, from anywhere: docs/make_report_screenshot.sh   (needs `make setup` first; ~1 min on 2 cores)
# VENV=/path/to/venv: another virtualenv than .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cp examples/lesson1.wav examples/lesson2.mp3 examples/presenter.mp4 examples/presenter.jpg "$work"/
cp examples/manifest.csv "$work"/manifest.csv
PYTHONPATH=$PWD "$venv"/bin/python -c '
import sys, numpy as np
from tests.helpers.footage import lecture_clip
lecture_clip(sys.argv[1], size=(640, 400), face=150, seconds=3.0, corner="centre", motion="still",
             talk=lambda t: max(0.0, float(np.sin(2 * np.pi * 3.0 * t))))
' "$work"/talking.mp4
# First, so that its card is in the picture.
sed -i '1a lesson1-talking,lesson1.wav,talking.mp4,A presenter talking in the take (shows a warning)' "$work"/manifest.csv
echo 'lesson3-video,lesson3.wav,presenter.mp4,Missing audio file (shows a failure)' >>"$work"/manifest.csv

# Exit status 1 is expected: one row fails on purpose. RAY_ADDRESS=local: a Ray of its
# own, even when another one runs on this machine.
status=0
RAY_ADDRESS=local "$venv"/bin/heygem-ray submit "$work"/manifest.csv -o "$work"/out \
    --cache-dir "$work"/cache --engines "$work"/engines || status=$?
if [ "$status" -ne 1 ] || [ ! -f "$work"/out/results.parquet ]; then
    echo "submit exited $status; expected 1 (one failed row) and a results table" >&2
    exit 1
fi
"$venv"/bin/heygem-ray status "$work"/out || true
"$venv"/bin/heygem-ray report "$work"/out

chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --hide-scrollbars --user-data-dir="$work"/chromium \
    --window-size=1200,1500 --screenshot="$PWD"/docs/report.png "file://$work/out/report.html" 2>/dev/null
echo "wrote $PWD/docs/report.png"
