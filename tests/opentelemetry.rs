//! The `opentelemetry` feature (issue 13): the span that enqueued a task and the span that
//! processed it share one trace, the enqueue span being the process span's parent: in memory
//! (the submitter's span travels with the task) and through SQLite (a W3C `traceparent` stored
//! with the row, read back at fetch: the same path another process's enqueue takes).
#![cfg(feature = "opentelemetry")]

mod common;

use std::time::Duration;

use actix_poller::Poller;
use common::within;
use opentelemetry::trace::{SpanKind, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

/// A thread-local subscriber exporting every span to memory.
fn otel() -> (
    InMemorySpanExporter,
    SdkTracerProvider,
    tracing::subscriber::DefaultGuard,
) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("actix-poller-test"));
    let guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(layer));
    (exporter, provider, guard)
}

fn finished(exporter: &InMemorySpanExporter, provider: &SdkTracerProvider) -> Vec<SpanData> {
    provider.force_flush().unwrap();
    exporter.get_finished_spans().unwrap()
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    spans.iter().filter(|s| s.name == name).collect()
}

/// `process` is a child of `enqueue`, in its trace.
fn assert_child(process: &SpanData, enqueue: &SpanData) {
    assert!(enqueue.span_context.is_valid());
    assert_eq!(
        process.span_context.trace_id(),
        enqueue.span_context.trace_id(),
        "one trace"
    );
    assert_eq!(process.parent_span_id, enqueue.span_context.span_id());
    assert_eq!(process.span_kind, SpanKind::Consumer);
}

#[actix_rt::test]
async fn in_memory_enqueue_and_process_spans_share_a_trace() {
    let (exporter, provider, _guard) = otel();
    let poller = Poller::<u32>::builder()
        .name("mem")
        .on_current_arbiter()
        .start(|_n: u32, _cx| async { Ok::<(), String>(()) })
        .unwrap();
    for n in 0..2u32 {
        let span = tracing::info_span!("enqueue", n);
        let receipt = poller.submit_tracked(n).instrument(span).await.unwrap();
        within(receipt.outcome()).await.unwrap();
    }
    poller.shutdown(Duration::from_secs(5)).await.unwrap();

    let spans = finished(&exporter, &provider);
    let (enqueues, processes) = (named(&spans, "enqueue"), named(&spans, "process mem"));
    assert_eq!((enqueues.len(), processes.len()), (2, 2), "{spans:#?}");
    for (p, e) in processes.iter().zip(&enqueues) {
        assert_child(p, e);
    }
    // Two submits, two traces.
    assert_ne!(
        enqueues[0].span_context.trace_id(),
        enqueues[1].span_context.trace_id()
    );
}

#[cfg(feature = "sqlite")]
#[actix_rt::test]
async fn sqlite_enqueue_and_process_spans_share_a_trace_through_the_stored_traceparent() {
    use actix_poller::source::sqlite::{SqliteConfig, SqliteSource};
    use actix_poller::source::NewTask;

    let (exporter, provider, _guard) = otel();
    let path = std::env::temp_dir().join(format!(
        "actix-poller-otel-{}-{}.db",
        std::process::id(),
        fastrand::u64(..)
    ));
    let source = SqliteSource::<u32>::connect(SqliteConfig::new(&path))
        .await
        .unwrap();
    let queue = source.queue();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let poller = Poller::<u32>::builder()
        .name("db")
        .source(source)
        .on_current_arbiter()
        .start(move |n: u32, _cx| {
            let _ = tx.send(n);
            async { Ok::<(), String>(()) }
        })
        .unwrap();
    // Through the poller, and straight into the table (as another process would).
    let receipt = poller
        .submit_tracked(1)
        .instrument(tracing::info_span!("enqueue", via = "poller"))
        .await
        .unwrap();
    within(receipt.outcome()).await.unwrap();
    queue
        .enqueue(vec![NewTask::new(2)])
        .instrument(tracing::info_span!("enqueue", via = "queue"))
        .await
        .unwrap();
    let mut ran = vec![within(rx.recv()).await, within(rx.recv()).await];
    ran.sort();
    assert_eq!(ran, vec![Some(1), Some(2)]);
    poller.shutdown(Duration::from_secs(5)).await.unwrap();

    let spans = finished(&exporter, &provider);
    let (enqueues, processes) = (named(&spans, "enqueue"), named(&spans, "process db"));
    assert_eq!((enqueues.len(), processes.len()), (2, 2), "{spans:#?}");
    for e in &enqueues {
        let children: Vec<_> = processes
            .iter()
            .filter(|p| p.parent_span_id == e.span_context.span_id())
            .collect();
        assert_eq!(children.len(), 1, "one attempt under {e:#?}");
        assert_child(children[0], e);
        // The parent came from the row, not from this process's span tree.
        assert!(children[0].parent_span_is_remote);
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
}
