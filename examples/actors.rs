//! Actors: other actors submit tasks as messages and receive results as messages.
//!
//! ```text
//! cargo run --example actors
//! ```
//!
//! A `Gallery` actor holds only a `Recipient<Submit<Resize>>`: it does not know the poller's
//! source, handler or executors. It sends `Submit::new(job).tracked()` per image and gets two
//! messages back per image: `Resized` from the task itself (the result value: the task carries
//! the gallery's `Recipient<Resized>`) and `Settled` when the receipt resolves (the final state,
//! failures included).

use std::error::Error;
use std::time::Duration;

use actix::prelude::*;
use actix_poller::{FinalState, Poller, Submit};
use tokio::sync::oneshot;

mod check;

const IMAGES: [&str; 8] = [
    "cat.png",
    "dog.jpg",
    "owl.png",
    "corrupt.gif",
    "fox.jpg",
    "elk.png",
    "bee.jpg",
    "emu.png",
];

/// The task: resize `image` and tell `reply_to`.
struct Resize {
    image: String,
    width: u32,
    reply_to: Recipient<Resized>,
}

/// Task → Gallery: the result value.
#[derive(Message)]
#[rtype(result = "()")]
struct Resized {
    image: String,
    bytes: usize,
}

/// Receipt → Gallery: one submitted task reached its final state (`Err`: why it did not
/// complete).
#[derive(Message)]
#[rtype(result = "()")]
struct Settled {
    image: String,
    outcome: Result<(), String>,
}

async fn resize(job: Resize) -> Result<(), String> {
    actix_rt::time::sleep(Duration::from_millis(20)).await;
    if job.image.ends_with(".gif") {
        return Err("unsupported format".to_string());
    }
    let bytes = job.width as usize * job.width as usize * 3 / 4;
    job.reply_to.do_send(Resized {
        image: job.image,
        bytes,
    });
    Ok(())
}

/// What the gallery collected: each resized image and its size, each failure and its reason.
#[derive(Debug, Default)]
struct Album {
    resized: Vec<(String, usize)>,
    failed: Vec<String>,
}

/// Submits one resize per image, collects the results, reports when every image settled.
struct Gallery {
    submit: Recipient<Submit<Resize>>,
    album: Album,
    settled: usize,
    finished: Option<oneshot::Sender<Album>>,
}

impl Actor for Gallery {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        for (i, image) in IMAGES.into_iter().enumerate() {
            let job = Resize {
                image: image.to_string(),
                width: 160 + 40 * i as u32,
                reply_to: ctx.address().recipient(),
            };
            let submit = self.submit.send(Submit::new(job).tracked());
            let me = ctx.address();
            let image = image.to_string();
            // The receipt resolves when the task reaches its final state; it becomes a message.
            actix::spawn(async move {
                let outcome = match submit.await {
                    Ok(Ok(receipt)) => match receipt.outcome().await {
                        Ok(FinalState::Completed) => Ok(()),
                        Ok(FinalState::Dead { error, .. }) => Err(error),
                        Ok(other) => Err(format!("{other:?}")),
                        Err(e) => Err(e.to_string()),
                    },
                    Ok(Err(refused)) => Err(refused.to_string()),
                    Err(_) => Err("the poller is shut down".to_string()),
                };
                me.do_send(Settled { image, outcome });
            });
        }
    }
}

impl Handler<Resized> for Gallery {
    type Result = ();
    fn handle(&mut self, msg: Resized, _: &mut Context<Self>) {
        self.album.resized.push((msg.image, msg.bytes));
    }
}

impl Handler<Settled> for Gallery {
    type Result = ();
    fn handle(&mut self, msg: Settled, ctx: &mut Context<Self>) {
        if let Err(reason) = msg.outcome {
            self.album.failed.push(format!("{} ({reason})", msg.image));
        }
        self.settled += 1;
        if self.settled == IMAGES.len() {
            if let Some(tx) = self.finished.take() {
                let _ = tx.send(std::mem::take(&mut self.album));
            }
            ctx.stop();
        }
    }
}

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let poller = Poller::<Resize>::builder()
        .workers(3)
        .on_current_arbiter()
        .start(|job: Resize, _cx| resize(job))?;

    let (tx, rx) = oneshot::channel();
    Gallery {
        submit: poller.submit_recipient(),
        album: Album::default(),
        settled: 0,
        finished: Some(tx),
    }
    .start();
    let Album { resized, failed } = rx.await.map_err(|_| "the gallery stopped early")?;

    println!(
        "{}",
        poller
            .topology()
            .with_client("Gallery actor", "Submit (tracked)")
            .to_mermaid()
    );
    let names: Vec<String> = resized
        .iter()
        .map(|(image, bytes)| format!("{image} {} KiB", bytes / 1024))
        .collect();
    println!(
        "actors: the Gallery actor submitted {} resize tasks through a Recipient<Submit<Resize>>, \
         three at a time on the current arbiter. It received {} Resized messages from the tasks \
         ({}) and a Settled message per receipt; {} did not complete: {}.",
        IMAGES.len(),
        resized.len(),
        names.join(", "),
        failed.len(),
        failed.join(", "),
    );
    poller.shutdown(Duration::from_secs(5)).await?;

    // Each image settled once: resized unless its format is unsupported.
    let unsupported = IMAGES.iter().filter(|i| i.ends_with(".gif")).count();
    let mut distinct: Vec<&str> = resized.iter().map(|(image, _)| image.as_str()).collect();
    distinct.sort_unstable();
    distinct.dedup();
    let stats = poller.stats();
    check::Check::new("actors")
        .eq(
            "Resized messages",
            resized.len(),
            IMAGES.len() - unsupported,
        )
        .eq("distinct images resized", distinct.len(), resized.len())
        .eq("images that did not complete", failed.len(), unsupported)
        .eq("stats.started", stats.started, IMAGES.len() as u64)
        .eq("stats.completed", stats.completed, resized.len() as u64)
        .eq("stats.dead", stats.dead, unsupported as u64)
        .exit_if_wrong();
    Ok(())
}
