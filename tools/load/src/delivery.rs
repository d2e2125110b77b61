//! Matching what reached the sink against what the API accepted: delivered, lost and
//! duplicated SMS, and end-to-end latency from the sink's own arrival times.
//!
//! Every number of a run is distinct, so the recipient alone identifies the verification an
//! SMS belongs to. Messages to numbers the run did not send to (other runs, other clients of
//! the same sink) are ignored.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::client::SinkMessage;
use crate::clock;
use crate::latency::LatencyHistogram;
use crate::tally::Accepted;

/// Arrival times at the sink, by number, for the numbers of this run.
#[derive(Clone, Debug, Default)]
pub struct Arrivals {
    by_number: HashMap<String, Vec<DateTime<Utc>>>,
}

/// How the deliveries of a run turned out.
#[derive(Clone, Debug, Default)]
pub struct DeliveryFigures {
    /// Accepted verifications with at least one SMS at the sink.
    pub delivered: u64,
    /// SMS beyond the first for one verification.
    pub duplicates: u64,
    /// Accepted verifications without an SMS: `(number, verification id)`, sorted.
    pub lost: Vec<(String, String)>,
    /// Send (or due) time to the first SMS's arrival.
    pub end_to_end: LatencyHistogram,
    /// First SMS arrivals stamped before their send: the sink's clock disagrees with ours.
    pub arrived_before_sent: u64,
    /// The latest first arrival: the end of the delivery window.
    pub last_arrival: Option<DateTime<Utc>>,
}

impl Arrivals {
    /// Replaces everything with `messages`, a full listing of the sink.
    pub fn replace_all(&mut self, messages: &[SinkMessage], accepted: &HashMap<String, Accepted>) {
        self.by_number.clear();
        for message in messages {
            let number = e164(&message.to);
            if accepted.contains_key(number.as_ref()) {
                self.by_number
                    .entry(number.into_owned())
                    .or_default()
                    .push(message.received_at);
            }
        }
    }

    /// Replaces the arrivals of one number with `messages`, a listing for that number.
    pub fn replace_one(&mut self, number: &str, messages: &[SinkMessage]) {
        let times: Vec<_> = messages.iter().map(|m| m.received_at).collect();
        if times.is_empty() {
            self.by_number.remove(number);
        } else {
            self.by_number.insert(number.to_owned(), times);
        }
    }

    /// Accepted numbers without any arrival.
    pub fn missing<'a>(&self, accepted: &'a HashMap<String, Accepted>) -> Vec<&'a str> {
        accepted
            .keys()
            .filter(|number| !self.by_number.contains_key(number.as_str()))
            .map(String::as_str)
            .collect()
    }

    /// The figures for `accepted`.
    pub fn figures(&self, accepted: &HashMap<String, Accepted>) -> DeliveryFigures {
        let mut figures = DeliveryFigures::default();
        for (number, verification) in accepted {
            let Some(times) = self.by_number.get(number) else {
                figures.lost.push((number.clone(), verification.id.clone()));
                continue;
            };
            let Some(first) = times.iter().min().copied() else {
                continue;
            };
            figures.delivered += 1;
            figures.duplicates += times.len() as u64 - 1;
            match clock::between(verification.sent_at, first) {
                Some(latency) => figures.end_to_end.record(latency),
                None => figures.arrived_before_sent += 1,
            }
            figures.last_arrival = figures.last_arrival.max(Some(first));
        }
        figures.lost.sort();
        figures
    }
}

/// The sink keeps recipients exactly as submitted; the run's keys always carry the `+`.
fn e164(to: &str) -> std::borrow::Cow<'_, str> {
    let to = to.trim();
    if to.starts_with('+') {
        std::borrow::Cow::Borrowed(to)
    } else {
        std::borrow::Cow::Owned(format!("+{to}"))
    }
}

/// The one-time code in an SMS: the first run of exactly `length` digits.
pub fn extract_code(body: &str, length: u8) -> Option<&str> {
    body.split(|c: char| !c.is_ascii_digit())
        .find(|run| run.len() == usize::from(length))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use chrono::{DateTime, TimeZone, Utc};

    use super::{Arrivals, extract_code};
    use crate::client::SinkMessage;
    use crate::tally::Accepted;

    fn at(millis: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(1_700_000_000_000 + millis)
            .single()
            .unwrap_or_default()
    }

    fn accepted(numbers: &[(&str, i64)]) -> HashMap<String, Accepted> {
        numbers
            .iter()
            .map(|(number, sent)| {
                (
                    (*number).to_owned(),
                    Accepted {
                        id: format!("id-{number}"),
                        code_length: 6,
                        sent_at: at(*sent),
                    },
                )
            })
            .collect()
    }

    fn message(to: &str, received: i64) -> SinkMessage {
        SinkMessage {
            to: to.to_owned(),
            body: "Your code is 123456".to_owned(),
            received_at: at(received),
        }
    }

    #[test]
    fn deliveries_losses_and_duplicates_are_told_apart() {
        let accepted = accepted(&[("+1", 0), ("+2", 10), ("+3", 20)]);
        let messages = [
            message("+1", 40),
            message("2", 30),
            message("+2", 90),
            message("+9", 5),
        ];
        let mut arrivals = Arrivals::default();
        arrivals.replace_all(&messages, &accepted);

        let figures = arrivals.figures(&accepted);
        assert_eq!(figures.delivered, 2);
        assert_eq!(figures.duplicates, 1);
        assert_eq!(figures.lost, [("+3".to_owned(), "id-+3".to_owned())]);
        assert_eq!(arrivals.missing(&accepted), ["+3"]);
        assert_eq!(figures.end_to_end.count(), 2);
        assert_eq!(
            figures.end_to_end.quantile(1.0).map(|d| d.as_millis()),
            Some(40)
        );
        assert_eq!(figures.last_arrival, Some(at(40)));

        arrivals.replace_one("+3", &[message("+3", 25)]);
        let figures = arrivals.figures(&accepted);
        assert!(figures.lost.is_empty());
        assert_eq!(figures.delivered, 3);
        assert_eq!(
            figures.end_to_end.quantile(0.0),
            Some(Duration::from_millis(5))
        );
    }

    #[test]
    fn an_arrival_stamped_before_its_send_is_counted_not_recorded() {
        let accepted = accepted(&[("+1", 100)]);
        let mut arrivals = Arrivals::default();
        arrivals.replace_all(&[message("+1", 50)], &accepted);
        let figures = arrivals.figures(&accepted);
        assert_eq!((figures.delivered, figures.arrived_before_sent), (1, 1));
        assert_eq!(figures.end_to_end.count(), 0);
    }

    #[test]
    fn the_code_is_the_first_run_of_the_right_length() {
        assert_eq!(extract_code("Your code is 123456", 6), Some("123456"));
        assert_eq!(
            extract_code("Acme: 0042 is your code. It expires in 10 minutes.", 4),
            Some("0042")
        );
        assert_eq!(
            extract_code("Expires in 10 minutes: 12345678", 8),
            Some("12345678")
        );
        assert_eq!(extract_code("Your code is 12345", 6), None);
        assert_eq!(extract_code("", 6), None);
    }
}
