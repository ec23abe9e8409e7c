-- Roles and database for crawlstream in production; run once as a superuser (psql -v ...):
--   psql -v owner_pw="$OWNER_PW" -v app_pw="$APP_PW" -v cdc_pw="$CDC_PW" -f deploy/postgres/roles.sql
-- Table grants (DML for the app role, SELECT for CDC) and the publication come from the
-- migrations, run as crawlstream_owner. See README.md in this folder for why.

CREATE ROLE crawlstream_owner LOGIN PASSWORD :'owner_pw';
CREATE ROLE crawlstream_app LOGIN PASSWORD :'app_pw';
CREATE ROLE crawlstream_cdc LOGIN REPLICATION PASSWORD :'cdc_pw';

CREATE DATABASE crawlstream OWNER crawlstream_owner ENCODING 'UTF8';
REVOKE ALL ON DATABASE crawlstream FROM PUBLIC;
GRANT CONNECT ON DATABASE crawlstream TO crawlstream_app, crawlstream_cdc;
