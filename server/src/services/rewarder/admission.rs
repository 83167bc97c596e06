//! Which computes of a shard run on the workers now (`rewarder.inflight_max`
//! of them) and which wait for a slot, in order (`rewarder.work_queue_max`);
//! past both a compute answers 429. Both caps are read at each decision,
//! so a SIGHUP that changes them takes effect at once.

use futures_channel::oneshot;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

#[derive(Debug, Default)]
pub struct Admission {
    running: Cell<u32>,
    waiting: RefCell<VecDeque<oneshot::Sender<()>>>,
}

/// A place given by [`Admission::enter`].
pub enum Entry {
    /// A slot, now.
    Now,
    /// A place in the queue: the slot comes when this resolves (to `Err`
    /// only if the admission is dropped).
    Queued(oneshot::Receiver<()>),
}

impl Admission {
    /// A slot, a place in the queue, or `None` when both are full.
    pub fn enter(&self, inflight_max: u32, queue_max: u32) -> Option<Entry> {
        if self.running.get() < inflight_max && self.waiting.borrow().is_empty() {
            self.running.set(self.running.get() + 1);
            return Some(Entry::Now);
        }
        let mut waiting = self.waiting.borrow_mut();
        // Requests that went away while they waited leave their places.
        waiting.retain(|sender| !sender.is_canceled());
        if waiting.len() >= queue_max as usize {
            return None;
        }
        let (sender, receiver) = oneshot::channel();
        waiting.push_back(sender);
        Some(Entry::Queued(receiver))
    }

    /// Gives a slot back: to the first waiter still there, or free (more
    /// than one if `inflight_max` grew).
    pub fn leave(&self, inflight_max: u32) {
        self.running.set(self.running.get() - 1);
        let mut waiting = self.waiting.borrow_mut();
        while self.running.get() < inflight_max {
            let Some(sender) = waiting.pop_front() else { break };
            if sender.send(()).is_ok() {
                self.running.set(self.running.get() + 1);
            }
        }
    }

    pub fn running(&self) -> u32 {
        self.running.get()
    }

    pub fn waiting(&self) -> usize {
        self.waiting.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_then_queue_then_refusal_in_order() {
        let admission = Admission::default();
        assert!(matches!(admission.enter(1, 2), Some(Entry::Now)));
        let Some(Entry::Queued(mut first)) = admission.enter(1, 2) else { panic!("queued") };
        let Some(Entry::Queued(mut second)) = admission.enter(1, 2) else { panic!("queued") };
        assert!(admission.enter(1, 2).is_none(), "queue full");
        admission.leave(1);
        assert_eq!(first.try_recv(), Ok(Some(())));
        assert_eq!(second.try_recv(), Ok(None));
        assert_eq!((admission.running(), admission.waiting()), (1, 1));
        // A waiter that went away is skipped; a larger cap frees more.
        drop(second);
        admission.leave(1);
        assert_eq!((admission.running(), admission.waiting()), (0, 0));
        assert!(matches!(admission.enter(0, 1), Some(Entry::Queued(_))));
    }
}
