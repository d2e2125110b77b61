//! Exchange and queue names, and their declaration.
//!
//! ```text
//! {p}.sms (direct) ──"send"──► {p}.sms.send ──(worker)──► ack
//!      ▲                              │ nack (poison)
//!      │ dead-letter on expiry        ▼
//! {p}.sms.retry.{tier} ◄─ publish   {p}.sms.dead (fanout) ──► {p}.sms.dead queue
//! ```
//! Retries wait in delay queues without consumers: each message carries its own
//! expiration and, when it expires, RabbitMQ dead-letters it back to the work exchange.
//! No plugin is needed. A message only expires at the head of its queue, so delays are
//! grouped into power-of-two tiers: within a tier a message can wait behind a longer one
//! by less than the tier's width, which keeps every delay within 2× of what was asked.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use super::connection::QueueError;

/// Routing key of send jobs on the work exchange.
pub const SEND_ROUTING_KEY: &str = "send";

/// Lower bounds of the retry delay tiers, in milliseconds.
pub const RETRY_TIERS_MS: [u64; 12] = [
    250, 500, 1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000, 256_000, 512_000,
];

/// Every name Verify uses on the broker, derived from one prefix.
#[derive(Debug, Clone)]
pub struct QueueNames {
    pub exchange: String,
    pub send_queue: String,
    pub dead_exchange: String,
    pub dead_queue: String,
    retry_prefix: String,
}

impl QueueNames {
    /// Names under `prefix` (e.g. `verify` → `verify.sms.send`).
    pub fn new(prefix: &str) -> Self {
        Self {
            exchange: format!("{prefix}.sms"),
            send_queue: format!("{prefix}.sms.send"),
            dead_exchange: format!("{prefix}.sms.dead"),
            dead_queue: format!("{prefix}.sms.dead"),
            retry_prefix: format!("{prefix}.sms.retry"),
        }
    }

    /// The delay queue of one tier.
    pub fn retry_queue(&self, tier_ms: u64) -> String {
        format!("{}.{tier_ms}ms", self.retry_prefix)
    }

    /// The delay queue a retry after `delay` goes to: the largest tier not above it.
    pub fn retry_queue_for(&self, delay: Duration) -> String {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        let tier = RETRY_TIERS_MS
            .iter()
            .rev()
            .find(|tier| **tier <= ms)
            .copied()
            .unwrap_or(RETRY_TIERS_MS[0]);
        self.retry_queue(tier)
    }
}

fn arguments(entries: &[(&str, AMQPValue)], expires: Option<Duration>) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in entries {
        table.insert(ShortString::from(*key), value.clone());
    }
    if let Some(expires) = expires {
        let ms = i64::try_from(expires.as_millis()).unwrap_or(i64::MAX);
        table.insert("x-expires".into(), AMQPValue::LongLongInt(ms));
    }
    table
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// Declares the exchanges and queues (idempotent; the API and every worker call it).
/// `expires` deletes unused queues after that long, for throwaway test deployments only.
///
/// # Errors
/// [`QueueError`] when the broker refuses a declaration (e.g. arguments differ from an
/// existing queue of the same name).
pub async fn declare(
    channel: &Channel,
    names: &QueueNames,
    expires: Option<Duration>,
) -> Result<(), QueueError> {
    let durable_exchange = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .exchange_declare(
            names.exchange.as_str().into(),
            ExchangeKind::Direct,
            durable_exchange,
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            names.dead_exchange.as_str().into(),
            ExchangeKind::Fanout,
            durable_exchange,
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            names.send_queue.as_str().into(),
            durable_queue,
            arguments(
                &[("x-dead-letter-exchange", text(&names.dead_exchange))],
                expires,
            ),
        )
        .await?;
    channel
        .queue_bind(
            names.send_queue.as_str().into(),
            names.exchange.as_str().into(),
            SEND_ROUTING_KEY.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            names.dead_queue.as_str().into(),
            durable_queue,
            arguments(&[], expires),
        )
        .await?;
    channel
        .queue_bind(
            names.dead_queue.as_str().into(),
            names.dead_exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    for tier in RETRY_TIERS_MS {
        channel
            .queue_declare(
                names.retry_queue(tier).as_str().into(),
                durable_queue,
                arguments(
                    &[
                        ("x-dead-letter-exchange", text(&names.exchange)),
                        ("x-dead-letter-routing-key", text(SEND_ROUTING_KEY)),
                    ],
                    expires,
                ),
            )
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::QueueNames;
    use std::time::Duration;

    #[test]
    fn names_carry_the_prefix() {
        let names = QueueNames::new("verify");
        assert_eq!(names.exchange, "verify.sms");
        assert_eq!(names.send_queue, "verify.sms.send");
        assert_eq!(names.dead_queue, "verify.sms.dead");
    }

    #[test]
    fn a_delay_goes_to_the_largest_tier_not_above_it() {
        let names = QueueNames::new("p");
        let cases = [
            (0, "p.sms.retry.250ms"),
            (100, "p.sms.retry.250ms"),
            (250, "p.sms.retry.250ms"),
            (999, "p.sms.retry.500ms"),
            (1_000, "p.sms.retry.1000ms"),
            (45_000, "p.sms.retry.32000ms"),
            (3_600_000, "p.sms.retry.512000ms"),
        ];
        for (ms, queue) in cases {
            assert_eq!(
                names.retry_queue_for(Duration::from_millis(ms)),
                queue,
                "{ms} ms"
            );
        }
    }
}
