//! The SQL both backends share. Both accept `$N` placeholders, `RETURNING` and the same types,
//! so one macro writes the trait implementation for each; the backends differ only in how a
//! write transaction starts and how the MSISDN's row is locked (see `sqlite.rs`, `postgres.rs`).

/// Attempts at a mutation whose transaction hit a transient conflict (a concurrent first insert
/// of the same MSISDN or request_id, a serialization failure, a busy database).
pub(crate) const MAX_ATTEMPTS: u32 = 8;

/// Rows per multi-row statement: 10 binds a row stays far below SQLite's 32 766 and
/// PostgreSQL's 65 535 bind parameters.
pub(crate) const ROWS_PER_STATEMENT: usize = 500;

macro_rules! impl_account_store {
    ($store:ty, $db:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::AccountStore for $store {
            async fn migrate(&self) -> Result<(), $crate::store::StoreError> {
                self.run_migrations().await
            }

            fn pool_connections(&self) -> $crate::store::PoolConnections {
                self.connections()
            }

            async fn mutate(
                &self,
                msisdn: &$crate::lifecycle::Msisdn,
                key: $crate::store::RequestKey<'_>,
                decide: $crate::store::Decide,
            ) -> Result<$crate::store::Committed, $crate::store::StoreError> {
                use $crate::store::MutateFailure;
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    let failure = match self.mutate_once(msisdn, key, &decide).await {
                        Ok(committed) => return Ok(committed),
                        Err(MutateFailure::Store(e)) => return Err(e),
                        Err(MutateFailure::Retry) => $crate::store::SqlFailure::Retry,
                        Err(MutateFailure::Sql(err)) => $crate::store::classify(err),
                    };
                    match failure {
                            $crate::store::SqlFailure::Retry
                                if attempt < $crate::store::sql::MAX_ATTEMPTS =>
                            {
                                tokio::time::sleep(std::time::Duration::from_millis(
                                    u64::from(attempt) * 2,
                                ))
                                .await;
                            }
                            $crate::store::SqlFailure::Retry => {
                                return Err($crate::store::StoreError::Unavailable(
                                    "the database stayed busy; retry with the same request_id"
                                        .into(),
                                ));
                            }
                        $crate::store::SqlFailure::Fatal(e) => return Err(e),
                    }
                }
            }

            async fn get(
                &self,
                msisdn: &$crate::lifecycle::Msisdn,
            ) -> Result<Option<$crate::lifecycle::Account>, $crate::store::StoreError> {
                let sql = format!(
                    "SELECT {} FROM accounts WHERE msisdn = $1",
                    $crate::store::rows::ACCOUNT_COLUMNS
                );
                let row: Option<$crate::store::rows::AccountRow> = sqlx::query_as(&sql)
                    .bind(msisdn.as_str())
                    .fetch_optional(self.reader())
                    .await?;
                row.map(|r| r.into_account()).transpose()
            }

            async fn list(
                &self,
                state: Option<$crate::lifecycle::AccountState>,
                today: chrono::NaiveDate,
                after: Option<&str>,
                limit: u32,
            ) -> Result<Vec<$crate::lifecycle::Account>, $crate::store::StoreError> {
                let sql = format!(
                    "SELECT {} FROM accounts WHERE msisdn > $2 AND ($3 = 0 OR ({}) = $3) \
                     ORDER BY msisdn LIMIT $4",
                    $crate::store::rows::ACCOUNT_COLUMNS,
                    $crate::store::rows::EFFECTIVE_STATE_SQL
                );
                let rows: Vec<$crate::store::rows::AccountRow> = sqlx::query_as(&sql)
                    .bind(today)
                    .bind(after.unwrap_or(""))
                    .bind(state.map_or(0, |s| s as i32))
                    .bind(i64::from(limit))
                    .fetch_all(self.reader())
                    .await?;
                rows.into_iter().map(|r| r.into_account()).collect()
            }

            async fn history(
                &self,
                msisdn: &$crate::lifecycle::Msisdn,
                after_id: i64,
                limit: u32,
            ) -> Result<Vec<$crate::store::HistoryRecord>, $crate::store::StoreError> {
                let sql = format!(
                    "SELECT {} FROM account_history WHERE msisdn = $1 AND id > $2 \
                     ORDER BY id LIMIT $3",
                    $crate::store::rows::HISTORY_COLUMNS
                );
                let rows: Vec<$crate::store::rows::HistoryRow> = sqlx::query_as(&sql)
                    .bind(msisdn.as_str())
                    .bind(after_id)
                    .bind(i64::from(limit))
                    .fetch_all(self.reader())
                    .await?;
                rows.into_iter().map(|r| r.into_record()).collect()
            }

            async fn events_after(
                &self,
                after_sequence: i64,
                limit: u32,
            ) -> Result<Vec<$crate::store::OutboxEvent>, $crate::store::StoreError> {
                let sql = format!(
                    "SELECT {} FROM outbox WHERE sequence > $1 ORDER BY sequence LIMIT $2",
                    $crate::store::rows::OUTBOX_COLUMNS
                );
                let rows: Vec<$crate::store::rows::OutboxRow> = sqlx::query_as(&sql)
                    .bind(after_sequence)
                    .bind(i64::from(limit))
                    .fetch_all(self.reader())
                    .await?;
                rows.into_iter().map(|r| r.into_event()).collect()
            }

            async fn counts(
                &self,
            ) -> Result<$crate::store::TableCounts, $crate::store::StoreError> {
                let (accounts, archived, history, idempotency_keys, outbox): (
                    i64,
                    i64,
                    i64,
                    i64,
                    i64,
                ) = sqlx::query_as(
                    "SELECT (SELECT COUNT(*) FROM accounts), \
                            (SELECT COUNT(*) FROM account_archive), \
                            (SELECT COUNT(*) FROM account_history), \
                            (SELECT COUNT(*) FROM idempotency_keys), \
                            (SELECT COUNT(*) FROM outbox)",
                )
                .fetch_one(self.reader())
                .await?;
                Ok($crate::store::TableCounts {
                    accounts,
                    archived,
                    history,
                    idempotency_keys,
                    outbox,
                })
            }

            async fn sweep(
                &self,
                request: $crate::store::SweepRequest,
            ) -> Result<$crate::store::SweepReport, $crate::store::StoreError> {
                if request.dry_run {
                    return forecast(self.reader(), self.rules(), &request).await;
                }
                let run_id: i64 = sqlx::query_scalar(
                    "INSERT INTO sweep_runs (as_of, started_at, status, dry_run) \
                     VALUES ($1, $2, 'running', $3) RETURNING id",
                )
                .bind(request.as_of)
                .bind(request.now)
                .bind(false)
                .fetch_one(self.write_pool())
                .await?;
                let started = std::time::Instant::now();
                let progress = std::sync::Mutex::new((
                    $crate::store::SweepCounts::default(),
                    started,
                ));
                // Set when a batch fails: the other workers finish the batch they hold (it
                // commits and is counted) and start no new one.
                let failed = std::sync::atomic::AtomicBool::new(false);
                // Claims and writes batches with `claim` until a batch comes back short.
                let drain = |claim: &'static str| {
                    let (progress, request, failed) = (&progress, &request, &failed);
                    async move {
                        loop {
                            if failed.load(std::sync::atomic::Ordering::Acquire) {
                                return Ok(());
                            }
                            let batch = async {
                                let mut tx = self.begin_sweep_batch().await?;
                                let done =
                                    sweep_batch_in(&mut tx, self.rules(), claim, request).await?;
                                tx.commit().await?;
                                Ok::<_, $crate::store::StoreError>(done)
                            }
                            .await;
                            let (claimed, batch) = batch.inspect_err(|_| {
                                failed.store(true, std::sync::atomic::Ordering::Release);
                            })?;
                            let mut progress = progress.lock().unwrap_or_else(|e| e.into_inner());
                            let (counts, last_report) = &mut *progress;
                            counts.add(&batch);
                            tracing::debug!(run_id, claimed, examined = counts.examined, "sweep batch committed");
                            // A long sweep reports its progress every ten seconds.
                            if last_report.elapsed() >= std::time::Duration::from_secs(10) {
                                *last_report = std::time::Instant::now();
                                let rate = counts.examined as f64 / started.elapsed().as_secs_f64();
                                tracing::info!(run_id, examined = counts.examined, accounts_per_s = rate as u64, "sweep in progress");
                            }
                            if claimed < request.batch_size as usize {
                                return Ok::<(), $crate::store::StoreError>(());
                            }
                        }
                    }
                };
                let outcome: Result<(), $crate::store::StoreError> = async {
                    // First the rows nobody holds, by `SWEEP_WORKERS` batches at once where
                    // the claim skips rows another transaction holds (one batch's database
                    // work and commit overlap the other's reading and deciding); then,
                    // waiting for their locks, the rows skipped because a request or another
                    // sweep held them (those are usually done by then: the lock holder
                    // advanced them, and they no longer match).
                    if Self::SWEEP_WORKERS > 1 {
                        let (first, second) =
                            tokio::join!(drain(Self::CLAIM_DUE), drain(Self::CLAIM_DUE));
                        first.and(second)?;
                    } else {
                        drain(Self::CLAIM_DUE).await?;
                    }
                    drain(Self::CLAIM_DUE_WAITING).await
                }
                .await;
                let counts = progress.into_inner().unwrap_or_else(|e| e.into_inner()).0;
                let (status, error) = match &outcome {
                    Ok(()) => ("succeeded", None),
                    Err(e) => ("failed", Some(e.to_string())),
                };
                let recorded = sqlx::query(
                    "UPDATE sweep_runs SET status = $2, finished_at = $3, examined = $4, \
                     to_grace = $5, to_locked = $6, to_recycled_from_locked = $7, \
                     to_recycled_unactivated = $8, expiring_notified = $9, error = $10 \
                     WHERE id = $1",
                )
                .bind(run_id)
                .bind(status)
                .bind(request.now)
                .bind(counts.examined as i64)
                .bind(counts.to_grace as i64)
                .bind(counts.to_locked as i64)
                .bind(counts.to_recycled_from_locked as i64)
                .bind(counts.to_recycled_unactivated as i64)
                .bind(counts.expiring_notified as i64)
                .bind(error)
                .execute(self.write_pool())
                .await;
                match (outcome, recorded) {
                    (Err(e), recorded) => {
                        if let Err(not_recorded) = recorded {
                            tracing::error!(run_id, error = %not_recorded, "cannot mark the sweep run failed");
                        }
                        tracing::error!(run_id, error = %e, ?counts, "sweep failed; the next run finishes the work");
                        Err(e)
                    }
                    (Ok(()), Err(e)) => Err(e.into()),
                    (Ok(()), Ok(_)) => {
                        let elapsed = started.elapsed();
                        let rate = counts.examined as f64 / elapsed.as_secs_f64().max(1e-6);
                        tracing::info!(
                            run_id,
                            as_of = %request.as_of,
                            ?counts,
                            elapsed_ms = elapsed.as_millis() as u64,
                            accounts_per_s = rate as u64,
                            "sweep done"
                        );
                        Ok($crate::store::SweepReport {
                            counts,
                            recycled_msisdns: Vec::new(),
                            run_id: Some(run_id),
                        })
                    }
                }
            }

            async fn last_sweep_as_of(
                &self,
            ) -> Result<Option<chrono::DateTime<chrono::Utc>>, $crate::store::StoreError> {
                let as_of: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
                    "SELECT as_of FROM sweep_runs WHERE status = 'succeeded' AND dry_run = $1 \
                     ORDER BY as_of DESC LIMIT 1",
                )
                .bind(false)
                .fetch_optional(self.reader())
                .await?;
                Ok(as_of)
            }

            async fn ping(&self) -> Result<(), $crate::store::StoreError> {
                sqlx::query("SELECT 1").execute(self.reader()).await?;
                Ok(())
            }

            async fn probe_write(
                &self,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), $crate::store::StoreError> {
                sqlx::query(
                    "INSERT INTO storage_probe (id, probed_at) VALUES (1, $1) \
                     ON CONFLICT (id) DO UPDATE SET probed_at = excluded.probed_at",
                )
                .bind(now)
                .execute(self.write_pool())
                .await?;
                Ok(())
            }

            async fn accounts_by_state(
                &self,
            ) -> Result<Vec<($crate::lifecycle::AccountState, i64)>, $crate::store::StoreError>
            {
                let rows: Vec<(i32, i64)> = sqlx::query_as(
                    "SELECT state, COUNT(*) FROM accounts GROUP BY state ORDER BY state",
                )
                .fetch_all(self.reader())
                .await?;
                rows.into_iter()
                    .map(|(state, count)| {
                        $crate::lifecycle::AccountState::from_i32(state)
                            .map(|state| (state, count))
                            .ok_or_else(|| {
                                $crate::store::StoreError::Internal(format!(
                                    "stored state {state} is not valid"
                                ))
                            })
                    })
                    .collect()
            }

            async fn recharge_totals(
                &self,
                from: chrono::DateTime<chrono::Utc>,
                until: chrono::DateTime<chrono::Utc>,
            ) -> Result<$crate::store::RechargeTotals, $crate::store::StoreError> {
                // The kind is a literal so that the partial index `account_history_recharges`
                // (migration 0005) applies; SUM of BIGINT is NUMERIC in PostgreSQL, hence the cast.
                let sql = format!(
                    "SELECT COUNT(*), CAST(COALESCE(SUM(amount), 0) AS BIGINT) \
                     FROM account_history WHERE kind = {} AND at >= $1 AND at < $2",
                    $crate::lifecycle::HistoryKind::Recharge as i32
                );
                let (count, amount): (i64, i64) = sqlx::query_as(&sql)
                    .bind(from)
                    .bind(until)
                    .fetch_one(self.reader())
                    .await?;
                Ok($crate::store::RechargeTotals { count, amount })
            }

            async fn recent_sweep_runs(
                &self,
                limit: u32,
            ) -> Result<Vec<$crate::store::SweepRun>, $crate::store::StoreError> {
                let sql = format!(
                    "SELECT {} FROM sweep_runs ORDER BY id DESC LIMIT $1",
                    $crate::store::rows::SWEEP_RUN_COLUMNS
                );
                let rows: Vec<$crate::store::rows::SweepRunRow> = sqlx::query_as(&sql)
                    .bind(i64::from(limit))
                    .fetch_all(self.reader())
                    .await?;
                rows.into_iter().map(|r| r.into_run()).collect()
            }

            async fn recycles_by_day(
                &self,
                through: chrono::NaiveDate,
            ) -> Result<Vec<(chrono::NaiveDate, i64)>, $crate::store::StoreError> {
                let Some(last_day) = through.pred_opt() else {
                    return Ok(Vec::new());
                };
                // Recycled on day R means the last day before it (`lock_until`, or
                // `card_expiry` unactivated) is R - 1. Every state of a live account ends on or
                // before that last day, and its notice is due earlier still, so its
                // `next_deadline` is at most the end of that day: the indexed bound keeps the
                // scan to the accounts due within the window.
                let deadline_bound = self.rules().end_of_day(last_day).timestamp();
                let sql = format!(
                    "SELECT last_day, COUNT(*) FROM ( \
                       SELECT CASE WHEN activated_at IS NULL THEN card_expiry \
                              ELSE lock_until END AS last_day \
                       FROM accounts \
                       WHERE next_deadline IS NOT NULL AND next_deadline <= $1 AND state <> {} \
                     ) due WHERE last_day IS NOT NULL AND last_day <= $2 \
                     GROUP BY last_day ORDER BY last_day",
                    $crate::lifecycle::AccountState::Recycled as i32
                );
                let rows: Vec<(chrono::NaiveDate, i64)> = sqlx::query_as(&sql)
                    .bind(deadline_bound)
                    .bind(last_day)
                    .fetch_all(self.reader())
                    .await?;
                Ok(rows
                    .into_iter()
                    .map(|(last_day, count)| (last_day.succ_opt().unwrap_or(last_day), count))
                    .collect())
            }

            async fn dead_letter_overview(
                &self,
                limit: u32,
            ) -> Result<$crate::store::DeadLetterOverview, $crate::store::StoreError> {
                let count: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM webhook_deliveries WHERE dead_at IS NOT NULL",
                )
                .fetch_one(self.reader())
                .await?;
                let sql = format!(
                    "SELECT {}, d.attempts, d.last_error, d.dead_at FROM webhook_deliveries d \
                     JOIN outbox o ON o.sequence = d.sequence \
                     WHERE d.dead_at IS NOT NULL \
                     ORDER BY d.dead_at DESC, d.sequence DESC LIMIT $1",
                    $crate::store::deliveries::JOINED_OUTBOX_COLUMNS
                );
                let rows: Vec<$crate::store::deliveries::DeadRow> = sqlx::query_as(&sql)
                    .bind(i64::from(limit))
                    .fetch_all(self.reader())
                    .await?;
                let latest = rows
                    .into_iter()
                    .map($crate::store::deliveries::DeadRow::into_dead_letter)
                    .collect::<Result<Vec<_>, $crate::store::StoreError>>()?;
                Ok($crate::store::DeadLetterOverview { count, latest })
            }

            async fn last_outbox_sequence(&self) -> Result<i64, $crate::store::StoreError> {
                let last: Option<i64> = sqlx::query_scalar("SELECT MAX(sequence) FROM outbox")
                    .fetch_one(self.reader())
                    .await?;
                Ok(last.unwrap_or(0))
            }

            async fn oldest_undelivered_event(
                &self,
                types: &[$crate::store::EventType],
            ) -> Result<Option<chrono::DateTime<chrono::Utc>>, $crate::store::StoreError> {
                if types.is_empty() {
                    return Ok(None);
                }
                // The oldest pending delivery row (the partial index holds only those), or
                // the oldest event above every registered one (not registered yet): no scan of
                // the delivered past. An event committed late below the registered ones is
                // counted once the worker registers it (within seconds).
                let sql = format!(
                    "SELECT o.emitted_at FROM outbox o WHERE o.sequence = (SELECT min(s) FROM ( \
                       SELECT min(d.sequence) AS s FROM webhook_deliveries d \
                         WHERE d.delivered_at IS NULL AND d.dead_at IS NULL \
                       UNION ALL \
                       SELECT min(n.sequence) AS s FROM outbox n WHERE n.event_type IN ({}) \
                         AND n.sequence > (SELECT COALESCE(max(w.sequence), 0) \
                           FROM webhook_deliveries w) \
                     ) AS m)",
                    $crate::store::deliveries::type_list(types)
                );
                let oldest: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(&sql)
                    .fetch_optional(self.reader())
                    .await?;
                Ok(oldest)
            }

            async fn undelivered_event_count(
                &self,
                types: &[$crate::store::EventType],
            ) -> Result<i64, $crate::store::StoreError> {
                if types.is_empty() {
                    return Ok(0);
                }
                // The same two parts as `oldest_undelivered_event`, counted.
                let sql = format!(
                    "SELECT (SELECT COUNT(*) FROM webhook_deliveries d \
                       WHERE d.delivered_at IS NULL AND d.dead_at IS NULL) \
                     + (SELECT COUNT(*) FROM outbox n WHERE n.event_type IN ({}) \
                       AND n.sequence > (SELECT COALESCE(max(w.sequence), 0) \
                         FROM webhook_deliveries w))",
                    $crate::store::deliveries::type_list(types)
                );
                let count: i64 = sqlx::query_scalar(&sql).fetch_one(self.reader()).await?;
                Ok(count)
            }
        }

        /// Carries out one mutation inside the caller's open transaction, without committing.
        /// `Applied` means writes were made and must be committed; `Replayed` and refusals
        /// wrote nothing; an SQL error may leave partial writes that the caller rolls back.
        async fn apply_in(
            conn: &mut <$db as sqlx::Database>::Connection,
            rules: &$crate::lifecycle::Rules,
            lock_row: &str,
            msisdn: &$crate::lifecycle::Msisdn,
            key: $crate::store::RequestKey<'_>,
            decide: &$crate::store::Decide,
        ) -> Result<$crate::store::Committed, $crate::store::MutateFailure> {
            use $crate::store::MutateFailure;
                use $crate::store::rows::{ACCOUNT_COLUMNS, AccountRow};
                let stored: Option<(String, Vec<u8>)> = sqlx::query_as(
                    "SELECT fingerprint, response FROM idempotency_keys WHERE request_id = $1",
                )
                .bind(key.request_id)
                .fetch_optional(&mut *conn)
                .await?;
                if let Some((fingerprint, response)) = stored {
                    return if fingerprint == key.fingerprint {
                        Ok($crate::store::Committed::Replayed(response))
                    } else {
                        Err(MutateFailure::Store($crate::store::request_id_reused(
                            key.request_id,
                        )))
                    };
                }
                let sql = format!(
                    "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE msisdn = $1{lock_row}"
                );
                let current: Option<AccountRow> = sqlx::query_as(&sql)
                    .bind(msisdn.as_str())
                    .fetch_optional(&mut *conn)
                    .await?;
                let existed = current.is_some();
                let current = current
                    .map(AccountRow::into_account)
                    .transpose()
                    .map_err(MutateFailure::Store)?;
                // A panic in the pure decision must not take the (shared) writer down with it.
                let decided = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    decide(current.as_ref())
                }));
                let mutation = match decided {
                    Ok(Ok(m)) => m,
                    Ok(Err(refused)) => return Err(MutateFailure::Store(refused.into())),
                    Err(_) => {
                        tracing::error!(%msisdn, "the lifecycle decision panicked; nothing written");
                        return Err(MutateFailure::Store($crate::store::StoreError::Internal(
                            "the lifecycle decision failed".into(),
                        )));
                    }
                };
                if let Some(retired) = &mutation.archive {
                    let row = AccountRow::from_account(retired, rules);
                    let sql = format!(
                        "INSERT INTO account_archive ({ACCOUNT_COLUMNS}) VALUES \
                         ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)"
                    );
                    bind_account(sqlx::query(&sql), &row).execute(&mut *conn).await?;
                }
                let row = AccountRow::from_account(&mutation.account, rules);
                let sql = if existed {
                    "UPDATE accounts SET account_id = $2, generation = $3, state = $4, \
                     balance = $5, preset_balance = $6, sold = $7, initial_validity_days = $8, \
                     provisioned_at = $9, activated_at = $10, valid_until = $11, \
                     grace_until = $12, lock_until = $13, card_expiry = $14, recycled_at = $15, \
                     updated_at = $16, next_deadline = $17, expiring_notified_for = $18 \
                     WHERE msisdn = $1"
                        .to_owned()
                } else {
                    format!(
                        "INSERT INTO accounts ({ACCOUNT_COLUMNS}) VALUES \
                         ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)"
                    )
                };
                bind_account(sqlx::query(&sql), &row).execute(&mut *conn).await?;
                insert_history(&mut *conn, &mutation.history).await?;
                insert_events(&mut *conn, &mutation.events).await?;
                sqlx::query(
                    "INSERT INTO idempotency_keys (request_id, fingerprint, response, created_at) \
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(key.request_id)
                .bind(key.fingerprint)
                .bind(&mutation.response)
                .bind(key.now)
                .execute(&mut *conn)
                .await?;
                Ok($crate::store::Committed::Applied(mutation.response))
        }

        /// Claims up to `batch_size` due accounts (`claim` locks them, PostgreSQL skipping rows
        /// another sweep or request holds) and writes their sweep inside the caller's open
        /// transaction, without committing. Returns how many were claimed and the counts.
        async fn sweep_batch_in(
            conn: &mut <$db as sqlx::Database>::Connection,
            rules: &$crate::lifecycle::Rules,
            claim: &str,
            request: &$crate::store::SweepRequest,
        ) -> Result<(usize, $crate::store::SweepCounts), $crate::store::StoreError> {
            use $crate::store::rows::{ACCOUNT_COLUMNS, AccountRow};
            let sql = format!(
                "SELECT {ACCOUNT_COLUMNS} FROM accounts \
                 WHERE next_deadline IS NOT NULL AND next_deadline <= $1 \
                 ORDER BY next_deadline, msisdn LIMIT $2{claim}"
            );
            let rows: Vec<AccountRow> = sqlx::query_as(&sql)
                .bind(request.as_of.timestamp())
                .bind(i64::from(request.batch_size))
                .fetch_all(&mut *conn)
                .await?;
            let claimed = rows.len();
            let mut counts = $crate::store::SweepCounts::default();
            let mut history = Vec::new();
            let mut events = Vec::new();
            let mut swept_rows = Vec::with_capacity(claimed);
            for row in rows {
                let mut account = row.into_account()?;
                let swept = account.sweep(request.as_of, rules);
                counts.tally(&swept);
                if !swept.transitions.is_empty() || swept.notice.is_some() {
                    account.updated_at = request.now;
                }
                $crate::store::record_transitions(
                    &account,
                    &swept.transitions,
                    request.now,
                    &mut history,
                    &mut events,
                );
                if let Some(notice) = &swept.notice {
                    events.push($crate::store::expiring_event(&account, notice, request.now));
                }
                // Always rewritten: next_deadline moves past as_of, so the row is done.
                swept_rows.push(AccountRow::from_account(&account, rules));
            }
            update_swept(&mut *conn, &swept_rows).await?;
            insert_history(&mut *conn, &history).await?;
            insert_events(&mut *conn, &events).await?;
            Ok((claimed, counts))
        }

        /// A dry run: reads the due accounts page by page (no transaction, no writes) and
        /// counts what a sweep as of `request.as_of` would do.
        async fn forecast(
            pool: &sqlx::Pool<$db>,
            rules: &$crate::lifecycle::Rules,
            request: &$crate::store::SweepRequest,
        ) -> Result<$crate::store::SweepReport, $crate::store::StoreError> {
            use $crate::store::rows::{ACCOUNT_COLUMNS, AccountRow};
            let sql = format!(
                "SELECT {ACCOUNT_COLUMNS} FROM accounts \
                 WHERE next_deadline IS NOT NULL AND next_deadline <= $1 \
                 AND (next_deadline > $2 OR (next_deadline = $2 AND msisdn > $3)) \
                 ORDER BY next_deadline, msisdn LIMIT $4"
            );
            let mut report = $crate::store::SweepReport::default();
            let (mut after_deadline, mut after_msisdn) = (i64::MIN, String::new());
            loop {
                let rows: Vec<AccountRow> = sqlx::query_as(&sql)
                    .bind(request.as_of.timestamp())
                    .bind(after_deadline)
                    .bind(&after_msisdn)
                    .bind(i64::from(request.batch_size))
                    .fetch_all(pool)
                    .await?;
                let fetched = rows.len();
                for row in rows {
                    after_deadline = row.next_deadline.unwrap_or(i64::MAX);
                    after_msisdn = row.msisdn.clone();
                    let mut account = row.into_account()?;
                    let swept = account.sweep(request.as_of, rules);
                    report.counts.tally(&swept);
                    let recycled = swept
                        .transitions
                        .iter()
                        .any(|t| t.to == $crate::lifecycle::AccountState::Recycled);
                    if recycled && report.recycled_msisdns.len() < request.forecast_limit {
                        report.recycled_msisdns.push(account.msisdn.to_string());
                    }
                }
                if fetched < request.batch_size as usize {
                    return Ok(report);
                }
            }
        }

        /// Writes back what a sweep changes (state, recycled_at, updated_at, next_deadline,
        /// the expiry notice) for a whole batch in one statement per chunk.
        async fn update_swept(
            conn: &mut <$db as sqlx::Database>::Connection,
            rows: &[$crate::store::rows::AccountRow],
        ) -> Result<(), sqlx::Error> {
            for chunk in rows.chunks($crate::store::sql::ROWS_PER_STATEMENT) {
                let mut sql = sqlx::QueryBuilder::<$db>::new(
                    "WITH v (msisdn, state, recycled_at, updated_at, next_deadline, \
                     expiring_notified_for) AS (",
                );
                sql.push_values(chunk, |mut values, row| {
                    values
                        .push_bind(&row.msisdn)
                        .push_bind(row.state)
                        .push_bind(row.recycled_at)
                        .push_bind(row.updated_at)
                        .push_bind(row.next_deadline)
                        .push_bind(row.expiring_notified_for);
                });
                sql.push(
                    ") UPDATE accounts SET state = v.state, recycled_at = v.recycled_at, \
                     updated_at = v.updated_at, next_deadline = v.next_deadline, \
                     expiring_notified_for = v.expiring_notified_for \
                     FROM v WHERE accounts.msisdn = v.msisdn",
                );
                sql.build().execute(&mut *conn).await?;
            }
            Ok(())
        }

        /// History rows, as multi-row INSERTs.
        async fn insert_history(
            conn: &mut <$db as sqlx::Database>::Connection,
            history: &[$crate::store::HistoryRecord],
        ) -> Result<(), sqlx::Error> {
            for chunk in history.chunks($crate::store::sql::ROWS_PER_STATEMENT) {
                let mut sql = sqlx::QueryBuilder::<$db>::new(
                    "INSERT INTO account_history (msisdn, account_id, generation, at, kind, \
                     from_state, to_state, amount, actor, request_id) ",
                );
                sql.push_values(chunk, |mut values, entry| {
                    values
                        .push_bind(entry.msisdn.as_str())
                        .push_bind(&entry.account_id)
                        .push_bind(i64::from(entry.generation))
                        .push_bind(entry.at)
                        .push_bind(entry.kind as i32)
                        .push_bind(entry.from_state.map(|s| s as i32))
                        .push_bind(entry.to_state.map(|s| s as i32))
                        .push_bind(entry.amount)
                        .push_bind(&entry.actor)
                        .push_bind(entry.request_id.as_deref());
                });
                sql.build().execute(&mut *conn).await?;
            }
            Ok(())
        }

        /// Outbox events, as multi-row INSERTs in the given order (their sequence order).
        async fn insert_events(
            conn: &mut <$db as sqlx::Database>::Connection,
            events: &[$crate::store::OutboxEvent],
        ) -> Result<(), sqlx::Error> {
            for chunk in events.chunks($crate::store::sql::ROWS_PER_STATEMENT) {
                let mut sql = sqlx::QueryBuilder::<$db>::new(
                    "INSERT INTO outbox (event_id, event_type, msisdn, account_id, \
                     generation, from_state, to_state, reason, effective_at, emitted_at) ",
                );
                sql.push_values(chunk, |mut values, event| {
                    values
                        .push_bind(&event.event_id)
                        .push_bind(event.event_type as i32)
                        .push_bind(event.msisdn.as_str())
                        .push_bind(&event.account_id)
                        .push_bind(i64::from(event.generation))
                        .push_bind(event.from_state as i32)
                        .push_bind(event.to_state as i32)
                        .push_bind(&event.reason)
                        .push_bind(event.effective_at)
                        .push_bind(event.emitted_at);
                });
                sql.build().execute(&mut *conn).await?;
            }
            Ok(())
        }

        fn bind_account<'q>(
            query: sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments<'q>>,
            row: &'q $crate::store::rows::AccountRow,
        ) -> sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments<'q>> {
            query
                .bind(&row.msisdn)
                .bind(&row.account_id)
                .bind(row.generation)
                .bind(row.state)
                .bind(row.balance)
                .bind(row.preset_balance)
                .bind(row.sold)
                .bind(row.initial_validity_days)
                .bind(row.provisioned_at)
                .bind(row.activated_at)
                .bind(row.valid_until)
                .bind(row.grace_until)
                .bind(row.lock_until)
                .bind(row.card_expiry)
                .bind(row.recycled_at)
                .bind(row.updated_at)
                .bind(row.next_deadline)
                .bind(row.expiring_notified_for)
        }
    };
}

pub(crate) use impl_account_store;
