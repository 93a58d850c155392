//! Dead tasks, as a source keeps them.

use std::time::SystemTime;

use super::TaskId;

/// A task that ran out of attempts (or was aborted), as a source keeps it.
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadTask {
    /// The task.
    pub id: TaskId,
    /// How many attempts it had.
    pub attempts: u32,
    /// Why the last one failed.
    pub error: String,
    /// When it went dead.
    pub died_at: SystemTime,
    /// `false` when the source kept no copy of the payload, so it cannot run again.
    pub rerunnable: bool,
}
