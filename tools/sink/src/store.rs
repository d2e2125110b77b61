//! The message log: every send the sink accepted, kept in memory for tests to inspect.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::number;

/// One message the sink accepted, as the sender submitted it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordedMessage {
    /// The identifier the sink answered with: a Twilio `SM…` SID or a UUID.
    pub id: String,
    /// Recipient exactly as submitted.
    pub to: String,
    /// Sender as submitted; the messaging service SID when Twilio was given no `From`.
    pub from: String,
    /// Message text; it normally carries a one-time code, so it is never logged.
    pub body: String,
    /// When the request arrived, before any injected latency, to the microsecond.
    #[serde(with = "rfc3339_micros")]
    pub received_at: DateTime<Utc>,
    /// Which wire format carried it: `"twilio"` or `"json"`.
    pub api: String,
}

/// A cheap, cloneable handle to the recorded messages.
///
/// Every clone sees the same log. Lookups by recipient are indexed, so polling for one
/// number stays fast while a load test fills the log.
#[derive(Clone)]
pub struct MessageLog {
    shared: Arc<Shared>,
}

struct Shared {
    entries: Mutex<Entries>,
    // Lets `wait_for` sleep until something arrives instead of polling.
    arrived: Notify,
}

struct Entries {
    capacity: usize,
    // Both collections are ordered by `received_at`, ties by arrival, so the oldest
    // message overall is also the oldest of its recipient and eviction stays O(1).
    oldest_first: VecDeque<Arc<RecordedMessage>>,
    by_recipient: HashMap<String, VecDeque<Arc<RecordedMessage>>>,
}

impl MessageLog {
    /// An empty log that keeps at most `capacity` messages (at least one).
    pub(crate) fn new(capacity: usize) -> MessageLog {
        MessageLog {
            shared: Arc::new(Shared {
                entries: Mutex::new(Entries {
                    capacity: capacity.max(1),
                    oldest_first: VecDeque::new(),
                    by_recipient: HashMap::new(),
                }),
                arrived: Notify::new(),
            }),
        }
    }

    /// Every recorded message, oldest first.
    pub fn all(&self) -> Vec<RecordedMessage> {
        self.lock()
            .oldest_first
            .iter()
            .map(|m| RecordedMessage::clone(m))
            .collect()
    }

    /// Messages sent to `number`, oldest first; `+14155550100` and `14155550100` match.
    pub fn to(&self, number: &str) -> Vec<RecordedMessage> {
        self.lock()
            .by_recipient
            .get(number::normalise(number))
            .map(|queue| queue.iter().map(|m| RecordedMessage::clone(m)).collect())
            .unwrap_or_default()
    }

    /// Forgets every message.
    pub fn clear(&self) {
        let mut entries = self.lock();
        entries.oldest_first.clear();
        entries.by_recipient.clear();
    }

    /// How many messages are held.
    pub fn len(&self) -> usize {
        self.lock().oldest_first.len()
    }

    /// Whether no message is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The newest message to `number`, waiting up to `timeout` for one to arrive.
    ///
    /// Returns at once if a message is already there, so clear the log first when only
    /// a message sent after some point will do.
    pub async fn wait_for(&self, number: &str, timeout: Duration) -> Option<RecordedMessage> {
        let wait = async {
            loop {
                // Registered before looking so an arrival between the look and the
                // await still wakes us.
                let mut notified = std::pin::pin!(self.shared.arrived.notified());
                notified.as_mut().enable();
                if let Some(message) = self.newest_to(number) {
                    return message;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.ok()
    }

    fn newest_to(&self, number: &str) -> Option<RecordedMessage> {
        self.lock()
            .by_recipient
            .get(number::normalise(number))
            .and_then(|queue| queue.back())
            .map(|m| RecordedMessage::clone(m))
    }

    /// Adds a message, dropping the oldest if the log is full.
    pub(crate) fn record(&self, message: RecordedMessage) {
        let message = Arc::new(message);
        {
            let mut entries = self.lock();
            let Entries {
                capacity,
                oldest_first,
                by_recipient,
            } = &mut *entries;
            insert_in_order(oldest_first, Arc::clone(&message));
            let recipient = by_recipient
                .entry(number::normalise(&message.to).to_owned())
                .or_default();
            insert_in_order(recipient, message);
            while oldest_first.len() > *capacity {
                if let Some(evicted) = oldest_first.pop_front() {
                    forget(by_recipient, &evicted);
                }
            }
        }
        self.shared.arrived.notify_waiters();
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        // Nothing panics while holding the lock, and the data stays consistent at every
        // await-free step anyway, so a poisoned lock is still usable.
        self.shared
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for MessageLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageLog")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

/// Keeps `queue` ordered by arrival time. Messages almost always arrive in order, so the
/// scan from the back stops at once; with injected latency changing mid-run it may step
/// back a little.
fn insert_in_order(queue: &mut VecDeque<Arc<RecordedMessage>>, message: Arc<RecordedMessage>) {
    let position = queue
        .iter()
        .rposition(|existing| existing.received_at <= message.received_at)
        .map_or(0, |index| index + 1);
    queue.insert(position, message);
}

fn forget(
    by_recipient: &mut HashMap<String, VecDeque<Arc<RecordedMessage>>>,
    evicted: &Arc<RecordedMessage>,
) {
    let key = number::normalise(&evicted.to);
    let Some(queue) = by_recipient.get_mut(key) else {
        return;
    };
    if queue.front().is_some_and(|m| Arc::ptr_eq(m, evicted)) {
        queue.pop_front();
    } else if let Some(index) = queue.iter().position(|m| Arc::ptr_eq(m, evicted)) {
        queue.remove(index);
    }
    if queue.is_empty() {
        by_recipient.remove(key);
    }
}

/// RFC 3339 in UTC with exactly six fractional digits, so clients can compare timestamps as
/// strings and the precision never silently varies between messages.
mod rfc3339_micros {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Micros, true))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let raw = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&raw)
            .map(|at| at.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use chrono::{DateTime, TimeZone, Utc};

    use super::{MessageLog, RecordedMessage};

    fn message(id: &str, to: &str, at_micros: i64) -> RecordedMessage {
        RecordedMessage {
            id: id.to_owned(),
            to: to.to_owned(),
            from: "+15005550006".to_owned(),
            body: "Your code is 123456".to_owned(),
            received_at: at(at_micros),
            api: "json".to_owned(),
        }
    }

    fn at(micros: i64) -> DateTime<Utc> {
        Utc.timestamp_micros(1_700_000_000_000_000 + micros)
            .unwrap()
    }

    fn ids(messages: &[RecordedMessage]) -> Vec<&str> {
        messages.iter().map(|m| m.id.as_str()).collect()
    }

    #[test]
    fn lookups_by_number_ignore_the_leading_plus() {
        let log = MessageLog::new(10);
        log.record(message("a", "+14155550100", 1));
        log.record(message("b", "14155550100", 2));
        log.record(message("c", "+14155550199", 3));
        assert_eq!(ids(&log.to("14155550100")), ["a", "b"]);
        assert_eq!(ids(&log.to("+14155550100")), ["a", "b"]);
        assert_eq!(ids(&log.to(" 14155550100")), ["a", "b"]);
        assert!(log.to("+1999").is_empty());
    }

    #[test]
    fn messages_are_listed_oldest_first_even_if_recorded_out_of_order() {
        let log = MessageLog::new(10);
        log.record(message("late", "+1", 5));
        log.record(message("early", "+1", 1));
        log.record(message("middle", "+1", 3));
        assert_eq!(ids(&log.all()), ["early", "middle", "late"]);
        assert_eq!(ids(&log.to("+1")), ["early", "middle", "late"]);
    }

    #[test]
    fn the_oldest_messages_are_dropped_beyond_capacity() {
        let log = MessageLog::new(2);
        log.record(message("a", "+1", 1));
        log.record(message("b", "+2", 2));
        log.record(message("c", "+1", 3));
        assert_eq!(ids(&log.all()), ["b", "c"]);
        assert_eq!(ids(&log.to("+1")), ["c"]);
        assert_eq!(ids(&log.to("+2")), ["b"]);
        log.record(message("d", "+3", 4));
        assert!(log.to("+2").is_empty());
        assert_eq!(log.len(), 2);
    }

    #[test]
    fn clearing_empties_every_view() {
        let log = MessageLog::new(10);
        log.record(message("a", "+1", 1));
        log.clear();
        assert!(log.is_empty());
        assert!(log.to("+1").is_empty());
    }

    #[test]
    fn received_at_is_serialised_with_microseconds() {
        let json = serde_json::to_value(message("a", "+1", 0)).unwrap();
        assert_eq!(json["received_at"], "2023-11-14T22:13:20.000000Z");
        let back: RecordedMessage = serde_json::from_value(json).unwrap();
        assert_eq!(back, message("a", "+1", 0));
    }

    #[tokio::test]
    async fn waiting_returns_a_message_recorded_later() {
        let log = MessageLog::new(10);
        let writer = log.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            writer.record(message("a", "+14155550100", 1));
        });
        let found = log.wait_for("14155550100", Duration::from_secs(5)).await;
        assert_eq!(found.map(|m| m.id), Some("a".to_owned()));
    }

    #[tokio::test]
    async fn waiting_gives_up_after_the_timeout() {
        let log = MessageLog::new(10);
        assert!(
            log.wait_for("+1", Duration::from_millis(10))
                .await
                .is_none()
        );
    }
}
