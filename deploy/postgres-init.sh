#!/bin/sh
# First start of the trial's PostgreSQL (docker-entrypoint-initdb.d): the application role of
# docs/deploy.md, with data rights only. POSTGRES_USER (segcrit_owner) owns the database and runs
# `segcrit migrate`; the tables it creates later are granted to segcrit_app by default privileges.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v app_password="$SEGCRIT_APP_PASSWORD" <<'SQL'
CREATE ROLE segcrit_app LOGIN PASSWORD :'app_password';
CREATE SCHEMA segcrit AUTHORIZATION segcrit_owner;
GRANT USAGE ON SCHEMA segcrit TO segcrit_app;
ALTER DEFAULT PRIVILEGES FOR ROLE segcrit_owner IN SCHEMA segcrit
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO segcrit_app;
ALTER DEFAULT PRIVILEGES FOR ROLE segcrit_owner IN SCHEMA segcrit
    GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO segcrit_app;
ALTER ROLE segcrit_owner SET search_path = segcrit;
ALTER ROLE segcrit_app SET search_path = segcrit;
SQL
