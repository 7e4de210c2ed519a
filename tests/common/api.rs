//! The API suites' client (tests/api.rs, tests/api_requests.rs, tests/events.rs): a thin,
//! panicking wrapper for the calls a scenario expects to succeed, `try_*` for those it expects
//! refused, and the instant the scenarios start at.

use ocs_lifecycle::proto::account_lifecycle_client::AccountLifecycleClient;
use ocs_lifecycle::proto::{
    self, Account, AuthorizeResponse, ChargeResult, HistoryEntry, RechargeChannel, RechargeResult,
    ServiceType,
};
use tonic::transport::Channel;
use tonic::{Response, Status};

use super::{Db, TestServer, rid};

/// 2030-03-01 10:00 Asia/Shanghai.
pub const T0: &str = "2030-03-01T02:00:00Z";

/// The answer of a call a scenario expects to succeed; panics naming `rpc` otherwise.
pub fn answer<T>(rpc: &str, answered: Result<Response<T>, Status>) -> T {
    answered
        .unwrap_or_else(|status| panic!("{rpc}: {status:?}"))
        .into_inner()
}

/// A thin, panicking wrapper for the calls a scenario expects to succeed; `try_*` for the
/// calls it expects to be refused.
pub struct Api(pub AccountLifecycleClient<Channel>);

impl Api {
    pub fn of(server: &TestServer) -> Self {
        Api(server.accounts())
    }

    /// Where a scenario starts: `server`'s clock at [`T0`], its API, and its database.
    pub async fn at_t0(server: &TestServer) -> (Self, Db) {
        server.set_time(T0).await;
        (Api::of(server), server.db().await)
    }

    pub async fn provision_with(
        &mut self,
        msisdn: &str,
        preset: i64,
        sold: bool,
        days: u32,
    ) -> Account {
        let request = proto::ProvisionAccountRequest {
            msisdn: msisdn.into(),
            preset_balance: preset,
            sold,
            initial_validity_days: days,
            request_id: rid(),
        };
        answer("ProvisionAccount", self.0.provision_account(request).await)
    }

    pub async fn provision(&mut self, msisdn: &str) -> Account {
        self.provision_with(msisdn, 0, true, 0).await
    }

    pub async fn mark_sold(&mut self, msisdn: &str) -> Account {
        let request = proto::MarkSoldRequest {
            msisdn: msisdn.into(),
            request_id: rid(),
        };
        answer("MarkSold", self.0.mark_sold(request).await)
    }

    pub async fn try_activate(&mut self, msisdn: &str) -> Result<Response<Account>, Status> {
        let request = proto::ActivateRequest {
            msisdn: msisdn.into(),
            request_id: rid(),
        };
        self.0.activate(request).await
    }

    pub async fn activate(&mut self, msisdn: &str) -> Account {
        answer("Activate", self.try_activate(msisdn).await)
    }

    /// Provisions a sold card and activates it now.
    pub async fn active(&mut self, msisdn: &str) -> Account {
        self.provision(msisdn).await;
        self.activate(msisdn).await
    }

    /// A recharge (request_id: a fresh one) through `channel`.
    pub async fn try_recharge(
        &mut self,
        msisdn: &str,
        amount: i64,
        channel: RechargeChannel,
    ) -> Result<Response<RechargeResult>, Status> {
        let request = proto::RechargeRequest {
            msisdn: msisdn.into(),
            amount,
            channel: channel as i32,
            validity_days: 0,
            request_id: rid(),
        };
        self.0.recharge(request).await
    }

    pub async fn recharge_days(&mut self, msisdn: &str, amount: i64, days: u32) -> RechargeResult {
        let request = proto::RechargeRequest {
            msisdn: msisdn.into(),
            amount,
            channel: RechargeChannel::Online as i32,
            validity_days: days,
            request_id: rid(),
        };
        answer("Recharge", self.0.recharge(request).await)
    }

    pub async fn recharge(&mut self, msisdn: &str, amount: i64) -> RechargeResult {
        self.recharge_days(msisdn, amount, 0).await
    }

    pub async fn try_charge(
        &mut self,
        msisdn: &str,
        amount: i64,
    ) -> Result<Response<ChargeResult>, Status> {
        let request = proto::ChargeRequest {
            msisdn: msisdn.into(),
            amount,
            request_id: rid(),
        };
        self.0.charge(request).await
    }

    pub async fn charge(&mut self, msisdn: &str, amount: i64) -> ChargeResult {
        answer("Charge", self.try_charge(msisdn, amount).await)
    }

    /// An unlock at the business hall by `operator` (`operator_id@branch_id`).
    pub async fn try_unlock(
        &mut self,
        msisdn: &str,
        (operator_id, branch_id): (&str, &str),
        recharge_amount: i64,
    ) -> Result<Response<Account>, Status> {
        let request = proto::UnlockRequest {
            msisdn: msisdn.into(),
            operator_id: operator_id.into(),
            branch_id: branch_id.into(),
            recharge_amount,
            request_id: rid(),
        };
        self.0.unlock(request).await
    }

    pub async fn unlock(
        &mut self,
        msisdn: &str,
        operator: (&str, &str),
        recharge_amount: i64,
    ) -> Account {
        let unlocked = self.try_unlock(msisdn, operator, recharge_amount).await;
        answer("Unlock", unlocked)
    }

    pub async fn get(&mut self, msisdn: &str) -> Account {
        let request = proto::GetAccountRequest {
            msisdn: msisdn.into(),
        };
        answer("GetAccount", self.0.get_account(request).await)
    }

    pub async fn history(&mut self, msisdn: &str) -> Vec<HistoryEntry> {
        let request = proto::GetAccountHistoryRequest {
            msisdn: msisdn.into(),
            page_size: 1000,
            page_token: String::new(),
        };
        answer(
            "GetAccountHistory",
            self.0.get_account_history(request).await,
        )
        .entries
    }

    pub async fn authorize(
        &mut self,
        msisdn: &str,
        service: ServiceType,
        destination: &str,
    ) -> AuthorizeResponse {
        let request = proto::AuthorizeRequest {
            msisdn: msisdn.into(),
            service: service as i32,
            destination: destination.into(),
        };
        answer("Authorize", self.0.authorize(request).await)
    }

    /// One page of ListAccounts: the MSISDNs and the next page token.
    pub async fn list(&mut self, state: i32, page_size: u32, token: &str) -> (Vec<String>, String) {
        let request = proto::ListAccountsRequest {
            state,
            page_size,
            page_token: token.into(),
        };
        let page = answer("ListAccounts", self.0.list_accounts(request).await);
        (
            page.accounts.into_iter().map(|a| a.msisdn).collect(),
            page.next_page_token,
        )
    }

    /// Every page of ListAccounts with `state`.
    pub async fn list_all(&mut self, state: i32, page_size: u32) -> Vec<String> {
        let mut all = Vec::new();
        let mut token = String::new();
        loop {
            let (page, next) = self.list(state, page_size, &token).await;
            all.extend(page);
            if next.is_empty() {
                return all;
            }
            token = next;
        }
    }
}

/// Sets the server's manual clock to 12:00 Asia/Shanghai of `date` (04:00 UTC) and runs the
/// sweep there: a day of a population built over the months (tests/analytics.rs and
/// tests/dashboard_charts.rs).
pub async fn on(server: &TestServer, api: &mut Api, date: &str) {
    server.set_time(&format!("{date}T04:00:00Z")).await;
    api.0
        .advance_states(ocs_lifecycle::proto::AdvanceStatesRequest {
            as_of: None,
            dry_run: false,
        })
        .await
        .unwrap_or_else(|e| panic!("sweep on {date}: {e:?}"));
}

/// Provisions a sold card of `days` initial validity and no balance, and activates it.
pub async fn activated(api: &mut Api, msisdn: &str, days: u32) {
    api.provision_with(msisdn, 0, true, days).await;
    api.activate(msisdn).await;
}
