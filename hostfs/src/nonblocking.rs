//! A log writer that never blocks its caller: lines go into a bounded queue that one background thread writes
//! to the file, and a line that finds the queue full is dropped and counted, not waited for.
//!
//! Why: a request path (an ADD in ipamd, the plugin's run) must not stall because the log file's disk is slow
//! (writeback throttling while the node writes images, a full journal, a network filesystem). A write(2) to a
//! regular file can block for as long as the kernel throttles dirty pages; with this writer only the background
//! thread waits. What is lost when the disk cannot keep up is log lines, never requests, and how many is known
//! ([`NonBlocking::dropped`]) so the owner can log it once the disk is back.
//!
//! Each [`std::io::Write::write`] call is one queued message (`tracing_subscriber`'s fmt layer writes each event
//! with one `write_all` of its formatted line, so lines stay whole). [`Flusher::flush_within`] waits, for a
//! bounded time, until the thread has written everything queued so far (at shutdown or before a short-lived
//! process exits).

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

enum Msg {
    Line(Vec<u8>),
    Flush(SyncSender<()>),
}

/// The caller's end: cheap to clone, one per event.
#[derive(Clone)]
pub struct NonBlocking {
    tx: SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for NonBlocking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonBlocking")
            .field("dropped", &self.dropped.load(Ordering::Relaxed))
            .finish()
    }
}

/// Waits for the background thread to catch up (see [`Flusher::flush_within`]).
#[derive(Clone, Debug)]
pub struct Flusher {
    tx: SyncSender<Msg>,
}

/// Starts the background thread writing to `out`; `capacity` is the queue's bound in lines.
pub fn non_blocking<W: Write + Send + 'static>(
    out: W,
    capacity: usize,
) -> std::io::Result<(NonBlocking, Flusher)> {
    let (tx, rx) = sync_channel(capacity.max(1));
    std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || drain(out, rx))?;
    Ok((
        NonBlocking {
            tx: tx.clone(),
            dropped: Arc::new(AtomicU64::new(0)),
        },
        Flusher { tx },
    ))
}

fn drain<W: Write>(mut out: W, rx: Receiver<Msg>) {
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Line(bytes) => {
                let _ = out.write_all(&bytes);
            }
            Msg::Flush(done) => {
                let _ = out.flush();
                let _ = done.send(());
            }
        }
    }
    let _ = out.flush();
}

impl NonBlocking {
    /// Lines dropped so far because the queue was full (or the thread gone).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Returns the dropped count and resets it.
    pub fn take_dropped(&self) -> u64 {
        self.dropped.swap(0, Ordering::Relaxed)
    }
}

impl Write for NonBlocking {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.tx.try_send(Msg::Line(buf.to_vec())) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Flusher {
    /// Waits at most `bound` until everything queued before this call is written; true if it was. Never blocks
    /// longer than `bound`, even when the queue is full.
    pub fn flush_within(&self, bound: Duration) -> bool {
        let (done_tx, done_rx) = sync_channel(1);
        // A full queue is retried every millisecond within the bound (a channel has no send with a timeout).
        let step = Duration::from_millis(1);
        let mut waited = Duration::ZERO;
        let mut msg = Msg::Flush(done_tx);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if waited < bound => {
                    msg = m;
                    std::thread::sleep(step);
                    waited += step;
                }
                Err(_) => return false,
            }
        }
        done_rx.recv_timeout(bound.saturating_sub(waited)).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Condvar, Mutex};

    /// A writer that blocks until released, then appends to a shared buffer.
    #[derive(Clone)]
    struct Gate {
        open: Arc<(Mutex<bool>, Condvar)>,
        out: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (lock, cv) = &*self.open;
            let mut open = lock.lock().expect("test");
            while !*open {
                open = cv.wait(open).expect("test");
            }
            self.out.lock().expect("test").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_file_drops_and_counts_instead_of_blocking() {
        let gate = Gate {
            open: Arc::new((Mutex::new(false), Condvar::new())),
            out: Arc::new(Mutex::new(Vec::new())),
        };
        let (mut w, flusher) = non_blocking(gate.clone(), 4).expect("test");
        // The file is stalled: the thread holds one line in its write, the queue takes 4 more, the rest drop.
        // None of these calls may block (the test would hang).
        for i in 0..20 {
            w.write_all(format!("line {i}\n").as_bytes()).expect("test");
        }
        assert!(
            !flusher.flush_within(Duration::from_millis(50)),
            "nothing can be flushed while the file is stalled"
        );
        let dropped = w.dropped();
        assert!((15..=16).contains(&dropped), "dropped {dropped}");
        // The disk comes back: what was queued is written, in order, whole.
        {
            let (lock, cv) = &*gate.open;
            *lock.lock().expect("test") = true;
            cv.notify_all();
        }
        assert!(flusher.flush_within(Duration::from_secs(5)));
        let text = String::from_utf8(gate.out.lock().expect("test").clone()).expect("test");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len() as u64, 20 - dropped);
        assert_eq!(lines[0], "line 0");
        assert_eq!(w.take_dropped(), dropped);
        assert_eq!(w.dropped(), 0);
        // Later lines get through again.
        w.write_all(b"after\n").expect("test");
        assert!(flusher.flush_within(Duration::from_secs(5)));
        assert!(String::from_utf8(gate.out.lock().expect("test").clone())
            .expect("test")
            .ends_with("after\n"));
    }
}
