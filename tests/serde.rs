//! The `serde` feature: what operators read serializes, so a `/stats` or `/jobs/{id}` route is
//! one line (issue 13).
#![cfg(feature = "serde")]

use std::time::Duration;

use actix_poller::{FinalState, Poller, TaskContext};
use serde_json::json;

#[actix_rt::test]
async fn stats_status_and_counts_serialize() {
    let poller = Poller::<u32>::builder()
        .workers(2)
        .start(|_n: u32, _cx: TaskContext| async { Ok::<_, std::io::Error>(()) })
        .unwrap_or_else(|e| panic!("{e}"));
    let receipt = poller
        .submit_tracked(1)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let id = receipt.id();
    let end = receipt.outcome().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        serde_json::to_value(&end).ok(),
        Some(json!({"kind": "completed"}))
    );
    assert_eq!(serde_json::to_value(id).ok(), Some(json!(id.0)));

    let status = poller.status(id).await.unwrap_or_else(|e| panic!("{e}"));
    let status = serde_json::to_value(status.expect("kept")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status["id"], json!(id.0));
    assert_eq!(status["state"]["kind"], json!("completed"));
    assert_eq!(status["attempt"], json!(1));

    let counts = poller.counts().await.unwrap_or_else(|e| panic!("{e}"));
    let counts = serde_json::to_value(counts.expect("counted")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(counts["queued"], json!(0));

    let stats = serde_json::to_value(poller.stats()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stats["limit"], json!(2));
    assert_eq!(stats["completed"], json!(1));
    let dead = FinalState::Dead {
        error: "no".into(),
        attempts: 2,
    };
    assert_eq!(
        serde_json::to_value(&dead).ok(),
        Some(json!({"kind": "dead", "error": "no", "attempts": 2}))
    );
    poller
        .shutdown(Duration::from_secs(1))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}
