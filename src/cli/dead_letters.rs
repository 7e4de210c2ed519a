//! `dead-letters list` and `dead-letters redeliver`: every page of the dead letters, and
//! redelivery in requests of at most 1000 ids, telling the operator which ids were not dead
//! letters.

use std::process::ExitCode;

use serde_json::json;

use super::{CliError, Client, DeadLettersCommand, OutputFormat, client, output};
use crate::proto;

/// Dead letters asked per page.
const DEAD_LETTER_PAGE: u32 = 1000;

async fn all_dead_letters(client: &Client) -> Result<Vec<proto::DeadLetter>, CliError> {
    let request = proto::ListDeadLettersRequest {
        page_size: DEAD_LETTER_PAGE,
        page_token: String::new(),
    };
    let (letters, _) = client::pages(client, request, true).await?;
    Ok(letters)
}

pub(super) async fn dead_letters(
    client: &Client,
    format: OutputFormat,
    command: DeadLettersCommand,
) -> Result<ExitCode, CliError> {
    match command {
        DeadLettersCommand::List => {
            let letters = all_dead_letters(client).await?;
            output::print(format, &output::dead_letters(&letters))?;
        }
        DeadLettersCommand::Redeliver { event_ids, all } => {
            let dead: Vec<String> = all_dead_letters(client)
                .await?
                .into_iter()
                .filter_map(|d| d.event.map(|e| e.event_id))
                .collect();
            // Ids that are not dead letters now (unknown, delivered, or already queued again):
            // the server ignores them; the operator is told which.
            let not_dead: Vec<String> = if all {
                Vec::new()
            } else {
                let dead: std::collections::HashSet<&str> =
                    dead.iter().map(String::as_str).collect();
                event_ids
                    .iter()
                    .filter(|id| !dead.contains(id.as_str()))
                    .cloned()
                    .collect()
            };
            let event_ids = if all { dead } else { event_ids };
            let mut requeued = 0u64;
            // The server takes at most 1000 ids per request.
            for chunk in event_ids.chunks(1000) {
                let request = proto::RedeliverRequest {
                    event_ids: chunk.to_vec(),
                };
                let response = client.events().redeliver(client.request(request)).await?;
                requeued += u64::from(response.get_ref().requeued);
            }
            let mut table = output::fields(&[
                ("asked", event_ids.len().to_string()),
                ("requeued", requeued.to_string()),
            ]);
            if !not_dead.is_empty() {
                table.push_str(&format!(
                    "not dead letters ({}; unknown, delivered or already queued again):\n",
                    not_dead.len()
                ));
                for id in &not_dead {
                    table.push_str(&format!("  {id}\n"));
                }
            }
            let document = output::Document {
                json: json!({
                    "asked": event_ids.len(),
                    "requeued": requeued,
                    "not_dead_letters": not_dead,
                }),
                table,
            };
            output::print(format, &document)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
