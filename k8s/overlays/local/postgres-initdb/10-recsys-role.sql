-- The writer's role, made at the cluster's first start by the postgres image's entrypoint (it runs the .sql
-- files of /docker-entrypoint-initdb.d with psql as the superuser, over the socket): a plain login role that
-- owns the database `recsys` (the writer runs its migrations, so it owns its schema) and nothing more. The
-- superuser stays `postgres`, whose password (POSTGRES_PASSWORD) no service holds: with it, `COPY ... TO
-- PROGRAM` is a shell. The role's password is the environment's RECSYS_DB_PASSWORD (psql 15's \getenv), never
-- written here. One file for both setups: the local overlay mounts it from a ConfigMap, docker/compose.yaml
-- from this folder.
\getenv password RECSYS_DB_PASSWORD
\if :{?password}
\else
DO $$ BEGIN RAISE EXCEPTION 'RECSYS_DB_PASSWORD is not set: the recsys role needs its password'; END $$;
\endif
CREATE ROLE recsys LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    PASSWORD :'password';
CREATE DATABASE recsys OWNER recsys;
