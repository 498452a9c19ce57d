#!/usr/bin/env bash
# up.sh K [--slots S] [--id ID]: bring up K test hosts (scripts/cluster/cluster.sh up).
exec "$(dirname "${BASH_SOURCE[0]}")/cluster.sh" up "$@"
