#!/usr/bin/env bash
# What each index on `account_history` costs the sweep on PostgreSQL, counted, not timed (so it
# holds on a busy machine): the WAL records and bytes and the buffers touched by inserting
# 30 000 history rows shaped like a sweep's (one account's VALID→GRACE, GRACE→LOCKED and
# LOCKED→RECYCLED rows, every 3 rows a new account), with every index of the migrations, then
# without migration 0008's four analytics indexes on history (`account_history_moves`,
# `_grace_entries`, `_grace_exits`, `_locks`). EXPLAIN (ANALYZE, WAL, BUFFERS) of the INSERT.
# For scale, the rest of what a sweep writes per account: its 4 outbox events (per row here)
# and the UPDATE of its row (after a CHECKPOINT, so with full-page images).
# BENCHMARKS.md ("What the analytics indexes cost the sweep") has the figures.
#
#   bash benches/pg_history_wal.sh
#
# Needs PostgreSQL at $PGHOST:$PGPORT (default 127.0.0.1:5432, user postgres); it creates and
# drops the database ocs_pg_history_wal.
db=ocs_pg_history_wal
# shellcheck source=benches/pg_bench_setup.sh
source "$(dirname "$0")/pg_bench_setup.sh"

insert="INSERT INTO account_history (msisdn, account_id, generation, at, kind, from_state, \
to_state, amount, actor, request_id, channel) SELECT (8613000000000 + g / 3)::text, \
'id' || g / 3, 1, now(), 7, 2 + g % 3, 3 + g % 3, 0, 'sweep', NULL, NULL \
FROM generate_series(0, 29999) g"

explain() { # statement rows label
    psql -qd "$db" -c "CHECKPOINT" >/dev/null
    psql -qAtd "$db" -c "EXPLAIN (ANALYZE, WAL, BUFFERS, TIMING OFF, SUMMARY OFF, FORMAT JSON) $1" |
        python3 -c '
import json, sys
plan = json.load(sys.stdin)[0]["Plan"]
per_row = [plan[k] / int(sys.argv[1]) for k in ("WAL Records", "WAL Bytes", "Shared Hit Blocks")]
print("%-36s %15.2f %13.1f %15.2f" % (sys.argv[2], *per_row))' "$2" "$3"
}

printf "%-36s %15s %13s %15s\n" rows wal_records/row wal_bytes/row buffers_hit/row
explain "$insert" 30000 "history, every index (0001-0008)"
psql -qd "$db" -c "TRUNCATE account_history" -c "DROP INDEX account_history_moves, \
    account_history_grace_entries, account_history_grace_exits, account_history_locks" >/dev/null
explain "$insert" 30000 "history, without 0008's four"
explain "INSERT INTO outbox (event_id, event_type, msisdn, account_id, generation, from_state, \
to_state, reason, effective_at, emitted_at) SELECT gen_random_uuid()::text, 1, \
(8613000000000 + g / 4)::text, 'id' || g / 4, 1, 2, 3, 'validity_expired', now(), now() \
FROM generate_series(0, 39999) g" 40000 "outbox event"
explain "UPDATE accounts SET state = 5, next_deadline = NULL, updated_at = now()" 10000 \
    "account row UPDATE"
