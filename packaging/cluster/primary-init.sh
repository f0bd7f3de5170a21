#!/bin/sh
# Runs once, when the primary's data directory is created (the postgres
# image's /docker-entrypoint-initdb.d): a role for the nodes, a role for the
# standby's replication, and every commit waiting for the standby.
set -eu
password="$(cat /run/secrets/cluster-db-password)"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" <<SQL
CREATE ROLE portcullis LOGIN PASSWORD '${password}';
CREATE DATABASE portcullis OWNER portcullis;
CREATE ROLE replicator REPLICATION LOGIN PASSWORD '${password}';
ALTER SYSTEM SET synchronous_standby_names = 'standby1';
SQL
echo "host replication replicator 172.28.0.0/24 scram-sha-256" >> "$PGDATA/pg_hba.conf"
