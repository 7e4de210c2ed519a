# Shared by the pgbench scripts (pg_group_commit.sh, pg_announce.sh); sourced, not run.
# Expects $db (a database name it creates, migrates and fills, and drops on exit). Sets
# $pgbench and $work (a temporary directory, removed on exit) and defines `recharge M`, which
# prints the statements one recharge of account M (a pgbench expression) writes, as the
# service writes them since migration 0008, with a fresh request id.
set -euo pipefail
cd "$(dirname "$0")/.."
export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-postgres}
pgbench=$(command -v pgbench || ls /usr/lib/postgresql/*/bin/pgbench | tail -1)
work=$(mktemp -d)
trap 'rm -rf "$work"; psql -qd postgres -c "DROP DATABASE IF EXISTS $db" >/dev/null' EXIT

PGOPTIONS="-c client_min_messages=warning" psql -qd postgres -c "DROP DATABASE IF EXISTS $db" \
    -c "CREATE DATABASE $db" >/dev/null
for migration in migrations/postgres/*.sql; do
    psql -qd "$db" -v ON_ERROR_STOP=1 -f "$migration" >/dev/null
done
# 10 000 VALID accounts.
psql -qd "$db" -c "INSERT INTO accounts SELECT (8613000000000 + g)::text, 'id' || g, 1, 2, \
    1000, 0, true, 180, now(), now(), current_date + 30, current_date + 120, \
    current_date + 150, NULL, NULL, now(), extract(epoch from now())::bigint + 2592000, NULL \
    FROM generate_series(1, 10000) g"

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
