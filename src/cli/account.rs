//! `account …` (one account: read it, run one mutation, page through its history) and
//! `accounts list`. Input is checked before anything is sent; a mutation's request id is the
//! one given or a fresh one, printed with the answer (and with its error) so a retry can reuse
//! it.

use std::process::ExitCode;

use super::{
    AccountCommand, CliError, Client, Connection, OutputFormat, RequestIdArg, StateArg, client,
    output,
};
use crate::lifecycle::Msisdn;
use crate::proto;

pub(super) fn parse_msisdn(raw: &str) -> Result<String, CliError> {
    Msisdn::parse(raw)
        .map(|m| m.as_str().to_owned())
        .map_err(|e| CliError::Usage(e.to_string()))
}

/// ProvisionAccount, Activate and Unlock answer with the account.
fn account_mutation(
    request_id: &str,
    answer: Result<tonic::Response<proto::Account>, tonic::Status>,
) -> Result<output::Document, CliError> {
    let response = answer.map_err(|status| CliError::mutation(status, request_id))?;
    let replayed = client::replayed(&response);
    Ok(output::account_mutation(
        request_id,
        replayed,
        response.get_ref(),
    ))
}

pub(super) async fn account(
    connection: &Connection,
    command: AccountCommand,
) -> Result<ExitCode, CliError> {
    // Input is checked before anything is sent (or even connected).
    let msisdn = parse_msisdn(command.msisdn())?;
    let request_id = command
        .request_id()
        .map(RequestIdArg::resolve)
        .unwrap_or_default();
    let failed = |status| CliError::mutation(status, &request_id);
    let client = Client::connect(connection).await?;
    let mut api = client.accounts();
    let document = match command {
        AccountCommand::Get { .. } => {
            let request = proto::GetAccountRequest { msisdn };
            let account = api.get_account(client.request(request)).await?.into_inner();
            output::account(&account)
        }
        AccountCommand::Provision {
            preset_balance,
            sold,
            initial_validity_days,
            ..
        } => {
            let request = proto::ProvisionAccountRequest {
                msisdn,
                preset_balance: preset_balance.unwrap_or(0),
                sold,
                initial_validity_days,
                request_id: request_id.clone(),
            };
            let answer = api.provision_account(client.request(request)).await;
            account_mutation(&request_id, answer)?
        }
        AccountCommand::MarkSold { .. } => {
            // MarkSold on a sold card succeeds and changes nothing; the account as it was
            // tells which (a failed read leaves it unsaid: MarkSold reports its own error).
            let was_sold = api
                .get_account(client.request(proto::GetAccountRequest {
                    msisdn: msisdn.clone(),
                }))
                .await
                .ok()
                .map(|a| a.into_inner().sold);
            let request = proto::MarkSoldRequest {
                msisdn,
                request_id: request_id.clone(),
            };
            let response = api.mark_sold(client.request(request)).await;
            let response = response.map_err(failed)?;
            let replayed = client::replayed(&response);
            // A replay answers as the first request did; whether that one changed anything
            // is not known here.
            let changed = if replayed {
                None
            } else {
                was_sold.map(|sold| !sold)
            };
            output::mark_sold(&request_id, replayed, changed, response.get_ref())
        }
        AccountCommand::Activate { .. } => {
            let request = proto::ActivateRequest {
                msisdn,
                request_id: request_id.clone(),
            };
            let answer = api.activate(client.request(request)).await;
            account_mutation(&request_id, answer)?
        }
        AccountCommand::Recharge {
            amount,
            channel,
            validity_days,
            ..
        } => {
            let request = proto::RechargeRequest {
                msisdn,
                amount,
                channel: channel.wire() as i32,
                validity_days,
                request_id: request_id.clone(),
            };
            let response = api.recharge(client.request(request)).await;
            output::recharge(&request_id, &response.map_err(failed)?.into_inner())
        }
        AccountCommand::Charge { amount, .. } => {
            let request = proto::ChargeRequest {
                msisdn,
                amount,
                request_id: request_id.clone(),
            };
            let response = api.charge(client.request(request)).await;
            output::charge(&request_id, &response.map_err(failed)?.into_inner())
        }
        AccountCommand::Unlock {
            operator,
            branch,
            recharge_amount,
            ..
        } => {
            let request = proto::UnlockRequest {
                msisdn,
                operator_id: operator,
                branch_id: branch,
                recharge_amount: recharge_amount.unwrap_or(0),
                request_id: request_id.clone(),
            };
            let answer = api.unlock(client.request(request)).await;
            account_mutation(&request_id, answer)?
        }
        AccountCommand::History { .. } => {
            let request = proto::GetAccountHistoryRequest {
                msisdn: msisdn.clone(),
                page_size: 0,
                page_token: String::new(),
            };
            let (entries, _) = client::pages(&client, request, true).await?;
            output::history(&msisdn, &entries)
        }
    };
    output::print(connection.output, &document)?;
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn list_accounts(
    client: &Client,
    format: OutputFormat,
    state: Option<StateArg>,
    page_size: Option<u32>,
    page_token: Option<String>,
    all: bool,
) -> Result<ExitCode, CliError> {
    let request = proto::ListAccountsRequest {
        state: state.map_or(0, |s| s.wire() as i32),
        page_size: page_size.unwrap_or(0),
        page_token: page_token.unwrap_or_default(),
    };
    let (accounts, next_page_token) = client::pages(client, request, all).await?;
    output::print(format, &output::account_list(&accounts, &next_page_token))?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_msisdn_is_refused_before_sending() {
        assert_eq!(parse_msisdn("+8613800138000").unwrap(), "8613800138000");
        let err = parse_msisdn("12ab").unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("INVALID_MSISDN"), "{err}");
    }
}
