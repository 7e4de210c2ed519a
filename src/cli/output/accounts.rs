//! What the client prints of accounts: one account, the answer of each mutation (with its
//! request id and whether it was a replay), an account's history and a page of accounts.

use serde_json::{Value, json};

use super::{Document, Table, amount, fields, instant, instant_json, state, strip};
use crate::proto;

pub fn account_json(a: &proto::Account) -> Value {
    json!({
        "msisdn": a.msisdn,
        "account_id": a.account_id,
        "generation": a.generation,
        "state": state(a.state),
        "balance": a.balance,
        "preset_balance": a.preset_balance,
        "sold": a.sold,
        "provisioned_at": instant_json(a.provisioned_at.as_ref()),
        "activated_at": instant_json(a.activated_at.as_ref()),
        "valid_until": date_json(&a.valid_until),
        "grace_until": date_json(&a.grace_until),
        "lock_until": date_json(&a.lock_until),
        "card_expiry": date_json(&a.card_expiry),
        "recycled_at": instant_json(a.recycled_at.as_ref()),
        "updated_at": instant_json(a.updated_at.as_ref()),
    })
}

fn account_fields(a: &proto::Account) -> Vec<(&'static str, String)> {
    vec![
        ("msisdn", a.msisdn.clone()),
        ("account_id", a.account_id.clone()),
        ("generation", a.generation.to_string()),
        ("state", state(a.state)),
        ("balance", amount(a.balance)),
        ("preset_balance", amount(a.preset_balance)),
        ("sold", a.sold.to_string()),
        ("provisioned_at", instant(a.provisioned_at.as_ref())),
        ("activated_at", instant(a.activated_at.as_ref())),
        ("valid_until", a.valid_until.clone()),
        ("grace_until", a.grace_until.clone()),
        ("lock_until", a.lock_until.clone()),
        ("card_expiry", a.card_expiry.clone()),
        ("recycled_at", instant(a.recycled_at.as_ref())),
        ("updated_at", instant(a.updated_at.as_ref())),
    ]
}

pub fn account(a: &proto::Account) -> Document {
    Document {
        json: account_json(a),
        table: fields(&account_fields(a)),
    }
}

/// ProvisionAccount, MarkSold, Activate, Unlock.
pub fn account_mutation(request_id: &str, replayed: bool, a: &proto::Account) -> Document {
    mutation(request_id, replayed, Some(a), Vec::new())
}

/// A mutation's answer: the account's fields, then `results` (name, table cell, JSON value),
/// whether it was a replay and its request id.
fn mutation(
    request_id: &str,
    replayed: bool,
    account: Option<&proto::Account>,
    results: Vec<(&'static str, String, Value)>,
) -> Document {
    let mut pairs = account.map(account_fields).unwrap_or_default();
    let mut json = json!({
        "request_id": request_id,
        "replayed": replayed,
        "account": account.map(account_json),
    });
    for (name, cell, value) in results {
        pairs.push((name, cell));
        json[name] = value;
    }
    pairs.push(("replayed", replayed.to_string()));
    pairs.push(("request_id", request_id.to_owned()));
    Document {
        json,
        table: fields(&pairs),
    }
}

/// MarkSold: [`account_mutation`] and whether it changed anything (`None`: not known, e.g. a
/// replay).
pub fn mark_sold(
    request_id: &str,
    replayed: bool,
    changed: Option<bool>,
    a: &proto::Account,
) -> Document {
    let mut document = account_mutation(request_id, replayed, a);
    if let Some(changed) = changed {
        document.json["changed"] = json!(changed);
        if !changed {
            document
                .table
                .push_str("the card was already sold: nothing changed\n");
        }
    }
    document
}

/// A result in fen: the amount (fen and yuan) in the table, the number in JSON.
fn fen(name: &'static str, value: i64) -> (&'static str, String, Value) {
    (name, amount(value), json!(value))
}

/// A result that reads the same in the table and in JSON.
fn plain<T: ToString + serde::Serialize>(
    name: &'static str,
    value: T,
) -> (&'static str, String, Value) {
    (name, value.to_string(), json!(value))
}

/// A local date: as written in the table, `null` in JSON when empty.
fn date(name: &'static str, value: &str) -> (&'static str, String, Value) {
    (name, value.to_owned(), date_json(value))
}

pub fn recharge(request_id: &str, r: &proto::RechargeResult) -> Document {
    let results = vec![
        date("valid_until_before", &r.valid_until_before),
        date("valid_until_after", &r.valid_until_after),
        plain("days_granted", r.days_granted),
        plain("capped", r.capped),
        fen("balance_before", r.balance_before),
        fen("balance_after", r.balance_after),
    ];
    mutation(request_id, r.replayed, r.account.as_ref(), results)
}

pub fn charge(request_id: &str, r: &proto::ChargeResult) -> Document {
    let results = vec![
        fen("charged_preset", r.charged_preset),
        fen("charged_balance", r.charged_balance),
    ];
    mutation(request_id, r.replayed, r.account.as_ref(), results)
}

fn history_kind(value: i32) -> String {
    match proto::HistoryKind::try_from(value) {
        Ok(k) => strip(k.as_str_name(), "HISTORY_KIND_"),
        Err(_) => value.to_string(),
    }
}

pub fn history(msisdn: &str, entries: &[proto::HistoryEntry]) -> Document {
    let mut table = Table::new(&[
        "AT",
        "KIND",
        "FROM",
        "TO",
        "AMOUNT",
        "ACTOR",
        "GEN",
        "REQUEST_ID",
    ]);
    for e in entries {
        table.row(vec![
            instant(e.at.as_ref()),
            history_kind(e.kind),
            state(e.from_state),
            state(e.to_state),
            if e.amount == 0 {
                String::new()
            } else {
                amount(e.amount)
            },
            e.actor.clone(),
            e.generation.to_string(),
            e.request_id.clone(),
        ]);
    }
    let json_entries: Vec<Value> = entries
        .iter()
        .map(|e| {
            json!({
                "at": instant_json(e.at.as_ref()),
                "kind": history_kind(e.kind),
                "from_state": state(e.from_state),
                "to_state": state(e.to_state),
                "amount": e.amount,
                "actor": e.actor,
                "request_id": e.request_id,
                "generation": e.generation,
                "account_id": e.account_id,
            })
        })
        .collect();
    Document {
        json: json!({ "msisdn": msisdn, "entries": json_entries }),
        table: table.render(),
    }
}

pub fn account_list(accounts: &[proto::Account], next_page_token: &str) -> Document {
    let mut table = Table::new(&[
        "MSISDN",
        "STATE",
        "BALANCE",
        "PRESET",
        "SOLD",
        "VALID_UNTIL",
        "GRACE_UNTIL",
        "LOCK_UNTIL",
        "CARD_EXPIRY",
        "GEN",
    ]);
    for a in accounts {
        table.row(vec![
            a.msisdn.clone(),
            state(a.state),
            amount(a.balance),
            amount(a.preset_balance),
            a.sold.to_string(),
            a.valid_until.clone(),
            a.grace_until.clone(),
            a.lock_until.clone(),
            a.card_expiry.clone(),
            a.generation.to_string(),
        ]);
    }
    let mut text = table.render();
    if !next_page_token.is_empty() {
        text.push_str(&format!(
            "(more: --page-token {next_page_token}, or --all)\n"
        ));
    }
    Document {
        json: json!({
            "accounts": accounts.iter().map(account_json).collect::<Vec<_>>(),
            "next_page_token": next_page_token,
        }),
        table: text,
    }
}

fn date_json(date: &str) -> Value {
    if date.is_empty() {
        Value::Null
    } else {
        Value::String(date.to_owned())
    }
}
