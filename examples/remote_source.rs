//! Remote source: a custom `Source` that polls a remote task service over HTTP, one task per
//! call with several calls in flight (the original Go poller's `fetch`).
//!
//! ```text
//! cargo run --example remote_source
//! ```
//!
//! The example starts the tiny task service itself on an ephemeral port of 127.0.0.1. The
//! service is down for its first 200 ms (fetches fail: the poller backs off by itself), then
//! empty until 600 ms (fetches answer "nothing": the source asks again after 100 ms), then it
//! is fed 40 tasks, which four workers run while up to four fetch calls are in flight. Final states go
//! back to the service in batches, through `Source::ack`.

use std::collections::{HashSet, VecDeque};
use std::error::Error;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_poller::source::{FetchLimits, Fetched, Source, WakeOn};
use actix_poller::{Ack, Backoff, Disposition, Poller, Task, TaskId};
use actix_web::{http::StatusCode, web, App, HttpResponse, HttpServer};
use futures::future::{FutureExt, LocalBoxFuture};
use serde::{Deserialize, Serialize};

mod check;

const TASKS: u32 = 40;

/// Whether task `n` fails (every 13th).
fn fails(n: u32) -> bool {
    n % 13 == 12
}

// ---- The source: what a user of the crate writes. ---------------------------------------------

/// A task as the service hands it out.
#[derive(Debug, Serialize, Deserialize)]
struct Leased {
    id: u64,
    n: u32,
}

/// A final state as the service records it.
#[derive(Debug, Serialize, Deserialize)]
struct Report {
    id: u64,
    ok: bool,
}

/// Polls `POST {base}/tasks/next`: `200` with a task, `204` when empty, anything else (or no
/// answer) is an error.
struct HttpSource {
    client: awc::Client,
    base: String,
    in_flight: usize,
    idle_poll: Duration,
}

/// What can go wrong talking to the task service (a `Source::Error` must be a
/// `std::error::Error`, so the poller can keep it as the cause of what it reports).
#[derive(Debug)]
struct ServiceError(String);

impl std::fmt::Display for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Error for ServiceError {}

impl Source<u32> for HttpSource {
    type Error = ServiceError;

    fn fetch(
        &mut self,
        _max: usize,
    ) -> LocalBoxFuture<'static, Result<Fetched<u32>, ServiceError>> {
        // `max` is always 1 here: see `limits`.
        let request = self.client.post(format!("{}/tasks/next", self.base));
        let idle_poll = self.idle_poll;
        async move {
            let mut res = request
                .send()
                .await
                .map_err(|e| ServiceError(format!("task service unreachable: {e}")))?;
            match res.status() {
                StatusCode::OK => {
                    let t: Leased = res
                        .json()
                        .await
                        .map_err(|e| ServiceError(format!("task service sent a bad task: {e}")))?;
                    Ok(Fetched::new(
                        vec![Task::new(TaskId(t.id), t.n)],
                        WakeOn::submit(),
                    ))
                }
                StatusCode::NO_CONTENT => Ok(Fetched::empty(WakeOn::after(idle_poll))),
                status => Err(ServiceError(format!("task service answered {status}"))),
            }
        }
        .boxed_local()
    }

    fn ack(&mut self, acks: Vec<Ack>) -> LocalBoxFuture<'static, Result<(), ServiceError>> {
        // Only final states mean something to this service; it hands a task out once and
        // keeps no copy, so nothing here can run again (see `can_requeue`).
        let reports: Vec<Report> = acks
            .iter()
            .filter(|a| a.disposition.is_final())
            .map(|a| Report {
                id: a.id.0,
                ok: a.disposition == Disposition::Completed,
            })
            .collect();
        let request = self.client.post(format!("{}/acks", self.base));
        async move {
            let res = request
                .send_json(&reports)
                .await
                .map_err(|e| ServiceError(format!("could not report to the task service: {e}")))?;
            match res.status() {
                StatusCode::NO_CONTENT => Ok(()),
                status => Err(ServiceError(format!(
                    "task service refused the acks: {status}"
                ))),
            }
        }
        .boxed_local()
    }

    /// The service hands each task out once: a snooze cannot put it back, so the poller records
    /// such a task dead with the reason, and its submitter learns it.
    fn can_requeue(&self) -> bool {
        false
    }

    fn limits(&self) -> FetchLimits {
        FetchLimits::default()
            .max_batch(1)
            .max_in_flight(self.in_flight)
    }
}

// ---- The remote task service (a stand-in, started by the example). -----------------------------

#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
struct Status {
    queued: usize,
    done: u64,
    failed: u64,
    empty_answers: u64,
    down_answers: u64,
    ack_batches: u64,
    handed_out: u64,
    /// Final states reported for a task that already had one.
    repeated_acks: u64,
}

struct TaskService {
    queue: VecDeque<Leased>,
    next_id: u64,
    down_until: Instant,
    status: Status,
    /// The tasks with a final state recorded.
    recorded: HashSet<u64>,
}

impl Actor for TaskService {
    type Context = Context<Self>;
}

#[derive(Message)]
#[rtype(result = "()")]
struct Feed(Vec<u32>);

#[derive(Message)]
#[rtype(result = "Result<Option<Leased>, ()>")]
struct Next;

#[derive(Message)]
#[rtype(result = "()")]
struct Record(Vec<Report>);

#[derive(Message)]
#[rtype(result = "Status")]
struct GetStatus;

impl Handler<Feed> for TaskService {
    type Result = ();
    fn handle(&mut self, msg: Feed, _: &mut Context<Self>) {
        for n in msg.0 {
            self.next_id += 1;
            self.queue.push_back(Leased {
                id: self.next_id,
                n,
            });
        }
    }
}

impl Handler<Next> for TaskService {
    type Result = Result<Option<Leased>, ()>;
    fn handle(&mut self, _: Next, _: &mut Context<Self>) -> Self::Result {
        if Instant::now() < self.down_until {
            self.status.down_answers += 1;
            return Err(());
        }
        let next = self.queue.pop_front();
        match next {
            Some(_) => self.status.handed_out += 1,
            None => self.status.empty_answers += 1,
        }
        Ok(next)
    }
}

impl Handler<Record> for TaskService {
    type Result = ();
    fn handle(&mut self, msg: Record, _: &mut Context<Self>) {
        self.status.ack_batches += 1;
        for r in msg.0 {
            if !self.recorded.insert(r.id) {
                self.status.repeated_acks += 1;
            }
            if r.ok {
                self.status.done += 1;
            } else {
                self.status.failed += 1;
            }
        }
    }
}

impl Handler<GetStatus> for TaskService {
    type Result = MessageResult<GetStatus>;
    fn handle(&mut self, _: GetStatus, _: &mut Context<Self>) -> Self::Result {
        MessageResult(Status {
            queued: self.queue.len(),
            ..self.status
        })
    }
}

type Service = web::Data<Addr<TaskService>>;

async fn feed(svc: Service, tasks: web::Json<Vec<u32>>) -> HttpResponse {
    svc.do_send(Feed(tasks.into_inner()));
    HttpResponse::NoContent().finish()
}

async fn next(svc: Service) -> HttpResponse {
    match svc.send(Next).await {
        Ok(Ok(Some(task))) => HttpResponse::Ok().json(task),
        Ok(Ok(None)) => HttpResponse::NoContent().finish(),
        _ => HttpResponse::ServiceUnavailable().body("down for maintenance"),
    }
}

async fn acks(svc: Service, reports: web::Json<Vec<Report>>) -> HttpResponse {
    svc.do_send(Record(reports.into_inner()));
    HttpResponse::NoContent().finish()
}

async fn status(svc: Service) -> HttpResponse {
    match svc.send(GetStatus).await {
        Ok(s) => HttpResponse::Ok().json(s),
        Err(_) => HttpResponse::ServiceUnavailable().finish(),
    }
}

// ---- The example. ------------------------------------------------------------------------------

/// What the task service has recorded so far (`GET {base}/status`).
async fn service_status(client: &awc::Client, base: &str) -> Result<Status, Box<dyn Error>> {
    Ok(client
        .get(format!("{base}/status"))
        .send()
        .await?
        .json()
        .await?)
}

#[actix_web::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let began = Instant::now();
    let service = web::Data::new(
        TaskService {
            queue: VecDeque::new(),
            next_id: 0,
            down_until: began + Duration::from_millis(200),
            status: Status::default(),
            recorded: HashSet::new(),
        }
        .start(),
    );
    let server = HttpServer::new(move || {
        App::new()
            .app_data(service.clone())
            .route("/tasks", web::post().to(feed))
            .route("/tasks/next", web::post().to(next))
            .route("/acks", web::post().to(acks))
            .route("/status", web::get().to(status))
    })
    .workers(1)
    .disable_signals()
    .bind(("127.0.0.1", 0))?;
    let addr = *server.addrs().first().ok_or("bound to no address")?;
    let base = format!("http://{addr}");
    let server = server.run();
    let server_handle = server.handle();
    let running = actix_rt::spawn(server);

    let poller = Poller::<u32>::builder()
        .workers(4)
        .on_current_arbiter()
        .fetch_backoff(Backoff::new(
            Duration::from_millis(20),
            Duration::from_millis(100),
        ))
        .source(HttpSource {
            client: awc::Client::default(),
            base: base.clone(),
            in_flight: 4,
            idle_poll: Duration::from_millis(100),
        })
        .start(|n: u32, _cx| async move {
            actix_rt::time::sleep(Duration::from_millis(10 + u64::from(n % 10))).await;
            if fails(n) {
                return Err(format!("task {n}: the thumbnail came out black"));
            }
            Ok(())
        })?;

    // Down, then empty, then fed.
    actix_rt::time::sleep(Duration::from_millis(600)).await;
    let client = awc::Client::default();
    let res = client
        .post(format!("{base}/tasks"))
        .send_json(&(0..TASKS).collect::<Vec<u32>>())
        .await?;
    if res.status() != StatusCode::NO_CONTENT {
        return Err(format!("feeding the service failed: {}", res.status()).into());
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let s = service_status(&client, &base).await?;
        if s.done + s.failed == u64::from(TASKS) {
            break s;
        }
        if Instant::now() > deadline {
            return Err(format!("tasks still unfinished after 20 s: {s:?}").into());
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    };

    println!("{}", poller.topology().to_mermaid());
    let stats = poller.stats();
    println!(
        "remote_source: the task service on {base} was down for its first 200 ms ({} fetch calls \
         failed; the poller backed off by itself, 20 ms doubling up to 100 ms), then empty \
         until 600 ms ({} polls answered 204; the source asked again 100 ms later), then fed \
         {TASKS} tasks. Fetching \
         one task per call with up to 4 calls in flight, 4 workers finished them all {:.2?} \
         after the start: the service recorded {} done and {} failed, in {} ack batches.",
        stats.fetch_errors,
        status.empty_answers,
        began.elapsed(),
        status.done,
        status.failed,
        status.ack_batches,
    );
    // The poller first: its last fetches and acks need the service.
    let report = poller.shutdown(Duration::from_secs(5)).await?;
    if !report.handed_back.is_empty() {
        println!(
            "{} tasks fetched but not started.",
            report.handed_back.len()
        );
    }
    let last = service_status(&client, &base).await?;
    server_handle.stop(true).await;
    running.await??;

    // Every task was handed out once and reported once, with the final state it should have.
    let will_fail = (0..TASKS).filter(|n| fails(*n)).count() as u64;
    let stats = poller.stats();
    check::Check::new("remote_source")
        .eq("tasks handed out", last.handed_out, u64::from(TASKS))
        .eq("tasks left in the service", last.queued, 0)
        .eq("done", last.done, u64::from(TASKS) - will_fail)
        .eq("failed", last.failed, will_fail)
        .eq("repeated acks", last.repeated_acks, 0)
        .eq("handed back at shutdown", report.handed_back.len(), 0)
        .eq("stats.started", stats.started, u64::from(TASKS))
        .exit_if_wrong();
    Ok(())
}
