//! The API suites' client (tests/api.rs, tests/api_requests.rs): a thin, panicking wrapper for
//! the calls a scenario expects to succeed, and the instant the scenarios start at.

use ocs_lifecycle::proto::account_lifecycle_client::AccountLifecycleClient;
use ocs_lifecycle::proto::{
    self, Account, AuthorizeResponse, ChargeResult, HistoryEntry, RechargeChannel, RechargeResult,
    ServiceType,
};
use tonic::transport::Channel;

use super::{TestServer, rid};

/// 2030-03-01 10:00 Asia/Shanghai.
pub const T0: &str = "2030-03-01T02:00:00Z";

/// A thin, panicking wrapper for the calls a scenario expects to succeed.
pub struct Api(pub AccountLifecycleClient<Channel>);

impl Api {
    pub fn of(server: &TestServer) -> Self {
        Api(server.accounts())
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
        self.0
            .provision_account(request)
            .await
            .expect("ProvisionAccount")
            .into_inner()
    }

    pub async fn provision(&mut self, msisdn: &str) -> Account {
        self.provision_with(msisdn, 0, true, 0).await
    }

    pub async fn mark_sold(&mut self, msisdn: &str) -> Account {
        let request = proto::MarkSoldRequest {
            msisdn: msisdn.into(),
            request_id: rid(),
        };
        self.0
            .mark_sold(request)
            .await
            .expect("MarkSold")
            .into_inner()
    }

    pub async fn activate(&mut self, msisdn: &str) -> Account {
        let request = proto::ActivateRequest {
            msisdn: msisdn.into(),
            request_id: rid(),
        };
        self.0
            .activate(request)
            .await
            .expect("Activate")
            .into_inner()
    }

    /// Provisions a sold card and activates it now.
    pub async fn active(&mut self, msisdn: &str) -> Account {
        self.provision(msisdn).await;
        self.activate(msisdn).await
    }

    pub async fn recharge_days(&mut self, msisdn: &str, amount: i64, days: u32) -> RechargeResult {
        let request = proto::RechargeRequest {
            msisdn: msisdn.into(),
            amount,
            channel: RechargeChannel::Online as i32,
            validity_days: days,
            request_id: rid(),
        };
        self.0
            .recharge(request)
            .await
            .expect("Recharge")
            .into_inner()
    }

    pub async fn recharge(&mut self, msisdn: &str, amount: i64) -> RechargeResult {
        self.recharge_days(msisdn, amount, 0).await
    }

    pub async fn charge(&mut self, msisdn: &str, amount: i64) -> ChargeResult {
        let request = proto::ChargeRequest {
            msisdn: msisdn.into(),
            amount,
            request_id: rid(),
        };
        self.0.charge(request).await.expect("Charge").into_inner()
    }

    pub async fn get(&mut self, msisdn: &str) -> Account {
        let request = proto::GetAccountRequest {
            msisdn: msisdn.into(),
        };
        self.0
            .get_account(request)
            .await
            .expect("GetAccount")
            .into_inner()
    }

    pub async fn history(&mut self, msisdn: &str) -> Vec<HistoryEntry> {
        let request = proto::GetAccountHistoryRequest {
            msisdn: msisdn.into(),
            page_size: 1000,
            page_token: String::new(),
        };
        let response = self
            .0
            .get_account_history(request)
            .await
            .expect("GetAccountHistory");
        response.into_inner().entries
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
        self.0
            .authorize(request)
            .await
            .expect("Authorize")
            .into_inner()
    }

    /// One page of ListAccounts: the MSISDNs and the next page token.
    pub async fn list(&mut self, state: i32, page_size: u32, token: &str) -> (Vec<String>, String) {
        let request = proto::ListAccountsRequest {
            state,
            page_size,
            page_token: token.into(),
        };
        let page = self
            .0
            .list_accounts(request)
            .await
            .expect("ListAccounts")
            .into_inner();
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
