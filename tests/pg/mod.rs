//! PostgreSQL test helpers: the server's URL, a schema per test.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use actix_poller::source::postgres::PgConfig;
use sqlx::postgres::{PgPool, PgPoolOptions};

/// The server the tests use: `ACTIX_POLLER_PG_URL`. Without it the PostgreSQL tests fail (they
/// do not pass silently).
pub fn pg_url() -> String {
    match std::env::var("ACTIX_POLLER_PG_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "the `postgres` feature's tests need a PostgreSQL server: set ACTIX_POLLER_PG_URL, \
             e.g. `export ACTIX_POLLER_PG_URL=postgres://postgres@127.0.0.1:5432/test` \
             (trust auth, database `test`); .ci/run sets it"
        ),
    }
}

/// A new schema name, unique to this test (the source's migrations create it).
pub fn fresh_schema() -> String {
    format!("ap_test_{}_{:x}", std::process::id(), fastrand::u64(..))
}

/// The test configuration for `schema`: short fallback poll, few connections.
pub fn config(schema: &str) -> PgConfig {
    PgConfig::new(pg_url())
        .schema(schema)
        .poll_interval(Duration::from_millis(200))
        .max_connections(4)
}

/// A small pool of the test's own.
pub async fn pool() -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .connect(&pg_url())
        .await
        .unwrap_or_else(|e| panic!("cannot reach ACTIX_POLLER_PG_URL: {e}"))
}

/// Drops a test's schema and everything in it.
pub async fn drop_schema(schema: &str) {
    let pool = pool().await;
    let _ = sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(&pool)
        .await;
    pool.close().await;
}

/// Waits (at most 30 s) until `count`, a query of one integer, answers `want`; panics with
/// `what` and the last answer after that. A wait on the database's state, not a sleep.
pub async fn until_count(db: &PgPool, what: &str, count: &str, want: i64) {
    let mut last = None;
    let wait = async {
        loop {
            let now: i64 = sqlx::query_scalar(count)
                .fetch_one(db)
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            if now == want {
                return;
            }
            last = Some(now);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .is_err()
    {
        panic!("{what}: not within 30 s (last {last:?}, want {want})");
    }
}

/// A database of the test's own on the server of `ACTIX_POLLER_PG_URL` (so that only its
/// sessions count in `pg_stat_database`, or so that it can be dropped under a poller): its
/// name and its URL. Drop it with `DROP DATABASE … WITH (FORCE)`.
pub async fn own_database(admin: &PgPool) -> (String, String) {
    let db = format!("ap_own_{}_{:x}", std::process::id(), fastrand::u32(..));
    sqlx::raw_sql(&format!("CREATE DATABASE {db}"))
        .execute(admin)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let url = pg_url();
    let (base, query) = url.split_once('?').unwrap_or((&url, ""));
    let (server, _) = base
        .rsplit_once('/')
        .unwrap_or_else(|| panic!("a database in {url}"));
    let own = if query.is_empty() {
        format!("{server}/{db}")
    } else {
        format!("{server}/{db}?{query}")
    };
    (db, own)
}
