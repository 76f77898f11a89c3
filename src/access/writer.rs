//! The access log's own writer thread: requests hand finished lines to a bounded channel and
//! never wait for stdout; the thread writes them in batches. A full channel (stdout slower than
//! the traffic) or a failed write drops lines, counted in `acsgate_access_log_dropped_total`.

use std::io::Write;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};

use prometheus::IntCounter;

/// Lines waiting to be written at most; more are dropped.
pub(super) const CAPACITY: usize = 16 * 1024;
/// Bytes gathered into one write.
const BATCH: usize = 64 * 1024;

/// The sending side: cheap to clone, never blocks.
#[derive(Clone)]
pub(super) struct Lines {
    sender: SyncSender<Vec<u8>>,
    dropped: IntCounter,
}

impl Lines {
    /// Starts a thread writing lines to `out` until every [`Lines`] is dropped; at most
    /// `capacity` lines wait.
    pub(super) fn spawn(
        out: impl Write + Send + 'static,
        dropped: IntCounter,
        capacity: usize,
    ) -> Lines {
        let (sender, receiver) = mpsc::sync_channel(capacity);
        let counter = dropped.clone();
        std::thread::Builder::new()
            .name("acsgate-access-log".into())
            .spawn(move || write_batches(&receiver, out, &counter))
            // Like the runtime's own threads: without one at start-up there is no gateway.
            .expect("the access log thread starts");
        Lines { sender, dropped }
    }

    /// Queues one line, or counts it as dropped when the queue is full.
    pub(super) fn send(&self, line: Vec<u8>) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.sender.try_send(line)
        {
            self.dropped.inc();
        }
    }
}

/// Writes what is queued, one write and flush per batch, so a burst costs few system calls
/// and a quiet gateway's lines still appear at once.
fn write_batches(lines: &Receiver<Vec<u8>>, mut out: impl Write, dropped: &IntCounter) {
    let mut batch = Vec::with_capacity(BATCH);
    while let Ok(first) = lines.recv() {
        batch.clear();
        batch.extend_from_slice(&first);
        let mut count = 1;
        while batch.len() < BATCH {
            let Ok(line) = lines.try_recv() else { break };
            batch.extend_from_slice(&line);
            count += 1;
        }
        if out.write_all(&batch).and_then(|()| out.flush()).is_err() {
            dropped.inc_by(count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer that keeps what it got, or fails every write.
    #[derive(Clone)]
    struct Sink(Arc<Mutex<Vec<u8>>>, bool);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.1 {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn wait_for(ready: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !ready() {
            assert!(
                std::time::Instant::now() < deadline,
                "writer made no progress"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn lines_arrive_in_order_and_failed_writes_are_counted() {
        let sink = Sink(Arc::default(), false);
        let dropped = IntCounter::new("d", "d").unwrap();
        let lines = Lines::spawn(sink.clone(), dropped.clone(), CAPACITY);
        for i in 0..1000 {
            lines.send(format!("{i}\n").into_bytes());
        }
        let expected: String = (0..1000).map(|i| format!("{i}\n")).collect();
        wait_for(|| sink.0.lock().unwrap().len() == expected.len());
        assert_eq!(
            String::from_utf8(sink.0.lock().unwrap().clone()).unwrap(),
            expected
        );
        assert_eq!(dropped.get(), 0);

        let broken = Lines::spawn(Sink(Arc::default(), true), dropped.clone(), CAPACITY);
        broken.send(b"lost\n".to_vec());
        wait_for(|| dropped.get() == 1);
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_blocking() {
        // A writer stuck on its first line: the queue fills and the rest are dropped.
        struct Stuck(Arc<Mutex<()>>);
        impl Write for Stuck {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                drop(self.0.lock().unwrap());
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let gate = Arc::new(Mutex::new(()));
        let held = gate.lock().unwrap();
        let dropped = IntCounter::new("d", "d").unwrap();
        let capacity = 4;
        let lines = Lines::spawn(Stuck(Arc::clone(&gate)), dropped.clone(), capacity);
        let extra = 10;
        for _ in 0..capacity + 1 + extra {
            // A batch's worth each, so the writer takes one line at a time.
            lines.send(vec![b'x'; BATCH]);
        }
        // One line is with the writer, `capacity` are queued, the rest were dropped.
        assert!(dropped.get() >= extra as u64, "{}", dropped.get());
        assert!(dropped.get() <= extra as u64 + 1, "{}", dropped.get());
        drop(held);
    }
}
