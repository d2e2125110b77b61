//! One load run from start to report: preflight (API ready, sink reachable, template),
//! the send phase (open or closed loop), the drain (waiting for outstanding SMS and
//! checks), and turning what was recorded into a [`Report`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::check::Checker;
use crate::client::{ApiClient, SinkClient, SinkStats, http_client};
use crate::clock::{self, Clock};
use crate::delivery::Arrivals;
use crate::numbers::NumberSequence;
use crate::progress::{self, Phase, Snapshot};
use crate::report::{CheckReport, LOST_IDS_LISTED, Report, failure_maps};
use crate::schedule::Schedule;
use crate::settings::{LoadSettings, Mode};
use crate::signals::SignalSequence;
use crate::tally::{Accepted, Answer, Tally};

/// Longest wait for the sink's small answers (`/stats`, one number's messages).
const SINK_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for a full listing of the sink, which may hold many messages.
const LISTING_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the drain looks at the sink's counter.
const DRAIN_POLL: Duration = Duration::from_millis(500);
/// Shortest gap between two full listings while SMS are still missing.
const RELIST_GAP: Duration = Duration::from_secs(5);
/// Missing SMS few enough to look up one number at a time rather than list everything.
const LOOKUP_ONE_BY_ONE: usize = 200;

/// What every request task needs.
struct Shared {
    api: ApiClient,
    tally: Tally,
    clock: Clock,
    numbers: NumberSequence,
    /// The end-user signals sent with every POST, with `--client-signals`.
    client_signals: Option<SignalSequence>,
    template_id: i64,
    checker: Option<Arc<Checker>>,
}

impl Shared {
    /// Sends the run's `index`th POST, due at `due`, and records the answer.
    async fn post(&self, index: u64, due: Instant) {
        let number = self.numbers.nth(index);
        self.tally.record_start();
        let started = Instant::now();
        let signals = self.client_signals.map(|sequence| sequence.nth(index));
        let result = self
            .api
            .start_verification(&number, self.template_id, signals.as_ref())
            .await;
        let answered = Instant::now();
        let accepted = self.tally.record_answer(Answer {
            number: number.clone(),
            due,
            due_wall: self.clock.wall(due),
            started,
            answered,
            result: &result,
        });
        if let (Some(checker), Some(accepted)) = (&self.checker, accepted) {
            checker.spawn(number, accepted, answered);
        }
    }
}

/// Runs the load described by `settings` and reports what happened.
///
/// Progress goes to stderr once a second. The first Ctrl-C stops sending and goes on to the
/// drain; a second one stops waiting for SMS and reports at once.
///
/// # Errors
/// When the API or the sink cannot be reached before the run, the API refuses the key or
/// the template, or the sink cannot be read at the end.
pub async fn run(settings: LoadSettings) -> anyhow::Result<Report> {
    let mode = settings.mode();
    let connections = mode.connections(settings.max_in_flight) + settings.check_concurrency;
    let http = http_client(connections, settings.timeout).context("building the HTTP client")?;
    let api = ApiClient::new(http.clone(), &settings.api, &settings.api_key)
        .context("reading --api-key")?;
    let sink = SinkClient::new(http, &settings.sink);

    api.ready().await.with_context(|| {
        format!(
            "the API at {} is not ready (GET /readyz); is verify-api running, and are its Postgres and RabbitMQ up?",
            api.base()
        )
    })?;
    let baseline = sink.stats(SINK_TIMEOUT).await.with_context(|| {
        format!(
            "cannot read the sink at {} (GET /stats); is verify-sink running there, and do the workers send to it?",
            sink.base()
        )
    })?;
    refuse_enforced_abuse_rules(&api).await?;
    let template_id = prepare_template(&api, settings.template_id).await?;
    let numbers = settings.numbers_from.unwrap_or_else(NumberSequence::random);
    eprintln!(
        "verify-load: {} for {:?} (drain up to {:?}) against {}, sink {}; template {template_id}; numbers from {numbers}{}",
        describe(mode),
        settings.duration,
        settings.drain,
        api.base(),
        sink.base(),
        if settings.client_signals {
            "; client_ip and client_id on every request"
        } else {
            ""
        },
    );

    let checker = settings.check.then(|| {
        Arc::new(Checker::new(
            api.clone(),
            sink.clone(),
            settings.check_concurrency,
        ))
    });
    let clock = Clock::start();
    let shared = Arc::new(Shared {
        api,
        tally: Tally::default(),
        clock,
        numbers,
        client_signals: settings.client_signals.then(SignalSequence::random),
        template_id,
        checker: checker.clone(),
    });

    let stop_sending = CancellationToken::new();
    let stop_draining = CancellationToken::new();
    let interrupted = Arc::new(AtomicBool::new(false));
    let signals = tokio::spawn(watch_interrupts(
        stop_sending.clone(),
        stop_draining.clone(),
        Arc::clone(&interrupted),
    ));
    let draining = Arc::new(AtomicBool::new(false));
    let stop_progress = CancellationToken::new();
    let progress = tokio::spawn(show_progress(
        Arc::clone(&shared),
        sink.clone(),
        baseline,
        Arc::clone(&draining),
        stop_progress.clone(),
    ));

    drive(
        Arc::clone(&shared),
        mode,
        settings.duration,
        settings.max_in_flight,
        &stop_sending,
    )
    .await;
    draining.store(true, Ordering::Relaxed);
    let drain_deadline = Instant::now() + settings.drain;
    let results = shared.tally.take_results();

    let check_done = async {
        if let Some(checker) = &checker {
            checker.finish(drain_deadline, &stop_draining).await;
        }
    };
    let (arrivals, ()) = tokio::join!(
        collect_deliveries(
            &sink,
            &results.accepted,
            baseline,
            drain_deadline,
            &stop_draining
        ),
        check_done
    );
    stop_progress.cancel();
    // The progress task only prints; if it failed there is nothing to recover.
    let _ = progress.await;
    signals.abort();
    let arrivals = arrivals?;

    let deliveries = arrivals.figures(&results.accepted);
    let interrupted = interrupted.load(Ordering::Relaxed);
    // The last POST of a full run leaves up to one interval before the end; the duration is
    // the fair window then. A run cut short by Ctrl-C sent only until its last POST.
    let last_start = results.last_start.map_or(Duration::ZERO, |last| {
        last.saturating_duration_since(clock.started())
    });
    let sending = if interrupted {
        last_start
    } else {
        last_start.max(settings.duration)
    }
    .as_secs_f64();
    let send_window = results
        .last_answer
        .map_or(settings.duration, |last| {
            last.saturating_duration_since(clock.started())
        })
        .as_secs_f64();
    let delivery_window = deliveries
        .last_arrival
        .and_then(|last| clock::between(clock.started_wall(), last))
        .map_or(0.0, |window| window.as_secs_f64());
    let per_sec = |count: u64, window: f64| {
        if window > 0.0 {
            count as f64 / window
        } else {
            0.0
        }
    };
    let (errors, transport_errors) = failure_maps(&results.failures);
    let counters = results.counters;
    let mut report = Report {
        api: settings.api.clone(),
        sink: settings.sink.clone(),
        mode: match mode {
            Mode::Open { .. } => "open",
            Mode::Closed { .. } => "closed",
        },
        offered_rate: match mode {
            Mode::Open { rate } => Some(rate),
            Mode::Closed { .. } => None,
        },
        concurrency: match mode {
            Mode::Open { .. } => None,
            Mode::Closed { concurrency } => Some(concurrency),
        },
        duration_secs: settings.duration.as_secs_f64(),
        drain_secs: settings.drain.as_secs_f64(),
        check: settings.check,
        client_signals: settings.client_signals,
        template_id,
        first_number: numbers.to_string(),
        started_at: clock.started_wall(),
        interrupted,
        sent: counters.sent,
        accepted: counters.accepted,
        delivered: deliveries.delivered,
        lost: deliveries.lost.len() as u64,
        duplicates: deliveries.duplicates,
        lost_ids: deliveries
            .lost
            .iter()
            .take(LOST_IDS_LISTED)
            .map(|(_, id)| id.clone())
            .collect(),
        arrived_before_sent: deliveries.arrived_before_sent,
        sending_secs: sending,
        send_window_secs: send_window,
        delivery_window_secs: delivery_window,
        sent_per_sec: per_sec(counters.sent, sending),
        accepted_per_sec: per_sec(counters.accepted, send_window),
        delivered_per_sec: per_sec(deliveries.delivered, delivery_window),
        errors,
        transport_errors,
        error_examples: results.failures.examples.clone(),
        api_latency_ms: results.api_latency.summary(),
        end_to_end_ms: deliveries.end_to_end.summary(),
        check_latency_ms: None,
        send_lag_ms: matches!(mode, Mode::Open { .. }).then(|| results.send_lag.summary()),
        checks: None,
        problems: Vec::new(),
        warnings: Vec::new(),
    };
    if let Some(checker) = &checker {
        let checks = checker.results();
        let (mut check_errors, transport) = failure_maps(&checks.failures);
        check_errors.extend(transport);
        let window = checks.last_answer.map_or(0.0, |last| {
            last.saturating_duration_since(clock.started())
                .as_secs_f64()
        });
        report.check_latency_ms = Some(checks.latency.summary());
        report.checks = Some(CheckReport {
            approved_per_sec: per_sec(checks.figures.approved, window),
            figures: checks.figures,
            window_secs: window,
            errors: check_errors,
        });
    }
    report.assess();
    Ok(report)
}

fn describe(mode: Mode) -> String {
    match mode {
        Mode::Open { rate } => format!("open loop at {rate}/s"),
        Mode::Closed { concurrency } => format!("closed loop with {concurrency} in flight"),
    }
}

/// The template to use: `--template-id` if given (after making sure it exists), else a new
/// one with a run-unique name.
/// A run sends to consecutive numbers that share prefixes, which is what SMS pumping looks
/// like: under enforced abuse rules most of it would be refused and the figures would
/// measure the rules, not the pipeline. So the run asks for a deployment that judges
/// without refusing (`shadow`) or does not judge (`off`).
async fn refuse_enforced_abuse_rules(api: &ApiClient) -> anyhow::Result<()> {
    let mode = api
        .abuse_mode()
        .await
        .context("reading the API's abuse mode (GET /v1/abuse/rules)")?;
    if mode == "enforce" {
        anyhow::bail!(
            "the API enforces its abuse rules (VERIFY_ABUSE_MODE=enforce), and a load run's \
             consecutive numbers look like SMS pumping to them: most requests would be refused. \
             Start the API with VERIFY_ABUSE_MODE=shadow (rules judged and recorded, nothing \
             refused) or VERIFY_ABUSE_MODE=off, then run again"
        );
    }
    Ok(())
}

async fn prepare_template(api: &ApiClient, template_id: Option<i64>) -> anyhow::Result<i64> {
    if let Some(id) = template_id {
        api.find_template(id).await.with_context(|| {
            format!(
                "cannot use template {id} (GET /v1/templates/{id}); a 401 means the API key is refused"
            )
        })?;
        return Ok(id);
    }
    let name = format!(
        "load-{}-{:08x}",
        chrono::Utc::now().format("%Y%m%d-%H%M%S"),
        rand::random::<u32>()
    );
    api.create_template(&name).await.with_context(|| {
        format!(
            "cannot create template {name} (POST /v1/templates); a 401 means the API key is refused"
        )
    })
}

/// The send phase: returns once every POST has been answered.
async fn drive(
    shared: Arc<Shared>,
    mode: Mode,
    duration: Duration,
    max_in_flight: usize,
    stop: &CancellationToken,
) {
    let tasks = TaskTracker::new();
    let start = shared.clock.started();
    match mode {
        Mode::Open { rate } => {
            let schedule = Schedule::new(rate, duration);
            let slots = Arc::new(Semaphore::new(max_in_flight));
            let mut next = 0;
            'schedule: while next < schedule.total() {
                let due_now = schedule.due_by(start.elapsed());
                while next < due_now {
                    // Waiting for a slot delays the send but not its due time, so the wait
                    // shows up in the latency instead of silently lowering the rate.
                    let permit = tokio::select! {
                        permit = Arc::clone(&slots).acquire_owned() => permit,
                        () = stop.cancelled() => break 'schedule,
                    };
                    let Ok(permit) = permit else {
                        break 'schedule;
                    };
                    let due = start + schedule.due(next);
                    let shared = Arc::clone(&shared);
                    let index = next;
                    tasks.spawn(async move {
                        shared.post(index, due).await;
                        drop(permit);
                    });
                    next += 1;
                }
                if next < schedule.total() {
                    let wake = start + schedule.due(next);
                    tokio::select! {
                        () = tokio::time::sleep_until(wake.into()) => {}
                        () = stop.cancelled() => break 'schedule,
                    }
                }
            }
        }
        Mode::Closed { concurrency } => {
            let end = start + duration;
            let next_index = Arc::new(AtomicU64::new(0));
            for _ in 0..concurrency {
                let shared = Arc::clone(&shared);
                let next_index = Arc::clone(&next_index);
                let stop = stop.clone();
                tasks.spawn(async move {
                    while Instant::now() < end && !stop.is_cancelled() {
                        let index = next_index.fetch_add(1, Ordering::Relaxed);
                        shared.post(index, Instant::now()).await;
                    }
                });
            }
        }
    }
    tasks.close();
    tasks.wait().await;
}

/// The drain: finds the SMS of every accepted verification at the sink, until all are
/// there, `deadline` passes or `stop` is cancelled.
///
/// While SMS are outstanding only the sink's `/stats` counter is watched. The full listing
/// is fetched once the counter says everything has arrived (or at the deadline); if a few
/// are still missing then, they are looked up one number at a time.
async fn collect_deliveries(
    sink: &SinkClient,
    accepted: &HashMap<String, Accepted>,
    baseline: SinkStats,
    deadline: Instant,
    stop: &CancellationToken,
) -> anyhow::Result<Arrivals> {
    let mut arrivals = Arrivals::default();
    if accepted.is_empty() {
        return Ok(arrivals);
    }
    let wanted = accepted.len() as u64;
    // The sink's counter at the last full listing, and when that was.
    let mut last_listing: Option<(u64, Instant)> = None;
    loop {
        let out_of_time = Instant::now() >= deadline || stop.is_cancelled();
        let counter = sink.stats(SINK_TIMEOUT).await.ok().map(|s| s.accepted);
        let arrived = counter.map(|c| c.saturating_sub(baseline.accepted));
        let worth_listing = out_of_time
            || match (arrived, counter, last_listing) {
                (Some(arrived), _, None) => arrived >= wanted,
                (Some(_), Some(counter), Some((listed_counter, listed_at))) => {
                    counter > listed_counter && listed_at.elapsed() >= RELIST_GAP
                }
                _ => false,
            };
        if worth_listing {
            match sink.messages(LISTING_TIMEOUT).await {
                Ok(messages) => {
                    arrivals.replace_all(&messages, accepted);
                    last_listing = Some((counter.unwrap_or_default(), Instant::now()));
                }
                Err(error) if out_of_time => {
                    return Err(error).with_context(|| {
                        format!(
                            "cannot list the sink's messages (GET {}/messages)",
                            sink.base()
                        )
                    });
                }
                Err(_) => {}
            }
            let missing = arrivals.missing(accepted);
            if missing.is_empty() || out_of_time {
                return Ok(arrivals);
            }
            if missing.len() <= LOOKUP_ONE_BY_ONE {
                look_up_missing(sink, accepted, &mut arrivals, deadline, stop).await;
                return Ok(arrivals);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(DRAIN_POLL.min(deadline.saturating_duration_since(Instant::now()))) => {}
            () = stop.cancelled() => {}
        }
    }
}

/// Looks up each missing number until it has arrived, `deadline` passes or `stop` is
/// cancelled.
async fn look_up_missing(
    sink: &SinkClient,
    accepted: &HashMap<String, Accepted>,
    arrivals: &mut Arrivals,
    deadline: Instant,
    stop: &CancellationToken,
) {
    loop {
        let missing: Vec<String> = arrivals
            .missing(accepted)
            .into_iter()
            .map(str::to_owned)
            .collect();
        if missing.is_empty() {
            return;
        }
        for number in &missing {
            // An unanswered lookup leaves the number missing; the deadline bounds retries.
            if let Ok(messages) = sink.messages_to(number).await {
                arrivals.replace_one(number, &messages);
            }
        }
        if Instant::now() >= deadline || stop.is_cancelled() {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(DRAIN_POLL.min(deadline.saturating_duration_since(Instant::now()))) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Prints a progress line every second until `stop` is cancelled.
async fn show_progress(
    shared: Arc<Shared>,
    sink: SinkClient,
    baseline: SinkStats,
    draining: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let start = shared.clock.started();
    let mut ticker = tokio::time::interval_at(
        (start + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // Nothing was delivered before the start, so the first line's rate covers its second.
    let mut previous = Snapshot {
        delivered: Some(0),
        ..Snapshot::default()
    };
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stop.cancelled() => return,
        }
        let delivered = sink
            .stats(Duration::from_millis(900))
            .await
            .ok()
            .map(|stats| stats.accepted.saturating_sub(baseline.accepted));
        let now = Snapshot {
            elapsed: start.elapsed(),
            counters: shared.tally.counters(),
            delivered,
            recent_p99: shared.tally.take_recent_p99(),
            checked: shared.checker.as_ref().map(|checker| checker.done()),
        };
        let phase = if draining.load(Ordering::Relaxed) {
            Phase::Draining
        } else {
            Phase::Sending
        };
        eprintln!("{}", progress::line(phase, &now, &previous));
        previous = now;
    }
}

/// First Ctrl-C: stop sending. Second: stop waiting for SMS.
async fn watch_interrupts(
    stop_sending: CancellationToken,
    stop_draining: CancellationToken,
    interrupted: Arc<AtomicBool>,
) {
    if tokio::signal::ctrl_c().await.is_err() {
        return;
    }
    interrupted.store(true, Ordering::Relaxed);
    eprintln!("verify-load: interrupted; stopping sends (Ctrl-C again to stop waiting for SMS)");
    stop_sending.cancel();
    if tokio::signal::ctrl_c().await.is_ok() {
        eprintln!("verify-load: no longer waiting for SMS");
        stop_draining.cancel();
    }
}
