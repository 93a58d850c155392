//! Shared by the examples (`mod check;`): each example checks its own result at the end and
//! exits non-zero when a count is wrong (a task lost or run twice, a total that does not add
//! up), so a smoke run in CI fails on a wrong result, not only on a crash.
//!
//! Not an example itself: Cargo builds only `examples/*.rs` and `examples/*/main.rs`.

use std::fmt::Debug;

/// The counts one example expects, and those that came out wrong.
#[derive(Debug)]
pub(crate) struct Check {
    example: &'static str,
    wrong: Vec<String>,
}

impl Check {
    /// No count checked yet, for the example named `example`.
    pub(crate) fn new(example: &'static str) -> Check {
        Check {
            example,
            wrong: Vec::new(),
        }
    }

    /// `what` must be `want`; records it as wrong otherwise.
    pub(crate) fn eq<V: PartialEq + Debug>(&mut self, what: &str, got: V, want: V) -> &mut Check {
        if got != want {
            self.wrong
                .push(format!("{what}: {got:?}, expected {want:?}"));
        }
        self
    }

    /// Exits with status 1, naming each wrong count on stderr, if any was wrong; returns
    /// otherwise.
    pub(crate) fn exit_if_wrong(&self) {
        if self.wrong.is_empty() {
            return;
        }
        eprintln!("{}: WRONG RESULT", self.example);
        for w in &self.wrong {
            eprintln!("  {w}");
        }
        std::process::exit(1);
    }
}
