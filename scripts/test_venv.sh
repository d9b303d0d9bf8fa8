#!/usr/bin/env bash
# Makes (once) the Python venv of the tests' outside references: Debian's /usr/bin/python3 with
# --system-site-packages (so it sees Debian's torch, the one libtorch we link), plus the PyPI
# packages in scripts/test-requirements*.txt. Location: $TESSERA_VENV, default $TESSERA_BUILD_DIR/venv.
# A stamp holding the requirement files' checksum makes a repeated run instant.
set -euo pipefail
source "$(dirname "$0")/env.sh"
venv=${TESSERA_VENV:-$TESSERA_BUILD_DIR/venv}
reqs="$TESSERA_ROOT/scripts/test-requirements.txt"
nodeps="$TESSERA_ROOT/scripts/test-requirements-nodeps.txt"
sum=$(cat "$reqs" "$nodeps" | sha256sum | cut -c1-16)
if [ -f "$venv/.tessera-stamp" ] && [ "$(cat "$venv/.tessera-stamp")" = "$sum" ]; then
  echo "[venv] $venv up to date"
  exit 0
fi
start=$(date +%s)
[ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv --system-site-packages "$venv"
cons=$(mktemp)
trap 'rm -f "$cons"' EXIT
# numpy 2 would break Debian's torch (built against numpy 1.x); torch itself must stay Debian's.
printf 'numpy<2\ntorch==%s\n' "$(/usr/bin/python3 -c 'import torch; print(torch.__version__)')" > "$cons"
"$venv/bin/pip" install -q --disable-pip-version-check -c "$cons" -r "$reqs"
"$venv/bin/pip" install -q --disable-pip-version-check --no-deps -r "$nodeps"
"$venv/bin/python" -c "import torch, transformers, tokenizers, peft, sentence_transformers" \
  || { echo "[venv] import check failed" >&2; exit 1; }
echo "$sum" > "$venv/.tessera-stamp"
echo "[venv] $venv ready in $(( $(date +%s) - start )) s"
