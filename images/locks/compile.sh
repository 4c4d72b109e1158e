#!/usr/bin/env bash
# Regenerate the image lock files (a metadata-only resolve: nothing is installed).
# Usage: images/locks/compile.sh [extra uv pip compile args, e.g. --upgrade]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

command -v uv >/dev/null || { echo "uv not found: pip install uv" >&2; exit 1; }

# Target platform of every image, whatever machine runs this script.
common=(--python-version 3.11 --python-platform x86_64-manylinux_2_28
        --custom-compile-command "images/locks/compile.sh" --quiet "$@")

for image in light rollout trainer segment; do
  echo "== images/locks/$image.lock.txt" >&2
  # pyproject.toml carries the base dependencies; the .in file adds the image's own.
  uv pip compile pyproject.toml "images/locks/$image.in" "${common[@]}" \
    -o "images/locks/$image.lock.txt"
done
