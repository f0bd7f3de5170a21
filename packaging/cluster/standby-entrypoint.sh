#!/bin/sh
# The standby: on first start, a copy of the primary made with
# pg_basebackup -R (streaming as "standby1", which the primary waits for);
# then PostgreSQL as the image runs it.
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    export PGPASSWORD="$(cat /run/secrets/cluster-db-password)"
    until pg_isready -h db-primary -U postgres; do sleep 1; done
    pg_basebackup -h db-primary -U replicator -D "$PGDATA" -R -X stream \
        -d "application_name=standby1"
    chmod 0700 "$PGDATA"
fi
exec docker-entrypoint.sh postgres
