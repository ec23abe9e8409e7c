#!/bin/sh
# Run by the postgres image on first start only: creates crawlstream's roles (deploy/postgres/roles.sql).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" \
  -v owner_pw="$OWNER_PW" -v app_pw="$APP_PW" -v cdc_pw="$CDC_PW" -f /crawlstream/roles.sql
# Debezium logs in over a replication connection, which "host all ..." lines do not cover.
echo "host replication crawlstream_cdc all scram-sha-256" >> "$PGDATA/pg_hba.conf"
