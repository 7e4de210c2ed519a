//! The SQL both backends share. Both accept `$N` placeholders, `RETURNING` and the same types,
//! so one macro writes the trait implementation for each; the backends differ only in how a
//! write transaction starts and how the MSISDN's row is locked (see `sqlite.rs`, `postgres.rs`).

/// Attempts at a mutation whose transaction hit a transient conflict (a concurrent first insert
/// of the same MSISDN or request_id, a serialization failure, a busy database).
pub(crate) const MAX_ATTEMPTS: u32 = 8;

macro_rules! impl_account_store {
    ($store:ty, $db:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::AccountStore for $store {
            async fn migrate(&self) -> Result<(), $crate::store::StoreError> {
                self.run_migrations().await
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

            async fn ping(&self) -> Result<(), $crate::store::StoreError> {
                sqlx::query("SELECT 1").execute(self.reader()).await?;
                Ok(())
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
                         ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
                    );
                    bind_account(sqlx::query(&sql), &row).execute(&mut *conn).await?;
                }
                let row = AccountRow::from_account(&mutation.account, rules);
                let sql = if existed {
                    "UPDATE accounts SET account_id = $2, generation = $3, state = $4, \
                     balance = $5, preset_balance = $6, sold = $7, initial_validity_days = $8, \
                     provisioned_at = $9, activated_at = $10, valid_until = $11, \
                     grace_until = $12, lock_until = $13, card_expiry = $14, recycled_at = $15, \
                     updated_at = $16, next_deadline = $17 WHERE msisdn = $1"
                        .to_owned()
                } else {
                    format!(
                        "INSERT INTO accounts ({ACCOUNT_COLUMNS}) VALUES \
                         ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
                    )
                };
                bind_account(sqlx::query(&sql), &row).execute(&mut *conn).await?;
                for entry in &mutation.history {
                    sqlx::query(
                        "INSERT INTO account_history (msisdn, account_id, generation, at, kind, \
                         from_state, to_state, amount, actor, request_id) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                    )
                    .bind(entry.msisdn.as_str())
                    .bind(&entry.account_id)
                    .bind(i64::from(entry.generation))
                    .bind(entry.at)
                    .bind(entry.kind as i32)
                    .bind(entry.from_state.map(|s| s as i32))
                    .bind(entry.to_state.map(|s| s as i32))
                    .bind(entry.amount)
                    .bind(&entry.actor)
                    .bind(entry.request_id.as_deref())
                    .execute(&mut *conn)
                    .await?;
                }
                for event in &mutation.events {
                    sqlx::query(
                        "INSERT INTO outbox (event_id, event_type, msisdn, account_id, \
                         generation, from_state, to_state, reason, effective_at, emitted_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                    )
                    .bind(&event.event_id)
                    .bind(event.event_type as i32)
                    .bind(event.msisdn.as_str())
                    .bind(&event.account_id)
                    .bind(i64::from(event.generation))
                    .bind(event.from_state as i32)
                    .bind(event.to_state as i32)
                    .bind(&event.reason)
                    .bind(event.effective_at)
                    .bind(event.emitted_at)
                    .execute(&mut *conn)
                    .await?;
                }
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
        }
    };
}

pub(crate) use impl_account_store;
