#!/usr/bin/env bash
# down.sh [ID]: remove the test cluster ID (scripts/cluster/cluster.sh down).
exec "$(dirname "${BASH_SOURCE[0]}")/cluster.sh" down "$@"
