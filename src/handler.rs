//! What runs a task: the [`TaskHandler`] trait (implemented for every async fn of the payload
//! and a [`TaskContext`]) and the error type handlers may return ([`BoxError`]).

use std::future::Future;

use crate::task::TaskContext;

/// The error type handlers may return: anything that converts into a boxed error (`String`,
/// `&str`, `std::io::Error`, `anyhow::Error`, your own error types, ...).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What runs a task: an async function of the payload and a [`TaskContext`].
///
/// Implemented for every `Fn(T, TaskContext) -> impl Future<Output = Result<(), E>>` where
/// `E: Into<BoxError>`. The future need not be `Send`: an executor polls its tasks on its own
/// arbiter thread, so per-executor state may be an `Rc` (see
/// [`PollerBuilder::start_with`](crate::PollerBuilder::start_with)).
///
/// # Examples
///
/// ```
/// use actix_poller::{TaskContext, TaskHandler};
///
/// async fn resize(path: String, cx: TaskContext) -> Result<(), std::io::Error> {
///     println!("task {} attempt {}: {path}", cx.id(), cx.attempt());
///     Ok(())
/// }
///
/// fn takes_handler<H: TaskHandler<String>>(_h: H) {}
/// takes_handler(resize);
/// ```
pub trait TaskHandler<T>: 'static {
    /// The handler's error.
    type Error: Into<BoxError>;
    /// The future one call returns.
    type Future: Future<Output = Result<(), Self::Error>> + 'static;

    /// Runs one attempt of `task`.
    fn call(&self, task: T, cx: TaskContext) -> Self::Future;
}

impl<T, F, Fut, E> TaskHandler<T> for F
where
    F: Fn(T, TaskContext) -> Fut + 'static,
    Fut: Future<Output = Result<(), E>> + 'static,
    E: Into<BoxError>,
{
    type Error = E;
    type Future = Fut;

    fn call(&self, task: T, cx: TaskContext) -> Fut {
        self(task, cx)
    }
}
