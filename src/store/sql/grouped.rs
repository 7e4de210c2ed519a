//! A group of mutations applied with a few statements for the whole group, instead of a few for
//! each mutation: the writer tasks of group commit (`store::group`) go this way first, and a
//! mutation applied alone ([`Writes::apply_in`]) is a group of one, with the same statements.
//!
//! The stored idempotency keys of the group's request_ids and the rows of its MSISDNs are read
//! (and on PostgreSQL locked, in MSISDN order) with one statement each; the pure decisions then
//! run in the group's order against those rows as each earlier mutation of the group left them
//! (two recharges of one account in one group see each other, a request_id sent twice is
//! replayed); last, the accounts as the group leaves them (the rows read are updated, the new
//! ones inserted: a number another server creates at the same time fails the group on the
//! primary key rather than being overwritten), the archived generations, the history rows, the
//! outbox events and the new idempotency keys are written as multi-row statements, in the
//! group's order, sent together as one call (`Dialect::join_statements`). A
//! refusal writes nothing, as one mutation alone. The first database error ends the attempt
//! with nothing of the group kept: the caller rolls the transaction back and applies the group
//! one mutation at a time ([`Writes::apply_in`]), so a mutation the database refuses fails
//! alone.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use chrono::{DateTime, Utc};

use super::multi_row::Calls;
use super::value_writes::ValueRows;
use super::writes::{EVENTS_INSERT, HISTORY_INSERT, Writes, decide_guarded};
use crate::analytics::ValueDeltas;
use crate::lifecycle::{Account, Msisdn, Rules};
use crate::store::dialect::{Conn, Dialect};
use crate::store::group::Job;
use crate::store::rows::{ACCOUNT_COLUMNS, AccountRow};
use crate::store::{
    Committed, Decide, HistoryRecord, MutateFailure, OutboxEvent, RequestKey, StoreError,
    request_id_reused,
};

/// `ON CONFLICT (msisdn) DO UPDATE SET` every other account column to the new row's value.
static UPSERT_ACCOUNT: LazyLock<String> = LazyLock::new(|| {
    let columns: Vec<String> = ACCOUNT_COLUMNS
        .split(',')
        .map(str::trim)
        .filter(|column| *column != "msisdn")
        .map(|column| format!("{column} = excluded.{column}"))
        .collect();
    format!(" ON CONFLICT (msisdn) DO UPDATE SET {}", columns.join(", "))
});

/// One mutation of a group: its MSISDN, its idempotency key and its decision.
pub(crate) trait Pending: Sync {
    fn msisdn(&self) -> &Msisdn;
    fn key(&self) -> RequestKey<'_>;
    fn decide(&self) -> &Decide;
}

/// A mutation queued for group commit.
impl Pending for Job {
    fn msisdn(&self) -> &Msisdn {
        &self.msisdn
    }
    fn key(&self) -> RequestKey<'_> {
        Job::key(self)
    }
    fn decide(&self) -> &Decide {
        &self.decide
    }
}

/// A mutation given by reference: one outside group commit, or one run alone after its group
/// failed ([`Writes::apply_in`]).
pub(crate) struct One<'a> {
    pub(crate) msisdn: &'a Msisdn,
    pub(crate) key: RequestKey<'a>,
    pub(crate) decide: &'a Decide,
}

impl Pending for One<'_> {
    fn msisdn(&self) -> &Msisdn {
        self.msisdn
    }
    fn key(&self) -> RequestKey<'_> {
        self.key
    }
    fn decide(&self) -> &Decide {
        self.decide
    }
}

/// An idempotency key the group writes.
struct NewKey<'g> {
    request_id: &'g str,
    fingerprint: &'g str,
    response: Vec<u8>,
    now: DateTime<Utc>,
}

/// What the group's applied mutations write, in the group's order.
#[derive(Default)]
struct GroupWrites<'g> {
    archived: Vec<AccountRow>,
    history: Vec<HistoryRecord>,
    events: Vec<OutboxEvent>,
    keys: Vec<NewKey<'g>>,
    values: ValueDeltas,
}

impl<D: Dialect> Writes<D> {
    /// Applies `group` inside the caller's open transaction, without committing: one result
    /// per job, in order (`Applied` ones must be committed); what their history adds to
    /// `generation_values`, `history_totals` and `grace_ends` is written with their rows.
    /// `Err` at the first database error, with writes the caller must roll back.
    pub(crate) async fn apply_group<P: Pending>(
        conn: &mut Conn<D>,
        rules: &Rules,
        group: &[P],
    ) -> Result<Vec<Result<Committed, MutateFailure>>, sqlx::Error> {
        let mut keys = Self::stored_keys(conn, group).await?;
        let mut accounts = Self::group_accounts(conn, group).await?;
        // The MSISDNs that have a row: those rows are locked (PostgreSQL) and are updated; a
        // row the group creates is inserted, so that another server creating it at the same
        // time (a row that does not exist cannot be locked) makes one of the two fail on the
        // primary key instead of overwriting the other's.
        let had_rows: HashSet<String> = accounts.keys().cloned().collect();
        let mut writes = GroupWrites::default();
        let mut results = Vec::with_capacity(group.len());
        for job in group {
            let key = job.key();
            if let Some((fingerprint, response)) = keys.get(key.request_id) {
                results.push(if fingerprint == key.fingerprint {
                    Ok(Committed::Replayed(response.clone()))
                } else {
                    Err(MutateFailure::Store(request_id_reused(key.request_id)))
                });
                continue;
            }
            let msisdn = job.msisdn().as_str();
            let current = match accounts.get(msisdn) {
                Some(Err(stored)) => {
                    results.push(Err(MutateFailure::Store(stored.clone())));
                    continue;
                }
                Some(Ok(account)) => Some(account),
                None => None,
            };
            let mutation = match decide_guarded(job.msisdn(), job.decide(), current) {
                Ok(mutation) => mutation,
                Err(refused) => {
                    results.push(Err(refused));
                    continue;
                }
            };
            if let Some(retired) = &mutation.archive {
                writes
                    .archived
                    .push(AccountRow::from_account(retired, rules));
            }
            accounts.insert(msisdn.to_owned(), Ok(mutation.account));
            writes.values.add(&mutation.history);
            writes.history.extend(mutation.history);
            writes.events.extend(mutation.events);
            keys.insert(
                key.request_id.to_owned(),
                (key.fingerprint.to_owned(), mutation.response.clone()),
            );
            writes.keys.push(NewKey {
                request_id: key.request_id,
                fingerprint: key.fingerprint,
                response: mutation.response.clone(),
                now: key.now,
            });
            results.push(Ok(Committed::Applied(mutation.response)));
        }
        // The rows as the group leaves them: each MSISDN an applied mutation changed, once, in
        // the order first changed.
        let mut seen = HashSet::new();
        let (updated, created): (Vec<AccountRow>, Vec<AccountRow>) = group
            .iter()
            .zip(&results)
            .filter(|(_, result)| matches!(result, Ok(Committed::Applied(_))))
            .map(|(job, _)| job.msisdn().as_str())
            .filter(|msisdn| seen.insert(*msisdn))
            .filter_map(|msisdn| match accounts.get(msisdn) {
                Some(Ok(account)) => Some(AccountRow::from_account(account, rules)),
                _ => None,
            })
            .partition(|row| had_rows.contains(&row.msisdn));
        Self::resolve_stays(conn, &mut writes.values).await?;
        Self::write_group(conn, &writes, &updated, &created).await?;
        Self::mark_grace(conn, &writes.values).await?;
        Ok(results)
    }

    /// The stored (fingerprint, response) of the group's request_ids that have one.
    async fn stored_keys<P: Pending>(
        conn: &mut Conn<D>,
        group: &[P],
    ) -> Result<HashMap<String, (String, Vec<u8>)>, sqlx::Error> {
        let found: Vec<(String, String, Vec<u8>)> = Self::read_in_chunks(
            conn,
            "SELECT request_id, fingerprint, response FROM idempotency_keys WHERE request_id IN (",
            ")",
            group,
            |row, job| {
                row.param(job.key().request_id);
            },
        )
        .await?;
        Ok(found
            .into_iter()
            .map(|(request_id, fingerprint, response)| (request_id, (fingerprint, response)))
            .collect())
    }

    /// The stored rows of the group's MSISDNs that have one, read with the dialect's row lock
    /// taken in MSISDN order (two writers never wait for each other crosswise). A row that
    /// does not decode is kept as its error: the mutations of that MSISDN fail with it.
    async fn group_accounts<P: Pending>(
        conn: &mut Conn<D>,
        group: &[P],
    ) -> Result<HashMap<String, Result<Account, StoreError>>, sqlx::Error> {
        let mut msisdns: Vec<&str> = group.iter().map(|job| job.msisdn().as_str()).collect();
        msisdns.sort_unstable();
        msisdns.dedup();
        let head = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE msisdn IN (");
        let tail = format!(") ORDER BY msisdn{}", D::LOCK_ROW);
        let rows: Vec<AccountRow> =
            Self::read_in_chunks(conn, &head, &tail, &msisdns, |row, msisdn| {
                row.param(*msisdn);
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| (row.msisdn.clone(), row.into_account()))
            .collect())
    }

    /// Writes what the group's applied mutations changed and the values their history adds,
    /// as multi-row statements joined into as few calls as the parameters allow (one for a
    /// group of the default size): each call
    /// to the database is a round trip (PostgreSQL) or a hand-off to the connection's thread
    /// (SQLite), which cost more than the statements' own work.
    async fn write_group(
        conn: &mut Conn<D>,
        writes: &GroupWrites<'_>,
        updated: &[AccountRow],
        created: &[AccountRow],
    ) -> Result<(), sqlx::Error> {
        let values = ValueRows::of(&writes.values);
        let mut calls = Calls::<D>::default();
        let head = format!("INSERT INTO account_archive ({ACCOUNT_COLUMNS}) ");
        calls.statement(&head, "", &writes.archived, |row, archived| {
            Self::bind_account(row, archived);
        })?;
        let head = format!("INSERT INTO accounts ({ACCOUNT_COLUMNS}) ");
        // The rows read (and locked) at the start: always the update branch.
        calls.statement(&head, &UPSERT_ACCOUNT, updated, |row, account| {
            Self::bind_account(row, account);
        })?;
        calls.statement(&head, "", created, |row, account| {
            Self::bind_account(row, account);
        })?;
        calls.statement(HISTORY_INSERT, "", &writes.history, Self::history_row)?;
        calls.statement(EVENTS_INSERT, "", &writes.events, Self::event_row)?;
        let head = "INSERT INTO idempotency_keys (request_id, fingerprint, response, created_at) ";
        calls.statement(head, "", &writes.keys, |row, key| {
            row.param(key.request_id)
                .param(key.fingerprint)
                .param(key.response.as_slice())
                .param(key.now);
        })?;
        Self::value_statements(&mut calls, &values)?;
        let (statements, args) = calls.finish()?;
        Self::run_calls(conn, &statements, args).await
    }
}
