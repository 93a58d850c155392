//! Pipeline: two pollers chained, each stage with its own concurrency.
//!
//! ```text
//! cargo run --example pipeline
//! ```
//!
//! Stage one, `fetch`, downloads pages eight at a time (I/O bound: its executor shares the
//! current arbiter). Its handler submits each page to stage two, `transform`, which works two
//! at a time on two executor threads. A slow second stage does not slow the first: its queue
//! absorbs the difference. That queue is bounded too: when it is full, the submit hands the page
//! back and the stage-one task fails with the reason, rather than the queue growing.

use std::error::Error;
use std::time::{Duration, Instant};

use actix_poller::{FinalState, Poller, Receipt};
use futures::future::join_all;
use tokio::sync::mpsc;

mod check;

const PAGES: usize = 60;

/// Whether page `i`'s URL answers 404 (every 25th).
fn missing(i: usize) -> bool {
    i % 25 == 24
}

/// What stage one hands to stage two.
struct Page {
    url: String,
    body: String,
}

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let began = Instant::now();
    let transform =
        Poller::<Page>::builder()
            .workers(2)
            .executors(2)
            .start(|page: Page, _cx| async move {
                actix_rt::time::sleep(Duration::from_millis(8)).await;
                let words = page.body.split_whitespace().count();
                tracing::info!(url = %page.url, words, "transformed");
                Ok::<_, std::convert::Infallible>(())
            })?;

    // Stage one hands each stage-two receipt back, so the end is known without polling.
    let (receipts, mut receipts_rx) = mpsc::unbounded_channel::<Receipt>();
    let next = transform.clone();
    let fetch = Poller::<String>::builder()
        .workers(8)
        .on_current_arbiter()
        .start(move |url: String, _cx| {
            let (next, receipts) = (next.clone(), receipts.clone());
            async move {
                actix_rt::time::sleep(Duration::from_millis(15)).await;
                if url.ends_with("/missing") {
                    return Err(format!("{url}: 404 not found"));
                }
                let body = format!("the page at {url} has a few words");
                let receipt = next
                    .submit_tracked(Page { url, body })
                    .await
                    .map_err(|e| format!("stage two refused the page: {e}"))?;
                let _ = receipts.send(receipt);
                Ok(())
            }
        })?;

    let urls: Vec<String> = (0..PAGES)
        .map(|i| {
            if missing(i) {
                format!("https://example.org/{i}/missing")
            } else {
                format!("https://example.org/{i}")
            }
        })
        .collect();
    let fetched = fetch
        .submit_batch_tracked(urls)
        .await
        .map_err(|e| format!("could not queue the URLs: {e}"))?;
    let fetched = join_all(fetched.into_iter().map(|r| r.outcome())).await;
    let pages = fetched
        .iter()
        .filter(|o| matches!(o, Ok(FinalState::Completed)))
        .count();
    let stage_one_done = began.elapsed();
    let queued_at_stage_two = transform.stats().queued.unwrap_or(0);

    // Every fetched page was submitted to stage two before its stage-one task completed.
    let mut transformed = 0;
    for _ in 0..pages {
        let receipt = receipts_rx.recv().await.ok_or("stage one stopped early")?;
        if receipt.outcome().await == Ok(FinalState::Completed) {
            transformed += 1;
        }
    }

    let topology = fetch
        .topology()
        .named("fetch")
        .with_client("main", "SubmitBatch")
        .chain("Submit", transform.topology().named("transform"));
    println!("{}", topology.to_mermaid());
    println!(
        "pipeline: stage one fetched {pages} of {PAGES} URLs ({} were 404s), eight at a time, in \
         {stage_one_done:.2?}; by then {queued_at_stage_two} pages still waited in stage two's \
         queue, which works two at a time. Stage two transformed {transformed} pages; all done \
         after {:.2?}. Each stage keeps its own bound: the slow stage queues, the fast one \
         does not wait for it.",
        PAGES - pages,
        began.elapsed(),
    );
    // Stage one first: nothing submits to stage two after it.
    fetch.shutdown(Duration::from_secs(5)).await?;
    transform.shutdown(Duration::from_secs(5)).await?;

    // Every page went through once: fetched unless missing, then transformed.
    let missing = (0..PAGES).filter(|i| missing(*i)).count();
    let dead = fetched
        .iter()
        .filter(|o| matches!(o, Ok(FinalState::Dead { .. })))
        .count();
    let (one, two) = (fetch.stats(), transform.stats());
    check::Check::new("pipeline")
        .eq("pages fetched", pages, PAGES - missing)
        .eq("404s", dead, missing)
        .eq("pages transformed", transformed, pages)
        .eq("stage one started", one.started, PAGES as u64)
        .eq("stage one completed", one.completed, pages as u64)
        .eq("stage two started", two.started, pages as u64)
        .eq("stage two completed", two.completed, transformed as u64)
        .exit_if_wrong();
    Ok(())
}
