#!/usr/bin/env bash
# Make PostgreSQL's server binaries (initdb, pg_ctl) available for tests/test_scale_out.py.
# Idempotent: does nothing when they are already there. It only installs: the test starts its own
# private cluster on 127.0.0.1 in a temp folder (as the `postgres` user when run as root) and stops it.
# The Python driver (psycopg) comes from requirements.txt.
set -euo pipefail

have_postgres() {
  command -v initdb >/dev/null 2>&1 && return 0
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

if have_postgres; then
  echo "install-postgres: PostgreSQL server binaries present"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-postgres: no initdb and no apt-get; install PostgreSQL by hand (the test will skip)" >&2
  exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo -n"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null

if have_postgres; then
  echo "install-postgres: installed $(ls -d /usr/lib/postgresql/*/bin | tail -n 1)"
else
  echo "install-postgres: apt-get finished but initdb is still missing" >&2
  exit 1
fi
