//! The SMS-pumping simulation: an attack and legitimate sign-ups at the same time, against
//! the abuse rules as shipped (`VERIFY_ABUSE_MODE=enforce`, default rules).
//!
//! The attack asks for codes to consecutive numbers of one prefix, each request from a
//! client address in a network of its own (so no per-address or per-network limit can
//! see it) and with a client id of its own, and never checks a code: what a pumping script
//! behind a public sign-up form looks like. Legitimate traffic asks for codes to numbers
//! spread over many prefixes, each person from an address of their own, and four in five
//! type their code in. Both run interleaved at one rate.
//!
//! The figures say how many attack SMS reached the provider, how many legitimate requests
//! were refused, and how many legitimate people could not approve their code.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::stack::{API_KEY, Stack};
use crate::traffic::{Answer, Submission, submit};

/// The attack's numbers: `+1 646 310 NNNN`, one prefix (`+1646310`). No other traffic of the
/// suite uses area code 646.
const ATTACK_PREFIX: &str = "+1646310";
/// Area codes of legitimate numbers: every exchange 200–999 of these is valid. 415 (the
/// fault scenarios' traffic, on the allow list) and 646 (the attack) are left out.
const LEGITIMATE_AREA_CODES: [u16; 12] =
    [201, 202, 206, 212, 213, 303, 305, 312, 404, 503, 617, 713];
/// How long a person waits for their SMS before giving up on checking it.
const SMS_PATIENCE: Duration = Duration::from_secs(30);
/// Every how many legitimate requests one person never types the code in.
const UNCHECKED_EVERY: u32 = 5;

/// How much of each kind of traffic, and how fast.
#[derive(Debug, Clone, Copy)]
pub struct PumpingShape {
    pub attack: u32,
    pub legitimate: u32,
    /// Requests per second, both kinds together.
    pub rate: u32,
}

/// What the simulation found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PumpingFigures {
    pub attack_requests: usize,
    pub attack_accepted: usize,
    /// Attack SMS that reached the provider (the sink): what the operator would pay for.
    pub attack_delivered: usize,
    /// The attack's refusals by error code (`velocity_limited`, …).
    pub attack_refusals: BTreeMap<String, usize>,
    pub legitimate_requests: usize,
    /// Legitimate requests not accepted, by status and error code.
    pub legitimate_refusals: BTreeMap<String, usize>,
    /// Legitimate people who read their SMS and checked the code.
    pub legitimate_checked: usize,
    pub legitimate_approved: usize,
}

impl PumpingFigures {
    pub fn legitimate_refused(&self) -> usize {
        self.legitimate_refusals.values().sum()
    }
}

/// Who sent a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Attack,
    Legitimate { checks: bool },
}

/// One request's outcome, with its error code when refused.
struct Sent {
    side: Side,
    submission: Submission,
    error_code: Option<String>,
    /// For a legitimate person who checked: whether the code was approved.
    approved: Option<bool>,
}

/// Runs the attack and the legitimate traffic, waits for every person to check their code,
/// and counts. Returns every submission (for the suite's standard audit) and the figures;
/// attack SMS are counted after the audit has let the system drain (see
/// [`count_attack_sms`]).
///
/// # Errors
/// When the API cannot be reached at all.
pub async fn simulate(
    stack: &Stack,
    template_id: i64,
    shape: PumpingShape,
) -> anyhow::Result<(Vec<Submission>, PumpingFigures)> {
    let total = shape.attack + shape.legitimate;
    if total == 0 {
        bail!("the simulation needs some traffic");
    }
    let context = Arc::new(Context {
        http: stack.http().clone(),
        api_url: stack.api_url(),
        sink_url: stack.sink_url(),
        template_id,
    });
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / shape.rate.max(1));
    let mut requests = JoinSet::new();
    let (mut attack_sent, mut legitimate_sent) = (0_u32, 0_u32);
    for i in 0..total {
        ticker.tick().await;
        // Interleaved evenly: the attack's share of the first i+1 requests.
        let attack_due = u64::from(shape.attack) * u64::from(i + 1) / u64::from(total);
        let context = Arc::clone(&context);
        if u64::from(attack_sent) < attack_due {
            let n = attack_sent;
            attack_sent += 1;
            requests.spawn(async move { context.attack(n).await });
        } else {
            let n = legitimate_sent;
            legitimate_sent += 1;
            requests.spawn(async move { context.legitimate(n).await });
        }
    }
    let mut figures = PumpingFigures::default();
    let mut submissions = Vec::with_capacity(total as usize);
    while let Some(joined) = requests.join_next().await {
        let sent = joined?;
        let refusal = match &sent.submission.answer {
            Answer::Accepted { .. } => None,
            Answer::Refused { status, .. } => Some(format!(
                "{status} {}",
                sent.error_code.as_deref().unwrap_or("(no code)")
            )),
            Answer::Unanswered(_) => Some("unanswered".to_owned()),
        };
        match sent.side {
            Side::Attack => {
                figures.attack_requests += 1;
                match refusal {
                    None => figures.attack_accepted += 1,
                    Some(reason) => *figures.attack_refusals.entry(reason).or_default() += 1,
                }
            }
            Side::Legitimate { .. } => {
                figures.legitimate_requests += 1;
                if let Some(reason) = refusal {
                    *figures.legitimate_refusals.entry(reason).or_default() += 1;
                }
                if let Some(approved) = sent.approved {
                    figures.legitimate_checked += 1;
                    figures.legitimate_approved += usize::from(approved);
                }
            }
        }
        submissions.push(sent.submission);
    }
    Ok((submissions, figures))
}

/// Counts the SMS the sink received for the attack's numbers.
///
/// # Errors
/// When the sink's message log cannot be read.
pub async fn count_attack_sms(stack: &Stack) -> anyhow::Result<usize> {
    let response = stack
        .http()
        .get(format!("{}/messages", stack.sink_url()))
        .timeout(Duration::from_secs(60))
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("the sink's message log answered {}", response.status());
    }
    let messages: Vec<SinkMessage> = response.json().await?;
    Ok(messages
        .iter()
        .filter(|message| message.to.starts_with(ATTACK_PREFIX))
        .count())
}

#[derive(Debug, Deserialize)]
struct SinkMessage {
    to: String,
    #[serde(default)]
    body: String,
}

/// What every request task needs.
struct Context {
    http: reqwest::Client,
    api_url: String,
    sink_url: String,
    template_id: i64,
}

impl Context {
    /// The attack's `n`th request: the next number of the prefix, from a fresh network.
    async fn attack(&self, n: u32) -> Sent {
        let body = json!({
            "to": format!("{ATTACK_PREFIX}{:04}", n % 10_000),
            "template_id": self.template_id,
            "client_ip": format!("100.{}.{}.{}", 64 + (n / 256) % 64, n % 256, 1 + n % 250),
            "client_id": format!("pump-{n}"),
        });
        let (submission, error_code) = self.start(body).await;
        Sent {
            side: Side::Attack,
            submission,
            error_code,
            approved: None,
        }
    }

    /// The `n`th legitimate person: a number of any prefix, an address of their own; most
    /// of them check their code.
    async fn legitimate(&self, n: u32) -> Sent {
        let to = {
            let mut rng = rand::rng();
            let area = LEGITIMATE_AREA_CODES[rng.random_range(0..LEGITIMATE_AREA_CODES.len())];
            format!(
                "+1{area}{}{:04}",
                rng.random_range(200..1000),
                rng.random_range(0..10_000)
            )
        };
        let checks = !n.is_multiple_of(UNCHECKED_EVERY);
        let body = json!({
            "to": to,
            "template_id": self.template_id,
            "client_ip": format!("10.{}.{}.{}", (n / 256) % 256, n % 256, 1 + n % 250),
            "client_id": format!("person-{n}"),
        });
        let (submission, error_code) = self.start(body).await;
        let approved = match (&submission.answer, checks) {
            (Answer::Accepted { id, .. }, true) => Some(self.read_and_check(id, &to).await),
            _ => None,
        };
        Sent {
            side: Side::Legitimate { checks },
            submission,
            error_code,
            approved,
        }
    }

    /// Starts a verification; a refusal's error code is read from its body.
    async fn start(&self, body: Value) -> (Submission, Option<String>) {
        let url = format!("{}/v1/verifications", self.api_url);
        let (submission, refusal_body) = submit(&self.http, &url, body).await;
        let code = refusal_body.and_then(|body| {
            body.pointer("/error/code")
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
        (submission, code)
    }

    /// Waits for the SMS to `to`, reads the code from it and checks it. False when no SMS
    /// came or the code was not approved.
    async fn read_and_check(&self, id: &str, to: &str) -> bool {
        let deadline = tokio::time::Instant::now() + SMS_PATIENCE;
        let code = loop {
            if let Some(code) = self.code_sent_to(to).await {
                break code;
            }
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let answer = self
            .http
            .post(format!("{}/v1/verifications/{id}/check", self.api_url))
            .header("X-Api-Key", API_KEY)
            .json(&json!({ "code": code }))
            .send()
            .await;
        match answer {
            Ok(response) if response.status().is_success() => response
                .json::<Value>()
                .await
                .is_ok_and(|view| view.get("status").and_then(Value::as_str) == Some("approved")),
            _ => false,
        }
    }

    /// The code in the newest SMS to `to`: the last run of digits in its text.
    async fn code_sent_to(&self, to: &str) -> Option<String> {
        let messages: Vec<SinkMessage> = self
            .http
            .get(format!("{}/messages", self.sink_url))
            .query(&[("to", to)])
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let text = &messages.last()?.body;
        text.split(|c: char| !c.is_ascii_digit())
            .rfind(|run| !run.is_empty())
            .map(str::to_owned)
    }
}

#[cfg(test)]
mod tests {
    use super::{ATTACK_PREFIX, LEGITIMATE_AREA_CODES};

    #[test]
    fn legitimate_numbers_never_share_the_attack_prefix_or_the_allowed_fault_traffic() {
        assert!(!LEGITIMATE_AREA_CODES.contains(&646));
        assert!(!LEGITIMATE_AREA_CODES.contains(&415));
        assert!(ATTACK_PREFIX.starts_with("+1646"));
    }
}
