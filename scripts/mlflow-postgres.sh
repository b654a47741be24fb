#!/usr/bin/env bash
# PostgreSQL for the MLflow tracking server, from Debian's `postgresql` package, and the server's private
# credentials file. Run once on the host that will run `make mlflow-server`, as root (or with sudo):
#
#   sudo bash scripts/mlflow-postgres.sh
#
# It installs `postgresql` when missing (apt-get), starts its cluster, creates the role and the database
# `mlflow` (password: random), and writes the credentials file that `make mlflow-server` reads:
# MLFLOW_SERVER_ENV, by default ~/.config/cnnablate/mlflow-server.env of the user who called sudo, mode 0600.
# That file holds the database URI, the tracking server's admin password and its CSRF secret key; never in git.
# Running it again keeps the passwords of an existing credentials file and (re)starts the cluster if it is down.
set -euo pipefail

if [[ $(id -u) != 0 ]]; then
    echo "run as root: sudo bash $0" >&2
    exit 1
fi
owner=${SUDO_USER:-root}
home=$(getent passwd "$owner" | cut -d: -f6)
env_file=${MLFLOW_SERVER_ENV:-$home/.config/cnnablate/mlflow-server.env}
db=${MLFLOW_DB_NAME:-mlflow}
role=${MLFLOW_DB_USER:-mlflow}

if ! command -v pg_lsclusters >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
read -r version cluster port status _ < <(pg_lsclusters --no-header | head -n 1)
if [[ $status != online* ]]; then
    pg_ctlcluster "$version" "$cluster" start
fi

random_secret() { od -An -tx1 -N24 /dev/urandom | tr -d ' \n'; }
if [[ -f $env_file ]]; then
    # shellcheck disable=SC1090
    source "$env_file"
    db_password=${MLFLOW_BACKEND_STORE_URI#postgresql://*:}
    db_password=${db_password%%@*}
else
    db_password=$(random_secret)
    MLFLOW_AUTH_ADMIN_PASSWORD=$(random_secret)
fi

psql_admin() { runuser -u postgres -- psql -v ON_ERROR_STOP=1 -p "$port" -qtA "$@"; }
if [[ -z $(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = '$role'") ]]; then
    psql_admin -c "CREATE ROLE \"$role\" LOGIN"
fi
# the password through stdin, never on a command line that `ps` shows
psql_admin <<<"ALTER ROLE \"$role\" PASSWORD '$db_password';"
if [[ -z $(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$db'") ]]; then
    psql_admin -c "CREATE DATABASE \"$db\" OWNER \"$role\""
fi

mkdir -p -m 700 "$(dirname "$env_file")"
umask 077
cat >"$env_file" <<ENV
# MLflow tracking server credentials, written by scripts/mlflow-postgres.sh. Private: mode 0600, never in git.
MLFLOW_BACKEND_STORE_URI=postgresql://$role:$db_password@127.0.0.1:$port/$db
MLFLOW_AUTH_ADMIN_USERNAME=${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
MLFLOW_AUTH_ADMIN_PASSWORD=$MLFLOW_AUTH_ADMIN_PASSWORD
MLFLOW_FLASK_SERVER_SECRET_KEY=${MLFLOW_FLASK_SERVER_SECRET_KEY:-$(random_secret)}
ENV
chmod 600 "$env_file"
chown "$owner" "$env_file" "$(dirname "$env_file")"
echo "PostgreSQL $version/$cluster on port $port: database $db, role $role. Credentials: $env_file"
