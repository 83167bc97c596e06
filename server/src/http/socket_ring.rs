//! A shard's own io_uring for sockets.
//!
//! glommio creates its rings without setup flags, and on this kind of machine
//! every socket completion that lands from another core then costs the shard a
//! reschedule interrupt (0.4× nginx, measured). This ring is made with
//! DEFER_TASKRUN + SINGLE_ISSUER (+ TASKRUN_FLAG), so completions run only when
//! the shard asks for them, on its own core. Accepts and receives are
//! multishot; receives pick buffers from a provided-buffer ring.
//!
//! The ring never blocks the executor: the front task reaps without waiting and
//! yields. When idle it enables the ring's registered eventfd and awaits a read
//! of that eventfd through glommio, so the executor parks normally.

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use std::alloc::Layout;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

/// What a completion belongs to. Packed into the top byte of `user_data`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Accept(u32),
    Recv(u32),
    Send(u32),
    Timeout,
    Cancel,
    /// An outbound connect of the client's connection slot.
    Connect(u32),
    /// The timeout linked to that connect.
    ConnectTimeout(u32),
    /// The multishot receive of an outbound connection.
    ClientRecv(u32),
    ClientSend(u32),
    /// The cancel of every request on an outbound connection being closed.
    ClientCancel(u32),
}

const KIND_ACCEPT: u64 = 1;
const KIND_RECV: u64 = 2;
const KIND_SEND: u64 = 3;
const KIND_TIMEOUT: u64 = 4;
const KIND_CANCEL: u64 = 5;
const KIND_CONNECT: u64 = 6;
const KIND_CONNECT_TIMEOUT: u64 = 7;
const KIND_CLIENT_RECV: u64 = 8;
const KIND_CLIENT_SEND: u64 = 9;
const KIND_CLIENT_CANCEL: u64 = 10;

impl Op {
    fn user_data(self) -> u64 {
        match self {
            Op::Accept(i) => KIND_ACCEPT << 56 | u64::from(i),
            Op::Recv(i) => KIND_RECV << 56 | u64::from(i),
            Op::Send(i) => KIND_SEND << 56 | u64::from(i),
            Op::Timeout => KIND_TIMEOUT << 56,
            Op::Cancel => KIND_CANCEL << 56,
            Op::Connect(i) => KIND_CONNECT << 56 | u64::from(i),
            Op::ConnectTimeout(i) => KIND_CONNECT_TIMEOUT << 56 | u64::from(i),
            Op::ClientRecv(i) => KIND_CLIENT_RECV << 56 | u64::from(i),
            Op::ClientSend(i) => KIND_CLIENT_SEND << 56 | u64::from(i),
            Op::ClientCancel(i) => KIND_CLIENT_CANCEL << 56 | u64::from(i),
        }
    }

    fn from_user_data(data: u64) -> Op {
        let index = data as u32;
        match data >> 56 {
            KIND_ACCEPT => Op::Accept(index),
            KIND_RECV => Op::Recv(index),
            KIND_SEND => Op::Send(index),
            KIND_TIMEOUT => Op::Timeout,
            KIND_CANCEL => Op::Cancel,
            KIND_CONNECT => Op::Connect(index),
            KIND_CONNECT_TIMEOUT => Op::ConnectTimeout(index),
            KIND_CLIENT_RECV => Op::ClientRecv(index),
            KIND_CLIENT_SEND => Op::ClientSend(index),
            KIND_CLIENT_CANCEL => Op::ClientCancel(index),
            kind => panic!("completion of unknown kind {kind}"),
        }
    }
}

/// One reaped completion.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    pub op: Op,
    pub result: i32,
    /// A multishot request stays armed.
    pub more: bool,
    /// The provided buffer holding received bytes; give it back with
    /// [`SocketRing::recycle`].
    pub buffer: Option<u16>,
}

const BUFFER_GROUP: u16 = 0;

/// Receive buffers the kernel picks from: one block of memory cut into
/// equal buffers, and the ring of descriptors that lends them out.
struct ProvidedBuffers {
    entries: *mut types::BufRingEntry,
    entries_layout: Layout,
    memory: Box<[u8]>,
    buffer_bytes: usize,
    count: u16,
    tail: u16,
}

impl ProvidedBuffers {
    fn new(count: u16, buffer_bytes: usize) -> ProvidedBuffers {
        assert!(count.is_power_of_two());
        let entries_layout =
            Layout::from_size_align(usize::from(count) * size_of::<types::BufRingEntry>(), 4096)
                .expect("a valid layout");
        // SAFETY: the layout has a non-zero size.
        let entries =
            unsafe { std::alloc::alloc_zeroed(entries_layout) }.cast::<types::BufRingEntry>();
        assert!(!entries.is_null(), "allocating the buffer ring");
        let memory = vec![0u8; usize::from(count) * buffer_bytes].into_boxed_slice();
        let mut buffers =
            ProvidedBuffers { entries, entries_layout, memory, buffer_bytes, count, tail: 0 };
        for id in 0..count {
            buffers.push(id);
        }
        buffers.publish();
        buffers
    }

    fn push(&mut self, id: u16) {
        assert!(id < self.count);
        let slot = usize::from(self.tail & (self.count - 1));
        let address = self.memory[usize::from(id) * self.buffer_bytes..].as_ptr() as u64;
        // SAFETY: `slot` < count, inside the allocation made in `new`; the kernel
        // only reads entries between its head and the published tail, and this
        // slot is past the published tail.
        let entry = unsafe { &mut *self.entries.add(slot) };
        entry.set_addr(address);
        entry.set_len(self.buffer_bytes as u32);
        entry.set_bid(id);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes pushed buffers visible to the kernel.
    fn publish(&self) {
        // SAFETY: `entries` is the page-aligned base of the ring; the tail field
        // overlays the first entry's reserved field and is only written here.
        let tail = unsafe { &*types::BufRingEntry::tail(self.entries).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }

    fn bytes(&self, id: u16, len: usize) -> &[u8] {
        assert!(len <= self.buffer_bytes);
        let start = usize::from(id) * self.buffer_bytes;
        &self.memory[start..start + len]
    }
}

impl Drop for ProvidedBuffers {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the ring that used it is
        // dropped first (field order of `SocketRing`).
        unsafe { std::alloc::dealloc(self.entries.cast(), self.entries_layout) };
    }
}

pub struct SocketRing {
    // Field order matters: the ring is torn down before the memory it reads.
    ring: IoUring,
    buffers: ProvidedBuffers,
    eventfd: OwnedFd,
    timeout: Box<types::Timespec>,
    timeout_armed: bool,
    /// Buffers returned since the last publish.
    recycled: bool,
}

impl SocketRing {
    pub fn new(entries: u32, buffer_count: u16, buffer_bytes: usize) -> io::Result<SocketRing> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_taskrun_flag()
            .setup_cqsize(entries * 4)
            .build(entries)?;
        let buffers = ProvidedBuffers::new(buffer_count, buffer_bytes);
        // SAFETY: the entries stay allocated until `buffers` drops, after the ring.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                buffers.entries as u64,
                buffer_count,
                BUFFER_GROUP,
                0,
            )?;
        }
        // SAFETY: eventfd returns a new descriptor or -1.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor we own.
        let eventfd = unsafe { OwnedFd::from_raw_fd(raw) };
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        let mut ring = SocketRing {
            ring,
            buffers,
            eventfd,
            timeout: Box::new(types::Timespec::new()),
            timeout_armed: false,
            recycled: false,
        };
        // Signals only matter while parked.
        ring.ring.completion().disable_eventfd();
        Ok(ring)
    }

    /// The descriptor the ring signals while parked; a dup of it can also be
    /// written from anywhere to wake the shard.
    pub fn eventfd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }

    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: each entry's buffers and descriptors stay valid until
            // its completion is reaped; see the callers.
            let pushed = unsafe { self.ring.submission().push(&entry) };
            if pushed.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    pub fn accept(&mut self, listener: RawFd, index: u32) -> io::Result<()> {
        let entry = opcode::AcceptMulti::new(types::Fd(listener))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(Op::Accept(index).user_data());
        self.push(entry)
    }

    pub fn recv(&mut self, socket: RawFd, slot: u32) -> io::Result<()> {
        self.recv_multi(socket, Op::Recv(slot))
    }

    /// A multishot receive for an outbound connection of the client.
    pub fn client_recv(&mut self, socket: RawFd, slot: u32) -> io::Result<()> {
        self.recv_multi(socket, Op::ClientRecv(slot))
    }

    fn recv_multi(&mut self, socket: RawFd, op: Op) -> io::Result<()> {
        let entry = opcode::RecvMulti::new(types::Fd(socket), BUFFER_GROUP)
            .build()
            .user_data(op.user_data());
        self.push(entry)
    }

    /// Sends `bytes`.
    ///
    /// # Safety
    /// `bytes` must stay allocated and unmoved until the completion is reaped.
    pub unsafe fn send(&mut self, socket: RawFd, bytes: &[u8], slot: u32) -> io::Result<()> {
        // SAFETY: the caller's contract is passed on.
        unsafe { self.send_op(socket, bytes, Op::Send(slot)) }
    }

    /// Sends `bytes` on an outbound connection of the client.
    ///
    /// # Safety
    /// `bytes` must stay allocated and unmoved until the completion is reaped.
    pub unsafe fn client_send(&mut self, socket: RawFd, bytes: &[u8], slot: u32) -> io::Result<()> {
        // SAFETY: the caller's contract is passed on.
        unsafe { self.send_op(socket, bytes, Op::ClientSend(slot)) }
    }

    /// # Safety
    /// `bytes` must stay allocated and unmoved until the completion is reaped.
    unsafe fn send_op(&mut self, socket: RawFd, bytes: &[u8], op: Op) -> io::Result<()> {
        let entry = opcode::Send::new(types::Fd(socket), bytes.as_ptr(), bytes.len() as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(op.user_data());
        self.push(entry)
    }

    /// Connects `socket` to `address`, linked to a timeout of `timeout`: if
    /// it fires first, the connect completes with `-ECANCELED`. Two
    /// completions follow, [`Op::Connect`] and [`Op::ConnectTimeout`].
    ///
    /// # Safety
    /// `address` and `timeout` must stay allocated and unmoved until both
    /// completions are reaped.
    pub unsafe fn connect(
        &mut self,
        socket: RawFd,
        address: &socket2::SockAddr,
        timeout: &types::Timespec,
        slot: u32,
    ) -> io::Result<()> {
        let connect = opcode::Connect::new(types::Fd(socket), address.as_ptr(), address.len())
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(Op::Connect(slot).user_data());
        let timeout = opcode::LinkTimeout::new(timeout)
            .build()
            .user_data(Op::ConnectTimeout(slot).user_data());
        // The pair must reach the kernel in one submission: a link whose
        // second half arrives in a later one is not a link.
        loop {
            let free = {
                let submission = self.ring.submission();
                submission.capacity() - submission.len()
            };
            if free >= 2 {
                break;
            }
            self.ring.submit()?;
        }
        self.push(connect)?;
        self.push(timeout)
    }

    /// Cancels every request on `socket`, the outbound connection of
    /// `slot` being closed. The cancel's own completion is
    /// [`Op::ClientCancel`]; the socket must stay open until it is reaped,
    /// or the cancel could match a new socket given the same number.
    pub fn cancel_socket(&mut self, socket: RawFd, slot: u32) -> io::Result<()> {
        let entry = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(socket)).all())
            .build()
            .user_data(Op::ClientCancel(slot).user_data());
        self.push(entry)
    }

    /// Cancels every request on `op` (a multishot accept, say).
    pub fn cancel(&mut self, op: Op) -> io::Result<()> {
        let entry =
            opcode::AsyncCancel::new(op.user_data()).build().user_data(Op::Cancel.user_data());
        self.push(entry)
    }

    /// Arms a one-shot timeout unless one is pending; its completion wakes a
    /// parked shard.
    pub fn arm_timeout(&mut self, after: Duration) -> io::Result<()> {
        if self.timeout_armed {
            return Ok(());
        }
        *self.timeout = types::Timespec::from(after);
        let entry = opcode::Timeout::new(&*self.timeout).build().user_data(Op::Timeout.user_data());
        self.timeout_armed = true;
        self.push(entry)
    }

    /// Submits what is queued, runs deferred completions if the kernel has any,
    /// and moves every completion into `out`. Never waits.
    pub fn submit_and_reap(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        if self.recycled {
            self.buffers.publish();
            self.recycled = false;
        }
        let pending_submissions = !self.ring.submission().is_empty();
        if pending_submissions || self.ring.submission().taskrun() {
            match self.ring.submit() {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
        for cqe in self.ring.completion() {
            let op = Op::from_user_data(cqe.user_data());
            if op == Op::Timeout {
                self.timeout_armed = false;
            }
            out.push(Completion {
                op,
                result: cqe.result(),
                more: cqueue::more(cqe.flags()),
                buffer: cqueue::buffer_select(cqe.flags()),
            });
        }
        Ok(())
    }

    pub fn received(&self, buffer: u16, len: usize) -> &[u8] {
        self.buffers.bytes(buffer, len)
    }

    /// Gives a provided buffer back to the kernel (published at the next reap).
    pub fn recycle(&mut self, buffer: u16) {
        self.buffers.push(buffer);
        self.recycled = true;
    }

    /// Turns the eventfd signal on before parking. Returns false when work
    /// arrived in between, so the caller must not park.
    pub fn prepare_park(&mut self) -> bool {
        self.ring.completion().enable_eventfd();
        let mut submission = self.ring.submission();
        submission.sync();
        let idle = submission.is_empty() && !submission.taskrun();
        drop(submission);
        let mut completion = self.ring.completion();
        completion.sync();
        let idle = idle && completion.is_empty();
        if !idle {
            completion.disable_eventfd();
        }
        idle
    }

    pub fn after_park(&mut self) {
        self.ring.completion().disable_eventfd();
    }
}

/// Writes to an eventfd, waking whoever reads it. Safe from any thread.
pub fn ring_doorbell(eventfd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writing 8 bytes from a live u64 to a descriptor the caller owns.
    let _ = unsafe { libc::write(eventfd, (&raw const one).cast(), 8) };
}

/// Shuts a socket down in both directions, ending its pending requests.
pub fn shutdown(socket: RawFd, how: libc::c_int) {
    // SAFETY: shutdown has no memory effects; a bad descriptor only errors.
    let _ = unsafe { libc::shutdown(socket, how) };
}

/// The peer address of a connected socket.
pub fn peer_address(socket: RawFd) -> Option<std::net::SocketAddr> {
    let socket = std::mem::ManuallyDrop::new(
        // SAFETY: borrowed for this call only; ManuallyDrop keeps it open.
        unsafe { std::net::TcpStream::from_raw_fd(socket) },
    );
    socket.peer_addr().ok()
}
