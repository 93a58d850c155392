//! Bulk upload: an actix-web service that answers `202 Accepted` at once and works through the
//! batch in the background, at most four items at a time.
//!
//! ```text
//! cargo run --features web --example bulk_upload             # serves on 127.0.0.1:8080 until Ctrl-C
//! cargo run --features web --example bulk_upload -- --smoke  # posts a batch to itself, waits, exits
//! curl -i -H 'content-type: application/json' -d '[{"sku":"A-1","quantity":3}]' \
//!     127.0.0.1:8080/batches
//! curl 127.0.0.1:8080/batches/1
//! cargo run --features web,metrics --example bulk_upload     # and GET /metrics (Prometheus)
//! curl 127.0.0.1:8080/metrics
//! ```
//!
//! * `POST /batches` takes a JSON array of items: `202` with the batch id, `400` with a reason
//!   for bad JSON, `503` with `Retry-After` when the queue cannot take the whole batch (the batch
//!   is refused whole, never half taken).
//! * `GET /batches/{id}` reports `total`, `done`, `failed` and `pending`.
//! * `GET /metrics` (with the `metrics` feature) renders the poller's metrics in Prometheus'
//!   text format, through `metrics-exporter-prometheus`'s recorder, installed before the poller
//!   starts (a poller registers its metrics when it starts). docs/observability.md lists them.
//!
//! Progress is kept by a `BatchBook` actor: one future per batch awaits the tasks' receipts and
//! sends each outcome to it as a message. No lock decides anything.
//!
//! The server and the poller run under [`actix_poller::web::serve`]: on Ctrl-C (SIGINT) or
//! SIGTERM the server stops taking requests, the poller drains (running items finish, for up to
//! 5 s), and only then does `main` return and the `System` stop. With actix-web's default signal
//! handling instead, the `System` would stop ~300 ms after the server, under the poller's
//! executors, and the items they held would be lost. The queue is in memory: items not yet
//! started come back in the shutdown report (the example counts them; a real service would store
//! them, or use a durable source).

use std::collections::HashMap;
use std::error::Error;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_poller::{FinalState, Poller, StartError, SubmitError};
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::error::{InternalError, JsonPayloadError};
use actix_web::http::{header, StatusCode};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer, ResponseError};
use futures::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// One line of an upload.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Item {
    sku: String,
    quantity: u32,
}

/// The slow part: one call to the catalogue service per item.
async fn upload(item: Item) -> Result<(), String> {
    actix_rt::time::sleep(Duration::from_millis(5)).await;
    if item.quantity == 0 {
        return Err(format!("{}: quantity must be at least 1", item.sku));
    }
    Ok(())
}

fn start_poller(capacity: usize) -> Result<Poller<Item>, StartError> {
    #[cfg(feature = "metrics")]
    prometheus();
    Poller::builder()
        .name("bulk_upload")
        .workers(4)
        .executors(1)
        .capacity(capacity)
        .start(|item: Item, _cx| upload(item))
}

// ---- The batch book: the one owner of per-batch progress. -----------------------------------

#[derive(Debug, Default, Clone, Copy, Serialize)]
struct Progress {
    total: usize,
    done: usize,
    failed: usize,
    pending: usize,
}

#[derive(Debug, Default)]
struct BatchBook {
    last_id: u64,
    batches: HashMap<u64, Progress>,
}

impl Actor for BatchBook {
    type Context = Context<Self>;
}

/// Opens a batch of `total` items; answers its id.
#[derive(Message)]
#[rtype(result = "u64")]
struct Open {
    total: usize,
}

/// Forgets a batch the poller refused.
#[derive(Message)]
#[rtype(result = "()")]
struct Forget(u64);

/// One item of `batch` reached its final state.
#[derive(Message)]
#[rtype(result = "()")]
struct Record {
    batch: u64,
    ok: bool,
}

#[derive(Message)]
#[rtype(result = "Option<Progress>")]
struct Query(u64);

impl Handler<Open> for BatchBook {
    type Result = u64;
    fn handle(&mut self, msg: Open, _: &mut Context<Self>) -> u64 {
        self.last_id += 1;
        let progress = Progress {
            total: msg.total,
            pending: msg.total,
            ..Progress::default()
        };
        self.batches.insert(self.last_id, progress);
        self.last_id
    }
}

impl Handler<Forget> for BatchBook {
    type Result = ();
    fn handle(&mut self, msg: Forget, _: &mut Context<Self>) {
        self.batches.remove(&msg.0);
    }
}

impl Handler<Record> for BatchBook {
    type Result = ();
    fn handle(&mut self, msg: Record, _: &mut Context<Self>) {
        if let Some(p) = self.batches.get_mut(&msg.batch) {
            if msg.ok {
                p.done += 1;
            } else {
                p.failed += 1;
            }
            p.pending = p.total - p.done - p.failed;
        }
    }
}

impl Handler<Query> for BatchBook {
    type Result = Option<Progress>;
    fn handle(&mut self, msg: Query, _: &mut Context<Self>) -> Option<Progress> {
        self.batches.get(&msg.0).copied()
    }
}

// ---- The routes. ------------------------------------------------------------------------------

#[derive(Clone)]
struct State {
    poller: Poller<Item>,
    book: Addr<BatchBook>,
}

fn error(status: StatusCode, reason: impl ToString) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "error": reason.to_string() }))
}

async fn post_batch(state: web::Data<State>, items: web::Json<Vec<Item>>) -> HttpResponse {
    let items = items.into_inner();
    if items.is_empty() {
        return error(StatusCode::BAD_REQUEST, "the batch is empty");
    }
    let total = items.len();
    // Open the batch first, so no outcome can arrive for a batch the book does not know.
    let Ok(batch) = state.book.send(Open { total }).await else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "batch book stopped");
    };
    let receipts = match state.poller.submit_batch_tracked(items).await {
        Ok(receipts) => receipts,
        Err(refused) => {
            // All or nothing: the whole batch came back; the client keeps it and retries.
            state.book.do_send(Forget(batch));
            let reason = match &refused {
                SubmitError::Full(items) => format!(
                    "the queue cannot take {} more items now; retry later",
                    items.len()
                ),
                other => other.to_string(),
            };
            let mut response = error(StatusCode::SERVICE_UNAVAILABLE, reason);
            let retry_after = header::HeaderValue::from_static("1");
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, retry_after);
            return response;
        }
    };
    let book = state.book.clone();
    actix_web::rt::spawn(async move {
        let mut outcomes: FuturesUnordered<_> = receipts.into_iter().map(|r| r.outcome()).collect();
        while let Some(outcome) = outcomes.next().await {
            let ok = matches!(outcome, Ok(FinalState::Completed));
            book.do_send(Record { batch, ok });
        }
    });
    HttpResponse::Accepted()
        .insert_header((header::LOCATION, format!("/batches/{batch}")))
        .json(json!({ "id": batch, "total": total }))
}

async fn get_batch(state: web::Data<State>, id: web::Path<u64>) -> HttpResponse {
    match state.book.send(Query(*id)).await {
        Ok(Some(progress)) => HttpResponse::Ok().json(progress),
        Ok(None) => error(StatusCode::NOT_FOUND, "no such batch"),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "batch book stopped"),
    }
}

/// Bad JSON: the status actix-web chose (400, or 413 when too large) with the reason.
fn bad_json(err: JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
    let response = error(err.status_code(), &err);
    InternalError::from_response(err, response).into()
}

/// The application: routes, limits, and the shared state (two cheap handles).
fn app(
    state: State,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(web::Data::new(state))
        .app_data(
            web::JsonConfig::default()
                .limit(1 << 20)
                .error_handler(bad_json),
        )
        .route("/batches", web::post().to(post_batch))
        .route("/batches/{id}", web::get().to(get_batch))
        .configure(|cfg| {
            #[cfg(feature = "metrics")]
            cfg.route("/metrics", web::get().to(get_metrics));
            let _ = cfg;
        })
}

/// The process's Prometheus recorder, installed at the first call (before the poller starts:
/// it registers its metrics then). `None` if another recorder was installed first.
#[cfg(feature = "metrics")]
fn prometheus() -> Option<&'static metrics_exporter_prometheus::PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .map_err(|e| eprintln!("bulk_upload: no Prometheus recorder: {e}"))
                .ok()
        })
        .as_ref()
}

/// `GET /metrics`: every metric in Prometheus' text format.
#[cfg(feature = "metrics")]
async fn get_metrics() -> HttpResponse {
    match prometheus() {
        Some(handle) => HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4")
            .body(handle.render()),
        None => HttpResponse::ServiceUnavailable().body("no Prometheus recorder installed"),
    }
}

#[actix_web::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let smoke =
        std::env::args().any(|a| a == "--smoke") || std::env::var_os("BULK_UPLOAD_SMOKE").is_some();
    let state = State {
        poller: start_poller(10_000)?,
        book: BatchBook::default().start(),
    };
    let poller = state.poller.clone();
    let bind = if smoke {
        "127.0.0.1:0"
    } else {
        "127.0.0.1:8080"
    };
    let server = HttpServer::new({
        let state = state.clone();
        move || app(state.clone())
    })
    .workers(1)
    .bind(bind)
    .map_err(|e| format!("cannot bind {bind}: {e}"))?;
    let addr = *server.addrs().first().ok_or("bound to no address")?;

    // Serves until SIGINT or SIGTERM (or, in smoke mode, until the smoke run stops the server
    // through its handle); then the poller drains for up to 5 s before `serve` returns.
    let serve = actix_poller::web::serve(server, &poller, Duration::from_secs(5));
    let smoke_run = if smoke {
        let handle = serve.server_handle().ok_or("bound to no address")?;
        Some(actix_rt::spawn(async move {
            let summary = smoke_run(&format!("http://{addr}"))
                .await
                .map_err(|e| e.to_string());
            handle.stop(true).await;
            summary
        }))
    } else {
        println!("serving on http://{addr}; POST /batches, GET /batches/{{id}}; Ctrl-C stops");
        None
    };
    let served = serve.await?;

    println!(
        "{}",
        poller
            .topology()
            .with_client("POST /batches", "SubmitBatch")
            .to_mermaid()
    );
    match smoke_run {
        Some(summary) => println!("{}", summary.await??),
        None => println!("bulk_upload: stopped by {}.", served.stopped_by),
    }
    if !served.report.handed_back.is_empty() {
        println!(
            "{} items never started and were handed back.",
            served.report.handed_back.len()
        );
    }
    Ok(())
}

/// Posts a batch of 200 items (3 with a bad quantity) and polls until it is done.
async fn smoke_run(base: &str) -> Result<String, Box<dyn Error>> {
    let began = Instant::now();
    let client = awc::Client::default();
    let items: Vec<Item> = (0..200)
        .map(|i| Item {
            sku: format!("SKU-{i:03}"),
            quantity: if i % 70 == 0 { 0 } else { 1 + i % 5 },
        })
        .collect();
    let mut res = client
        .post(format!("{base}/batches"))
        .send_json(&items)
        .await?;
    let accepted: serde_json::Value = res.json().await?;
    let id = accepted["id"].as_u64().ok_or(format!(
        "POST /batches answered {}: {accepted}",
        res.status()
    ))?;
    let answered_in = began.elapsed();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut res = client.get(format!("{base}/batches/{id}")).send().await?;
        let progress: serde_json::Value = res.json().await?;
        if progress["pending"] == 0 {
            #[cfg(feature = "metrics")]
            {
                let mut res = client.get(format!("{base}/metrics")).send().await?;
                let body = res.body().await?;
                let text = String::from_utf8_lossy(&body);
                println!("GET /metrics, the attempts by outcome:");
                for line in text
                    .lines()
                    .filter(|l| l.starts_with("actix_poller_attempts"))
                {
                    println!("  {line}");
                }
            }
            return Ok(format!(
                "bulk_upload: POST /batches answered 202 for {} items in {answered_in:.2?}; \
                 the poller worked through them four at a time in the background, and \
                 GET /batches/{id} reported {} done and {} failed (quantity 0 is refused) \
                 after {:.2?}. Progress lives in the BatchBook actor, fed one message per \
                 finished item.",
                progress["total"],
                progress["done"],
                progress["failed"],
                began.elapsed(),
            ));
        }
        if Instant::now() > deadline {
            return Err(format!("batch {id} unfinished after 20 s: {progress}").into());
        }
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test;

    fn state(capacity: usize) -> State {
        State {
            poller: start_poller(capacity).expect("poller starts"),
            book: BatchBook::default().start(),
        }
    }

    fn items(n: u32) -> Vec<Item> {
        (0..n)
            .map(|i| Item {
                sku: format!("T-{i}"),
                quantity: if i == 0 { 0 } else { 1 },
            })
            .collect()
    }

    #[actix_web::test]
    async fn a_batch_is_accepted_at_once_and_finishes_in_the_background() {
        let state = state(1_000);
        let poller = state.poller.clone();
        let app = test::init_service(app(state)).await;
        let req = test::TestRequest::post()
            .uri("/batches")
            .set_json(items(20))
            .to_request();
        let res = test::call_service(&app, req).await;
        assert_eq!(res.status(), StatusCode::ACCEPTED);
        assert_eq!(
            res.headers().get(header::LOCATION).map(|v| v.as_bytes()),
            Some(&b"/batches/1"[..])
        );
        let body: serde_json::Value = test::read_body_json(res).await;
        assert_eq!(body, json!({ "id": 1, "total": 20 }));

        let deadline = Instant::now() + Duration::from_secs(10);
        let progress = loop {
            let req = test::TestRequest::get().uri("/batches/1").to_request();
            let progress: serde_json::Value = test::call_and_read_body_json(&app, req).await;
            if progress["pending"] == 0 || Instant::now() > deadline {
                break progress;
            }
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(
            progress,
            json!({ "total": 20, "done": 19, "failed": 1, "pending": 0 })
        );
        // With the `metrics` feature, the same work shows in `/metrics` (the recorder is the
        // process's: other tests' pollers add to these series, never take from them).
        #[cfg(feature = "metrics")]
        {
            let req = test::TestRequest::get().uri("/metrics").to_request();
            let res = test::call_service(&app, req).await;
            assert_eq!(res.status(), StatusCode::OK);
            let body = test::read_body(res).await;
            let text = String::from_utf8_lossy(&body);
            let value = |series: &str| -> f64 {
                text.lines()
                    .find_map(|l| l.strip_prefix(series))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or_else(|| panic!("{series} not in /metrics:\n{text}"))
            };
            let p = r#"poller="bulk_upload""#;
            assert!(
                value(&format!(
                    r#"actix_poller_attempts{{{p},outcome="completed"}}"#
                )) >= 19.0
            );
            assert!(value(&format!(r#"actix_poller_attempts{{{p},outcome="failed"}}"#)) >= 1.0);
        }

        let req = test::TestRequest::get().uri("/batches/7").to_request();
        assert_eq!(
            test::call_service(&app, req).await.status(),
            StatusCode::NOT_FOUND
        );
        poller
            .shutdown(Duration::from_secs(5))
            .await
            .expect("shutdown");
    }

    #[actix_web::test]
    async fn bad_json_gets_a_400_with_a_reason() {
        let state = state(1_000);
        let poller = state.poller.clone();
        let app = test::init_service(app(state)).await;
        let req = test::TestRequest::post()
            .uri("/batches")
            .insert_header((header::CONTENT_TYPE, "application/json"))
            .set_payload(r#"[{"sku": "A", "quantity": "many"}]"#)
            .to_request();
        let res = test::call_service(&app, req).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        let body: serde_json::Value = test::read_body_json(res).await;
        let reason = body["error"].as_str().unwrap_or_default();
        assert!(reason.contains("invalid type"), "{reason}");

        let req = test::TestRequest::post()
            .uri("/batches")
            .set_json(Vec::<Item>::new())
            .to_request();
        assert_eq!(
            test::call_service(&app, req).await.status(),
            StatusCode::BAD_REQUEST
        );
        poller
            .shutdown(Duration::from_secs(5))
            .await
            .expect("shutdown");
    }

    #[actix_web::test]
    async fn a_full_queue_gets_a_503_with_retry_after_and_keeps_nothing() {
        let state = state(5);
        let poller = state.poller.clone();
        let app = test::init_service(app(state)).await;
        let req = test::TestRequest::post()
            .uri("/batches")
            .set_json(items(8))
            .to_request();
        let res = test::call_service(&app, req).await;
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            res.headers().get(header::RETRY_AFTER).map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        let body: serde_json::Value = test::read_body_json(res).await;
        assert!(body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("8 more items"));

        // Nothing of the refused batch was queued or booked.
        assert_eq!(poller.stats().submitted, 0);
        let req = test::TestRequest::get().uri("/batches/1").to_request();
        assert_eq!(
            test::call_service(&app, req).await.status(),
            StatusCode::NOT_FOUND
        );
        // A batch that fits is still taken.
        let req = test::TestRequest::post()
            .uri("/batches")
            .set_json(items(5))
            .to_request();
        assert_eq!(
            test::call_service(&app, req).await.status(),
            StatusCode::ACCEPTED
        );
        poller
            .shutdown(Duration::from_secs(5))
            .await
            .expect("shutdown");
    }
}
