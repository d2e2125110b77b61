//! `verify-worker dlq list`: the dead letters, oldest first, as a table for people or
//! JSON lines for scripts, leaving every one in the queue.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use verify_common::config::RabbitSettings;
use verify_common::domain::DeliveryId;
use verify_common::queue::{DeadLetter, DeadLetterBrowser, QueueError, SendSms};

use super::body::{BODY_WIDTH, REASON_WIDTH, printable, truncated};

/// One dead letter as `dlq list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListedDeadLetter {
    /// The job's delivery, when the body is a readable job.
    pub delivery_id: Option<DeliveryId>,
    pub reason_code: String,
    pub reason: String,
    pub dead_at: Option<DateTime<Utc>>,
    pub dead_lettered: u32,
    pub replayed: u32,
    pub worker: Option<String>,
    pub routing_key: Option<String>,
    /// The body: as is when it is printable UTF-8, escaped otherwise.
    pub body: String,
}

impl ListedDeadLetter {
    fn from_letter(letter: &DeadLetter) -> Self {
        Self {
            delivery_id: SendSms::decode(&letter.body)
                .ok()
                .map(|job| job.delivery_id),
            reason_code: letter.reason_code.clone(),
            reason: letter.reason.clone(),
            dead_at: letter.dead_at,
            dead_lettered: letter.history.dead_lettered,
            replayed: letter.history.replayed,
            worker: letter.worker.clone(),
            routing_key: letter.original_routing_key.clone(),
            body: printable(&letter.body),
        }
    }
}

/// What `dlq list` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterListing {
    pub queue: String,
    /// Messages in the queue when the listing started.
    pub depth: u32,
    /// The first of them, oldest first.
    pub letters: Vec<ListedDeadLetter>,
}

/// Reads up to `limit` dead letters, oldest first, and leaves every one in the queue.
///
/// # Errors
/// [`QueueError`] when RabbitMQ fails; nothing was removed.
pub async fn list_dead_letters(
    rabbit: &RabbitSettings,
    limit: usize,
) -> Result<DeadLetterListing, QueueError> {
    let browser = DeadLetterBrowser::open(rabbit).await?;
    let result = async {
        let depth = browser.depth().await?;
        let mut letters = Vec::new();
        // Held unacknowledged until the browser closes, so each `next` returns a new
        // message and none leaves the queue.
        while letters.len() < limit {
            let Some(letter) = browser.next().await? else {
                break;
            };
            letters.push(ListedDeadLetter::from_letter(&letter));
        }
        Ok::<_, QueueError>(DeadLetterListing {
            queue: browser.queue().to_owned(),
            depth,
            letters,
        })
    }
    .await;
    browser.close().await;
    result
}

fn timestamp(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(
        || "-".to_owned(),
        |at| at.to_rfc3339_opts(SecondsFormat::Secs, true),
    )
}

impl DeadLetterListing {
    /// An aligned table for people, under a line giving the queue's depth.
    pub fn to_table(&self) -> String {
        let mut out = format!(
            "{}: {} message{}",
            self.queue,
            self.depth,
            if self.depth == 1 { "" } else { "s" }
        );
        if self.letters.len() < self.depth as usize {
            out.push_str(&format!(" (showing the first {})", self.letters.len()));
        }
        out.push('\n');
        if self.letters.is_empty() {
            return out;
        }
        let header = [
            "DELIVERY", "CODE", "DEAD AT", "DEAD", "REPLAYED", "REASON", "BODY",
        ];
        let rows: Vec<[String; 7]> = self
            .letters
            .iter()
            .map(|letter| {
                [
                    letter
                        .delivery_id
                        .map_or_else(|| "-".to_owned(), |id| id.to_string()),
                    letter.reason_code.clone(),
                    timestamp(letter.dead_at),
                    letter.dead_lettered.to_string(),
                    letter.replayed.to_string(),
                    truncated(&letter.reason, REASON_WIDTH),
                    truncated(&letter.body, BODY_WIDTH),
                ]
            })
            .collect();
        let mut widths = header.map(|title| title.chars().count());
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        out.push('\n');
        let header = header.map(str::to_owned);
        for row in std::iter::once(&header).chain(&rows) {
            let mut line = String::new();
            for (column, (cell, width)) in row.iter().zip(widths).enumerate() {
                let pad = " ".repeat(width - cell.chars().count());
                // Counts read best right-aligned.
                if matches!(column, 3 | 4) {
                    line.push_str(&pad);
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.push_str(&pad);
                }
                line.push_str("  ");
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// One JSON object per dead letter, for scripts.
    pub fn to_json_lines(&self) -> String {
        self.letters
            .iter()
            .map(|letter| {
                let mut line = serde_json::to_string(letter)
                    .expect("a struct of strings, numbers and timestamps always serialises");
                line.push('\n');
                line
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use verify_common::domain::DeliveryId;

    use super::{DeadLetterListing, ListedDeadLetter};

    fn listed(delivery_id: Option<DeliveryId>, code: &str, body: &str) -> ListedDeadLetter {
        ListedDeadLetter {
            delivery_id,
            reason_code: code.to_owned(),
            reason: "x".repeat(60),
            dead_at: Some(chrono::Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5).unwrap()),
            dead_lettered: 1,
            replayed: 0,
            worker: None,
            routing_key: Some("send".to_owned()),
            body: body.to_owned(),
        }
    }

    #[test]
    fn the_table_aligns_its_columns_and_says_how_many_are_waiting() {
        let listing = DeadLetterListing {
            queue: "verify.sms.dead".to_owned(),
            depth: 3,
            letters: vec![
                listed(Some(DeliveryId::generate()), "template_missing", "{}"),
                listed(None, "unreadable_payload", r"\xff"),
            ],
        };

        let table = listing.to_table();

        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "verify.sms.dead: 3 messages (showing the first 2)"
        );
        let code_at = lines[2].find("CODE").unwrap();
        assert_eq!(lines[3].find("template_missing"), Some(code_at));
        assert_eq!(lines[4].find("unreadable_payload"), Some(code_at));
        assert!(lines[3].contains('…'), "long reasons are cut: {}", lines[3]);
    }

    #[test]
    fn json_lines_carry_one_object_per_dead_letter() {
        let id = DeliveryId::generate();
        let listing = DeadLetterListing {
            queue: "q".to_owned(),
            depth: 1,
            letters: vec![listed(Some(id), "template_missing", "{}")],
        };

        let lines = listing.to_json_lines();

        let value: serde_json::Value = serde_json::from_str(lines.trim_end()).unwrap();
        assert_eq!(value["delivery_id"], id.to_string());
        assert_eq!(value["reason_code"], "template_missing");
        assert_eq!(value["dead_at"], "2025-01-02T03:04:05Z");
        assert_eq!(value["dead_lettered"], 1);
    }
}
