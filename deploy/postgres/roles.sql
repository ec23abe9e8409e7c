-- Roles and database for crawlstream in production; run once as a superuser (psql -v ...):
--   psql -v owner_pw="$OWNER_PW" -v app_pw="$APP_PW" -v cdc_pw="$CDC_PW" -f deploy/postgres/roles.sql
-- Table grants (DML for the app role, SELECT for CDC) and the publication come from the
-- migrations, run as crawlstream_owner. See README.md in this folder for why.

CREATE ROLE crawlstream_owner LOGIN PASSWORD :'owner_pw';
CREATE ROLE crawlstream_app LOGIN PASSWORD :'app_pw';
CREATE ROLE crawlstream_cdc LOGIN REPLICATION PASSWORD :'cdc_pw';

CREATE DATABASE crawlstream OWNER crawlstream_owner ENCODING 'UTF8';
REVOKE ALL ON DATABASE crawlstream FROM PUBLIC;
REVOKE CREATE ON DATABASE crawlstream FROM crawlstream_app, crawlstream_cdc;
GRANT CONNECT ON DATABASE crawlstream TO crawlstream_app, crawlstream_cdc;

-- The app and CDC roles create no objects, whatever the PostgreSQL version: before 15, PUBLIC
-- may CREATE in schema public; 15+ revokes that by default. Revoked here from PUBLIC and from
-- both roles in every schema of the database; the owner keeps CREATE on public for migrations.
-- (The app role's TEMPORARY privilege, granted by migration 0002, is for the page sink's
-- session-local staging table only.)
\connect crawlstream
GRANT USAGE, CREATE ON SCHEMA public TO crawlstream_owner;
DO $$
DECLARE s name;
BEGIN
  FOR s IN SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\_%' AND nspname <> 'information_schema' LOOP
    EXECUTE format('REVOKE CREATE ON SCHEMA %I FROM PUBLIC, crawlstream_app, crawlstream_cdc', s);
  END LOOP;
END $$;
