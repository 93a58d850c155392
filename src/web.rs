//! Tie a poller to an actix-web server's lifecycle (cargo feature `web`): [`serve`] runs the
//! server, and on SIGINT or SIGTERM stops it, drains the poller and only then returns, so the
//! `System` stops after the poller has handed back what it holds.
//!
//! # Why not `HttpServer::run().await` and then `shutdown`
//!
//! With its default signal handling, actix-server answers SIGINT, SIGTERM and SIGQUIT by stopping
//! the server *and then the whole actix `System`*, about 300 ms later (actix-server 2.x,
//! `force_system_stop`). An application written as
//!
//! ```text
//! HttpServer::new(..).bind(..)?.run().await?;
//! poller.shutdown(grace).await?;
//! ```
//!
//! reaches `shutdown` too late on Ctrl-C: the `System` is stopping or stopped, the arbiters the
//! poller's executors run on are gone, and the tasks they held (running, or queued at an
//! executor) never finish and never come back. [`serve`] turns the server's own signal handling
//! off ([`HttpServer::disable_signals`]), listens for the signals itself, and stops things in
//! order: first the server (no new request; requests in flight finish, so every task they submit
//! is in the poller), then the poller ([`Poller::shutdown`]), then it returns.
//!
//! Do not also call [`HttpServer::system_exit`]: that flag makes the server stop the `System`
//! whenever it stops, before the poller is drained.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::io;
use std::pin::{pin, Pin};
#[cfg(unix)]
use std::task::{Context, Poll};
use std::time::Duration;

use actix_http::Request;
use actix_web::body::MessageBody;
use actix_web::dev::{AppConfig, Response, Server, ServerHandle, Service, ServiceFactory};
use actix_web::{Error as WebError, HttpServer};
use futures::future::{self, Either};

use crate::error::ShutdownError;
use crate::poller::Poller;
use crate::shutdown::ShutdownReport;

/// The signal (or the lack of one) that ended [`serve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoppedBy {
    /// SIGINT (Ctrl-C; on other platforms than Unix, the console's Ctrl-C): the server stopped
    /// gracefully, then the poller drained for up to `grace`.
    Interrupt,
    /// SIGTERM (what `docker stop`, systemd and Kubernetes send): handled like
    /// [`Interrupt`](Self::Interrupt).
    Terminate,
    /// SIGQUIT: stop fast. The server stopped without waiting for requests in flight, and the
    /// poller shut down with no grace: running tasks were interrupted, unstarted ones handed
    /// back.
    Quit,
    /// No signal: the server ended by itself, or through its [`ServerHandle`]
    /// ([`Serve::server_handle`]). The poller then drained for up to `grace`.
    Server,
}

impl fmt::Display for StoppedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoppedBy::Interrupt => "SIGINT",
            StoppedBy::Terminate => "SIGTERM",
            StoppedBy::Quit => "SIGQUIT",
            StoppedBy::Server => "the server itself",
        })
    }
}

/// What [`serve`] did: what stopped it and what the poller's shutdown reported.
#[derive(Debug)]
#[non_exhaustive]
pub struct Served<T> {
    /// What ended the serving.
    pub stopped_by: StoppedBy,
    /// The poller's shutdown report: among others, the tasks that never started
    /// ([`ShutdownReport::handed_back`]), yours to store or run elsewhere.
    pub report: ShutdownReport<T>,
}

/// [`serve`] failed. Whatever happened, the poller was shut down when a report is carried, and
/// that report's tasks come back to you ([`ServeError::into_report`]).
#[non_exhaustive]
pub enum ServeError<T> {
    /// The server could not start (no address bound, a listener failed, the signal handlers
    /// could not be installed) or failed while running. The poller was then shut down as after
    /// a signal; its report is here.
    Server {
        /// What failed.
        error: io::Error,
        /// What stopped serving ([`StoppedBy::Server`] when the server failed by itself).
        stopped_by: StoppedBy,
        /// The poller's shutdown report.
        report: ShutdownReport<T>,
    },
    /// The server stopped, but the poller's shutdown failed (it was already shut down
    /// elsewhere, or its source failed to take its tasks back): see [`Poller::shutdown`].
    Shutdown {
        /// Why the shutdown failed.
        error: ShutdownError,
        /// What stopped serving.
        stopped_by: StoppedBy,
        /// The server's own error, if it failed too.
        server: Option<io::Error>,
    },
    /// The future was polled outside a tokio runtime (actix-web runs in one: use
    /// `#[actix_web::main]` or an `actix_rt::System`). Nothing was started, and the poller was
    /// not touched.
    NoRuntime,
}

impl<T> ServeError<T> {
    /// The poller's shutdown report, when the poller was shut down: take the handed-back tasks
    /// from it.
    pub fn into_report(self) -> Option<ShutdownReport<T>> {
        match self {
            ServeError::Server { report, .. } => Some(report),
            ServeError::Shutdown { .. } | ServeError::NoRuntime => None,
        }
    }
}

// By hand, so that `ServeError<T>` is an error whatever `T` is (the payloads are not printed).
impl<T> fmt::Debug for ServeError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::Server {
                error,
                stopped_by,
                report,
            } => f
                .debug_struct("Server")
                .field("error", error)
                .field("stopped_by", stopped_by)
                .field("finished_during_drain", &report.finished_during_drain)
                .field("cancelled", &report.cancelled)
                .field("handed_back", &report.handed_back.len())
                .finish(),
            ServeError::Shutdown {
                error,
                stopped_by,
                server,
            } => f
                .debug_struct("Shutdown")
                .field("error", error)
                .field("stopped_by", stopped_by)
                .field("server", server)
                .finish(),
            ServeError::NoRuntime => f.write_str("NoRuntime"),
        }
    }
}

impl<T> fmt::Display for ServeError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::Server { error, report, .. } => write!(
                f,
                "the HTTP server failed: {error}; the poller was shut down and handed back {} \
                 tasks",
                report.handed_back.len()
            ),
            ServeError::Shutdown {
                error,
                server: None,
                ..
            } => write!(
                f,
                "the HTTP server stopped, but the poller's shutdown failed: {error}"
            ),
            ServeError::Shutdown {
                error,
                server: Some(server),
                ..
            } => write!(
                f,
                "the HTTP server failed ({server}), and the poller's shutdown failed: {error}"
            ),
            ServeError::NoRuntime => f.write_str(
                "actix_poller::web::serve was awaited outside a tokio runtime; run it inside an \
                 actix System (#[actix_web::main])",
            ),
        }
    }
}

impl<T> std::error::Error for ServeError<T> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServeError::Server { error, .. } => Some(error),
            ServeError::Shutdown { error, .. } => Some(error),
            ServeError::NoRuntime => None,
        }
    }
}

/// Runs `server` until SIGINT, SIGTERM or SIGQUIT (or until the server stops by itself), then
/// shuts `poller` down, and only then resolves: one line at the end of `main`.
///
/// In order:
///
/// 1. The server runs with actix-server's own signal handling turned off
///    ([`HttpServer::disable_signals`]); [`serve`] listens for SIGINT, SIGTERM and SIGQUIT
///    itself (Ctrl-C where there are no Unix signals), from the first poll on.
/// 2. On SIGINT or SIGTERM the server stops **gracefully**: it accepts no new connection, and
///    requests in flight get the server's own shutdown timeout
///    ([`HttpServer::shutdown_timeout`], 30 s unless set) to finish, so every task they submit
///    reaches the poller. On SIGQUIT it stops at once.
/// 3. Then the poller shuts down ([`Poller::shutdown`]): running tasks get up to `grace` to
///    finish (no grace after SIGQUIT); unstarted ones come back in
///    [`Served::report`]`.handed_back` (in-memory source) or stay in the store (durable).
/// 4. It resolves; once `main` returns, the `System` stops, with nothing of the poller left
///    in it.
///
/// A signal that arrives while stopping changes nothing: the stop takes at most the server's
/// shutdown timeout plus `grace` (and the shutdown's own slack). If the server stops by itself
/// (through [`Serve::server_handle`], or because it failed), the poller is drained the same way.
///
/// Await the returned [`Serve`] (it is an [`IntoFuture`]); before that, take
/// [`Serve::server_handle`] if code of yours should be able to stop the server.
///
/// # Errors
///
/// [`ServeError::Server`] when the server could not start or failed (the poller is shut down
/// anyway, and the error carries its report); [`ServeError::Shutdown`] when the poller's
/// shutdown failed (e.g. it had already been shut down); [`ServeError::NoRuntime`] outside a
/// runtime.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use actix_poller::{Poller, TaskContext};
/// use actix_web::{web, App, HttpResponse, HttpServer};
///
/// async fn resize(poller: web::Data<Poller<String>>, path: String) -> HttpResponse {
///     match poller.submit(path).await {
///         Ok(_) => HttpResponse::Accepted().finish(),
///         Err(refused) => HttpResponse::ServiceUnavailable().body(refused.to_string()),
///     }
/// }
///
/// #[actix_web::main]
/// async fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let poller = Poller::<String>::builder()
///         .workers(8)
///         .start(|path: String, _cx: TaskContext| async move {
///             println!("resizing {path}");
///             Ok::<_, std::io::Error>(())
///         })?;
///     let data = web::Data::new(poller.clone());
///     let server = HttpServer::new(move || {
///         App::new()
///             .app_data(data.clone())
///             .route("/resize", web::post().to(resize))
///     })
///     .bind(("127.0.0.1", 8080))?;
///
///     // Until Ctrl-C or SIGTERM; then the server stops, the poller drains for up to 10 s.
///     let served = actix_poller::web::serve(server, &poller, Duration::from_secs(10)).await?;
///     for task in served.report.handed_back {
///         println!("never started: {}", task.payload); // store it, or send it elsewhere
///     }
///     Ok(())
/// }
/// ```
///
/// Stopping from code instead of a signal (here right away, as a test would):
///
/// ```
/// use std::time::Duration;
/// use actix_poller::{web::StoppedBy, Poller};
/// use actix_web::{App, HttpServer};
///
/// #[actix_web::main]
/// async fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let poller = Poller::<u32>::builder()
///         .start(|_n: u32, _cx| async { Ok::<_, std::io::Error>(()) })?;
///     let server = HttpServer::new(App::new).workers(1).bind(("127.0.0.1", 0))?;
///     let serve = actix_poller::web::serve(server, &poller, Duration::from_secs(5));
///     let handle = serve.server_handle().ok_or("nothing bound")?;
///     actix_web::rt::spawn(async move { handle.stop(true).await });
///     let served = serve.await?;
///     assert_eq!(served.stopped_by, StoppedBy::Server);
///     assert!(poller.is_closed());
///     Ok(())
/// }
/// ```
pub fn serve<F, I, S, B, T>(
    server: HttpServer<F, I, S, B>,
    poller: &Poller<T>,
    grace: Duration,
) -> Serve<T>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: actix_service::IntoServiceFactory<S, Request>,
    S: ServiceFactory<Request, Config = AppConfig> + 'static,
    S::Error: Into<WebError> + 'static,
    S::InitError: fmt::Debug,
    S::Response: Into<Response<B>> + 'static,
    <S::Service as Service<Request>>::Future: 'static,
    S::Service: 'static,
    B: MessageBody + 'static,
    T: Send + 'static,
{
    // `run` panics when nothing is bound; that is an error here.
    let server = if server.addrs().is_empty() {
        None
    } else {
        Some(server.disable_signals().run())
    };
    Serve {
        handle: server.as_ref().map(Server::handle),
        server,
        poller: poller.clone(),
        grace,
    }
}

/// The server and the poller [`serve`] runs: await it. Nothing runs until it is awaited.
#[must_use = "nothing is served until it is awaited"]
pub struct Serve<T: Send + 'static> {
    server: Option<Server>,
    handle: Option<ServerHandle>,
    poller: Poller<T>,
    grace: Duration,
}

impl<T: Send + 'static> fmt::Debug for Serve<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Serve")
            .field("poller", &self.poller)
            .field("grace", &self.grace)
            .finish_non_exhaustive()
    }
}

impl<T: Send + 'static> Serve<T> {
    /// A handle that stops the server from code: `handle.stop(true)` makes [`serve`] drain the
    /// poller and resolve with [`StoppedBy::Server`], as a signal would. `None` only when the
    /// server has no bound address, which awaiting reports as [`ServeError::Server`].
    pub fn server_handle(&self) -> Option<ServerHandle> {
        self.handle.clone()
    }
}

impl<T: Send + 'static> IntoFuture for Serve<T> {
    type Output = Result<Served<T>, ServeError<T>>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(run(self))
    }
}

/// The body of [`Serve`]'s future: signals first, then the server, then the poller.
async fn run<T: Send + 'static>(serve: Serve<T>) -> Result<Served<T>, ServeError<T>> {
    let Serve {
        server,
        handle,
        poller,
        grace,
    } = serve;
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(ServeError::NoRuntime);
    }
    let (server, handle) = match (server, handle) {
        (Some(server), Some(handle)) => (server, handle),
        _ => {
            let error = io::Error::new(
                io::ErrorKind::InvalidInput,
                "the HttpServer has no bound address (call bind or listen before serve)",
            );
            return drained(&poller, grace, StoppedBy::Server, Err(error)).await;
        }
    };
    let signals = match Signals::new() {
        Ok(signals) => signals,
        Err(error) => {
            // Never run: the server is dropped unpolled, its listeners closed.
            drop(server);
            let error = io::Error::new(
                error.kind(),
                format!("cannot listen for SIGINT/SIGTERM/SIGQUIT: {error}"),
            );
            return drained(&poller, grace, StoppedBy::Server, Err(error)).await;
        }
    };
    let (stopped_by, result) = match future::select(server, pin!(signals.recv())).await {
        Either::Left((result, _)) => (StoppedBy::Server, result),
        Either::Right((signal, server)) => {
            let graceful = signal != StoppedBy::Quit;
            tracing::info!(%signal, graceful, "stopping the HTTP server, then the poller");
            // `stop` sends its command at once; the server future, polled here, carries it out
            // (graceful: requests in flight finish, up to the server's shutdown timeout).
            let stopped = handle.stop(graceful);
            let result = server.await;
            stopped.await;
            (signal, result)
        }
    };
    let grace = if stopped_by == StoppedBy::Quit {
        Duration::ZERO
    } else {
        grace
    };
    drained(&poller, grace, stopped_by, result).await
}

/// Shuts `poller` down after the server ended with `server`, and says how it all went.
async fn drained<T: Send + 'static>(
    poller: &Poller<T>,
    grace: Duration,
    stopped_by: StoppedBy,
    server: io::Result<()>,
) -> Result<Served<T>, ServeError<T>> {
    match (poller.shutdown(grace).await, server) {
        (Ok(report), Ok(())) => Ok(Served { stopped_by, report }),
        (Ok(report), Err(error)) => Err(ServeError::Server {
            error,
            stopped_by,
            report,
        }),
        (Err(error), server) => Err(ServeError::Shutdown {
            error,
            stopped_by,
            server: server.err(),
        }),
    }
}

/// The stop signals [`serve`] listens for.
struct Signals {
    #[cfg(unix)]
    streams: Vec<(StoppedBy, actix_rt::signal::unix::Signal)>,
}

impl Signals {
    /// Installs the handlers (from now on these signals no longer end the process).
    fn new() -> io::Result<Self> {
        #[cfg(unix)]
        {
            use actix_rt::signal::unix::{signal, SignalKind};
            let kinds = [
                (StoppedBy::Interrupt, SignalKind::interrupt()),
                (StoppedBy::Terminate, SignalKind::terminate()),
                (StoppedBy::Quit, SignalKind::quit()),
            ];
            let mut streams = Vec::with_capacity(kinds.len());
            for (stopped_by, kind) in kinds {
                streams.push((stopped_by, signal(kind)?));
            }
            Ok(Signals { streams })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }

    /// The first signal received.
    async fn recv(mut self) -> StoppedBy {
        #[cfg(unix)]
        {
            future::poll_fn(move |cx: &mut Context<'_>| {
                for (stopped_by, stream) in &mut self.streams {
                    // `None`: the stream can receive no more; another one still may.
                    if let Poll::Ready(Some(())) = stream.poll_recv(cx) {
                        return Poll::Ready(*stopped_by);
                    }
                }
                Poll::Pending
            })
            .await
        }
        #[cfg(not(unix))]
        {
            match actix_rt::signal::ctrl_c().await {
                Ok(()) => StoppedBy::Interrupt,
                // No Ctrl-C to listen for: only the server's handle stops it.
                Err(_) => future::pending().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::{App, HttpServer};

    /// A poller holding one task that is not due for an hour: shutdown hands it back.
    async fn poller_with_a_delayed_task() -> Poller<u32> {
        let poller = Poller::<u32>::builder()
            .start(|_n: u32, _cx| async { Ok::<_, io::Error>(()) })
            .expect("started inside a System");
        poller
            .submit_after(7, Duration::from_secs(3600))
            .await
            .expect("the queue takes it");
        poller
    }

    /// Serves an empty app for `poller`, stopped through its handle as soon as it runs.
    async fn serve_until_stopped(poller: &Poller<u32>) -> Result<Served<u32>, ServeError<u32>> {
        let server = HttpServer::new(App::new)
            .workers(1)
            .bind(("127.0.0.1", 0))
            .expect("bind");
        let serve = serve(server, poller, Duration::from_secs(5));
        let handle = serve.server_handle().expect("bound");
        actix_rt::spawn(async move { handle.stop(true).await });
        serve.await
    }

    #[actix_rt::test]
    async fn stopping_the_server_by_its_handle_drains_the_poller() {
        let poller = poller_with_a_delayed_task().await;
        let served = serve_until_stopped(&poller).await.expect("served");
        assert_eq!(served.stopped_by, StoppedBy::Server);
        let back: Vec<u32> = served
            .report
            .handed_back
            .iter()
            .map(|t| t.payload)
            .collect();
        assert_eq!(back, vec![7]);
        assert!(poller.is_closed());
    }

    #[actix_rt::test]
    async fn a_server_bound_to_nothing_is_an_error_and_the_poller_is_still_drained() {
        let poller = poller_with_a_delayed_task().await;
        let serve = serve(HttpServer::new(App::new), &poller, Duration::from_secs(5));
        assert!(serve.server_handle().is_none());
        let error = serve.await.expect_err("nothing is bound");
        assert!(error.to_string().contains("no bound address"), "{error}");
        let report = error.into_report().expect("the poller was shut down");
        assert_eq!(report.handed_back.len(), 1);
        assert!(poller.is_closed());
    }

    #[actix_rt::test]
    async fn a_poller_shut_down_elsewhere_is_a_shutdown_error() {
        let poller = poller_with_a_delayed_task().await;
        poller
            .shutdown(Duration::ZERO)
            .await
            .expect("first shutdown");
        let server = HttpServer::new(App::new)
            .workers(1)
            .bind(("127.0.0.1", 0))
            .expect("bind");
        let serve = serve(server, &poller, Duration::from_secs(5));
        let handle = serve.server_handle().expect("bound");
        actix_rt::spawn(async move { handle.stop(true).await });
        match serve.await {
            Err(ServeError::Shutdown {
                error: ShutdownError::AlreadyShutDown,
                stopped_by: StoppedBy::Server,
                server: None,
            }) => {}
            other => panic!("expected AlreadyShutDown, got {other:?}"),
        }
    }
}
