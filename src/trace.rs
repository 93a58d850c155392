//! Tracing hooks (issue 13): the spans the actors open, the submitter's context carried with a
//! task, and the W3C `traceparent` codec the durable sources store it with.
//!
//! | span | level | where | fields |
//! |---|---|---|---|
//! | `actix_poller.attempt` | INFO | executor, around the handler's call and every poll of its future | `poller`, `task.id`, `task.attempt`, `executor`, `outcome`, `error`, `otel.name`, `otel.kind` |
//! | `actix_poller.fetch` | DEBUG | Fetcher, around one `Source::fetch` | `max`, `tasks` |
//! | `actix_poller.ack` | DEBUG | Fetcher, around one `Source::ack` | `acks` |
//! | `actix_poller.heartbeat` | DEBUG | Fetcher, around one `Source::heartbeat` | – |
//!
//! The attempt span's parent is the span that was current where the task was submitted: in
//! this process, that span itself; through a durable source, the `traceparent` stored with the
//! task (filled and honoured with the `opentelemetry` feature only).

// The codec and remote contexts serve the durable sources only.
#![cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use tracing::{field, Level, Span};

use crate::source::Fetched;
use crate::task::{Finished, Outcome, TaskId};

/// What the attempt spans need from the builder.
#[derive(Debug, Clone)]
pub(crate) struct TraceConfig {
    /// The poller's name (`PollerBuilder::name`).
    pub(crate) poller: Arc<str>,
    /// `process <poller>`: the attempt span's OpenTelemetry name, made once.
    otel_name: Arc<str>,
    /// The level of "attempt failed, will retry" events (`PollerBuilder::retry_log_level`).
    pub(crate) retry_level: Level,
}

impl TraceConfig {
    pub(crate) fn new(poller: &str, retry_level: Level) -> Self {
        TraceConfig {
            poller: Arc::from(poller),
            otel_name: Arc::from(format!("process {poller}")),
            retry_level,
        }
    }
}

/// The submitter's trace context, carried with a task (shared: one `Arc` for all the tasks of
/// a submit, each task a pointer to it; `None` when no span was open at submit).
#[derive(Debug, Clone)]
pub(crate) enum Parent {
    /// The span that was current at submit, in this process.
    Span(Span),
    /// A W3C trace context read back from a durable source.
    Remote(TraceParent),
}

impl Parent {
    /// The current span, if one is open (nothing to carry otherwise).
    pub(crate) fn current() -> Option<Arc<Parent>> {
        let span = Span::current();
        (!span.is_none()).then(|| Arc::new(Parent::Span(span)))
    }

    /// The W3C form, for a durable source; `None` for a local span without the
    /// `opentelemetry` feature (a plain `tracing` span has no trace id to store).
    pub(crate) fn traceparent(&self) -> Option<TraceParent> {
        match self {
            Parent::Span(span) => TraceParent::of_span(span),
            Parent::Remote(tp) => Some(*tp),
        }
    }
}

/// A W3C trace context (`traceparent` header): version 00, trace id, parent span id, flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TraceParent {
    trace_id: u128,
    span_id: u64,
    flags: u8,
}

impl TraceParent {
    /// Parses a `traceparent` text; `None` for anything the W3C spec calls invalid (wrong
    /// lengths, upper-case or non-hex digits, version `ff`, an all-zero id, extra fields in
    /// version 00). Fields a later version adds after the flags are ignored, as the spec asks.
    pub(crate) fn parse(text: &str) -> Option<TraceParent> {
        let mut parts = text.split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, len: usize| {
            s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        if !(hex(version, 2) && hex(trace, 32) && hex(span, 16) && hex(flags, 2)) {
            return None;
        }
        if version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        let tp = TraceParent {
            trace_id: u128::from_str_radix(trace, 16).ok()?,
            span_id: u64::from_str_radix(span, 16).ok()?,
            flags: u8::from_str_radix(flags, 16).ok()?,
        };
        (tp.trace_id != 0 && tp.span_id != 0).then_some(tp)
    }

    /// The context of the span current now (a direct enqueue through a durable queue).
    pub(crate) fn current() -> Option<TraceParent> {
        Self::of_span(&Span::current())
    }

    #[cfg(feature = "opentelemetry")]
    fn of_span(span: &Span) -> Option<TraceParent> {
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        if span.is_none() {
            return None;
        }
        let cx = span.context();
        let otel = cx.span();
        let sc = otel.span_context();
        sc.is_valid().then(|| TraceParent {
            trace_id: u128::from_be_bytes(sc.trace_id().to_bytes()),
            span_id: u64::from_be_bytes(sc.span_id().to_bytes()),
            flags: sc.trace_flags().to_u8(),
        })
    }

    #[cfg(not(feature = "opentelemetry"))]
    fn of_span(_span: &Span) -> Option<TraceParent> {
        None
    }

    /// The remote OpenTelemetry context this names.
    #[cfg(feature = "opentelemetry")]
    fn context(&self) -> opentelemetry::Context {
        use opentelemetry::trace::{
            SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
        };
        opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_bytes(self.trace_id.to_be_bytes()),
            SpanId::from_bytes(self.span_id.to_be_bytes()),
            TraceFlags::new(self.flags),
            true,
            TraceState::default(),
        ))
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }
}

/// Whether an attempt's span can be seen at all: by a `tracing` subscriber (one was set, globally
/// or for some thread), or, while none ever was, by a `log` logger at `INFO` (tracing's `log`
/// feature, which actix-web's own crates turn on, makes every disabled span build its fields and
/// log them). Neither: the attempt gets [`Span::none`], which is what it would amount to, at a
/// fraction of the cost (a no-op task's attempt spent a quarter of its executor time building
/// and recording a disabled span, issue 14).
fn spans_observed() -> bool {
    tracing::dispatcher::has_been_set() || log::max_level() >= log::LevelFilter::Info
}

/// The span of one attempt, child of the submitter's context when there is one. Its fields
/// `outcome` and `error` are recorded by [`attempt_ended`].
pub(crate) fn attempt_span(
    config: &TraceConfig,
    id: TaskId,
    attempt: u32,
    executor: usize,
    parent: Option<&Parent>,
) -> Span {
    macro_rules! attempt_span {
        ($($parent:tt)*) => {
            tracing::info_span!(
                $($parent)*
                "actix_poller.attempt",
                otel.name = &*config.otel_name,
                otel.kind = "consumer",
                poller = &*config.poller,
                task.id = id.0,
                task.attempt = attempt,
                executor,
                outcome = field::Empty,
                error = field::Empty,
            )
        };
    }
    if !spans_observed() {
        return Span::none();
    }
    let span = match parent {
        // Made by the parent's own subscriber: a span id means nothing to another one (a
        // registry panics on a parent it does not know), and the executor's thread may have
        // another default than the submitter's.
        Some(Parent::Span(p)) => p
            .with_subscriber(|(_, dispatch)| {
                tracing::dispatcher::with_default(dispatch, || attempt_span!(parent: p,))
            })
            .unwrap_or_else(|| attempt_span!()),
        _ => attempt_span!(),
    };
    #[cfg(feature = "opentelemetry")]
    if let Some(Parent::Remote(tp)) = parent {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        // Fails only when no OpenTelemetry layer sees the span: nothing to link then.
        let _ = span.set_parent(tp.context());
    }
    span
}

/// The value of the attempt span's `outcome` field for `outcome`.
fn outcome_name(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Completed => "completed",
        Outcome::Failed(_) => "failed",
        Outcome::Panicked(_) => "panicked",
        Outcome::Cancelled => "cancelled",
        Outcome::Interrupted => "interrupted",
        Outcome::TimedOut(_) => "timed_out",
        Outcome::Snoozed(_) => "snoozed",
        Outcome::Backpressured(_) => "backpressured",
        Outcome::Aborted(_) => "aborted",
    }
}

/// Emits an event at a level known only at run time.
macro_rules! event_at {
    ($level:expr, $($arg:tt)+) => {
        match $level {
            l if l == Level::ERROR => tracing::error!($($arg)+),
            l if l == Level::WARN => tracing::warn!($($arg)+),
            l if l == Level::INFO => tracing::info!($($arg)+),
            l if l == Level::DEBUG => tracing::debug!($($arg)+),
            _ => tracing::trace!($($arg)+),
        }
    };
}

/// Records how an attempt ended on its span, and logs a failure inside it: at `retry_level`
/// when the task runs again, WARN (ERROR for a panic) when this was its last attempt.
pub(crate) fn attempt_ended(span: &Span, fin: &Finished, retry_level: Level) {
    span.record("outcome", outcome_name(&fin.outcome));
    let error: Cow<'_, str> = match &fin.outcome {
        Outcome::Failed(e) | Outcome::Panicked(e) | Outcome::Aborted(e) => Cow::Borrowed(e),
        Outcome::TimedOut(limit) => Cow::Owned(format!("timed out after {limit:?}")),
        _ => return,
    };
    span.record("error", &*error);
    let _entered = span.enter();
    let (task, attempt) = (fin.id, fin.attempt);
    match &fin.outcome {
        Outcome::Aborted(_) => tracing::warn!(%task, attempt, %error, "task aborted"),
        _ if fin.retries_left() => {
            event_at!(retry_level, %task, attempt, %error, "attempt failed; will retry");
        }
        Outcome::Panicked(_) => tracing::error!(%task, attempt, %error, "task panicked"),
        Outcome::TimedOut(_) => tracing::warn!(%task, attempt, %error, "task timed out"),
        _ => tracing::warn!(%task, attempt, %error, "task failed"),
    }
}

/// The span of one fetch of at most `max` tasks; `tasks` is recorded when it lands.
pub(crate) fn fetch_span(max: usize) -> Span {
    tracing::debug_span!("actix_poller.fetch", max, tasks = field::Empty)
}

/// Records on a fetch's span how many tasks it brought.
pub(crate) fn fetch_landed<T, E>(span: &Span, res: &Result<Fetched<T>, E>) {
    if let Ok(fetched) = res {
        span.record("tasks", fetched.tasks.len());
    }
}

/// The span of one ack call carrying `acks` acknowledgements.
pub(crate) fn ack_span(acks: usize) -> Span {
    tracing::debug_span!("actix_poller.ack", acks)
}

/// The span of one heartbeat.
pub(crate) fn heartbeat_span() -> Span {
    tracing::debug_span!("actix_poller.heartbeat")
}

#[cfg(test)]
mod tests {
    use super::TraceParent;

    const SAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_round_trips() {
        let tp = TraceParent::parse(SAMPLE).expect("the W3C spec's example");
        assert_eq!(tp.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(tp.span_id, 0x00f067aa0ba902b7);
        assert_eq!(tp.flags, 1);
        assert_eq!(tp.to_string(), SAMPLE);
        let small = TraceParent {
            trace_id: 1,
            span_id: 2,
            flags: 0,
        };
        assert_eq!(TraceParent::parse(&small.to_string()), Some(small));
    }

    #[test]
    fn invalid_traceparents_are_refused() {
        for bad in [
            "",
            "00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-+0f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
        // A later version may add fields after the flags.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever";
        assert!(TraceParent::parse(later).is_some());
    }
}
