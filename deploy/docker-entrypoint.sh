#!/bin/sh
# Entrypoint of the wrktalk-agent image: preflight, then become the command.
#
# Before `wrktalk-agent run`, `wrktalk-agent check` verifies the database, the schema, the
# selected plugins (helm/kube access, docker, nginx flag dir, SMTP), the work dir and the
# trusted keys, and the container stops with the failed lines in its log instead of
# starting an agent that would fail at its first task. Other commands (`db init`,
# `tui`, a shell) start without it: a check that demands a complete schema must not
# block the `db init` that completes it.
#
# Only what blocks deploys stops the container (database, schema, privileges, deployer,
# maintenance handler, work dir, keys). A failing notifier (the mail server is down) is a
# WARN line and `check` exits 0: the agent starts, and rollbacks stay possible, while the
# mails wait in the outbox. WRKTALK_AGENT_SKIP_CHECK=1 skips the check entirely.
set -eu

if [ "$#" -eq 0 ]; then
    set -- wrktalk-agent run
fi

if [ "$1" = "wrktalk-agent" ] && [ "${2:-}" = "run" ] && [ "${WRKTALK_AGENT_SKIP_CHECK:-0}" != "1" ]; then
    if ! wrktalk-agent check; then
        echo "wrktalk-agent: preflight check failed (see the FAIL lines above);" \
            "fix them, or set WRKTALK_AGENT_SKIP_CHECK=1 to start anyway" >&2
        exit 1
    fi
fi

# exec: the command replaces this shell, so the signals tini forwards (SIGTERM on
# `docker stop` or pod deletion) reach the agent, whose graceful shutdown (let the running
# deploy finish) depends on them.
exec "$@"
