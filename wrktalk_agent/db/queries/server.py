"""Questions about the server itself: which one a connection reached, whether it answers,
and what the connected role may do."""

# The server a connection reached: a different answer on a new connection means a
# failover (or a restart), and task owners re-check their claims.
SERVER_IDENTITY = """
SELECT inet_server_addr()::text, inet_server_port(), pg_postmaster_start_time(),
    pg_is_in_recovery()
"""


#: the database answers at all (readiness, a listening connection's keepalive)
PING = "SELECT 1"


# -- privileges (wrktalk-agent check) ---------------------------------------------------------
# What the connected role may do, asked without doing it. $1/$2: parallel arrays of table
# names and privileges; `granted` is NULL when the table does not exist (the schema check
# reports that). Missing tables never raise: to_regclass returns NULL.
TABLE_PRIVILEGES = """
SELECT r.tbl AS table_name, r.priv AS privilege,
    CASE WHEN to_regclass(r.tbl) IS NULL THEN NULL
         ELSE has_table_privilege(to_regclass(r.tbl), r.priv) END AS granted
FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS r(tbl, priv, n)
ORDER BY r.n
"""

# The schema itself, the sequence behind agent_task_event.id (INSERT needs USAGE on it) and
# the advisory-lock functions (EXECUTE is granted to PUBLIC unless someone revoked it).
OTHER_PRIVILEGES = """
SELECT has_schema_privilege(current_schema(), 'USAGE') AS schema_usage,
    (SELECT CASE WHEN s IS NULL THEN NULL ELSE has_sequence_privilege(s, 'USAGE') END
       FROM (SELECT CASE WHEN to_regclass('agent_task_event') IS NULL THEN NULL
                         ELSE pg_get_serial_sequence('agent_task_event', 'id') END AS s) q)
        AS event_sequence_usage,
    has_function_privilege('pg_try_advisory_lock(bigint)', 'EXECUTE') AS advisory_lock,
    has_function_privilege('pg_advisory_unlock(bigint)', 'EXECUTE') AS advisory_unlock,
    current_user AS role_name, current_schema() AS schema_name,
    CASE WHEN to_regclass('agent_task_event') IS NOT NULL
         THEN pg_get_serial_sequence('agent_task_event', 'id') END AS event_sequence
"""
