//! A dry run: reads the due accounts page by page (no transaction, no writes) and counts what a
//! sweep as of `as_of` would do, listing the MSISDNs it would recycle.

use super::{FORECAST_LIMIT, SweepReport, SweepRequest};
use crate::lifecycle::AccountState;
use crate::store::{AccountStore, DueCursor, StoreError};

pub(super) async fn forecast(
    store: &dyn AccountStore,
    request: &SweepRequest,
) -> Result<SweepReport, StoreError> {
    let rules = store.rules();
    let mut report = SweepReport::default();
    let mut after = DueCursor::default();
    loop {
        let page = store
            .due_accounts(request.as_of, &after, request.batch_size)
            .await?;
        let fetched = page.accounts.len();
        for mut account in page.accounts {
            let swept = account.sweep(request.as_of, rules);
            report.counts.tally(&swept);
            let recycled = swept
                .transitions
                .iter()
                .any(|t| t.to == AccountState::Recycled);
            if recycled && report.recycled_msisdns.len() < FORECAST_LIMIT {
                report.recycled_msisdns.push(account.msisdn.to_string());
            }
        }
        if fetched < request.batch_size as usize {
            return Ok(report);
        }
        after = page.next;
    }
}
