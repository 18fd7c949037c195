#!/usr/bin/env bash
# make upgrade-check: would the newest Dagster core break our engine parts?
#
# In a throwaway venv, the project as `make install` installs it (constraints.txt), then the
# newest dagster, dagster-webserver and dagster-graphql from PyPI over it (with the dagster-pipes
# and dagster-shared they pull), then: pip check, the pins of the private Dagster surface the
# parts rely on (test_engine_private_surface.py) and the parts' own tests, slow ones included.
# Each step runs whatever the one before said; the summary gives each step's status, and the
# exit status is non-zero when any failed. DAGSTER_VERSION=1.13.28 overlays that release instead.
set -uo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${UPGRADE_VENV:-.upgrade-venv}
CORE=(dagster dagster-webserver dagster-graphql dagster-pipes dagster-shared)
PARTS_TESTS=(
  agent_pipeline_tests/test_run_launcher.py
  agent_pipeline_tests/test_compute_logs.py
  agent_pipeline_tests/test_engine_storage.py
  agent_pipeline_tests/test_postgres_restart.py
)
started=$SECONDS
summary=()
failed=0

step() {  # step <name> <log> <command...>: runs it, its output to the terminal and the log
  local name=$1 log=$2 begun=$SECONDS status
  shift 2
  echo
  echo "=== $name"
  "$@" 2>&1 | tee "$log"
  status=${PIPESTATUS[0]}
  if [ "$status" = 0 ]; then
    summary+=("  ok      $name ($((SECONDS - begun)) s)")
  else
    summary+=("  FAILED  $name ($((SECONDS - begun)) s, exit $status; log: $log)")
    failed=1
  fi
  return "$status"
}

dagster_versions() {  # "name version" lines, sorted for join
  "$VENV/bin/python" -m pip list --format=freeze 2>/dev/null | grep -i '^dagster' \
    | sed 's/==/ /' | LC_ALL=C sort
}

echo "=== Installing the project with constraints.txt into $VENV (log: $VENV/install.log) ..."
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
echo '*' > "$VENV/.gitignore"  # git status stays clean without an entry in .gitignore
# pip's output goes to the log: it is long, and this machine's pip config adds noise.
if ! { "$VENV/bin/python" -m pip install --upgrade pip \
       && "$VENV/bin/python" -m pip install -c constraints.txt -e '.[dev]'; } \
     > "$VENV/install.log" 2>&1; then
  tail -n 40 "$VENV/install.log"
  echo "The pinned install failed, before any upgrade: see $VENV/install.log"
  exit 1
fi
dagster_versions > "$VENV/pinned-versions.txt"

overlay() {
  "$VENV/bin/python" -m pip install --upgrade "$@" >> "$VENV/overlay.log" 2>&1 && return
  tail -n 40 "$VENV/overlay.log"
  echo "The overlay failed: see $VENV/overlay.log"
  exit 1
}
# No constraints here: the integration libraries (dagster-postgres, dagster-docker) pin the
# core they were released with, and pip installs the newer one anyway, saying so; pip check
# below reports it again.
if [ -n "${DAGSTER_VERSION:-}" ]; then
  echo "=== Overlaying Dagster $DAGSTER_VERSION (log: $VENV/overlay.log) ..."
  overlay "${CORE[@]/%/==$DAGSTER_VERSION}"
else
  echo "=== Overlaying the newest Dagster from PyPI (log: $VENV/overlay.log) ..."
  # dagster-webserver can trail the core by a release, pinning the core it was released with:
  # installed first, it does not hold the core back, and pip check names the mismatch.
  overlay dagster-webserver
  overlay dagster dagster-graphql dagster-pipes dagster-shared
fi
dagster_versions > "$VENV/overlaid-versions.txt"
echo
echo "=== Dagster packages, pinned -> now:"
LC_ALL=C join -a 2 "$VENV/pinned-versions.txt" "$VENV/overlaid-versions.txt" \
  | awk '{ printf "  %-22s %s\n", $1, (NF == 2 ? $2 " (new)" : $2 == $3 ? $2 : $2 " -> " $3) }'

step "pip check" "$VENV/pip-check.log" "$VENV/bin/python" -m pip check
# -p no:cacheprovider: .pytest_cache is shared with .venv's runs in this working tree.
step "the pins (test_engine_private_surface.py)" "$VENV/pins.log" \
  "$VENV/bin/pytest" -n 0 -p no:cacheprovider -q agent_pipeline_tests/test_engine_private_surface.py
step "the engine parts' tests, slow ones included" "$VENV/parts.log" \
  "$VENV/bin/pytest" -n 0 -p no:cacheprovider -q "${PARTS_TESTS[@]}"

# A failure may not be the upgrade's: the same tests on the pinned Dagster of make install's
# .venv tell which.
mapfile -t failures < <(sed -n 's/^\(FAILED\|ERROR\) \([^ ]*\).*/\2/p' \
  "$VENV/pins.log" "$VENV/parts.log" | sort -u)
if [ "${#failures[@]}" -gt 0 ] && [ -x .venv/bin/pytest ]; then
  pinned=$(.venv/bin/python -c 'import dagster; print(dagster.__version__)' 2>/dev/null)
  echo
  echo "=== The failed tests again, on the pinned Dagster $pinned (.venv) ..."
  : > "$VENV/pinned-rerun.log"
  for test in "${failures[@]}"; do  # one at a time: a module that failed to import is one
    if .venv/bin/pytest -n 0 -p no:cacheprovider -q "$test" >> "$VENV/pinned-rerun.log" 2>&1
    then
      summary+=("          broken by the upgrade: $test")
    else
      summary+=("          fails on the pinned Dagster too: $test (see $VENV/pinned-rerun.log)")
    fi
  done
fi

echo
echo "=== make upgrade-check: $(grep '^dagster ' "$VENV/overlaid-versions.txt") over the" \
  "pins of $(grep '^dagster ' "$VENV/pinned-versions.txt"), $((SECONDS - started)) s in all:"
printf '%s\n' "${summary[@]}"
if [ "$failed" = 1 ]; then
  echo "Something broke: read each failed step's log above. A failed pin names the upstream"
  echo "object, our lines that rely on it and the line to paste once checked (docs/testing.md)."
fi
exit "$failed"
