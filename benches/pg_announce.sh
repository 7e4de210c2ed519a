#!/usr/bin/env bash
# What announcing commits to the other servers (store/pg_changes.rs) costs the recharges on
# PostgreSQL, measured below the service with pgbench, 32 clients, one recharge a transaction
# (the statements of benches/pg_group_commit.sh):
#   none      the recharges alone (the ceiling);
#   each      each recharge followed by its own `pg_notify` statement, a transaction of its own
#             (what the service did until the announcer: one NOTIFY per mutation, after COMMIT);
#   announcer the recharges alone, while one more client announces 16 MSISDNs per statement
#             about every millisecond (the announcer task: one NOTIFY statement per round,
#             with what was committed meanwhile).
# Nobody listens (PostgreSQL queues the notifications all the same). Rounds interleave the
# three, so drift of the machine hits each. BENCHMARKS.md
# ("Announcements off the commit path") has the figures.
#
#   bash benches/pg_announce.sh [rounds] [seconds]
#
# Needs PostgreSQL at $PGHOST:$PGPORT (default 127.0.0.1:5432, user postgres) and pgbench; it
# creates and drops the database ocs_pg_announce.
rounds=${1:-3}
seconds=${2:-8}
db=ocs_pg_announce
# shellcheck source=benches/pg_bench_setup.sh
source "$(dirname "$0")/pg_bench_setup.sh"

{ echo "BEGIN;"; recharge "random(1, 10000)"; echo "COMMIT;"; } >"$work/none.sql"
{ cat "$work/none.sql"; echo "SELECT pg_notify('ocs_account_changed', 'bench ' || (8613000000000 + :m)::text);"; } >"$work/each.sql"
cat >"$work/batch.sql" <<EOF
\\sleep 1 ms
SELECT pg_notify('ocs_account_changed', 'bench ' || m) FROM generate_series(8613000000001, 8613000000016) AS m;
EOF

run() { # script, seconds → recharges per second
    "$pgbench" -n -M prepared -c 32 -j 2 -T "$2" -f "$work/$1.sql" "$db" 2>&1 | awk '/^tps/ {printf "%.0f", $3}'
}
echo "round variant recharges_per_s announcements_per_s load_1min"
for round in $(seq 1 "$rounds"); do
    for variant in none each announcer; do
        if [ "$variant" = announcer ]; then
            "$pgbench" -n -M prepared -c 1 -T "$seconds" -f "$work/batch.sql" "$db" >"$work/batch.out" 2>&1 &
            batcher=$!
            tps=$(run none "$seconds")
            wait "$batcher"
            statements=$(awk '/^tps/ {print $3}' "$work/batch.out")
            announced=$(awk -v t="$statements" 'BEGIN {printf "%.0f", t * 16}')
        else
            tps=$(run "$variant" "$seconds")
            announced=0
            [ "$variant" = each ] && announced=$tps
        fi
        echo "$round $variant $tps $announced $(cut -d' ' -f1 /proc/loadavg)"
    done
done
