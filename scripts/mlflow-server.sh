#!/usr/bin/env bash
# The MLflow tracking server for a cluster (called by `make mlflow-server`, which passes the variables below):
# PostgreSQL backend, MLflow's basic-auth app, artifacts served by the server, bound to MLFLOW_HOST and
# answering only the Host headers in MLFLOW_ALLOWED_HOSTS.
#
# Credentials come from the environment or from the private file MLFLOW_SERVER_ENV (written by
# scripts/mlflow-postgres.sh): MLFLOW_BACKEND_STORE_URI (postgresql://user:password@host:port/db),
# MLFLOW_AUTH_ADMIN_USERNAME (default admin), MLFLOW_AUTH_ADMIN_PASSWORD (used when the admin user is first
# created) and MLFLOW_FLASK_SERVER_SECRET_KEY (the auth app's CSRF key). The auth app's own settings and user database live in MLFLOW_SERVER_STATE (a private folder).
set -euo pipefail
: "${MLFLOW_HOST:=127.0.0.1}" "${MLFLOW_PORT:=5000}" "${MLFLOW_ALLOWED_HOSTS:=$MLFLOW_HOST,$MLFLOW_HOST:$MLFLOW_PORT}"
: "${MLFLOW_SERVER_ENV:=$HOME/.config/cnnablate/mlflow-server.env}"
: "${MLFLOW_SERVER_STATE:=$HOME/.local/state/cnnablate/mlflow-server}"
: "${MLFLOW_ARTIFACTS:=$PWD/results/mlflow-server-artifacts}"
bin=$(dirname "$0")/../.venv/bin

if [[ -z ${MLFLOW_BACKEND_STORE_URI:-} ]]; then
    if [[ ! -f $MLFLOW_SERVER_ENV ]]; then
        echo "no credentials: set MLFLOW_BACKEND_STORE_URI and MLFLOW_AUTH_ADMIN_PASSWORD, or create" \
            "$MLFLOW_SERVER_ENV with: sudo bash scripts/mlflow-postgres.sh" >&2
        exit 1
    fi
    if [[ $(stat -c %a "$MLFLOW_SERVER_ENV") != 600 || $(stat -c %u "$MLFLOW_SERVER_ENV") != $(id -u) ]]; then
        echo "$MLFLOW_SERVER_ENV holds passwords: it must be yours with mode 600 (chmod 600 $MLFLOW_SERVER_ENV)" >&2
        exit 1
    fi
    set -a
    # shellcheck disable=SC1090
    source "$MLFLOW_SERVER_ENV"
    set +a
fi
: "${MLFLOW_AUTH_ADMIN_PASSWORD:?set MLFLOW_AUTH_ADMIN_PASSWORD (the tracking server admin password)}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?set MLFLOW_FLASK_SERVER_SECRET_KEY (a random string, the CSRF key of the auth app)}"
export MLFLOW_AUTH_ADMIN_USERNAME=${MLFLOW_AUTH_ADMIN_USERNAME:-admin} MLFLOW_AUTH_ADMIN_PASSWORD
export MLFLOW_FLASK_SERVER_SECRET_KEY
export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true

mkdir -p -m 700 "$MLFLOW_SERVER_STATE"
export MLFLOW_AUTH_CONFIG_PATH=$MLFLOW_SERVER_STATE/basic_auth.ini
cat >"$MLFLOW_AUTH_CONFIG_PATH" <<INI
[mlflow]
# every signed-in user may read every experiment; writing needs the owner's or the admin's grant
default_permission = READ
database_uri = sqlite:///$MLFLOW_SERVER_STATE/basic_auth.db
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI

"$bin/mlflow" db upgrade "$MLFLOW_BACKEND_STORE_URI"
exec "$bin/mlflow" server --app-name basic-auth \
    --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" --artifacts-destination "$MLFLOW_ARTIFACTS" \
    --host "$MLFLOW_HOST" --port "$MLFLOW_PORT" --allowed-hosts "$MLFLOW_ALLOWED_HOSTS"
