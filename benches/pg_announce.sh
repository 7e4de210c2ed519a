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
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
seconds=${2:-8}
export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-postgres}
db=ocs_pg_announce
pgbench=$(command -v pgbench || ls /usr/lib/postgresql/*/bin/pgbench | tail -1)
work=$(mktemp -d)
trap 'rm -rf "$work"; psql -qd postgres -c "DROP DATABASE IF EXISTS $db" >/dev/null' EXIT

PGOPTIONS="-c client_min_messages=warning" psql -qd postgres -c "DROP DATABASE IF EXISTS $db" \
    -c "CREATE DATABASE $db" >/dev/null
for migration in migrations/postgres/*.sql; do
    psql -qd "$db" -v ON_ERROR_STOP=1 -f "$migration" >/dev/null
done
psql -qd "$db" -c "INSERT INTO accounts SELECT (8613000000000 + g)::text, 'id' || g, 1, 2, \
    1000, 0, true, 180, now(), now(), current_date + 30, current_date + 120, \
    current_date + 150, NULL, NULL, now(), extract(epoch from now())::bigint + 2592000, NULL \
    FROM generate_series(1, 10000) g"

cat >"$work/none.sql" <<EOF
\\set m random(1, 10000)
\\set k random(1, 9000000000000000)
BEGIN;
SELECT fingerprint FROM idempotency_keys WHERE request_id = 'r' || :client_id || '-' || :k;
SELECT account_id, generation, balance, valid_until FROM accounts WHERE msisdn = (8613000000000 + :m)::text FOR UPDATE;
UPDATE accounts SET balance = balance + 1000, valid_until = valid_until + 30, updated_at = now(), next_deadline = next_deadline + 86400 WHERE msisdn = (8613000000000 + :m)::text;
INSERT INTO account_history (msisdn, account_id, generation, at, kind, from_state, to_state, amount, actor, request_id, channel) VALUES ((8613000000000 + :m)::text, 'id' || :m, 1, now(), 4, 2, 2, 1000, 'bench', 'r' || :client_id || '-' || :k, 4);
INSERT INTO generation_values (msisdn, generation, activated_at, recharge_total, recharge_count, last_recharge_at) VALUES ((8613000000000 + :m)::text, 1, NULL, 1000, 1, now()) ON CONFLICT (msisdn, generation) DO UPDATE SET recharge_total = generation_values.recharge_total + excluded.recharge_total, recharge_count = generation_values.recharge_count + 1, last_recharge_at = excluded.last_recharge_at;
INSERT INTO idempotency_keys (request_id, fingerprint, response, created_at) VALUES ('r' || :client_id || '-' || :k, 'Recharge|x|1000|4|0', decode(repeat('00', 150), 'hex'), now());
COMMIT;
EOF
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
