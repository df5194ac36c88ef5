//! A star's life as its tasks see it: the token that stops them, the token that says it is
//! draining (refuse new work, let what runs finish), and the tracker that shutdown waits on.
//! Every task of a star is spawned on [`Lifecycle::tracker`].

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What a task needs to know of the star's shutdown. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct Lifecycle {
    /// Cancelled when the star stops its tasks.
    pub(crate) cancel: CancellationToken,
    /// Cancelled when shutdown begins: new commands and reads are refused with `Unavailable`,
    /// those in flight may finish.
    pub(crate) draining: CancellationToken,
    /// Every task of the star.
    pub(crate) tracker: TaskTracker,
}
