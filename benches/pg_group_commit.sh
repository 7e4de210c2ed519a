#!/usr/bin/env bash
# What grouping recharges into one transaction can gain on PostgreSQL, measured below the
# service: pgbench runs the statements of one recharge (as the service writes them since
# migration 0008) one per transaction with 32 clients, then 4, 8 and 16 per transaction with 4
# clients that each own a quarter of the accounts (as the service's writers own MSISDNs, so
# that they never wait for each other's row locks). Rounds interleave the four, so drift of
# the machine hits each. BENCHMARKS.md ("Group commit on PostgreSQL") has the figures.
#
#   bash benches/pg_group_commit.sh [rounds] [seconds]
#
# Needs PostgreSQL at $PGHOST:$PGPORT (default 127.0.0.1:5432, user postgres) and pgbench; it
# creates and drops the database ocs_pg_group_commit.
rounds=${1:-3}
seconds=${2:-8}
db=ocs_pg_group_commit
# shellcheck source=benches/pg_bench_setup.sh
source "$(dirname "$0")/pg_bench_setup.sh"

{ echo "BEGIN;"; recharge "random(1, 10000)"; echo "COMMIT;"; } >"$work/1.sql"
for n in 4 8 16; do
    {
        echo "BEGIN;"
        for _ in $(seq 1 "$n"); do recharge "(:client_id * 2500 + random(1, 2500)) % 10000 + 1"; done
        echo "COMMIT;"
    } >"$work/$n.sql"
done

echo "round per_transaction clients recharges_per_s load_1min"
for round in $(seq 1 "$rounds"); do
    for n in 1 4 8 16; do
        clients=4
        [ "$n" = 1 ] && clients=32
        tps=$("$pgbench" -n -M prepared -c "$clients" -j 2 -T "$seconds" -f "$work/$n.sql" "$db" 2>&1 |
            awk '/^tps/ {print $3}')
        echo "$round $n $clients $(awk -v t="$tps" -v n="$n" 'BEGIN {printf "%.0f", t * n}') $(cut -d' ' -f1 /proc/loadavg)"
    done
done
