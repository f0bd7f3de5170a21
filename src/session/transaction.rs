//! One mail transaction: from MAIL to the end of DATA (or the last BDAT), or RSET.

use super::incoming::Incoming;
use crate::smtp::address::{Mailbox, Path};
use crate::smtp::command::MailParams;

pub struct Transaction {
    pub sender: Path,
    pub params: MailParams,
    /// Accepted recipients (final destinations), without duplicates.
    pub recipients: Vec<Mailbox>,
    /// The message being received by BDAT, once the first chunk came; DATA is then refused.
    pub bdat: Option<Incoming>,
    /// The guard saw a flood from this source: the message is queued held.
    pub hold: bool,
    /// RCPTs accepted, repeats of one address included: they count toward
    /// `max_recipients`, so that no session makes the server decide the
    /// same recipient without end.
    pub rcpts_accepted: usize,
}

impl Transaction {
    pub fn new(sender: Path, params: MailParams) -> Self {
        Self {
            sender,
            params,
            recipients: Vec::new(),
            bdat: None,
            hold: false,
            rcpts_accepted: 0,
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
        self.rcpts_accepted += 1;
        if !self.recipients.contains(&mailbox) {
            self.recipients.push(mailbox);
        }
    }
}
