//! Cross-shard calls: run a call on the shard that owns its key and get the
//! answer back, over bounded glommio channels (a full mesh).
//!
//! The mesh carries any service's calls without knowing them: a call is
//! the service's type id and its boxed `Call`; the shard that receives it
//! hands it to its instance of that service (`crate::service` makes the
//! calls typed on both ends).
//!
//! Each pair of shards shares one channel per direction. A shard never has
//! more than `mesh_inflight_per_target_max` calls outstanding to one target
//! (over that, the caller gets `Busy`), and channels hold twice that, so the
//! calls of one side and the answers to the other side's calls always fit:
//! sending never waits on a full channel, and two shards cannot deadlock.

use futures_channel::oneshot;
use glommio::TaskQueueHandle;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Receivers, Senders};
use std::any::{Any, TypeId};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

/// A call's or an answer's payload: a service's own `Call` or `Answer`.
pub type Payload = Box<dyn Any + Send>;

/// Serves a call on the shard that received it: finds the service by type
/// id and runs the call there.
pub type Serve = Rc<dyn Fn(TypeId, Payload) -> Pin<Box<dyn Future<Output = Payload>>>>;

pub enum Envelope {
    Call { id: u64, service: TypeId, call: Payload },
    Answer { id: u64, answer: Payload },
}

impl std::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Envelope::Call { id, .. } => write!(f, "Call({id})"),
            Envelope::Answer { id, .. } => write!(f, "Answer({id})"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MeshError {
    /// Too many calls outstanding to that shard.
    Busy,
    /// That shard has stopped.
    Closed,
    /// No answer within the request timeout.
    TimedOut,
}

/// How long a caller waits for its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Up to the request timeout (`limits.request_timeout_ms`), then
    /// `TimedOut`: the call is served all the same, its answer dropped.
    Timeout,
    /// Until it comes (or the shard stops). For calls whose answer hands
    /// the caller something it must give back, such as a reservation: an
    /// answer nobody waits for would leave it held by nothing. Such calls
    /// carry a deadline instead, past which their shard does nothing and
    /// answers at once.
    Answer,
}

pub type MeshBuilderFull = MeshBuilder<Envelope, Full>;

pub fn builder(shard_count: usize, inflight_per_target_max: u32) -> MeshBuilderFull {
    MeshBuilder::full(shard_count, 2 * inflight_per_target_max as usize)
}

pub struct Mesh {
    me: usize,
    senders: Senders<Envelope>,
    waiting: RefCell<HashMap<u64, oneshot::Sender<Payload>>>,
    next_id: Cell<u64>,
    inflight: Vec<Cell<u32>>,
    inflight_max: u32,
    timeout: Duration,
    /// Calls sent to another shard (`mesh_calls_total`).
    calls: Cell<u64>,
}

/// Releases an in-flight slot and a waiting entry however a call ends.
struct CallGuard<'a> {
    mesh: &'a Mesh,
    target: usize,
    id: u64,
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        let slot = &self.mesh.inflight[self.target];
        slot.set(slot.get() - 1);
        self.mesh.waiting.borrow_mut().remove(&self.id);
    }
}

impl Mesh {
    pub fn new(
        senders: Senders<Envelope>,
        shard_count: usize,
        inflight_max: u32,
        timeout: Duration,
    ) -> Mesh {
        let me = senders.peer_id();
        assert!(me < shard_count);
        Mesh {
            me,
            senders,
            waiting: RefCell::new(HashMap::with_capacity(inflight_max as usize * shard_count)),
            next_id: Cell::new(0),
            inflight: (0..shard_count).map(|_| Cell::new(0)).collect(),
            inflight_max,
            timeout,
            calls: Cell::new(0),
        }
    }

    pub fn me(&self) -> usize {
        self.me
    }

    /// Calls sent to other shards since start.
    pub fn calls(&self) -> u64 {
        self.calls.get()
    }

    /// Sends `call` for `service` to shard `target` (not this one) and
    /// returns its answer, waiting as `wait` says.
    pub async fn call(
        &self,
        target: usize,
        service: TypeId,
        call: Payload,
        wait: Wait,
    ) -> Result<Payload, MeshError> {
        assert_ne!(target, self.me, "a call to this shard runs in place");
        let slot = &self.inflight[target];
        if slot.get() >= self.inflight_max {
            return Err(MeshError::Busy);
        }
        slot.set(slot.get() + 1);
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let guard = CallGuard { mesh: self, target, id };
        let (sender, receiver) = oneshot::channel();
        self.waiting.borrow_mut().insert(id, sender);
        self.calls.set(self.calls.get() + 1);
        // The channel holds twice the in-flight cap, so this does not wait.
        self.senders
            .send_to(target, Envelope::Call { id, service, call })
            .await
            .map_err(|_| MeshError::Closed)?;
        let answered = async { receiver.await.map_err(|_| MeshError::Closed) };
        let answer = match wait {
            Wait::Timeout => {
                let timeout = async {
                    glommio::timer::sleep(self.timeout).await;
                    Err(MeshError::TimedOut)
                };
                futures_lite::future::or(answered, timeout).await
            }
            Wait::Answer => answered.await,
        };
        drop(guard);
        answer
    }

    fn answer(&self, id: u64, answer: Payload) {
        // A call that timed out has no one waiting any more.
        if let Some(sender) = self.waiting.borrow_mut().remove(&id) {
            let _ = sender.send(answer);
        }
    }
}

/// Starts one task per peer that serves its calls (with `serve`) and
/// delivers its answers.
pub fn spawn_receivers(
    mesh: Rc<Mesh>,
    mut receivers: Receivers<Envelope>,
    serve: Serve,
    queue: TaskQueueHandle,
) {
    for (peer, stream) in receivers.streams() {
        let (mesh, serve) = (mesh.clone(), serve.clone());
        glommio::spawn_local_into(
            async move {
                while let Some(envelope) = stream.recv().await {
                    match envelope {
                        Envelope::Call { id, service, call } => {
                            let answering = serve(service, call);
                            let mesh = mesh.clone();
                            glommio::spawn_local_into(
                                async move {
                                    let answer = answering.await;
                                    let _ = mesh
                                        .senders
                                        .send_to(peer, Envelope::Answer { id, answer })
                                        .await;
                                },
                                queue,
                            )
                            .expect("the shard's queue exists")
                            .detach();
                        }
                        Envelope::Answer { id, answer } => mesh.answer(id, answer),
                    }
                }
            },
            queue,
        )
        .expect("the shard's queue exists")
        .detach();
    }
}
