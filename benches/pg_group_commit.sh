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
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
seconds=${2:-8}
export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-postgres}
db=ocs_pg_group_commit
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

# One recharge of account :m with a fresh request id.
recharge() {
    cat <<EOF
\\set m $1
\\set k random(1, 9000000000000000)
SELECT fingerprint FROM idempotency_keys WHERE request_id = 'r' || :client_id || '-' || :k;
SELECT account_id, generation, balance, valid_until FROM accounts WHERE msisdn = (8613000000000 + :m)::text FOR UPDATE;
UPDATE accounts SET balance = balance + 1000, valid_until = valid_until + 30, updated_at = now(), next_deadline = next_deadline + 86400 WHERE msisdn = (8613000000000 + :m)::text;
INSERT INTO account_history (msisdn, account_id, generation, at, kind, from_state, to_state, amount, actor, request_id, channel) VALUES ((8613000000000 + :m)::text, 'id' || :m, 1, now(), 4, 2, 2, 1000, 'bench', 'r' || :client_id || '-' || :k, 4);
INSERT INTO generation_values (msisdn, generation, activated_at, recharge_total, recharge_count, last_recharge_at) VALUES ((8613000000000 + :m)::text, 1, NULL, 1000, 1, now()) ON CONFLICT (msisdn, generation) DO UPDATE SET recharge_total = generation_values.recharge_total + excluded.recharge_total, recharge_count = generation_values.recharge_count + 1, last_recharge_at = excluded.last_recharge_at;
INSERT INTO idempotency_keys (request_id, fingerprint, response, created_at) VALUES ('r' || :client_id || '-' || :k, 'Recharge|x|1000|4|0', decode(repeat('00', 150), 'hex'), now());
EOF
}
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
