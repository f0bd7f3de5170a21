//! Log lines reach stderr in batches. A relayed message logs about five
//! lines, and a write(2) for each was a tenth of the server's CPU under
//! load. Lines are appended to a shared buffer instead; one thread writes
//! whatever has gathered, then rests a moment, so an idle server's line
//! appears at once and a busy server's lines go out a few hundred at a time.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the writer rests after a write: the most a line waits under load.
const REST: Duration = Duration::from_millis(10);
/// Past this many bytes waiting (the sink is stuck), loggers wait for the
/// writer, as they would have waited on a direct write: memory stays bounded.
const HIGH_WATER: usize = 4 << 20;

struct State {
    lines: Vec<u8>,
    /// The writer sleeps until told that lines wait.
    writer_idle: bool,
    /// Loggers wait for room.
    loggers_waiting: usize,
    /// The writer has stopped: lines go straight to the sink.
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    lines_waiting: Condvar,
    room: Condvar,
    /// Used directly once the writer has stopped.
    sink: Mutex<Box<dyn Write + Send>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write_to_sink(&self, bytes: &[u8]) {
        let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        // Nowhere to report a failing log sink: the line is lost.
        let _ = sink.write_all(bytes).and_then(|()| sink.flush());
    }
}

/// The `MakeWriter` the tracing subscriber logs through.
#[derive(Clone)]
pub struct BatchedWriter {
    shared: Arc<Shared>,
}

/// Stops the writer thread when dropped, once every line is written.
pub struct FlushOnDrop {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl BatchedWriter {
    /// Starts the writer thread over `sink`. Should the thread not start,
    /// every line is written straight to the sink.
    pub fn start(sink: impl Write + Send + 'static) -> (BatchedWriter, FlushOnDrop) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                lines: Vec::new(),
                writer_idle: false,
                loggers_waiting: 0,
                closed: false,
            }),
            lines_waiting: Condvar::new(),
            room: Condvar::new(),
            sink: Mutex::new(Box::new(sink)),
        });
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || write_batches(&shared)
            });
        let thread = match thread {
            Ok(thread) => Some(thread),
            Err(e) => {
                shared.lock().closed = true;
                shared.write_to_sink(
                    format!("no log writer thread ({e}): logging line by line\n").as_bytes(),
                );
                None
            }
        };
        let writer = BatchedWriter {
            shared: Arc::clone(&shared),
        };
        (writer, FlushOnDrop { shared, thread })
    }

    fn append(&self, bytes: &[u8]) {
        let mut state = self.shared.lock();
        while state.lines.len() >= HIGH_WATER && !state.closed {
            state.loggers_waiting += 1;
            state = self
                .shared
                .room
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
            state.loggers_waiting -= 1;
        }
        if state.closed {
            drop(state);
            self.shared.write_to_sink(bytes);
            return;
        }
        state.lines.extend_from_slice(bytes);
        if state.writer_idle {
            // Only an idle writer is woken: a busy one takes these lines next.
            state.writer_idle = false;
            self.shared.lines_waiting.notify_one();
        }
    }
}

/// The writer thread: takes what has gathered, writes it, rests.
fn write_batches(shared: &Shared) {
    let mut batch = Vec::new();
    loop {
        {
            let mut state = shared.lock();
            while state.lines.is_empty() && !state.closed {
                state.writer_idle = true;
                state = shared
                    .lines_waiting
                    .wait(state)
                    .unwrap_or_else(|p| p.into_inner());
            }
            if state.lines.is_empty() {
                return; // closed, and everything written
            }
            batch.clear();
            std::mem::swap(&mut batch, &mut state.lines);
            if state.loggers_waiting > 0 {
                shared.room.notify_all();
            }
        }
        shared.write_to_sink(&batch);
        std::thread::sleep(REST);
    }
}

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        {
            let mut state = self.shared.lock();
            state.closed = true;
            self.shared.lines_waiting.notify_one();
            self.shared.room.notify_all();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A byte that must not reach a terminal or a log reader raw: a client's
/// ESC sequence could redraw the admin's screen, a CR could hide a line.
fn is_unsafe_control(b: u8) -> bool {
    (b < 0x20 && b != b'\n' && b != b'\t') || b == 0x7f
}

/// `bytes` with every unsafe control byte written as `\xHH`.
fn escape_controls(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 16);
    for &b in bytes {
        if is_unsafe_control(b) {
            out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
        } else {
            out.push(b);
        }
    }
    out
}

/// What one log event is written through.
pub struct Appender<'a>(&'a BatchedWriter);

impl Write for Appender<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.iter().any(|&b| is_unsafe_control(b)) {
            self.0.append(&escape_controls(buf));
        } else {
            self.0.append(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchedWriter {
    type Writer = Appender<'a>;

    fn make_writer(&'a self) -> Appender<'a> {
        Appender(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A sink the test can read while the writer fills it.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[test]
    fn every_line_from_every_thread_arrives_whole_once_flushed() {
        let sink = Captured::default();
        let (writer, flush) = BatchedWriter::start(sink.clone());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    use tracing_subscriber::fmt::MakeWriter;
                    for i in 0..1000 {
                        let line = format!("thread {t} line {i} {}\n", "x".repeat(i % 97));
                        writer.make_writer().write_all(line.as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(flush);
        let text = sink.text();
        assert_eq!(text.lines().count(), 4000);
        for t in 0..4 {
            for i in 0..1000 {
                let line = format!("thread {t} line {i} {}", "x".repeat(i % 97));
                assert!(text.lines().any(|l| l == line), "missing or torn: {line}");
            }
        }
    }

    #[test]
    fn a_line_on_an_idle_server_arrives_without_a_flush_and_after_the_stop_directly() {
        let sink = Captured::default();
        let (writer, flush) = BatchedWriter::start(sink.clone());
        writer.append(b"first\n");
        let start = Instant::now();
        while sink.text() != "first\n" && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(sink.text(), "first\n", "an idle writer is woken by a line");
        drop(flush);
        writer.append(b"after the stop\n");
        assert_eq!(sink.text(), "first\nafter the stop\n");
    }

    /// A sink that takes nothing until the test opens its gate.
    struct Gated {
        gate: Arc<(Mutex<bool>, Condvar)>,
        out: Captured,
    }

    impl Write for Gated {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let (open, cv) = &*self.gate;
            let mut o = open.lock().unwrap();
            while !*o {
                o = cv.wait(o).unwrap();
            }
            self.out.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_sink_makes_loggers_wait_instead_of_growing_memory() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let out = Captured::default();
        let (writer, flush) = BatchedWriter::start(Gated {
            gate: Arc::clone(&gate),
            out: out.clone(),
        });
        // The writer takes a first batch and sticks in the sink with it...
        writer.append(b"first\n");
        let start = Instant::now();
        while !writer.shared.lock().lines.is_empty() && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(1));
        }
        // ...so what follows piles up, up to the high-water mark, and no further.
        let line = vec![b'x'; 1024];
        for _ in 0..HIGH_WATER / line.len() {
            writer.append(&line);
        }
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let logger = std::thread::spawn({
            let (writer, done) = (writer.clone(), Arc::clone(&done));
            move || {
                writer.append(b"one too many\n");
                done.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !done.load(std::sync::atomic::Ordering::SeqCst),
            "the logger waits for room"
        );
        assert!(writer.shared.lock().lines.len() <= HIGH_WATER);
        let (open, cv) = &*gate;
        *open.lock().unwrap() = true;
        cv.notify_all();
        logger.join().unwrap();
        drop(flush);
        let text = out.text();
        assert!(text.starts_with("first\n") && text.ends_with("one too many\n"));
        assert_eq!(text.len(), 6 + HIGH_WATER / 1024 * 1024 + 13);
    }
}

#[cfg(test)]
mod control_tests {
    #[test]
    fn control_bytes_are_escaped_and_lines_kept() {
        let out = super::escape_controls(b"command=\x1b[2J\x1b[H\rok\tthen\n");
        assert_eq!(out, b"command=\\x1b[2J\\x1b[H\\x0dok\tthen\n");
    }
}
