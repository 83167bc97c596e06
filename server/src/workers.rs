//! The node's one facility for CPU work off the shards' request paths:
//! view writes, ML-DSA batch signatures and reward runs.
//!
//! A fixed set of threads in three lanes, each with a bounded queue:
//! * `Normal` threads run at a lower nice level (`workers.normal_nice`, 10
//!   by default), for view writes (and reads that may wait for the disk:
//!   receipts from a view, index objects): they must keep up, or receipts pile up
//!   in memory and restarts replay more, so they keep a share of a busy
//!   core (at nice 10 against one busy thread at nice 0, about a tenth by
//!   the scheduler's weights, 110 and 1024) where `SCHED_IDLE` would give
//!   them none; yet a thread at
//!   normal priority that wakes (an executor, a client beside the node)
//!   preempts them instead of waiting for their slice (bench/RESULTS.md,
//!   "The view writer at nice 10");
//! * `Idle` threads run at `SCHED_IDLE`, on time the executors leave
//!   (signatures: a shard preempts them at once, so they never delay a
//!   request; measured, issue 5: `require` issue p95 1.0 ms with the signer
//!   at normal priority, 155 µs at `SCHED_IDLE`);
//! * `Batch` threads run at `SCHED_IDLE` too, for long jobs (reward runs,
//!   up to hundreds of milliseconds each), on threads of their own so that
//!   they never hold up a signature.
//!
//! `workers.cores` pins the threads of both lanes to cores (none by
//! default: the scheduler places them). A full queue refuses the job
//! ([`Workers::submit`] gives it back), and the caller answers 429 or 503,
//! or keeps it and tries later. A job that has a result posts it to its
//! shard's [`Inbox`] and rings the shard's doorbell; the shard's front hands
//! it to the task that waits for it ([`Returns`]). View writes and
//! signatures have no result: they report through counters and a shared
//! store.

use futures_channel::oneshot;
use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;

/// Which threads run a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    Normal,
    Idle,
    Batch,
}

impl Lane {
    pub const ALL: [Lane; 3] = [Lane::Normal, Lane::Idle, Lane::Batch];

    pub const fn label(self) -> &'static str {
        match self {
            Lane::Normal => "normal",
            Lane::Idle => "idle",
            Lane::Batch => "batch",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// A piece of work for a worker thread.
pub struct Job(Box<dyn FnOnce() + Send>);

impl Job {
    pub fn new(work: impl FnOnce() + Send + 'static) -> Job {
        Job(Box::new(work))
    }
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

/// How the facility is laid out (from `[workers]` in the config).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkersLayout {
    pub normal_threads: usize,
    pub idle_threads: usize,
    pub batch_threads: usize,
    /// Jobs waiting per lane, at most.
    pub queue_max: usize,
    /// Cores the threads are pinned to, round robin; empty: not pinned.
    pub cores: Vec<usize>,
    /// The nice level of the `Normal` lane's threads (0..=19).
    pub normal_nice: i32,
}

/// What a lane counts, for `/metrics`.
#[derive(Debug, Default)]
pub struct LaneStats {
    pub queued: AtomicU64,
    pub done: AtomicU64,
    pub refused: AtomicU64,
}

struct LaneQueue {
    jobs: Mutex<VecDeque<Job>>,
    ready: Condvar,
    stats: LaneStats,
}

struct Inner {
    lanes: [LaneQueue; 3],
    queue_max: usize,
    stopping: AtomicBool,
}

/// A handle to the facility; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct Workers {
    inner: Arc<Inner>,
}

/// Owns the threads: stopping waits for every queued job.
pub struct WorkerThreads {
    workers: Workers,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts the threads of both lanes.
    pub fn start(layout: &WorkersLayout) -> std::io::Result<WorkerThreads> {
        assert!(layout.normal_threads > 0 && layout.idle_threads > 0 && layout.queue_max > 0);
        assert!(layout.batch_threads > 0);
        let lane = || LaneQueue {
            jobs: Mutex::new(VecDeque::with_capacity(layout.queue_max.min(4096))),
            ready: Condvar::new(),
            stats: LaneStats::default(),
        };
        let inner = Arc::new(Inner {
            lanes: [lane(), lane(), lane()],
            queue_max: layout.queue_max,
            stopping: AtomicBool::new(false),
        });
        let workers = Workers { inner };
        let mut threads =
            Vec::with_capacity(layout.normal_threads + layout.idle_threads + layout.batch_threads);
        let lanes = std::iter::repeat_n(Lane::Normal, layout.normal_threads)
            .chain(std::iter::repeat_n(Lane::Idle, layout.idle_threads))
            .chain(std::iter::repeat_n(Lane::Batch, layout.batch_threads));
        for (i, lane) in lanes.enumerate() {
            let core = (!layout.cores.is_empty()).then(|| layout.cores[i % layout.cores.len()]);
            let workers = workers.clone();
            let nice = layout.normal_nice;
            let thread = std::thread::Builder::new()
                .name(format!("worker-{}-{i}", lane.label()))
                .spawn(move || workers.serve(lane, core, nice))?;
            threads.push(thread);
        }
        Ok(WorkerThreads { workers, threads })
    }

    /// Whether the threads are stopping (a long job may end early).
    pub fn stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::Acquire)
    }

    /// Queues `job` on `lane`, or gives it back when the lane is full (or
    /// the facility stops).
    pub fn submit(&self, lane: Lane, job: Job) -> Result<(), Job> {
        let queue = &self.inner.lanes[lane.index()];
        let mut jobs = queue.jobs.lock().expect("not poisoned");
        if jobs.len() >= self.inner.queue_max || self.inner.stopping.load(Ordering::Acquire) {
            queue.stats.refused.fetch_add(1, Ordering::Relaxed);
            return Err(job);
        }
        jobs.push_back(job);
        queue.stats.queued.store(jobs.len() as u64, Ordering::Relaxed);
        drop(jobs);
        queue.ready.notify_one();
        Ok(())
    }

    /// Runs `work` on `lane` and waits for it, from a thread that is not a
    /// shard's (start-up): threads it spawns inherit the lane's placement
    /// and nice level. `None` if the lane refused it or the job panicked.
    pub fn run<T: Send + 'static>(
        &self,
        lane: Lane,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (done, result) = std::sync::mpsc::sync_channel(1);
        let job = Job::new(move || {
            let _ = done.send(work());
        });
        self.submit(lane, job).ok()?;
        result.recv().ok()
    }

    pub fn stats(&self, lane: Lane) -> &LaneStats {
        &self.inner.lanes[lane.index()].stats
    }

    fn serve(&self, lane: Lane, core: Option<usize>, nice: i32) {
        if let Some(core) = core {
            if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                tracing::warn!(core, "a worker thread could not be pinned");
            }
        }
        if lane == Lane::Normal && nice != 0 {
            // SAFETY: plain system calls about this thread; on Linux the
            // nice level is a thread's, and raising it needs no privilege.
            if unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as u32, nice) } != 0 {
                tracing::warn!(
                    nice,
                    "a normal worker keeps the nice level it started with (refused)"
                );
            }
        }
        if lane != Lane::Normal {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: plain system call on this thread (pid 0) with a valid param.
            if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
                tracing::warn!("an idle worker runs at normal priority (SCHED_IDLE refused)");
            }
        }
        let queue = &self.inner.lanes[lane.index()];
        loop {
            let job = {
                let mut jobs = queue.jobs.lock().expect("not poisoned");
                loop {
                    if let Some(job) = jobs.pop_front() {
                        queue.stats.queued.store(jobs.len() as u64, Ordering::Relaxed);
                        break job;
                    }
                    if self.inner.stopping.load(Ordering::Acquire) {
                        return;
                    }
                    jobs = queue.ready.wait(jobs).expect("not poisoned");
                }
            };
            (job.0)();
            queue.stats.done.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl WorkerThreads {
    pub fn workers(&self) -> &Workers {
        &self.workers
    }

    /// Runs what is queued, then stops the threads.
    pub fn stop(self) {
        self.workers.inner.stopping.store(true, Ordering::Release);
        for lane in &self.workers.inner.lanes {
            let _guard = lane.jobs.lock().expect("not poisoned");
            lane.ready.notify_all();
        }
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// Results of a shard's jobs, posted by worker threads.
#[derive(Default)]
pub struct Inbox {
    results: Mutex<Vec<(u64, Box<dyn Any + Send>)>>,
    posted: AtomicBool,
    /// An eventfd that wakes the shard (its socket ring's).
    doorbell: OnceLock<OwnedFd>,
}

impl Inbox {
    /// Rings `eventfd` (duplicated) when a result arrives.
    pub fn set_doorbell(&self, eventfd: RawFd) {
        // SAFETY: dup returns a new descriptor or -1.
        let copy = unsafe { libc::dup(eventfd) };
        assert!(copy >= 0, "duplicating the shard's eventfd");
        // SAFETY: a fresh descriptor owned by nobody else.
        let _ = self.doorbell.set(unsafe { OwnedFd::from_raw_fd(copy) });
    }

    fn post(&self, id: u64, result: Box<dyn Any + Send>) {
        self.results.lock().expect("not poisoned").push((id, result));
        self.posted.store(true, Ordering::Release);
        if let Some(fd) = self.doorbell.get() {
            let one: u64 = 1;
            // SAFETY: writing 8 bytes from a live u64 to an eventfd we own.
            let _ = unsafe { libc::write(fd.as_raw_fd(), (&raw const one).cast(), 8) };
        }
    }

    /// Whether results are waiting (one atomic load: checked every turn).
    pub fn has_results(&self) -> bool {
        self.posted.load(Ordering::Acquire)
    }
}

/// Posts one result to a shard's inbox, from any thread.
pub struct Poster<T> {
    inbox: Option<Arc<Inbox>>,
    id: u64,
    _value: PhantomData<fn(T)>,
}

impl<T: Send + 'static> Poster<T> {
    pub fn post(mut self, value: T) {
        let inbox = self.inbox.take().expect("posted once");
        inbox.post(self.id, Box::new(value));
    }
}

impl<T> Drop for Poster<T> {
    /// Dropped without a result: the waiting task hears `None`.
    fn drop(&mut self) {
        if let Some(inbox) = self.inbox.take() {
            inbox.post(self.id, Box::new(Gone));
        }
    }
}

/// What a poster dropped without a result posts.
struct Gone;

/// Why a job was not started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkersFull;

/// A shard's jobs that have a result, and the tasks waiting for them.
pub struct Returns {
    inbox: Arc<Inbox>,
    waiting: RefCell<HashMap<u64, oneshot::Sender<Box<dyn Any + Send>>>>,
    next_id: Cell<u64>,
}

impl Returns {
    pub fn new(inbox: Arc<Inbox>) -> Returns {
        Returns { inbox, waiting: RefCell::new(HashMap::new()), next_id: Cell::new(0) }
    }

    pub fn inbox(&self) -> &Arc<Inbox> {
        &self.inbox
    }

    /// Runs `work` on `lane` and resolves to its result, or refuses at once
    /// when the lane is full. The result comes back through this shard's
    /// inbox (see [`Returns::deliver`]).
    pub fn run<T: Send + 'static>(
        &self,
        workers: &Workers,
        lane: Lane,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<impl Future<Output = Option<T>> + 'static, WorkersFull> {
        let id = self.next_id.get();
        let inbox = self.inbox.clone();
        let job = Job::new(move || inbox.post(id, Box::new(work())));
        workers.submit(lane, job).map_err(|_| WorkersFull)?;
        Ok(self.wait(id))
    }

    /// A result another thread will post (the index's DHT thread): the
    /// poster to hand it, and what resolves to it (`None` if the poster is
    /// dropped without posting, or the shard stops).
    pub fn expect<T: Send + 'static>(
        &self,
    ) -> (Poster<T>, impl Future<Output = Option<T>> + 'static) {
        let id = self.next_id.get();
        let poster = Poster { inbox: Some(self.inbox.clone()), id, _value: PhantomData };
        (poster, self.wait(id))
    }

    fn wait<T: Send + 'static>(&self, id: u64) -> impl Future<Output = Option<T>> + 'static {
        self.next_id.set(id + 1);
        let (sender, receiver) = oneshot::channel();
        self.waiting.borrow_mut().insert(id, sender);
        async move {
            // `None`: the shard stopped before the result came, or the
            // poster went away without one.
            let result = receiver.await.ok()?;
            result.downcast::<T>().ok().map(|value| *value)
        }
    }

    /// Hands posted results to the tasks waiting for them.
    pub fn deliver(&self) {
        if !self.inbox.posted.swap(false, Ordering::AcqRel) {
            return;
        }
        let results = std::mem::take(&mut *self.inbox.results.lock().expect("not poisoned"));
        let mut waiting = self.waiting.borrow_mut();
        for (id, result) in results {
            // Nobody waits for a result whose task was dropped.
            if let Some(sender) = waiting.remove(&id) {
                let _ = sender.send(result);
            }
        }
    }

    /// Jobs whose result has not been delivered.
    pub fn pending(&self) -> usize {
        self.waiting.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    fn layout(queue_max: usize) -> WorkersLayout {
        WorkersLayout {
            normal_threads: 1,
            idle_threads: 1,
            batch_threads: 1,
            queue_max,
            cores: Vec::new(),
            normal_nice: 7,
        }
    }

    #[test]
    fn jobs_run_on_their_lane_and_a_full_lane_refuses() {
        let threads = Workers::start(&layout(2)).unwrap();
        let workers = threads.workers().clone();
        // Block the normal lane's one thread, then fill its queue.
        let (release, blocked) = mpsc::channel::<()>();
        let (started, running) = mpsc::channel::<()>();
        workers
            .submit(
                Lane::Normal,
                Job::new(move || {
                    started.send(()).unwrap();
                    blocked.recv().unwrap();
                }),
            )
            .unwrap();
        running.recv_timeout(Duration::from_secs(10)).unwrap();
        let (done, finished) = mpsc::channel::<&'static str>();
        for _ in 0..2 {
            let done = done.clone();
            workers.submit(Lane::Normal, Job::new(move || done.send("normal").unwrap())).unwrap();
        }
        let refused = workers.submit(Lane::Normal, Job::new(|| unreachable!()));
        assert!(refused.is_err(), "the third job finds the lane full");
        assert_eq!(workers.stats(Lane::Normal).refused.load(Ordering::Relaxed), 1);
        // The idle lane is not blocked by the normal one, and it runs at SCHED_IDLE.
        let idle_done = done.clone();
        workers
            .submit(
                Lane::Idle,
                Job::new(move || {
                    // SAFETY: a plain system call about this thread.
                    let policy = unsafe { libc::sched_getscheduler(0) };
                    assert_eq!(policy, libc::SCHED_IDLE);
                    idle_done.send("idle").unwrap();
                }),
            )
            .unwrap();
        assert_eq!(finished.recv_timeout(Duration::from_secs(10)).unwrap(), "idle");
        release.send(()).unwrap();
        assert_eq!(finished.recv_timeout(Duration::from_secs(10)).unwrap(), "normal");
        assert_eq!(finished.recv_timeout(Duration::from_secs(10)).unwrap(), "normal");
        // The normal lane's threads run at the layout's nice level, and so
        // do the threads their jobs start (the views' LSM trees rely on
        // it); `run` waits for the result.
        // SAFETY: a plain system call about the calling thread.
        let nice = || unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as u32) };
        assert_eq!(workers.run(Lane::Normal, nice), Some(7));
        let spawned = move || std::thread::spawn(nice).join().unwrap();
        assert_eq!(workers.run(Lane::Normal, spawned), Some(7));
        threads.stop();
    }

    #[test]
    fn results_come_back_through_the_inbox() {
        let threads = Workers::start(&layout(8)).unwrap();
        let workers = threads.workers().clone();
        let returns = Returns::new(Arc::new(Inbox::default()));
        let result = returns.run(&workers, Lane::Idle, || 6 * 7).unwrap();
        let dropped = returns.run(&workers, Lane::Normal, || "nobody waits").unwrap();
        drop(dropped);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while returns.pending() > 0 {
            assert!(std::time::Instant::now() < deadline, "results are posted");
            std::thread::sleep(Duration::from_millis(1));
            returns.deliver();
        }
        assert!(!returns.inbox().has_results());
        let answer = futures_lite::future::block_on(result);
        assert_eq!(answer, Some(42));
        threads.stop();
    }
}
