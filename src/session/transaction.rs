//! One mail transaction: from MAIL to the end of DATA (or the last BDAT), or RSET.

use crate::smtp::address::{Mailbox, Path};
use crate::smtp::command::MailParams;
use crate::smtp::data::DataDecoder;
use crate::spool::SpoolWriter;

pub struct Transaction {
    pub sender: Path,
    pub params: MailParams,
    /// Accepted recipients (final destinations), without duplicates.
    pub recipients: Vec<Mailbox>,
    /// Set once BDAT has started; DATA is then refused.
    pub bdat: Option<BdatProgress>,
}

/// A BDAT transfer in progress: the message being written and the line-ending checker.
pub struct BdatProgress {
    pub queue_id: String,
    pub writer: Option<SpoolWriter>,
    pub decoder: DataDecoder,
    pub write_error: Option<std::io::Error>,
    pub hops: crate::smtp::hops::HopCounter,
}

impl Transaction {
    pub fn new(sender: Path, params: MailParams) -> Self {
        Self {
            sender,
            params,
            recipients: Vec::new(),
            bdat: None,
        }
    }

    /// The reverse path as stored in the envelope: empty for `<>`.
    pub fn sender_text(&self) -> String {
        match &self.sender {
            Path::Mailbox(m) => m.to_string(),
            Path::Null | Path::Postmaster => String::new(),
        }
    }

    pub fn add_recipient(&mut self, mailbox: Mailbox) {
        if !self.recipients.contains(&mailbox) {
            self.recipients.push(mailbox);
        }
    }
}
