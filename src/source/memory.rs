//! The in-process queue: the default source.
//!
//! Owned by the Fetcher actor like every source, so it needs no lock. Bounded: a submit that does
//! not fit is refused with [`SubmitError::Full`], which hands the tasks back (back-pressure); the
//! queue never drops a task and never grows past its capacity.
//!
//! Delivery is exactly once while the process lives. The queue lives in memory: a crash loses what
//! it holds. On [`Poller::shutdown`](crate::Poller::shutdown) everything still queued, and every
//! task fetched but not started, is handed back in the
//! [`ShutdownReport`](crate::ShutdownReport).

use std::collections::VecDeque;
use std::convert::Infallible;

use futures::future::{ready, LocalBoxFuture};

use super::{EnqueueResult, Fetched, NewTask, Source, WakeOn};
use crate::error::SubmitError;
use crate::task::{Ack, Task, TaskId};

/// The default capacity of [`MemorySource::default`].
pub const DEFAULT_CAPACITY: usize = 100_000;

/// A bounded FIFO queue in memory.
///
/// # Examples
///
/// ```
/// use actix_poller::MemorySource;
///
/// let source = MemorySource::<String>::bounded(1_000).expect("capacity is not zero");
/// assert_eq!(source.capacity(), 1_000);
/// assert!(MemorySource::<String>::bounded(0).is_err());
/// ```
#[derive(Debug)]
pub struct MemorySource<T> {
    queue: VecDeque<Task<T>>,
    pub(crate) capacity: usize,
    next_id: u64,
}

impl<T> Default for MemorySource<T> {
    /// A queue of [`DEFAULT_CAPACITY`] tasks.
    fn default() -> Self {
        MemorySource {
            queue: VecDeque::new(),
            capacity: DEFAULT_CAPACITY,
            next_id: 0,
        }
    }
}

impl<T> MemorySource<T> {
    /// A queue that holds at most `capacity` waiting tasks.
    ///
    /// # Errors
    ///
    /// [`StartError::ZeroCapacity`](crate::StartError::ZeroCapacity) when `capacity` is 0.
    pub fn bounded(capacity: usize) -> Result<Self, crate::StartError> {
        if capacity == 0 {
            return Err(crate::StartError::ZeroCapacity);
        }
        Ok(MemorySource {
            queue: VecDeque::new(),
            capacity,
            next_id: 0,
        })
    }

    /// The most tasks the queue holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many tasks wait.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// `true` when no task waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

impl<T: 'static> Source<T> for MemorySource<T> {
    type Error = Infallible;

    fn fetch(&mut self, max: usize) -> LocalBoxFuture<'static, Result<Fetched<T>, Infallible>> {
        let n = max.min(self.queue.len());
        let tasks: Vec<Task<T>> = self.queue.drain(..n).collect();
        // Nothing to poll for: only a submit can bring more.
        Box::pin(ready(Ok(Fetched::new(tasks, WakeOn::submit()))))
    }

    fn ack(&mut self, _acks: Vec<Ack>) -> LocalBoxFuture<'static, Result<(), Infallible>> {
        // Final states need no storage here: the Fetcher tells trackers, the Scheduler counts.
        // (Tasks enqueued here have one attempt, so no ack asks for a retry.)
        Box::pin(ready(Ok(())))
    }

    fn enqueue(&mut self, tasks: Vec<NewTask<T>>) -> LocalBoxFuture<'static, EnqueueResult<T>> {
        Box::pin(ready(self.push(tasks)))
    }

    fn queued(&self) -> Option<u64> {
        Some(self.queue.len() as u64)
    }

    fn close(
        &mut self,
        mut unstarted: Vec<Task<T>>,
    ) -> LocalBoxFuture<'static, Result<Vec<Task<T>>, Infallible>> {
        // Unstarted tasks were fetched first, so they come first.
        unstarted.extend(self.queue.drain(..));
        Box::pin(ready(Ok(unstarted)))
    }
}

impl<T> MemorySource<T> {
    fn push(&mut self, tasks: Vec<NewTask<T>>) -> EnqueueResult<T> {
        if tasks.len() > self.capacity - self.queue.len() {
            return Err(SubmitError::Full(
                tasks.into_iter().map(|t| t.payload).collect(),
            ));
        }
        let mut ids = Vec::with_capacity(tasks.len());
        for t in tasks {
            self.next_id += 1;
            let id = TaskId(self.next_id);
            let mut task = Task::new(id, t.payload);
            task.max_attempts = t.max_attempts.max(1);
            self.queue.push_back(task);
            ids.push(id);
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    fn new_tasks(n: u32) -> Vec<NewTask<u32>> {
        (0..n).map(NewTask::new).collect()
    }

    #[test]
    fn full_queue_hands_the_whole_batch_back() {
        let mut s = MemorySource::bounded(3).unwrap();
        assert_eq!(
            s.enqueue(new_tasks(2))
                .now_or_never()
                .unwrap()
                .unwrap()
                .len(),
            2
        );
        let err = s.enqueue(new_tasks(2)).now_or_never().unwrap().unwrap_err();
        assert!(err.is_full());
        assert_eq!(err.into_inner(), vec![0, 1]);
        assert_eq!(s.len(), 2, "a refused batch adds nothing");
    }

    #[test]
    fn fetch_is_fifo_and_bounded_by_max() {
        let mut s = MemorySource::bounded(10).unwrap();
        s.enqueue(new_tasks(5)).now_or_never().unwrap().unwrap();
        let f = s.fetch(3).now_or_never().unwrap().unwrap();
        let got: Vec<u32> = f.tasks.iter().map(|t| t.payload).collect();
        assert_eq!(got, vec![0, 1, 2]);
        let f = s.fetch(10).now_or_never().unwrap().unwrap();
        assert_eq!(f.tasks.len(), 2);
        assert!(f.wake_on.at.is_none() && f.wake_on.signal.is_none());
    }

    #[test]
    fn close_hands_back_unstarted_then_queued() {
        let mut s = MemorySource::bounded(10).unwrap();
        s.enqueue(new_tasks(4)).now_or_never().unwrap().unwrap();
        let f = s.fetch(2).now_or_never().unwrap().unwrap();
        let back = s.close(f.tasks).now_or_never().unwrap().unwrap();
        let got: Vec<u32> = back.iter().map(|t| t.payload).collect();
        assert_eq!(got, vec![0, 1, 2, 3]);
    }
}
