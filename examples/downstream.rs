//! A flaky, rate-limited downstream service kept healthy by pace control.
//!
//! ```text
//! cargo run --example downstream
//! ```
//!
//! The simulated service takes at most 3 calls at once per customer and 25 calls per second per
//! customer (customer `d`: 10 per second); past its quota it answers "429, retry after …"; now
//! and then it fails a call ("503"). The poller keeps to it:
//!
//! * `key_limit(3)`: at most 3 calls per customer at once (a customer's tasks are keyed by it);
//! * `key_rate_limit(20, 1 s, 5)`: at most 20 starts per second per customer, bursts of 5;
//! * a 429 becomes `Backpressure::pause_key_for(retry_after)`: that customer pauses while the
//!   others keep going, and the task runs again after the pause without losing an attempt;
//! * a 503 is an ordinary failure, retried with backoff.
//!
//! At the end it checks its own counts (every task completed, none dead, the service never saw
//! more than 3 calls of a customer at once, and few calls arrived during a Retry-After window)
//! and exits non-zero if one is wrong.

use std::collections::{HashMap, VecDeque};
use std::error::Error;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_poller::{
    Backpressure, BoxError, FinalState, Poller, RetryPolicy, Submit, TaskContext, TaskOptions,
};

mod check;

const CUSTOMERS: [&str; 4] = ["a", "b", "c", "d"];
const TASKS_PER_CUSTOMER: u32 = 40;
const MAX_CONCURRENT: usize = 3;

/// One customer's state at the service.
#[derive(Debug, Default)]
struct Account {
    in_flight: usize,
    max_in_flight: usize,
    /// Arrivals in the last second.
    window: VecDeque<Instant>,
    /// A Retry-After the service gave, and until when.
    retry_after_until: Option<Instant>,
    /// Calls that arrived while a Retry-After was in force.
    early: usize,
    too_many: usize,
}

/// The simulated service.
#[derive(Debug, Default)]
struct Service {
    accounts: Mutex<HashMap<&'static str, Account>>,
}

enum Answer {
    Ok,
    TooMany(Duration),
    Unavailable,
}

impl Service {
    fn quota(customer: &str) -> usize {
        if customer == "d" {
            10
        } else {
            25
        }
    }

    /// A call arrives: admitted, or 429 with a Retry-After.
    fn arrive(&self, customer: &'static str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        let a = accounts.entry(customer).or_default();
        if a.retry_after_until.is_some_and(|t| now < t) {
            a.early += 1;
        }
        while a
            .window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            a.window.pop_front();
        }
        if a.window.len() >= Self::quota(customer) {
            let retry_after = a
                .window
                .front()
                .map_or(Duration::from_secs(1), |t| {
                    Duration::from_secs(1).saturating_sub(now.duration_since(*t))
                })
                .max(Duration::from_millis(50));
            a.retry_after_until = Some(now + retry_after);
            a.too_many += 1;
            return Err(retry_after);
        }
        a.window.push_back(now);
        a.in_flight += 1;
        a.max_in_flight = a.max_in_flight.max(a.in_flight);
        Ok(())
    }

    fn leave(&self, customer: &'static str) {
        let mut accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = accounts.get_mut(customer) {
            a.in_flight = a.in_flight.saturating_sub(1);
        }
    }

    async fn call(&self, customer: &'static str, n: u32, attempt: u32) -> Answer {
        if let Err(retry_after) = self.arrive(customer) {
            return Answer::TooMany(retry_after);
        }
        actix_rt::time::sleep(Duration::from_millis(20 + u64::from(n % 3) * 10)).await;
        self.leave(customer);
        if attempt == 1 && n % 17 == 5 {
            Answer::Unavailable
        } else {
            Answer::Ok
        }
    }
}

/// An HTTP-ish error that carries the service's Retry-After as a `Backpressure` source.
#[derive(Debug)]
struct TooManyRequests(Backpressure);

impl std::fmt::Display for TooManyRequests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "429 Too Many Requests (retry after {:?})",
            self.0.duration()
        )
    }
}

impl Error for TooManyRequests {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.0)
    }
}

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let service = Arc::new(Service::default());
    let svc = Arc::clone(&service);
    let began = Instant::now();
    let poller = Poller::<(usize, u32)>::builder()
        .workers(8)
        .retry(RetryPolicy::attempts(3).fixed(Duration::from_millis(50)))
        .key_limit(MAX_CONCURRENT)
        .key_rate_limit(20, Duration::from_secs(1), 5)
        .start(move |(customer, n): (usize, u32), cx: TaskContext| {
            let svc = Arc::clone(&svc);
            let attempt = cx.attempt();
            async move {
                let customer = CUSTOMERS[customer];
                match svc.call(customer, n, attempt).await {
                    Answer::Ok => Ok(()),
                    Answer::TooMany(d) => Err::<(), BoxError>(Box::new(TooManyRequests(
                        Backpressure::pause_key_for(d),
                    ))),
                    Answer::Unavailable => Err("503 Service Unavailable".into()),
                }
            }
        })?;

    let mut receipts = Vec::new();
    for n in 0..TASKS_PER_CUSTOMER {
        for (c, name) in CUSTOMERS.iter().enumerate() {
            let msg = Submit::new((c, n))
                .options(TaskOptions::new().key(*name))
                .tracked();
            receipts.push(poller.submit_with(msg).await?);
        }
    }
    let mut completed = 0usize;
    for r in receipts {
        if r.outcome().await == Ok(FinalState::Completed) {
            completed += 1;
        }
    }
    let stats = poller.stats();
    poller.shutdown(Duration::from_secs(5)).await?;

    let accounts = service.accounts.lock().unwrap_or_else(|e| e.into_inner());
    println!(
        "{completed} tasks in {:.1?}: {} snoozed by backpressure (429), {} retried after a 503",
        began.elapsed(),
        stats.snoozed,
        stats.retried
    );
    let mut max_in_flight = 0;
    let (mut early, mut too_many) = (0, 0);
    for name in CUSTOMERS {
        if let Some(a) = accounts.get(name) {
            println!(
                "  customer {name}: at most {} calls at once, {} answered 429, {} arrived during a Retry-After",
                a.max_in_flight, a.too_many, a.early
            );
            max_in_flight = max_in_flight.max(a.max_in_flight);
            early += a.early;
            too_many += a.too_many;
        }
    }
    let total = CUSTOMERS.len() * TASKS_PER_CUSTOMER as usize;
    let mut check = check::Check::new("downstream");
    check
        .eq("tasks completed", completed, total)
        .eq("dead tasks", stats.dead, 0)
        .eq(
            "never more than 3 calls of a customer at once",
            max_in_flight <= MAX_CONCURRENT,
            true,
        )
        // Calls already started when a 429 came back may still arrive (at most the customer's
        // concurrency per 429); anything beyond means the pause was not honoured.
        .eq(
            "calls during a Retry-After at most 3 per 429",
            early <= too_many * MAX_CONCURRENT,
            true,
        );
    check.exit_if_wrong();
    Ok(())
}
