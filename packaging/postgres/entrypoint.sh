#!/bin/sh
# The cloud profile's PostgreSQL (compose.yaml service `postgres`): Orthanc's index.
# Starts as root, sets up what a first start needs, then runs the server as `postgres`.
#  - The password of Orthanc's role: generated at first start into POSTGRES_PASSWORD_FILE
#    (a volume Orthanc's container mounts read-only), mode 0600, owned by the appliance's
#    user (SECRET_OWNER_UID); never printed.
#  - The cluster: initdb into PGDATA (a volume) at first start; the role POSTGRES_USER
#    owns the database POSTGRES_DB and logs in over the network with that password
#    (scram-sha-256); the superuser `postgres` only through the local socket (peer).
set -eu
: "${PGDATA:=/var/lib/postgresql/data}" "${POSTGRES_USER:=neuronova}" "${POSTGRES_DB:=orthanc}"
: "${POSTGRES_PASSWORD_FILE:=/run/neuronova-db/password}" "${SECRET_OWNER_UID:=10001}"
BIN=/usr/lib/postgresql/15/bin
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }

case "$POSTGRES_USER$POSTGRES_DB" in
  *[!A-Za-z0-9_]*) echo "POSTGRES_USER and POSTGRES_DB: letters, digits and _ only" >&2; exit 2;;
esac

secret_dir=$(dirname "$POSTGRES_PASSWORD_FILE")
mkdir -p "$secret_dir"
chmod 0755 "$secret_dir"
if [ ! -s "$POSTGRES_PASSWORD_FILE" ]; then
  umask 077
  head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' > "$POSTGRES_PASSWORD_FILE.new"
  chown "$SECRET_OWNER_UID:$SECRET_OWNER_UID" "$POSTGRES_PASSWORD_FILE.new"
  mv "$POSTGRES_PASSWORD_FILE.new" "$POSTGRES_PASSWORD_FILE"
  umask 022
fi

mkdir -p "$PGDATA" /run/postgresql
chown postgres:postgres "$PGDATA" /run/postgresql
chmod 0700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  as_postgres "$BIN/initdb" -D "$PGDATA" -U postgres -E UTF8 --locale=C.UTF-8 \
    --auth-local=peer --auth-host=scram-sha-256 >/dev/null
  # Single-user mode: no server listens while the role and its database are made. The
  # password is alphanumeric (generated above), so it needs no quoting beyond '...'. Its
  # output is not shown: an error there would repeat the statement, password included.
  password=$(cat "$POSTGRES_PASSWORD_FILE")
  for statement in "CREATE ROLE $POSTGRES_USER LOGIN PASSWORD '$password'" \
                   "CREATE DATABASE $POSTGRES_DB OWNER $POSTGRES_USER"; do
    said=$(echo "$statement" | as_postgres "$BIN/postgres" --single -D "$PGDATA" postgres 2>&1)
    case "$said" in
      *ERROR*) echo "setting up $POSTGRES_USER and $POSTGRES_DB failed" >&2; exit 1;;
    esac
  done
  unset password said
  # Any address of the profile's internal network (no port of this service is published).
  echo "host $POSTGRES_DB $POSTGRES_USER all scram-sha-256" >> "$PGDATA/pg_hba.conf"
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups \
  "$BIN/postgres" -D "$PGDATA" -c listen_addresses='*' "$@"
