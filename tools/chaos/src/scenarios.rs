//! The scenarios: each runs traffic, injects one kind of fault on a fixed timeline, heals
//! it, audits, and judges the figures against the reliability guarantees.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::Serialize;
use serde_json::json;
use tokio::time::sleep;

use crate::audit::{Figures, audit, in_window};
use crate::harness::{Harness, SEND_LEASE};
use crate::pumping::{self, PumpingFigures};
use crate::settings::ScenarioName;
use crate::traffic::{Answer, Submission};

/// The longest a request may take while a dependency is down.
const ANSWER_BOUND: Duration = Duration::from_secs(2);
/// The longest the system may take to work again after a dependency comes back.
const RECOVERY_BOUND: Duration = Duration::from_secs(15);
/// How long sends may take to settle after the traffic stops, beyond any lease.
const DRAIN: Duration = Duration::from_secs(60);
/// Sends in flight per worker at most (`VERIFY_WORKER_CONCURRENCY`, left at its default).
const WORKER_CONCURRENCY: usize = 1024;
/// How long a SIGTERMed process may take to drain and exit.
const EXIT_DEADLINE: Duration = Duration::from_secs(30);
/// How late the sink's delivery receipts come while the webhook endpoint is down, and
/// after (its default).
const RECEIPT_DELAY_DURING_OUTAGE_MS: u64 = 20_000;
const RECEIPT_DELAY_MS: u64 = 1_000;
/// How long webhook events may take to arrive once the endpoint is back: the chaos
/// stack's retry schedule (106 s in all) plus the receipts' delay.
const EVENTS_DRAIN: Duration = Duration::from_secs(150);
/// The SMS requested while the webhook endpoint is down must arrive as fast as ever.
const SMS_P99_BOUND: Duration = Duration::from_secs(1);

/// One guarantee checked against the figures.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub guarantee: String,
    pub passed: bool,
    pub measured: String,
}

/// What one scenario did and found.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    pub scenario: &'static str,
    pub figures: Figures,
    pub checks: Vec<Check>,
    /// What was injected, when, in order.
    pub events: Vec<String>,
    /// Set when the scenario could not run to its end.
    pub error: Option<String>,
}

impl ScenarioReport {
    /// True when it ran to the end and every check held.
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.checks.iter().all(|c| c.passed)
    }
}

/// A scenario's timeline as it happened, for the audit and the report.
struct Run {
    started: tokio::time::Instant,
    events: Vec<String>,
    checks: Vec<Check>,
}

impl Run {
    fn new() -> Self {
        Self {
            started: tokio::time::Instant::now(),
            events: Vec::new(),
            checks: Vec::new(),
        }
    }

    /// Records that something happened now, and returns when.
    fn event(&mut self, what: impl Into<String>) -> DateTime<Utc> {
        let what = what.into();
        let at = self.started.elapsed().as_secs_f64();
        println!("    {at:6.1}s  {what}");
        self.events.push(format!("{at:.1}s {what}"));
        Utc::now()
    }

    fn check(&mut self, guarantee: &str, passed: bool, measured: impl Into<String>) {
        self.checks.push(Check {
            guarantee: guarantee.to_owned(),
            passed,
            measured: measured.into(),
        });
    }
}

/// Runs `name` and reports; a scenario that fails to run is reported, not propagated.
pub async fn run(name: ScenarioName, harness: &mut Harness) -> ScenarioReport {
    let mut run = Run::new();
    let result = match name {
        ScenarioName::BrokerOutage => broker_outage(harness, &mut run).await,
        ScenarioName::ApiCrash => api_crash(harness, &mut run).await,
        ScenarioName::WorkerKill => worker_kill(harness, &mut run).await,
        ScenarioName::ConnectionsCut => connections_cut(harness, &mut run).await,
        ScenarioName::PostgresOutage => postgres_outage(harness, &mut run).await,
        ScenarioName::ProviderOutage => provider_outage(harness, &mut run).await,
        ScenarioName::GracefulShutdown => graceful_shutdown(harness, &mut run).await,
        ScenarioName::ColdStart => cold_start(harness, &mut run).await,
        ScenarioName::Pumping => pumping(harness, &mut run).await,
        ScenarioName::WebhookOutage => webhook_outage(harness, &mut run).await,
    };
    let (figures, error) = match result {
        Ok(figures) => (figures, None),
        Err(error) => (Figures::default(), Some(format!("{error:#}"))),
    };
    if error.is_none() {
        standard_checks(&mut run, &figures);
    }
    ScenarioReport {
        scenario: name.as_str(),
        figures,
        checks: run.checks,
        events: run.events,
        error,
    }
}

/// The guarantees every scenario must keep.
fn standard_checks(run: &mut Run, f: &Figures) {
    run.check(
        "some verifications were accepted",
        f.accepted > 0,
        format!("{} of {} requests", f.accepted, f.requests),
    );
    run.check(
        "no accepted verification lost",
        f.lost == 0,
        format!("{} lost", f.lost),
    );
    run.check("no send stuck", f.stuck == 0, format!("{} stuck", f.stuck));
    run.check(
        "no SMS after its code expired",
        f.sent_after_expiry == 0,
        format!("{} late", f.sent_after_expiry),
    );
    run.check(
        "duplicates within the bound",
        f.duplicates <= f.duplicate_bound,
        format!("{} duplicates, bound {}", f.duplicates, f.duplicate_bound),
    );
    run.check(
        "no 5xx other than 503",
        f.server_errors == 0,
        format!("{} other 5xx", f.server_errors),
    );
    run.check(
        "every 503 carries Retry-After",
        f.answered_503_without_retry_after == 0,
        format!("{} without", f.answered_503_without_retry_after),
    );
}

fn recovery_check(run: &mut Run, f: &Figures) {
    let measured = f
        .recovery_secs
        .map_or_else(|| "never".to_owned(), |s| format!("{s:.1} s"));
    run.check(
        "working again within 15 s of the dependency returning",
        f.recovery_secs
            .is_some_and(|s| s <= RECOVERY_BOUND.as_secs_f64()),
        measured,
    );
}

fn answered_in_time_check(run: &mut Run, f: &Figures) {
    run.check(
        "answers within 2 s while a dependency is down",
        f.slowest_answer_during_fault_ms <= millis(ANSWER_BOUND),
        format!("slowest {} ms", f.slowest_answer_during_fault_ms),
    );
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The dependency an outage scenario stops.
#[derive(Debug, Clone, Copy)]
enum Dependency {
    Postgres,
    RabbitMq,
}

impl Dependency {
    fn name(self) -> &'static str {
        match self {
            Self::Postgres => "Postgres",
            Self::RabbitMq => "RabbitMQ",
        }
    }
}

/// An outage as it happened: the traffic sent through it and the audit's figures.
struct Outage {
    submissions: Vec<Submission>,
    figures: Figures,
    window: (DateTime<Utc>, DateTime<Utc>),
}

/// Stops `dependency` for the outage length under traffic, starts it again, audits, and
/// checks the answers during the outage came within 2 s and the system recovered.
async fn outage(h: &mut Harness, run: &mut Run, dependency: Dependency) -> anyhow::Result<Outage> {
    let calm = h.settings.calm();
    let traffic = h.traffic(0);
    sleep(calm).await;
    let name = dependency.name();
    let down = run.event(format!("{name} stopped"));
    match dependency {
        Dependency::Postgres => h.stop_postgres().await?,
        Dependency::RabbitMq => h.stop_rabbit().await?,
    }
    sleep(h.settings.outage()).await;
    match dependency {
        Dependency::Postgres => h.start_postgres().await?,
        Dependency::RabbitMq => h.start_rabbit().await?,
    }
    let back = run.event(format!("{name} started again"));
    sleep(calm * 2).await;
    let submissions = traffic.finish().await;
    run.event("traffic stopped; auditing");
    let figures = audit(
        &h.stack,
        &submissions,
        back,
        Some((down, back)),
        &[back],
        DRAIN,
    )
    .await?;
    answered_in_time_check(run, &figures);
    recovery_check(run, &figures);
    Ok(Outage {
        submissions,
        figures,
        window: (down, back),
    })
}

/// RabbitMQ stops; requests keep being accepted; the outbox publishes once it is back.
async fn broker_outage(h: &mut Harness, run: &mut Run) -> anyhow::Result<Figures> {
    let outage = outage(h, run, Dependency::RabbitMq).await?;
    let refused = outage
        .submissions
        .iter()
        .filter(|s| in_window(s, outage.window))
        .filter(|s| !matches!(s.answer, Answer::Accepted { .. }))
        .count();
    run.check(
        "every request accepted (202) while the broker is down",
        refused == 0,
        format!("{refused} not accepted"),
    );
    Ok(outage.figures)
}

/// The API is killed with -9 repeatedly: commits whose publish never happened are relayed.
async fn api_crash(h: &mut Harness, run: &mut Run) -> anyhow::Result<Figures> {
    let kills = if h.settings.quick { 3 } else { 8 };
    let traffic = h.traffic(0);
    let mut restarts = Vec::new();
    for _ in 0..kills {
        sleep(Duration::from_millis(
            rand::rng().random_range(2_000..5_000),
        ))
        .await;
        h.stack.kill_api().await?;
        run.event("verify-api killed with -9");
        h.stack.start_api().await?;
        restarts.push(run.event("verify-api restarted"));
    }
    sleep(h.settings.calm()).await;
    let submissions = traffic.finish().await;
    run.event("traffic stopped; auditing");
    let last = restarts.last().copied().unwrap_or_else(Utc::now);
    let figures = audit(&h.stack, &submissions, last, None, &restarts, DRAIN).await?;
    Ok(figures)
}

/// Workers are killed with -9 mid-send and replaced; their jobs are redelivered and their
/// claims recovered once the lease runs out.
async fn worker_kill(h: &mut Harness, run: &mut Run) -> anyhow::Result<Figures> {
    let kills = if h.settings.quick { 4 } else { 12 };
    // A slow provider keeps sends in flight, so each kill interrupts some.
    h.stack.control_sink(json!({ "latency_ms": 300 })).await?;
    run.event("provider latency 300 ms");
    let traffic = h.traffic(0);
    for _ in 0..kills {
        sleep(Duration::from_millis(
            rand::rng().random_range(3_000..6_000),
        ))
        .await;
        let victim = rand::rng().random_range(0..usize::from(h.settings.workers));
        let name = h.stack.kill_worker(victim).await?;
        run.event(format!("{name} killed with -9"));
        h.stack.start_worker()?;
    }
    sleep(h.settings.calm()).await;
    let submissions = traffic.finish().await;
    let ended = run.event("traffic stopped; auditing");
    let mut figures = audit(&h.stack, &submissions, ended, None, &[], DRAIN + SEND_LEASE).await?;
    // A killed worker may have handed an SMS to the provider without recording it; only
    // those, at most its whole prefetch, can be sent again.
    figures.duplicate_bound = kills * WORKER_CONCURRENCY;
    Ok(figures)
}

/// Sessions terminated and dependencies restarted while traffic runs; everything must
/// reconnect by itself.
async fn connections_cut(h: &mut Harness, run: &mut Run) -> anyhow::Result<Figures> {
    let gap = if h.settings.quick {
        Duration::from_secs(8)
    } else {
        Duration::from_secs(20)
    };
    let traffic = h.traffic(0);
    let mut recoveries = Vec::new();
    sleep(h.settings.calm()).await;
    let terminated = h.postgres.terminate_connections().await?;
    recoveries.push(run.event(format!("{terminated} Postgres sessions terminated")));
    sleep(gap).await;
    h.rabbit.close_all_connections().await?;
    recoveries.push(run.event("every RabbitMQ connection closed by the broker"));
    sleep(gap).await;
    run.event("Postgres restarting");
    h.stop_postgres().await?;
    h.start_postgres().await?;
    recoveries.push(run.event("Postgres restarted"));
    sleep(gap).await;
    run.event("RabbitMQ restarting");
    h.stop_rabbit().await?;
    h.start_rabbit().await?;
    recoveries.push(run.event("RabbitMQ restarted"));
    sleep(RECOVERY_BOUND + Duration::from_secs(5)).await;
    let submissions = traffic.finish().await;
    run.event("traffic stopped; auditing");
    let last = recoveries.last().copied().unwrap_or_else(Utc::now);
    let figures = audit(&h.stack, &submissions, last, None, &recoveries, DRAIN).await?;
    recovery_check(run, &figures);
    Ok(figures)
}

/// Postgres stops: the API answers 503 with Retry-After at once, and recovers by itself.
async fn postgres_outage(h: &mut Harness, run: &mut Run) -> anyhow::Result<Figures> {
    let figures = outage(h, run, Dependency::Postgres).await?.figures;
    run.check(
        "requests refused with 503 while Postgres is down",
        figures.answered_503 > 0,
        format!("{} answered 503", figures.answered_503),
    );
    Ok(figures)
}

/// The provider fails every send (5xx, then hangs, then 429 with Retry-After) and then
/// recovers: every still-valid code is sent, none after its expiry.
async fn provider_outage(h: &mut Harness, run: &mut Run) -> anyhow::Result<Figures> {
    let phase = h.settings.outage() / 3;
    // Every fourth code lives only 60 s, so a long outage outlives some of them.
    let traffic = h.traffic(4);
    sleep(h.settings.calm()).await;
    h.stack
        .control_sink(
            json!({ "failure_rate": 1.0, "failure_mode": "status", "failure_status": 503 }),
        )
        .await?;
    run.event("provider answers 503 to everything");
    sleep(phase).await;
    h.stack
        .control_sink(json!({ "failure_mode": "hang", "hang_ms": 15_000 }))
        .await?;
    run.event("provider hangs (clients time out)");
    sleep(phase).await;
    h.stack
        .control_sink(
            json!({ "failure_mode": "status", "failure_status": 429, "retry_after_secs": 5 }),
        )
        .await?;
    run.event("provider answers 429 with Retry-After: 5");
    sleep(phase).await;
    h.stack.heal_sink().await?;
    let healed = run.event("provider healthy again");
    sleep(h.settings.calm() * 2).await;
    let submissions = traffic.finish().await;
    run.event("traffic stopped; auditing");
    let figures = audit(&h.stack, &submissions, healed, None, &[], DRAIN * 2).await?;
    run.check(
        "the outage was felt: sends were retried",
        figures.retried > 0,
        format!("{} retried", figures.retried),
    );
    Ok(figures)
}

/// SIGTERM to workers (scaling down) and to the API under load: each drains and exits 0.
async fn graceful_shutdown(h: &mut Harness, run: &mut Run) -> anyhow::Result<Figures> {
    // A slow provider makes sure the workers have sends in flight when told to stop.
    h.stack.control_sink(json!({ "latency_ms": 500 })).await?;
    run.event("provider latency 500 ms");
    let traffic = h.traffic(0);
    let calm = h.settings.calm();
    sleep(calm).await;
    let mut exits = Vec::new();
    for _ in 1..h.settings.workers {
        run.event("SIGTERM to a worker (scaling down)");
        let status = h.stack.terminate_worker(EXIT_DEADLINE).await?;
        run.event(format!("worker exited: {status}"));
        exits.push(status.success());
        sleep(Duration::from_secs(2)).await;
    }
    sleep(calm).await;
    h.stack.scale_workers_to(usize::from(h.settings.workers))?;
    run.event("scaled back up");
    sleep(calm).await;
    run.event("SIGTERM to verify-api");
    let api_status = h.stack.terminate_api(EXIT_DEADLINE).await?;
    run.event(format!("verify-api exited: {api_status}"));
    h.stack.start_api().await?;
    let back = run.event("verify-api started again");
    sleep(calm).await;
    let submissions = traffic.finish().await;
    run.event("traffic stopped; auditing");
    let figures = audit(&h.stack, &submissions, back, None, &[], DRAIN).await?;
    let clean = exits.iter().filter(|ok| **ok).count();
    run.check(
        "stopped workers exited 0",
        clean == exits.len(),
        format!("{clean} of {} exited 0", exits.len()),
    );
    run.check(
        "the API exited 0",
        api_status.success(),
        api_status.to_string(),
    );
    Ok(figures)
}

/// The API and workers start while Postgres and RabbitMQ are down (a reboot, a compose
/// stack coming up in any order): they wait for their dependencies instead of exiting.
async fn cold_start(h: &mut Harness, run: &mut Run) -> anyhow::Result<Figures> {
    h.stack.terminate_api(EXIT_DEADLINE).await?;
    h.stack.terminate_workers(EXIT_DEADLINE).await?;
    h.stop_postgres().await?;
    h.stop_rabbit().await?;
    run.event("everything stopped");
    h.stack.spawn_api()?;
    h.stack.scale_workers_to(usize::from(h.settings.workers))?;
    run.event("verify-api and workers started with Postgres and RabbitMQ down");
    sleep(Duration::from_secs(5)).await;
    h.start_postgres().await?;
    run.event("Postgres started");
    sleep(Duration::from_secs(5)).await;
    h.start_rabbit().await?;
    let back = run.event("RabbitMQ started");
    h.stack.wait_for_api(RECOVERY_BOUND * 2).await?;
    run.event("verify-api ready");
    let traffic = h.traffic(0);
    sleep(h.settings.calm() * 2).await;
    let submissions = traffic.finish().await;
    run.event("traffic stopped; auditing");
    let workers = h.stack.workers_running();
    let api_running = h.stack.api_running();
    let figures = audit(&h.stack, &submissions, back, None, &[back], DRAIN).await?;
    run.check(
        "the API waited for its dependencies instead of exiting",
        api_running,
        if api_running { "running" } else { "exited" },
    );
    run.check(
        "every worker waited for its dependencies instead of exiting",
        workers == usize::from(h.settings.workers),
        format!("{workers} of {} running", h.settings.workers),
    );
    recovery_check(run, &figures);
    Ok(figures)
}

/// SMS pumping against the rules as shipped: the attack's SMS must be held to the prefix
/// limit's few, while every legitimate request is accepted and every code typed in
/// approves.
async fn pumping(h: &mut Harness, run: &mut Run) -> anyhow::Result<Figures> {
    let shape = h.settings.pumping();
    run.event(format!(
        "{} attack requests to one prefix and {} legitimate ones, {}/s",
        shape.attack, shape.legitimate, shape.rate
    ));
    let started = Utc::now();
    let (submissions, mut found) = pumping::simulate(&h.stack, h.template_id(), shape).await?;
    run.event("traffic stopped; auditing");
    let figures = audit(&h.stack, &submissions, started, None, &[], DRAIN).await?;
    found.attack_delivered = pumping::count_attack_sms(&h.stack).await?;
    report_pumping(run, &found);
    Ok(figures)
}

/// The simulation's verdict: at most a tenth of the attack reaches the provider (the
/// prefix limit lets its first few through), and legitimate traffic loses nothing.
fn report_pumping(run: &mut Run, found: &PumpingFigures) {
    run.event(format!(
        "attack: {} requests, {} accepted, {} SMS reached the provider; refused: {:?}",
        found.attack_requests, found.attack_accepted, found.attack_delivered, found.attack_refusals
    ));
    run.event(format!(
        "legitimate: {} requests, {} refused {:?}, {} of {} checked codes approved",
        found.legitimate_requests,
        found.legitimate_refused(),
        found.legitimate_refusals,
        found.legitimate_approved,
        found.legitimate_checked
    ));
    run.check(
        "the attack is stopped: at most 10 % of it reaches the provider",
        found.attack_delivered * 10 <= found.attack_requests,
        format!(
            "{} of {} attack requests sent",
            found.attack_delivered, found.attack_requests
        ),
    );
    run.check(
        "no legitimate request refused",
        found.legitimate_requests > 0 && found.legitimate_refused() == 0,
        format!(
            "{} of {} refused",
            found.legitimate_refused(),
            found.legitimate_requests
        ),
    );
    run.check(
        "every legitimate code typed in is approved",
        found.legitimate_checked > 0 && found.legitimate_approved == found.legitimate_checked,
        format!(
            "{} of {} approved",
            found.legitimate_approved, found.legitimate_checked
        ),
    );
}

/// What the producer's endpoint and Postgres say of one webhook endpoint's events.
#[derive(Debug, Default)]
struct EventFigures {
    recorded: i64,
    delivered: i64,
    failed: i64,
    unique: u64,
    refused: u64,
    bad_signatures: u64,
    sent: u64,
    receipts: u64,
}

impl EventFigures {
    async fn read(h: &Harness, endpoint: i64) -> anyhow::Result<Self> {
        let counts = h
            .postgres
            .counts(&format!(
                "SELECT count(*), count(*) FILTER (WHERE status = 'delivered'), \
                 count(*) FILTER (WHERE status = 'failed') \
                 FROM webhook_deliveries WHERE endpoint_id = {endpoint}"
            ))
            .await?;
        let stats = h.stack.sink_webhook_stats().await?;
        let number = |value: &serde_json::Value| value.as_u64().unwrap_or_default();
        let of_type = |kind: &str| number(&stats["by_type"][kind]);
        Ok(Self {
            recorded: counts[0],
            delivered: counts[1],
            failed: counts[2],
            unique: number(&stats["unique"]),
            refused: number(&stats["refused"]),
            bad_signatures: number(&stats["bad_signatures"]),
            sent: of_type("send.sent"),
            receipts: of_type("send.delivered") + of_type("send.undelivered"),
        })
    }

    /// Every recorded event settled and at the endpoint, and an event for each of the
    /// `delivered_sms` sends and their receipts.
    fn complete(&self, delivered_sms: usize) -> bool {
        let sms = u64::try_from(delivered_sms).unwrap_or(u64::MAX);
        self.delivered + self.failed == self.recorded
            && u64::try_from(self.recorded) == Ok(self.unique)
            && self.sent >= sms
            && self.receipts >= sms
    }
}

/// The producer's webhook endpoint answers 503 for the length of an outage while the
/// provider's delivery receipts come 20 s late; once it is back, every event recorded
/// meanwhile reaches it, signed, and the SMS requested during the outage were not slowed.
async fn webhook_outage(h: &mut Harness, run: &mut Run) -> anyhow::Result<Figures> {
    let endpoint = h.stack.subscribe_sink_to_every_event().await?;
    run.event("the sink's webhook endpoint subscribed to every event");
    let traffic = h.traffic(0);
    sleep(h.settings.calm()).await;
    h.stack
        .control_sink_webhooks(json!({ "down": true }))
        .await?;
    h.stack
        .control_sink(json!({ "receipt_delay_ms": RECEIPT_DELAY_DURING_OUTAGE_MS }))
        .await?;
    let down = run.event("webhook endpoint answers 503; receipts 20 s late");
    sleep(h.settings.outage()).await;
    h.stack
        .control_sink_webhooks(json!({ "down": false }))
        .await?;
    h.stack
        .control_sink(json!({ "receipt_delay_ms": RECEIPT_DELAY_MS }))
        .await?;
    let back = run.event("webhook endpoint back; receipts on time");
    sleep(h.settings.calm() * 2).await;
    let submissions = traffic.finish().await;
    run.event("traffic stopped; auditing");
    let figures = audit(&h.stack, &submissions, back, Some((down, back)), &[], DRAIN).await?;

    let deadline = tokio::time::Instant::now() + EVENTS_DRAIN;
    let events = loop {
        let events = EventFigures::read(h, endpoint).await?;
        if events.complete(figures.delivered) || tokio::time::Instant::now() > deadline {
            break events;
        }
        sleep(Duration::from_secs(1)).await;
    };
    run.event("webhook events settled");
    h.stack.delete_webhook(endpoint).await?;

    run.check(
        "the outage was felt: events were refused while the endpoint was down",
        events.refused > 0,
        format!("{} refused", events.refused),
    );
    run.check(
        "every recorded event delivered once the endpoint was back",
        events.recorded > 0 && events.delivered == events.recorded,
        format!(
            "{} of {} delivered, {} failed",
            events.delivered, events.recorded, events.failed
        ),
    );
    run.check(
        "the endpoint received every event once, each correctly signed",
        u64::try_from(events.recorded) == Ok(events.unique) && events.bad_signatures == 0,
        format!(
            "{} distinct received, {} badly signed",
            events.unique, events.bad_signatures
        ),
    );
    run.check(
        "an event for every SMS sent and for its receipt",
        events.complete(figures.delivered),
        format!(
            "{} SMS: {} send.sent, {} receipt events",
            figures.delivered, events.sent, events.receipts
        ),
    );
    run.check(
        "SMS requested while the endpoint was down not slowed (p99 within 1 s)",
        figures
            .sms_p99_during_fault_ms
            .is_some_and(|p99| p99 <= millis(SMS_P99_BOUND)),
        figures
            .sms_p99_during_fault_ms
            .map_or_else(|| "none".to_owned(), |p99| format!("p99 {p99} ms")),
    );
    Ok(figures)
}
