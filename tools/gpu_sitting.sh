#!/usr/bin/env bash
# Full-scale runs on a lent GPU machine that has Python 3.12 with JAX, no Keras and no internet,
# reached through calls that each carry at most 64 MiB and each end within 10 minutes, the
# machine given back when idle for 30 s (so the calls go back to back, and what a run leaves
# there, its checkpoints included, is lost after the last: a run must finish within its call to
# count). The dataset travels in parts, one a call; the last call joins them, checks them against
# this machine's archive, decodes, trains and leaves the records it published in $OUT.
#
# Here, once (needs PyPI):
#   bash tools/gpu_sitting.sh prepare      # the wheels (Keras at .venv's versions), then `parts`
# There, one call each, back to back, each carrying .whl, .parts/md5 and one of .parts/part-*:
#   bash tools/gpu_sitting.sh receive      # calls 1 and 2: keep the part, install the wheels
#   bash tools/gpu_sitting.sh run reproduce --only model3 --budget 7
#                                          # the last call: its part, then the run
# `run` passes its arguments to `python -m tinylib` with `--results book/results`, stopped with a
# SIGTERM (which tinylib turns into an orderly end) before the call's limit (CALL_SECONDS, 570,
# counted from the script's start); the records it published come back in $OUT/records.tar
# (here: tar -xf .../records.tar -C book/results).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

archive=${TINYLIB_ARCHIVE:-../shared/data/tiny-imagenet-200.tar.xz}
part_size=${PART_SIZE:-50M}          # the data's share of the 64 MiB a call carries (3 parts)
wheels=(keras namex optree)          # what the GPU image lacks (its package list has the rest)
there=${GPU_SITTING_DIR:-/tmp/tinylib-gpu}  # outside the working tree, which each call replaces
results=${GPU_SITTING_RESULTS:-book/results}  # the published records: what is finished is skipped
call_seconds=${CALL_SECONDS:-570}    # a call's limit is 600 s; the records are packed after the run

prepare() {
  local pinned=() name version
  for name in "${wheels[@]}"; do  # the versions the tests ran with, where this checkout has them
    version=$([ -x .venv/bin/python ] && .venv/bin/python -c \
      "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null || true)
    pinned+=("$name${version:+==$version}")
  done
  rm -rf .whl
  mkdir -p .whl
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${pinned[@]}"
  ls -l .whl
  parts
}

parts() {  # the archive in parts, with its MD5 (the joined parts must give it back)
  rm -rf .parts
  mkdir -p .parts
  split -b "$part_size" "$archive" .parts/part-
  (cd "$(dirname "$archive")" && md5sum "$(basename "$archive")") | cut -d' ' -f1 > .parts/md5
  ls -l .parts
  echo "calls: one per part, each with carry [\".whl\", \".parts/md5\", \".parts/<part>\"]"
}

receive() {  # keep the part this call carried; install the wheels once
  mkdir -p "$there/parts"
  if ! cmp -s .parts/md5 "$there/parts/md5"; then  # parts of another archive: start again
    rm -rf "$there/parts" "$there/data"
    mkdir -p "$there/parts"
    cp .parts/md5 "$there/parts/md5"
  fi
  for part in .parts/part-*; do
    if [ -e "$part" ]; then cp "$part" "$there/parts/"; fi
  done
  if ! python3 -c "import importlib.metadata as m, sys; sys.exit(tuple(map(int, m.version('keras').split('.')[:2])) < (3, 8))" \
      2>/dev/null && [ ! -d "$there/site/keras" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$there/site" .whl/*.whl
  fi
  ls -l "$there/parts"
}

unpack() {  # join the parts, check them, unpack (into place only once whole) and decode once
  if [ ! -d "$there/data/tiny-imagenet-200" ]; then
    cat "$there"/parts/part-* > "$there/tiny-imagenet-200.tar.xz"
    local sum
    sum=$(md5sum "$there/tiny-imagenet-200.tar.xz" | cut -d' ' -f1)
    if [ "$sum" != "$(cat "$there/parts/md5")" ]; then
      echo "the joined archive's MD5 is $sum, not this machine's $(cat "$there/parts/md5"): a part is missing or damaged" >&2
      ls -l "$there/parts" >&2
      exit 1
    fi
    rm -rf "$there/unpacking"
    mkdir -p "$there/unpacking" "$there/data"
    tar -xJf "$there/tiny-imagenet-200.tar.xz" -C "$there/unpacking"
    mv "$there/unpacking/tiny-imagenet-200" "$there/data/"
    rm -rf "$there/tiny-imagenet-200.tar.xz" "$there/unpacking"
  fi
  python3 -m tinylib prepare
}

run() {
  : "${OUT:?set OUT to the folder whose files come back}"
  receive
  export PYTHONPATH="$there/site${PYTHONPATH:+:$PYTHONPATH}" KERAS_BACKEND=jax PYTHONUNBUFFERED=1
  export TINYLIB_HOME="$there/home" TINYLIB_DATA="$there/data/tiny-imagenet-200"
  unpack
  mkdir -p "$results"
  local stamp="$there/started" status=0 left
  touch "$stamp"
  left=$((call_seconds - SECONDS))
  if [ "$left" -lt 30 ]; then
    echo "only ${left} s of the call are left after unpacking: run the same call again" >&2
    exit 1
  fi
  timeout -s TERM -k 20 "$left" python3 -m tinylib "$@" --results "$results" || status=$?
  local new=()
  mapfile -t new < <(find "$results" -maxdepth 1 -type f \( -name '*.json' -o -name '*.md' \) \
    -newer "$stamp" -printf '%f\n')
  if [ "${#new[@]}" -gt 0 ]; then
    tar -cf "$OUT/records.tar" -C "$results" "${new[@]}"
    echo "in \$OUT/records.tar: ${new[*]}"
  else
    echo "no record was published"
  fi
  return "$status"
}

case "${1:-}" in
  prepare) prepare ;;
  parts) parts ;;
  receive) receive ;;
  run) shift; run "$@" ;;
  *) echo "usage: bash tools/gpu_sitting.sh prepare | parts | receive | run TINYLIB-COMMAND..." >&2; exit 2 ;;
esac
