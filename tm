#!/usr/bin/env bash
# tenantmail launcher: creates .venv on first use (pip install -e '.[dev]'), then runs
#   ./tm demo          the embedded stack sending sample notifications (the main command)
#   ./tm test [args]   the whole check: ruff, mypy, lint-imports, hadolint, promtool, then pytest (args go to pytest)
#   ./tm <command>     any `tenantmail` subcommand (worker, dispatcher, migrate, emulator, activity)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/tenantmail ] || [ pyproject.toml -nt .venv/.installed ]; then
  [ -d .venv ] || "$PY" -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
  touch .venv/.installed
fi
cmd=${1:-demo}
[ $# -gt 0 ] && shift
case "$cmd" in
  test) exec bash scripts/check "$@" ;;
  *) exec .venv/bin/tenantmail "$cmd" "$@" ;;
esac
