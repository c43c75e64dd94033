#!/usr/bin/env bash
# Screenshot a marginkit HTML report as a user would see it, with headless Chromium.
#
#   scripts/screenshot_report.sh REPORT.html [OUT.png] [WIDTH] [HEIGHT]
#
# Needs Debian's chromium package (apt-get update && apt-get install -y chromium); exits 3 without it.
# The page loads nothing from the network, so the screenshot also proves it renders offline.
# HEIGHT is the window height: the screenshot covers the top HEIGHT pixels of the page (default 9000,
# tall enough for a demo run's report; raise it for more runs). When Pillow is importable (the repo's
# .venv has it), the empty background below the page's end is cropped off.
set -euo pipefail
html=${1:?usage: scripts/screenshot_report.sh REPORT.html [OUT.png] [WIDTH] [HEIGHT]}
out=${2:-${html%.html}.png}
width=${3:-1280}
height=${4:-9000}
[ -f "$html" ] || { echo "no such file: $html" >&2; exit 2; }
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$browser" ]; then
  echo "chromium not found: apt-get update && apt-get install -y chromium" >&2
  exit 3
fi
out_abs=$(realpath -m "$out")
mkdir -p "$(dirname "$out_abs")"
# --no-sandbox: Chromium refuses to run as root with its sandbox (containers, CI).
# --virtual-time-budget: let layout and image decoding finish before the shot.
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run --mute-audio \
  --window-size="${width},${height}" --virtual-time-budget=5000 \
  --screenshot="$out_abs" "file://$(realpath "$html")" 2>/dev/null
[ -s "$out_abs" ] || { echo "chromium wrote no screenshot to $out_abs" >&2; exit 1; }
py="$(dirname "$0")/../.venv/bin/python"
[ -x "$py" ] || py=python3
"$py" - "$out_abs" <<'PY' 2>/dev/null || true
import sys
from PIL import Image, ImageChops
path = sys.argv[1]
im = Image.open(path).convert("RGB")
bg = Image.new("RGB", im.size, im.getpixel((im.width - 1, im.height - 1)))
box = ImageChops.difference(im, bg).getbbox()  # the area that differs from the bottom-right colour
if box and box[3] + 24 < im.height:
    im.crop((0, 0, im.width, box[3] + 24)).save(path)
PY
echo "wrote $out_abs (window ${width}x${height})"
