//! Tracing (issue 13): the attempt span's fields, its outcome recorded inside it, the user's
//! events inside the handler as its children, the submitter's span as its parent, the retry log
//! level, and the fetch/ack spans' batch sizes; checked with a layer that captures every span
//! and event (executors on the test's own thread, so a thread-local subscriber sees them all).

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_poller::{FinalState, Poller, RetryPolicy, TaskContext};
use common::within;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Instrument, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// One span as the layer saw it: name, parent (an index in `Captured::spans`), fields (the
/// last value recorded for each).
#[derive(Debug, Clone)]
struct SpanRec {
    name: &'static str,
    parent: Option<usize>,
    fields: HashMap<String, String>,
    closed: bool,
}

#[derive(Debug, Clone)]
struct EventRec {
    level: Level,
    parent: Option<usize>,
    fields: HashMap<String, String>,
}

#[derive(Debug, Default)]
struct Captured {
    spans: Vec<SpanRec>,
    events: Vec<EventRec>,
    /// Open spans: id → index (ids are reused once a span closes; indexes never are).
    live: HashMap<u64, usize>,
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Captured>>);

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let parent = ctx.span(id).and_then(|s| s.parent()).map(|p| p.id());
        let mut c = self.0.lock().unwrap();
        let parent = parent.and_then(|p| c.live.get(&p.into_u64()).copied());
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        c.spans.push(SpanRec {
            name: attrs.metadata().name(),
            parent,
            fields,
            closed: false,
        });
        let index = c.spans.len() - 1;
        c.live.insert(id.into_u64(), index);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        let mut c = self.0.lock().unwrap();
        if let Some(&i) = c.live.get(&id.into_u64()) {
            values.record(&mut Fields(&mut c.spans[i].fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let parent = ctx.event_span(event).map(|s| s.id());
        let mut c = self.0.lock().unwrap();
        let parent = parent.and_then(|p| c.live.get(&p.into_u64()).copied());
        let mut fields = HashMap::new();
        event.record(&mut Fields(&mut fields));
        c.events.push(EventRec {
            level: *event.metadata().level(),
            parent,
            fields,
        });
    }

    fn on_close(&self, id: Id, _ctx: Context<'_, S>) {
        let mut c = self.0.lock().unwrap();
        if let Some(i) = c.live.remove(&id.into_u64()) {
            c.spans[i].closed = true;
        }
    }
}

impl Capture {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        tracing::subscriber::set_default(tracing_subscriber::registry().with(self.clone()))
    }

    fn snapshot(&self) -> (Vec<SpanRec>, Vec<EventRec>) {
        let c = self.0.lock().unwrap();
        (c.spans.clone(), c.events.clone())
    }
}

fn field<'a>(fields: &'a HashMap<String, String>, name: &str) -> &'a str {
    fields.get(name).map_or("<absent>", String::as_str)
}

/// The attempt spans of task `id`, in creation order.
fn attempts(spans: &[SpanRec], id: u64) -> Vec<(usize, &SpanRec)> {
    spans
        .iter()
        .enumerate()
        .filter(|(_, s)| {
            s.name == "actix_poller.attempt" && field(&s.fields, "task.id") == id.to_string()
        })
        .collect()
}

/// 0: succeeds (logging inside), 1: fails, 2: its future panics, 3: panics when called.
fn handler(n: u32, _cx: TaskContext) -> impl std::future::Future<Output = Result<(), String>> {
    if n == 3 {
        panic!("panicked when called");
    }
    async move {
        match n {
            0 => {
                tracing::info!(from = "handler", "inside the handler");
                Ok(())
            }
            1 => Err("boom".to_owned()),
            _ => panic!("kaboom"),
        }
    }
}

#[actix_rt::test]
async fn attempt_spans_carry_fields_outcome_parent_and_the_handlers_events() {
    let capture = Capture::default();
    let _guard = capture.install();
    let poller = Poller::<u32>::builder()
        .name("mailer")
        .on_current_arbiter()
        .start(handler)
        .unwrap();
    let mut receipts = Vec::new();
    for n in 0..4u32 {
        let request = tracing::info_span!("request", n);
        let receipt = poller.submit_tracked(n).instrument(request).await.unwrap();
        receipts.push(receipt);
    }
    let mut ids = Vec::new();
    for r in receipts {
        ids.push(r.id().0);
        within(r.outcome()).await.unwrap();
    }
    poller.shutdown(Duration::from_secs(5)).await.unwrap();

    let (spans, events) = capture.snapshot();
    let expected = [
        ("completed", None),
        ("failed", Some("boom")),
        ("panicked", Some("kaboom")),
        ("panicked", Some("panicked when called")),
    ];
    for (n, (&id, (outcome, error))) in ids.iter().zip(expected).enumerate() {
        let found = attempts(&spans, id);
        assert_eq!(found.len(), 1, "one attempt of task {id}: {found:?}");
        let (index, span) = found[0];
        let f = &span.fields;
        assert_eq!(field(f, "poller"), "mailer");
        assert_eq!(field(f, "otel.name"), "process mailer");
        assert_eq!(field(f, "task.attempt"), "1");
        assert_eq!(field(f, "executor"), "0");
        assert_eq!(field(f, "outcome"), outcome, "task {n}");
        assert_eq!(field(f, "error"), error.unwrap_or("<absent>"), "task {n}");
        // The submitter's span is the parent.
        let parent = span.parent.map(|p| &spans[p]);
        assert_eq!(parent.map(|p| p.name), Some("request"), "task {n}");
        assert_eq!(parent.map(|p| field(&p.fields, "n")), Some(&*n.to_string()));
        // The outcome's log line is inside the attempt's span: none for a success, WARN for a
        // failure without retries, ERROR for a panic.
        let logged: Vec<Level> = events
            .iter()
            .filter(|e| e.parent == Some(index) && field(&e.fields, "from") != "handler")
            .map(|e| e.level)
            .collect();
        let want = match outcome {
            "completed" => vec![],
            "failed" => vec![Level::WARN],
            _ => vec![Level::ERROR],
        };
        assert_eq!(logged, want, "task {n}");
    }
    // The handler's own event is a child of its attempt span.
    let inside: Vec<&EventRec> = events
        .iter()
        .filter(|e| field(&e.fields, "from") == "handler")
        .collect();
    assert_eq!(inside.len(), 1);
    assert_eq!(inside[0].parent, Some(attempts(&spans, ids[0])[0].0));
}

#[actix_rt::test]
async fn a_failure_that_will_be_retried_logs_at_the_configured_level() {
    let capture = Capture::default();
    let _guard = capture.install();
    let poller = Poller::<u32>::builder()
        .on_current_arbiter()
        .retry(RetryPolicy::attempts(3).fixed(Duration::from_millis(1)))
        .retry_log_level(Level::DEBUG)
        .start(|_n: u32, _cx| async { Err::<(), _>("always") })
        .unwrap();
    let receipt = poller
        .submit_tracked(1)
        .instrument(tracing::info_span!("request"))
        .await
        .unwrap();
    let id = receipt.id().0;
    assert_eq!(
        within(receipt.outcome()).await,
        Ok(FinalState::Dead {
            error: "always".into(),
            attempts: 3
        })
    );
    poller.shutdown(Duration::from_secs(5)).await.unwrap();

    let (spans, events) = capture.snapshot();
    let found = attempts(&spans, id);
    assert_eq!(found.len(), 3, "{found:?}");
    for (k, (index, span)) in found.iter().enumerate() {
        assert_eq!(field(&span.fields, "task.attempt"), (k + 1).to_string());
        assert_eq!(field(&span.fields, "outcome"), "failed");
        // Every attempt, retries too, is a child of the submitter's span.
        assert_eq!(span.parent.map(|p| spans[p].name), Some("request"));
        let levels: Vec<Level> = events
            .iter()
            .filter(|e| e.parent == Some(*index))
            .map(|e| e.level)
            .collect();
        let want = if k < 2 { Level::DEBUG } else { Level::WARN };
        assert_eq!(levels, vec![want], "attempt {}", k + 1);
    }
}

#[actix_rt::test]
async fn fetch_and_ack_spans_record_their_batch_sizes() {
    let capture = Capture::default();
    let _guard = capture.install();
    let poller = Poller::<u32>::builder()
        .on_current_arbiter()
        .start(|_n: u32, _cx| async { Ok::<(), String>(()) })
        .unwrap();
    let receipts = poller
        .submit_batch_tracked(vec![1, 2, 3, 4, 5])
        .await
        .unwrap();
    for r in receipts {
        within(r.outcome()).await.unwrap();
    }
    poller.shutdown(Duration::from_secs(5)).await.unwrap();

    let (spans, _) = capture.snapshot();
    let sum = |name: &str, f: &str| -> u64 {
        spans
            .iter()
            .filter(|s| s.name == name)
            .map(|s| field(&s.fields, f).parse::<u64>().unwrap())
            .sum()
    };
    // Every task fetched once, every attempt acked once.
    assert_eq!(sum("actix_poller.fetch", "tasks"), 5);
    assert_eq!(sum("actix_poller.ack", "acks"), 5);
}

#[cfg(feature = "sqlite")]
#[actix_rt::test]
async fn durable_sources_heartbeat_inside_a_span() {
    use actix_poller::source::sqlite::{SqliteConfig, SqliteSource};

    let capture = Capture::default();
    let _guard = capture.install();
    let path = std::env::temp_dir().join(format!(
        "actix-poller-tracing-{}-{}.db",
        std::process::id(),
        fastrand::u64(..)
    ));
    // The heartbeat runs every third of the lease.
    let config = SqliteConfig::new(&path).lease(Duration::from_millis(30));
    let source = SqliteSource::<u32>::connect(config).await.unwrap();
    let poller = Poller::<u32>::builder()
        .source(source)
        .on_current_arbiter()
        .start(|_n: u32, _cx| async { Ok::<(), String>(()) })
        .unwrap();
    let beat = || {
        let (spans, _) = capture.snapshot();
        spans
            .iter()
            .any(|s| s.name == "actix_poller.heartbeat" && s.closed && s.parent.is_none())
    };
    common::eventually(Duration::from_secs(10), beat).await;
    poller.shutdown(Duration::from_secs(5)).await.unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
}

/// A submitter's span from another subscriber than the executor's (a scoped subscriber in a test,
/// say) stays that subscriber's business: the attempt span is made by the parent's subscriber, as
/// its child; the executor's own subscriber, which does not know the parent's id (a registry
/// panics on such a parent), never sees it. The task runs normally.
#[actix_rt::test]
async fn a_parent_from_another_subscriber_gets_the_attempt_span_there() {
    let ours = Capture::default();
    let _guard = ours.install();
    let theirs = Capture::default();
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(theirs.clone()));
    let poller = Poller::<u32>::builder()
        .on_current_arbiter()
        .start(|_n: u32, _cx| async { Ok::<(), String>(()) })
        .unwrap();
    let msg = tracing::dispatcher::with_default(&dispatch, || {
        tracing::info_span!("foreign").in_scope(|| actix_poller::Submit::new(7).tracked())
    });
    let receipt = poller.submit_with(msg).await.unwrap();
    let id = receipt.id().0;
    assert_eq!(within(receipt.outcome()).await, Ok(FinalState::Completed));
    poller.shutdown(Duration::from_secs(5)).await.unwrap();

    let (spans, _) = theirs.snapshot();
    let attempt = attempts(&spans, id);
    assert_eq!(attempt.len(), 1, "{spans:?}");
    assert_eq!(attempt[0].1.parent.map(|p| spans[p].name), Some("foreign"));
    assert_eq!(field(&attempt[0].1.fields, "outcome"), "completed");
    let (ours, _) = ours.snapshot();
    assert!(attempts(&ours, id).is_empty());
}

/// A source that hands out task 0 once and beats every 100 ms, counting its heartbeats.
struct Beating {
    handed: bool,
    beats: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl actix_poller::source::Source<u32> for Beating {
    type Error = std::io::Error;

    fn fetch(
        &mut self,
        _max: usize,
    ) -> futures::future::LocalBoxFuture<
        'static,
        Result<actix_poller::source::Fetched<u32>, Self::Error>,
    > {
        use actix_poller::source::{Fetched, WakeOn};
        let answer = if std::mem::replace(&mut self.handed, true) {
            Fetched::empty(WakeOn::submit())
        } else {
            Fetched::drained(
                vec![actix_poller::Task::new(actix_poller::TaskId(1), 0)],
                WakeOn::submit(),
            )
        };
        Box::pin(futures::future::ready(Ok(answer)))
    }

    fn ack(
        &mut self,
        _acks: Vec<actix_poller::Ack>,
    ) -> futures::future::LocalBoxFuture<'static, Result<(), Self::Error>> {
        Box::pin(futures::future::ready(Ok(())))
    }

    fn heartbeat_interval(&self) -> Option<Duration> {
        Some(Duration::from_millis(100))
    }

    fn heartbeat(&mut self) -> futures::future::LocalBoxFuture<'static, Result<(), Self::Error>> {
        self.beats.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(futures::future::ready(Ok(())))
    }
}

/// A poller on [`Beating`], its executor on the test's thread; its one task calls `first`, then
/// sleeps (asynchronously) for what that returns.
fn beating(
    first: impl Fn() -> Duration + Send + Sync + 'static,
) -> (Poller<u32>, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let beats = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let first = std::sync::Arc::new(first);
    let poller = Poller::<u32>::builder()
        .source(Beating {
            handed: false,
            beats: beats.clone(),
        })
        .on_current_arbiter()
        .start(move |_n: u32, _cx| {
            let nap = first();
            async move {
                tokio::time::sleep(nap).await;
                Ok::<(), String>(())
            }
        })
        .unwrap();
    (poller, beats)
}

fn late_heartbeat_warnings(capture: &Capture) -> usize {
    let (_, events) = capture.snapshot();
    events
        .iter()
        .filter(|e| {
            e.level == Level::WARN && field(&e.fields, "message").contains("heartbeat late")
        })
        .count()
}

/// The heartbeat timer shares the Fetcher's thread: a handler that blocks that thread (here for
/// 800 ms, eight intervals; a beat is late past an interval and a half) delays the next beat, and
/// the poller says so at WARN, since leases may expire meanwhile.
#[actix_rt::test]
async fn a_heartbeat_delayed_by_a_blocked_thread_is_logged() {
    let capture = Capture::default();
    let _guard = capture.install();
    let (poller, _) = beating(|| {
        // The fault under test: a handler blocking its (the Fetcher's) thread.
        std::thread::sleep(Duration::from_millis(800));
        Duration::ZERO
    });
    common::eventually(Duration::from_secs(20), || {
        late_heartbeat_warnings(&capture) > 0
    })
    .await;
    poller.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// No false alarm: on a thread that is never blocked (paused time, so every timer fires exactly
/// on time) thirty heartbeats go by without the warning.
#[actix_rt::test]
async fn heartbeats_on_time_are_not_logged_as_late() {
    tokio::time::pause();
    let capture = Capture::default();
    let _guard = capture.install();
    let (poller, beats) = beating(|| Duration::from_secs(2));
    common::eventually(Duration::from_secs(60), || {
        beats.load(std::sync::atomic::Ordering::SeqCst) >= 30
    })
    .await;
    poller.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!(late_heartbeat_warnings(&capture), 0);
}
