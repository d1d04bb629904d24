"""What several sections' statements share: the columns a task or release row is read
with, the lease arithmetic, the checks a pending row must pass, the JSON of a notification
decided inside SQL, and what "cancelled" means."""


def _finite(column: str) -> str:
    """A timestamp column, NULL when a backend wrote ±infinity (no code path can use those
    as times, and a JSON round trip of them fails to parse)."""
    name = column.split(".")[-1]
    return f"CASE WHEN isfinite({column}) THEN {column} END AS {name}"


TASK_COLUMNS = f"""t.id, t.type, t.status, t.release_artifact_id, {_finite("t.execute_after")},
    {_finite("t.picked_up_at")}, {_finite("t.completed_at")}, {_finite("t.last_heartbeat")},
    t.result, t.error_message, {_finite("t.created_at")}, t.claimed_by, t.claim_token,
    t.lease_seconds, t.recovery"""

# What a poll returns of the rows it claims or takes over: `result` is left out (the agent
# writes its own; a backend's, of any shape or depth, must not stop the poll's answer
# from being read).
CLAIM_COLUMNS = TASK_COLUMNS.replace("t.result, ", "")

#: Longest lease an agent records (seconds); a lease_seconds that is not a number in
#: (0, MAX_LEASE_SECONDS] is read as the polling agent's own lease.
MAX_LEASE_SECONDS = 86400


def lease_interval(task: str, default: str) -> str:
    """The lease of a running task as an interval: its lease_seconds when that is a
    number an agent can have written, else ``default`` (NaN, ±infinity, 1e300 and
    negatives never reach make_interval, which would overflow)."""
    seconds = f"{task}.lease_seconds"
    return (
        f"make_interval(secs => CASE WHEN {seconds} > 0 AND {seconds} <= {MAX_LEASE_SECONDS} "
        f"THEN {seconds} ELSE {default}::float8 END)"
    )


def last_sign_of_life(task: str) -> str:
    return f"coalesce({task}.last_heartbeat, {task}.picked_up_at, {task}.created_at)"


def lease_expired(task: str, default: str) -> str:
    """Whether a running task's lease is over: its last sign of life is older than its
    lease, or is a time no agent writes (none, ±infinity, or further in the future than a
    lease: heartbeats are the server's now())."""
    beat, lease = last_sign_of_life(task), lease_interval(task, default)
    return (
        f"({beat} IS NULL OR NOT isfinite({beat}) OR {beat} < now() - {lease}"
        f" OR {beat} > now() + {lease})"
    )


def abandoned_error(task: str, default: str) -> str:
    """The error of a task taken over: who stopped heartbeating and when, and which
    impossible value was read how."""
    beat, seconds = last_sign_of_life(task), f"{task}.lease_seconds"
    return f"""'abandoned: agent ' || coalesce({task}.claimed_by, 'unknown')
            || CASE WHEN {beat} IS NOT NULL AND (NOT isfinite({beat}) OR {beat} > now())
                    THEN ' left last_heartbeat ' || quote_literal({beat}::text)
                         || ', a time no agent writes: read as expired'
                    ELSE ' stopped heartbeating at ' || coalesce(
                         to_char({beat} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                         'an unknown time') END
            || CASE WHEN {seconds} IS NOT NULL
                         AND NOT ({seconds} > 0 AND {seconds} <= {MAX_LEASE_SECONDS})
                    THEN '; its lease_seconds ' || quote_literal({seconds}::text)
                         || ' was read as ' || {default}::float8 || ' s'
                    ELSE '' END"""


#: What the release_version of a release may be (interfaces.VERSION_PATTERN).
_VERSION_RE = "^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$"


def task_problems(task: str, release: str, release_types: str) -> str:
    """Why the agent cannot run a pending task (``task`` joined to the release it names as
    ``release``), every column and value named; NULL when it can. ``release_types`` is the
    parameter holding the release types the installed deployers declare (a text array;
    NULL when one of them takes any type). Values are quoted with quote_literal and cut:
    they are shown, never run."""

    def value(column: str) -> str:
        return f"coalesce(quote_literal(left({column}::text, 80)), 'NULL')"

    named = f"{release}.id IS NOT NULL"
    which = f"' of release ' || {release}.id"
    return f"""nullif(concat_ws('; ',
        CASE WHEN {task}.type IS NULL OR {task}.type NOT IN ('deploy', 'rollback')
             THEN 'type ' || {value(f"{task}.type")} || ' is neither deploy nor rollback' END,
        CASE WHEN {task}.execute_after = '-infinity'
             THEN 'execute_after ' || quote_literal({task}.execute_after::text)
                  || ' is not a time the agent can wait for' END,
        CASE WHEN jsonb_typeof({task}.result) <> 'object'
             THEN 'result ' || {value(f"{task}.result")}
                  || ' is not a JSON object (the agent writes an object there)' END,
        CASE WHEN {task}.release_artifact_id IS NULL AND {task}.type = 'deploy'
             THEN 'release_artifact_id is NULL: a deploy task must name a release' END,
        CASE WHEN {task}.release_artifact_id IS NOT NULL AND {release}.id IS NULL
             THEN 'release_artifact_id ' || {task}.release_artifact_id
                  || ' names no release' END,
        CASE WHEN {named} AND ({release}.release_version IS NULL
                               OR {release}.release_version !~ '{_VERSION_RE}')
             THEN 'release_version ' || {value(f"{release}.release_version")} || {which}
                  || ' is not a release version (1-64 characters from [0-9A-Za-z.+_-], '
                  || 'starting with a letter or digit)' END,
        CASE WHEN {named} AND ({release}.chart_type IS NULL
                               OR btrim({release}.chart_type) = '')
             THEN 'chart_type ' || {value(f"{release}.chart_type")} || {which}
                  || ' names no release type' END,
        CASE WHEN {named} AND btrim({release}.chart_type) <> ''
                          AND {release_types} IS NOT NULL
                          AND NOT {release}.chart_type = ANY ({release_types})
             THEN 'chart_type ' || {value(f"{release}.chart_type")} || {which}
                  || ' is a release type no installed deployer declares ('
                  || array_to_string({release_types}, ', ') || ')' END,
        CASE WHEN {named} AND coalesce(octet_length({release}.artifact_data), 0) = 0
             THEN 'artifact_data' || {which} || ' is empty (0 bytes)' END,
        CASE WHEN {named} AND ({release}.sha256 IS NULL OR lower(btrim({release}.sha256,
                                   E' \\t\\r\\n')) !~ '^[0-9a-f]{{64}}$')
             THEN 'sha256 ' || {value(f"{release}.sha256")} || {which}
                  || ' is not a SHA-256 digest (64 hex digits)' END
    ), '')"""


ARTIFACT_COLUMNS = """a.id, a.release_version, a.chart_type, a.sha256,
    octet_length(a.artifact_data) AS size, a.is_current, a.is_previous, a.applied_at,
    a.created_at, a.signature, a.env_data IS NOT NULL AS has_env,
    a.values_data IS NOT NULL AS has_values"""

# The JSON of a notification as notifiers get it (see interfaces.NotificationEvent), for
# outcomes decided inside SQL ($-parameters: agent id, installation name).
SQL_EVENT = """jsonb_build_object(
    'kind', {kind}, 'installation', {installation}::text, 'task_id', {task}.id,
    'task_type', {task}.type, 'outcome', 'failed',
    'version', (SELECT v.release_version FROM release_artifact v
                WHERE v.id = {task}.release_artifact_id),
    'from_version', NULL, 'to_version', NULL, 'error', {task}.error_message,
    'agent_id', {agent}::text, 'started_at', NULL, 'finished_at', now())"""


# A cancelled task is stored as failed with an error starting "cancelled by " (see
# models.SHOWN_STATUSES): the filters `failed` and `cancelled` tell them apart.
CANCELLED = "(t.status = 'failed' AND starts_with(coalesce(t.error_message, ''), 'cancelled by '))"
