"""Releases: storing and reading them, the artifact's bytes, and the current/previous
flags an outcome moves."""

from wrktalk_agent.db.queries.rows import ARTIFACT_COLUMNS

# Promote a release to current; the old current becomes previous, the old previous is
# cleared. The same three steps serve deploys and rollbacks (where target = previous).
# Separate statements because the partial unique indexes are checked row by row.
CLEAR_PREVIOUS = """
UPDATE release_artifact SET is_previous = false
WHERE is_previous
  AND NOT EXISTS (SELECT 1 FROM release_artifact c WHERE c.id = $1 AND c.is_current)
"""
DEMOTE_CURRENT = """
UPDATE release_artifact SET is_current = false, is_previous = true
WHERE is_current AND id <> $1
"""
# Nothing of the current release runs any more: it becomes previous, none is current
# (two statements, in this order, for the partial unique indexes).
CLEAR_PREVIOUS_IF_CURRENT = """
UPDATE release_artifact SET is_previous = false
WHERE is_previous AND EXISTS (SELECT 1 FROM release_artifact c WHERE c.is_current)
"""
CURRENT_TO_PREVIOUS = """
UPDATE release_artifact SET is_current = false, is_previous = true WHERE is_current
"""
PROMOTE = """
UPDATE release_artifact SET is_current = true, is_previous = false, applied_at = now()
WHERE id = $1
"""


INSERT_RELEASE = f"""
INSERT INTO release_artifact AS a
    (release_version, chart_type, artifact_data, env_data, values_data, sha256, signature)
VALUES ($1, $2, $3, $4, $5, $6, $7)
RETURNING {ARTIFACT_COLUMNS}
"""

RELEASE_BY_ID = f"SELECT {ARTIFACT_COLUMNS} FROM release_artifact a WHERE a.id = $1"
RELEASE_BY_VERSION = (
    f"SELECT {ARTIFACT_COLUMNS} FROM release_artifact a WHERE a.release_version = $1"
)
CURRENT_RELEASE = f"SELECT {ARTIFACT_COLUMNS} FROM release_artifact a WHERE a.is_current"
PREVIOUS_RELEASE = f"SELECT {ARTIFACT_COLUMNS} FROM release_artifact a WHERE a.is_previous"
LIST_RELEASES = f"""
SELECT {ARTIFACT_COLUMNS} FROM release_artifact a ORDER BY a.created_at DESC, a.id DESC LIMIT $1
"""

RELEASE_SECRETS = "SELECT env_data, values_data FROM release_artifact WHERE id = $1"
#: ``release sign``: only when nobody changed the signature since it was read
SET_RELEASE_SIGNATURE = """UPDATE release_artifact SET signature = $2
    WHERE id = $1 AND signature IS NOT DISTINCT FROM $3 RETURNING id"""
# Artifacts are read slice by slice with one prepared statement: substring() reads only
# the slice's TOAST chunks (compressed tarballs are stored uncompressed). Measured 2.5x
# faster than streaming the slices through one cursor over generate_series.
ARTIFACT_SLICE = (
    "SELECT substring(artifact_data FROM $2::int FOR $3::int) FROM release_artifact WHERE id = $1"
)
ARTIFACT_WHOLE = "SELECT artifact_data FROM release_artifact WHERE id = $1"
