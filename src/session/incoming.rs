//! A message being received: the decoder's verdicts, the hop count and the
//! spool writer. Decoding happens on the async threads; file I/O only in
//! `spawn_blocking` (spills of 256 KB, and the commit).

use crate::smtp::data::{DataDecoder, Progress};
use crate::smtp::hops::HopCounter;
use crate::spool::SpoolWriter;
use std::io;

pub struct Incoming {
    pub queue_id: crate::spool::QueueId,
    pub decoder: DataDecoder,
    pub hops: HopCounter,
    /// None only while a spill runs elsewhere.
    writer: Option<SpoolWriter>,
    /// The first disk error; decoding goes on so the client gets its reply at the end.
    pub write_error: Option<io::Error>,
    out: Vec<u8>,
}

impl Incoming {
    pub fn new(queue_id: crate::spool::QueueId, writer: SpoolWriter, decoder: DataDecoder) -> Self {
        Self {
            queue_id,
            decoder,
            hops: HopCounter::new(),
            writer: Some(writer),
            write_error: None,
            out: Vec::with_capacity(16 * 1024),
        }
    }

    /// Decodes client input into the message. Returns what was consumed and how decoding stands.
    pub fn feed(&mut self, input: &[u8]) -> (usize, Progress) {
        self.out.clear();
        let result = self.decoder.feed(input, &mut self.out);
        self.keep_output();
        result
    }

    /// End of the last BDAT chunk: a CR left pending is a bare CR.
    pub fn finish_chunks(&mut self) -> Progress {
        self.out.clear();
        let progress = self.decoder.finish(&mut self.out);
        self.keep_output();
        progress
    }

    fn keep_output(&mut self) {
        self.hops.feed(&self.out);
        if self.write_error.is_none()
            && let Some(w) = self.writer.as_mut()
        {
            w.write(&self.out);
        }
    }

    /// Moves waiting content to disk when enough has gathered, without blocking the async threads.
    pub async fn spill_if_needed(&mut self) {
        let Some(mut writer) = self.writer.take() else {
            return;
        };
        if self.write_error.is_some() || !writer.needs_spill() {
            self.writer = Some(writer);
            return;
        }
        let (writer, result) = tokio::task::spawn_blocking(move || {
            let r = writer.spill();
            (writer, r)
        })
        .await
        .unwrap_or_else(|e| panic!("spool spill task failed: {e}"));
        self.writer = Some(writer);
        self.write_error = result.err();
    }

    /// The writer, for the commit.
    pub fn take_writer(&mut self) -> Option<SpoolWriter> {
        self.writer.take()
    }
}
