//! How far a plugin's SQL reaches: the role its queries run as.
//!
//! A read-only transaction is not least privilege: as the host's own role, a
//! plugin could read server files or signal other backends. And `SET ROLE`
//! alone is no boundary either: a session may always return to any role its
//! session user can become, with `RESET ROLE` or from inside a statement
//! (`set_config('role', …)`, even through dynamic SQL such as `query_to_xml`).
//!
//! So a plugin with `[grants] query_role = "R"` runs each statement inside a
//! SECURITY DEFINER function owned by `R` (the *barrier*), after `SET LOCAL
//! ROLE R`. Inside such a function PostgreSQL refuses to change `role` or
//! `session_authorization` at all, and the statement is run through
//! `PREPARE`, which takes only SELECT, INSERT, UPDATE, DELETE, MERGE and
//! VALUES: no `RESET ROLE`, `SET TRANSACTION` or any other utility statement.
//! The barrier is installed (or refreshed) when the plugin loads.
//!
//! A plugin without `query_role` runs as the host's role, which is refused
//! when that role is a superuser or holds a role that reaches beyond the
//! database (server files, programs, other backends).

use super::CapabilityError;
use crate::channel::quote_ident;
use sha2::{Digest, Sha256};

/// Plugin statements kept prepared per connection before they are all let go.
const MAX_PREPARED: usize = 256;

/// Why the host's role is too powerful to run a plugin's SQL as itself, if it is.
pub(crate) async fn host_role_danger(
    client: &tokio_postgres::Client,
) -> Result<Option<String>, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT current_user::text, r.rolsuper,
                    array_remove(ARRAY[
                      CASE WHEN pg_has_role(current_user, 'pg_read_server_files', 'MEMBER') THEN 'pg_read_server_files' END,
                      CASE WHEN pg_has_role(current_user, 'pg_write_server_files', 'MEMBER') THEN 'pg_write_server_files' END,
                      CASE WHEN pg_has_role(current_user, 'pg_execute_server_program', 'MEMBER') THEN 'pg_execute_server_program' END,
                      CASE WHEN pg_has_role(current_user, 'pg_signal_backend', 'MEMBER') THEN 'pg_signal_backend' END
                    ], NULL)
             FROM pg_roles r WHERE r.rolname = current_user",
            &[],
        )
        .await?;
    let (user, superuser, roles): (String, bool, Vec<String>) =
        (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
    Ok(if superuser {
        Some(format!("the host's role {user:?} is a superuser"))
    } else if !roles.is_empty() {
        Some(format!(
            "the host's role {user:?} is a member of {}",
            roles.join(", ")
        ))
    } else {
        None
    })
}

/// The barrier function of `role`, schema-qualified and quoted. Role names
/// can be as long as a function name may be, so the name carries a hash.
pub(crate) fn barrier(role: &str) -> String {
    let hash = format!("{:x}", Sha256::digest(role.as_bytes()));
    format!(
        "pgnotifier.{}",
        quote_ident(&format!("query_as_{}", &hash[..16]))
    )
}

/// The call of `role`'s barrier: statement, parameters, whether it returns
/// rows, and the most rows it may return (one more is sent, to tell).
pub(crate) fn barrier_call(role: &str) -> String {
    format!("SELECT {}($1, $2, $3, $4)", barrier(role))
}

/// Install `role`'s barrier, after checking that the host's role can become
/// `role`. One transaction; concurrent loads take turns.
pub(crate) async fn install_barrier(
    client: &mut tokio_postgres::Client,
    role: &str,
) -> Result<(), CapabilityError> {
    let host: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .and_then(|row| row.try_get(0))?;
    let tx = client.transaction().await?;
    let role_ident = quote_ident(role);
    tx.batch_execute(&format!("SET LOCAL ROLE {role_ident}; RESET ROLE"))
        .await
        .map_err(|source| CapabilityError::Setup {
            step: format!("the host's role {host:?} cannot become query_role {role:?}"),
            source,
        })?;
    let function = barrier(role);
    let signature = format!("{function}(text, text[], boolean, integer)");
    let install = format!(
        "SELECT pg_catalog.pg_advisory_xact_lock(1885826676, 3);
         DO $schema$ BEGIN
           IF NOT EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname = 'pgnotifier') THEN
             CREATE SCHEMA pgnotifier;
           END IF;
         END $schema$;
         CREATE OR REPLACE FUNCTION {function}(statement text, params text[], returns_rows boolean, max_rows integer)
           RETURNS SETOF text LANGUAGE plpgsql SECURITY DEFINER AS $barrier$
         DECLARE
           found_row record;
           stale record;
           statement_name text := 'pgnotifier_' || pg_catalog.md5(statement);
           prepared boolean;
           cached integer;
           args text;
           n integer := 0;
         BEGIN
           -- Each statement is prepared once per connection, and run by name.
           SELECT bool_or(s.name = statement_name), count(*)
             INTO prepared, cached
             FROM pg_catalog.pg_prepared_statements s WHERE s.name LIKE 'pgnotifier\\_%';
           IF NOT coalesce(prepared, false) THEN
             IF cached >= {MAX_PREPARED} THEN
               FOR stale IN SELECT s.name FROM pg_catalog.pg_prepared_statements s WHERE s.name LIKE 'pgnotifier\\_%' LOOP
                 EXECUTE 'DEALLOCATE ' || pg_catalog.quote_ident(stale.name);
               END LOOP;
             END IF;
             EXECUTE 'PREPARE ' || pg_catalog.quote_ident(statement_name) || ' AS ' || statement;
           END IF;
           SELECT coalesce('(' || string_agg(pg_catalog.quote_nullable(p), ',' ORDER BY i) || ')', '')
             INTO args FROM pg_catalog.unnest(params) WITH ORDINALITY AS t(p, i);
           IF returns_rows THEN
             FOR found_row IN EXECUTE 'EXECUTE ' || pg_catalog.quote_ident(statement_name) || args LOOP
               RETURN NEXT pg_catalog.row_to_json(found_row)::text;
               n := n + 1;
               EXIT WHEN n > max_rows;
             END LOOP;
           ELSE
             EXECUTE 'EXECUTE ' || pg_catalog.quote_ident(statement_name) || args;
           END IF;
         END
         $barrier$;
         REVOKE ALL ON FUNCTION {signature} FROM PUBLIC;
         GRANT USAGE, CREATE ON SCHEMA pgnotifier TO {role_ident};
         ALTER FUNCTION {signature} OWNER TO {role_ident};
         REVOKE CREATE ON SCHEMA pgnotifier FROM {role_ident};"
    );
    tx.batch_execute(&install)
        .await
        .map_err(|source| CapabilityError::Setup {
            step: format!(
                "cannot install the query barrier for query_role {role:?} as {host:?} (it needs CREATE on the database, or on schema pgnotifier)"
            ),
            source,
        })?;
    Ok(tx.commit().await?)
}
