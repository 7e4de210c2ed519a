//! What the client prints of the service's other answers: Authorize, the manual clock, health
//! per service, a sweep's report and the forecast.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;

use super::{Document, Table, fields, instant, instant_json, state, strip};
use crate::proto;

/// Authorize's answer.
pub fn authorization(
    msisdn: &str,
    service: proto::ServiceType,
    destination: &str,
    r: &proto::AuthorizeResponse,
) -> Document {
    let service = strip(service.as_str_name(), "SERVICE_TYPE_");
    Document {
        json: json!({
            "msisdn": msisdn,
            "service": service,
            "destination": destination,
            "allowed": r.allowed,
            "reason": r.reason,
            "state": state(r.state),
        }),
        table: fields(&[
            ("msisdn", msisdn.to_owned()),
            ("service", service.clone()),
            ("destination", destination.to_owned()),
            ("allowed", r.allowed.to_string()),
            ("reason", r.reason.clone()),
            ("state", state(r.state)),
        ]),
    }
}

/// The manual clock's time.
pub fn clock(r: &proto::GetTimeResponse) -> Document {
    Document {
        json: json!({ "now": instant_json(r.now.as_ref()) }),
        table: fields(&[("now", instant(r.now.as_ref()))]),
    }
}

/// Health per service (`""`: the server as a whole, shown as `(server)`).
pub fn health(statuses: &[(String, String)]) -> Document {
    let mut table = Table::new(&["SERVICE", "STATUS"]);
    let mut json_statuses = Vec::new();
    for (service, status) in statuses {
        let name = if service.is_empty() {
            "(server)"
        } else {
            service
        };
        table.row(vec![name.to_owned(), status.clone()]);
        json_statuses.push(json!({ "service": service, "status": status }));
    }
    Document {
        json: json!({ "services": json_statuses }),
        table: table.render(),
    }
}

/// `ocs-lifecycle sweep`: `name: value` lines, times as everywhere else (RFC 3339 UTC); JSON as
/// `forecast`.
pub fn sweep(as_of: DateTime<Utc>, dry_run: bool, report: &crate::sweep::SweepReport) -> Document {
    let at = as_of.to_rfc3339_opts(SecondsFormat::AutoSi, true);
    let counts = &report.counts;
    let mut text = format!(
        "as_of: {at}\ndry_run: {dry_run}\nexamined: {}\n",
        counts.examined
    );
    let mut json = json!({
        "as_of": at,
        "dry_run": dry_run,
        "examined": counts.examined,
    });
    for (name, count) in counts.named() {
        text.push_str(&format!("{name}: {count}\n"));
        json[name] = json!(count);
    }
    if dry_run {
        text.push_str(&format!(
            "recycled_msisdns: {}\n",
            report.recycled_msisdns.len()
        ));
        for msisdn in &report.recycled_msisdns {
            text.push_str(&format!("  {msisdn}\n"));
        }
        json["recycled_msisdns"] = json!(report.recycled_msisdns);
    }
    Document { json, table: text }
}

pub fn forecast(r: &proto::AdvanceStatesResponse) -> Document {
    let mut text = fields(&[
        ("as_of", instant(r.as_of.as_ref())),
        ("dry_run", r.dry_run.to_string()),
        ("examined", r.examined.to_string()),
        ("to_grace", r.to_grace.to_string()),
        ("to_locked", r.to_locked.to_string()),
        (
            "to_recycled_from_locked",
            r.to_recycled_from_locked.to_string(),
        ),
        (
            "to_recycled_unactivated",
            r.to_recycled_unactivated.to_string(),
        ),
        ("expiring_notified", r.expiring_notified.to_string()),
        ("recycled_msisdns", r.recycled_msisdns.len().to_string()),
    ]);
    for msisdn in &r.recycled_msisdns {
        text.push_str(&format!("  {msisdn}\n"));
    }
    Document {
        json: json!({
            "as_of": instant_json(r.as_of.as_ref()),
            "dry_run": r.dry_run,
            "examined": r.examined,
            "to_grace": r.to_grace,
            "to_locked": r.to_locked,
            "to_recycled_from_locked": r.to_recycled_from_locked,
            "to_recycled_unactivated": r.to_recycled_unactivated,
            "expiring_notified": r.expiring_notified,
            "recycled_msisdns": r.recycled_msisdns,
        }),
        table: text,
    }
}
