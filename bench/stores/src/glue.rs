//! What every embedded store needs around it to stand in for the spool: a record codec and a
//! writer thread that takes records through a bounded channel and commits them in groups at
//! most once per interval (the shape of the spool's own writer).

use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use usageflow_socket_client::spool::SpoolRecord;

/// Every live record in key order, and the still open store (closed after the timing).
pub type Recovered = (Vec<(u64, SpoolRecord)>, Box<dyn std::any::Any>);

/// One queued change.
pub enum Op {
    /// Insert the encoded record under its key.
    Put(u64, Vec<u8>),
    /// Delete the key (the record was released).
    Del(u64),
}

/// A store that commits a group of changes durably.
pub trait Backend: Send + 'static {
    /// Applies `ops` in one transaction and makes it durable (one commit, one sync).
    fn commit(&mut self, ops: &[Op]) -> Result<(), String>;
}

/// The caller's side: keys, the channel, the writer thread.
pub struct Channeled {
    tx: Option<SyncSender<Op>>,
    next_key: u64,
    writer: Option<JoinHandle<Result<u64, String>>>,
    buf: Vec<u8>,
}

impl Channeled {
    /// Starts the writer thread over `backend`; keys continue after `next_key`.
    pub fn start<B: Backend>(backend: B, next_key: u64, capacity: usize, interval: Duration) -> Self {
        let (tx, rx) = sync_channel(capacity);
        let writer = std::thread::Builder::new()
            .name("bench-store-writer".into())
            .spawn(move || run(backend, rx, interval))
            .expect("spawn the writer thread");
        Channeled {
            tx: Some(tx),
            next_key,
            writer: Some(writer),
            buf: Vec::with_capacity(512),
        }
    }

    /// Assigns the record's key and queues it (blocks while the channel is full).
    pub fn append(&mut self, record: &SpoolRecord) -> u64 {
        let key = self.next_key;
        self.next_key += 1;
        self.buf.clear();
        encode(record, &mut self.buf);
        self.send(Op::Put(key, self.buf.clone()));
        key
    }

    /// Queues the deletion of `key`.
    pub fn release(&mut self, key: u64) {
        self.send(Op::Del(key));
    }

    fn send(&self, op: Op) {
        let tx = self.tx.as_ref().expect("the channel is open until finish");
        tx.send(op).expect("the writer thread stopped");
    }

    /// Closes the channel and waits for the writer's last commit: returns its commit count.
    pub fn finish(mut self) -> Result<u64, String> {
        self.tx = None;
        let writer = self.writer.take().expect("finished once");
        writer
            .join()
            .map_err(|_| "the writer thread panicked".to_string())?
    }
}

fn run<B: Backend>(mut backend: B, rx: Receiver<Op>, interval: Duration) -> Result<u64, String> {
    let mut batch = Vec::new();
    let mut last = Instant::now().checked_sub(interval).unwrap_or_else(Instant::now);
    let mut commits = 0u64;
    let mut open = true;
    loop {
        if batch.is_empty() {
            match rx.recv() {
                Ok(op) => batch.push(op),
                Err(_) => return Ok(commits),
            }
        }
        while open {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        let due = last + interval;
        let now = Instant::now();
        if open && now < due {
            match rx.recv_timeout(due - now) {
                Ok(op) => {
                    batch.push(op);
                    continue;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => open = false,
            }
        }
        backend.commit(&batch)?;
        commits += 1;
        batch.clear();
        last = Instant::now();
        if !open {
            return Ok(commits);
        }
    }
}

/// Encodes a record as a blob: fixed fields, the type's length and bytes, then the frame.
pub fn encode(r: &SpoolRecord, out: &mut Vec<u8>) {
    out.extend_from_slice(&r.message_id.to_le_bytes());
    out.extend_from_slice(&r.first_sent_unix_ms.to_le_bytes());
    out.extend_from_slice(&r.rewrites.to_le_bytes());
    out.push(u8::from(r.at_least_once));
    out.extend_from_slice(&(r.kind.len() as u16).to_le_bytes());
    out.extend_from_slice(r.kind.as_bytes());
    out.extend_from_slice(r.frame.as_bytes());
}

/// Decodes [`encode`]'s blob.
pub fn decode(b: &[u8]) -> Result<SpoolRecord, String> {
    let short = || "record blob too short".to_string();
    let u64_at = |i: usize| -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            b.get(i..i + 8)
                .ok_or_else(short)?
                .try_into()
                .map_err(|_| short())?,
        ))
    };
    let rewrites = u32::from_le_bytes(b.get(16..20).ok_or_else(short)?.try_into().map_err(|_| short())?);
    let at_least_once = *b.get(20).ok_or_else(short)? != 0;
    let kind_len =
        u16::from_le_bytes(b.get(21..23).ok_or_else(short)?.try_into().map_err(|_| short())?) as usize;
    let kind = b.get(23..23 + kind_len).ok_or_else(short)?;
    let frame = b.get(23 + kind_len..).ok_or_else(short)?;
    Ok(SpoolRecord {
        message_id: u64_at(0)?,
        first_sent_unix_ms: u64_at(8)?,
        rewrites,
        at_least_once,
        kind: String::from_utf8(kind.to_vec()).map_err(|e| e.to_string())?,
        frame: String::from_utf8(frame.to_vec()).map_err(|e| e.to_string())?,
    })
}
