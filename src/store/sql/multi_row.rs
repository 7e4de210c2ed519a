//! Multi-row statements built for generic code: the `VALUES` rows of one statement and their
//! arguments ([`ValuesRows`]), and statements gathered into as few calls to the database as
//! the parameters allow ([`Calls`]).

use sqlx::Arguments;
use sqlx::error::BoxDynError;

use super::ROWS_PER_STATEMENT;
use crate::store::dialect::{Args, Binds, Db, Dialect, Param};

/// The `VALUES` rows of a multi-row statement and their arguments, written as
/// `sqlx::QueryBuilder::push_values` writes them (the backend's own placeholders). The builder
/// itself does not serve generic code: it owns the arguments, and dropping it after the query
/// borrowed it does not type-check for an unknown backend.
pub(super) struct ValuesRows<'q, D: Dialect> {
    /// The statements ended by [`Self::then`], before the one being written.
    done: Vec<String>,
    sql: String,
    args: Args<'q, D>,
    /// The first value that failed to encode, if any: the statement is not run.
    encoded: Result<(), BoxDynError>,
    /// A row is open; its first value is not written yet.
    open: bool,
    first: bool,
}

impl<'q, D: Dialect> ValuesRows<'q, D> {
    pub(super) fn new(head: &str) -> Self {
        Self {
            done: Vec::new(),
            sql: format!("{head}VALUES "),
            args: Args::<D>::default(),
            encoded: Ok(()),
            open: false,
            first: true,
        }
    }

    /// Starts the next row.
    pub(super) fn row(&mut self) -> &mut Self {
        self.sql.push_str(if self.open { "), (" } else { "(" });
        self.open = true;
        self.first = true;
        self
    }

    pub(super) fn param<V>(&mut self, value: V) -> &mut Self
    where
        D::Db: Binds<'q, V>,
    {
        if !self.first {
            self.sql.push_str(", ");
        }
        self.first = false;
        if self.encoded.is_ok() {
            self.encoded = D::Db::add(&mut self.args, value);
        }
        // Writing to a `String` cannot fail.
        let _ = self.args.format_placeholder(&mut self.sql);
        self
    }

    /// A value written as SQL (a constant expression of the dialect's), not bound.
    pub(super) fn expression(&mut self, sql: &str) -> &mut Self {
        if !self.first {
            self.sql.push_str(", ");
        }
        self.first = false;
        self.sql.push_str(sql);
        self
    }

    /// Ends the statement being written (its rows, then `tail`) and starts another, `head
    /// VALUES …`, whose parameters follow its; [`Self::finish`] gives all of them as one query
    /// ([`Dialect::join_statements`]).
    pub(super) fn then(&mut self, tail: &str, head: &str) {
        self.close(tail);
        let next = format!("{head}VALUES ");
        self.done.push(std::mem::replace(&mut self.sql, next));
        self.open = false;
        self.first = true;
    }

    /// Parameters bound so far.
    pub(super) fn params(&self) -> usize {
        self.args.len()
    }

    fn close(&mut self, tail: &str) {
        if self.open {
            self.sql.push(')');
        }
        self.sql.push_str(tail);
    }

    /// The statement (the rows, then `tail`), after those ended by [`Self::then`], and the
    /// arguments.
    pub(super) fn finish(mut self, tail: &str) -> Result<(String, Args<'q, D>), sqlx::Error> {
        self.close(tail);
        self.encoded.map_err(sqlx::Error::Encode)?;
        let sql = if self.done.is_empty() {
            self.sql
        } else {
            self.done.push(self.sql);
            D::join_statements(self.done)
        };
        Ok((sql, self.args))
    }
}

/// A row of a multi-row statement takes parameters as a query does (see
/// [`Writes::bind_account`]).
impl<'q, D: Dialect> Param<'q, Db<D>> for &mut ValuesRows<'q, D> {
    fn param<T>(self, value: T) -> Self
    where
        Db<D>: Binds<'q, T>,
    {
        ValuesRows::param(self, value)
    }
}

/// Parameters of one call at most: PostgreSQL takes 65 535 in one statement.
const PARAMS_PER_CALL: usize = 30_000;

/// Multi-row statements gathered into calls of up to [`PARAMS_PER_CALL`] parameters.
pub(super) struct Calls<'q, D: Dialect> {
    /// The call being written and the tail of its last statement.
    open: Option<(ValuesRows<'q, D>, &'q str)>,
    ready: Vec<(String, Args<'q, D>)>,
}

impl<D: Dialect> Default for Calls<'_, D> {
    fn default() -> Self {
        Self {
            open: None,
            ready: Vec::new(),
        }
    }
}

impl<'q, D: Dialect> Calls<'q, D> {
    /// `head VALUES (…), (…)…tail` over `rows` (none for no rows), at most
    /// [`ROWS_PER_STATEMENT`] rows a statement, each row's values written by `write`.
    pub(super) fn statement<T>(
        &mut self,
        head: &str,
        tail: &'q str,
        rows: &'q [T],
        write: impl Fn(&mut ValuesRows<'q, D>, &'q T),
    ) -> Result<(), sqlx::Error> {
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut statement = match self.open.take() {
                Some((mut call, previous_tail)) => {
                    call.then(previous_tail, head);
                    call
                }
                None => ValuesRows::new(head),
            };
            for value in chunk {
                write(statement.row(), value);
            }
            if statement.params() >= PARAMS_PER_CALL {
                self.ready.push(statement.finish(tail)?);
            } else {
                self.open = Some((statement, tail));
            }
        }
        Ok(())
    }

    /// The calls, in order: their statements and, apart, their arguments (which borrow from
    /// the statements' text when they run: `Writes::run_calls`).
    pub(super) fn finish(mut self) -> Result<(Vec<String>, Vec<Args<'q, D>>), sqlx::Error> {
        if let Some((call, tail)) = self.open.take() {
            self.ready.push(call.finish(tail)?);
        }
        Ok(self.ready.into_iter().unzip())
    }
}
