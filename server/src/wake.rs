//! Keeping an executor awake while it waits on another one.

use std::time::Duration;

/// How often an executor wakes while it joins the mesh and connects its
/// channels to the committer; see [`wake_every`].
pub const START_WAKE: Duration = Duration::from_millis(10);

/// A task that wakes this executor every `period` until it is dropped.
///
/// Joining glommio's channel mesh and connecting shared channels wait on
/// another executor's notification; an executor that has nothing else to
/// do sleeps in io_uring until one comes. Once in a while none came (5 of
/// 60 two-shard starts on a loaded machine, `bench/scripts/starts.sh`): the
/// shard slept with no timer pending, never logged "serving", and the node
/// never became ready (the stuck thread sat in `io_cqring_wait`). A
/// pending timer bounds such a sleep: each wake polls the shared channels
/// again, so a lost notification costs at most one period.
pub fn wake_every(period: Duration) -> glommio::Task<()> {
    glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(period).await;
        }
    })
}
