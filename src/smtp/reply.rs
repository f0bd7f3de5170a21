//! SMTP replies as values: a code, an enhanced status code (RFC 3463) and text.

use std::borrow::Cow;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Enhanced status code such as "5.7.1"; empty for greetings and EHLO.
    pub enhanced: &'static str,
    pub text: Cow<'static, str>,
}

impl Reply {
    pub const fn new(code: u16, enhanced: &'static str, text: &'static str) -> Reply {
        Reply {
            code,
            enhanced,
            text: Cow::Borrowed(text),
        }
    }

    pub fn with_text(code: u16, enhanced: &'static str, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced,
            text: Cow::Owned(text.into()),
        }
    }

    pub fn is_error(&self) -> bool {
        self.code >= 400
    }

    /// Wire form: one line per text line, continuation lines marked with '-'.
    pub fn to_wire(&self) -> String {
        let mut out = Vec::new();
        self.write_wire(&mut out);
        String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }

    /// Appends the wire form to `out` (the session's output buffer): no
    /// allocation of its own, as every reply of every session goes through it.
    pub fn write_wire(&self, out: &mut Vec<u8>) {
        let code = [
            b'0' + (self.code / 100 % 10) as u8,
            b'0' + (self.code / 10 % 10) as u8,
            b'0' + (self.code % 10) as u8,
        ];
        let mut lines = self.text.split('\n').peekable();
        while let Some(line) = lines.next() {
            out.extend_from_slice(&code);
            out.push(if lines.peek().is_some() { b'-' } else { b' ' });
            if !self.enhanced.is_empty() {
                out.extend_from_slice(self.enhanced.as_bytes());
                out.push(b' ');
            }
            out.extend_from_slice(line.trim_end_matches('\r').as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.enhanced.is_empty() {
            write!(f, "{} {}", self.code, self.text.replace('\n', " / "))
        } else {
            write!(
                f,
                "{} {} {}",
                self.code,
                self.enhanced,
                self.text.replace('\n', " / ")
            )
        }
    }
}

// Every fixed reply the server sends, named once.
pub const OK: Reply = Reply::new(250, "2.0.0", "OK");
pub const SENDER_OK: Reply = Reply::new(250, "2.1.0", "Sender OK");
pub const RECIPIENT_OK: Reply = Reply::new(250, "2.1.5", "Recipient OK");
pub const RESET_OK: Reply = Reply::new(250, "2.0.0", "Reset state");
pub const NOOP_OK: Reply = Reply::new(250, "2.0.0", "OK");
pub const START_DATA: Reply = Reply::new(354, "", "Start mail input; end with <CRLF>.<CRLF>");
pub const VRFY_CANNOT: Reply = Reply::new(
    252,
    "2.5.0",
    "Cannot VRFY user, but will accept message and attempt delivery",
);
pub const HELP: Reply = Reply::new(
    214,
    "2.0.0",
    "Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH",
);
pub const READY_FOR_TLS: Reply = Reply::new(220, "2.0.0", "Ready to start TLS");
pub const AUTH_OK: Reply = Reply::new(235, "2.7.0", "Authentication successful");

pub const SYNTAX_ERROR: Reply = Reply::new(500, "5.5.2", "Syntax error, command unrecognized");
pub const LINE_TOO_LONG: Reply = Reply::new(500, "5.5.2", "Line too long");
pub const NOT_IMPLEMENTED: Reply = Reply::new(502, "5.5.1", "Command not implemented");
pub const BAD_SEQUENCE_HELO: Reply = Reply::new(503, "5.5.1", "Send HELO or EHLO first");
pub const BAD_SEQUENCE_MAIL: Reply = Reply::new(503, "5.5.1", "Send MAIL first");
pub const BAD_SEQUENCE_RCPT: Reply = Reply::new(503, "5.5.1", "Send RCPT first");
pub const NESTED_MAIL: Reply = Reply::new(503, "5.5.1", "Sender already specified");
pub const ALREADY_AUTHENTICATED: Reply = Reply::new(503, "5.5.1", "Already authenticated");
pub const AUTH_DURING_MAIL: Reply =
    Reply::new(503, "5.5.1", "AUTH not allowed during a mail transaction");
pub const TLS_ALREADY: Reply = Reply::new(503, "5.5.1", "TLS already active");
pub const BDAT_AFTER_DATA_MIX: Reply = Reply::new(
    503,
    "5.5.1",
    "DATA not allowed after BDAT in the same transaction",
);
pub const BDAT_NEEDS_RCPT: Reply = Reply::new(503, "5.5.1", "Send RCPT before BDAT");
pub const AUTH_CANCELLED: Reply = Reply::new(501, "5.0.0", "Authentication cancelled");
pub const AUTH_BAD_BASE64: Reply = Reply::new(501, "5.5.2", "Cannot decode the base64 response");
pub const HELO_NEEDS_DOMAIN: Reply = Reply::new(
    501,
    "5.5.4",
    "HELO and EHLO need a domain or address literal",
);
pub const NO_PARAMETERS: Reply = Reply::new(501, "5.5.4", "This command takes no parameters");
pub const TLS_UNAVAILABLE: Reply = Reply::new(454, "4.7.0", "TLS not available");
pub const ACCOUNT_LOCKED: Reply = Reply::new(
    454,
    "4.7.0",
    "Too many failed logins for this account lately; try again later",
);
pub const TOO_MUCH_JUNK: Reply = Reply::new(
    421,
    "4.7.0",
    "Too many commands that do nothing; closing connection",
);
pub const STARTTLS_NOT_OFFERED: Reply = Reply::new(
    502,
    "5.5.1",
    "STARTTLS is not offered here (turned off for this listener or network)",
);
pub const AUTH_UNAVAILABLE: Reply = Reply::new(503, "5.5.1", "AUTH not offered on this connection");
pub const AUTH_MECHANISM_UNKNOWN: Reply = Reply::new(
    504,
    "5.5.4",
    "Unrecognized authentication mechanism; use PLAIN or LOGIN",
);
pub const AUTH_NEEDS_TLS: Reply = Reply::new(
    538,
    "5.7.11",
    "Encryption required for requested authentication mechanism; use STARTTLS first",
);
pub const AUTH_REQUIRED: Reply = Reply::new(530, "5.7.0", "Authentication required");
pub const AUTH_FAILED: Reply = Reply::new(535, "5.7.8", "Authentication credentials invalid");
pub const AUTH_TEMP_FAILURE: Reply = Reply::new(454, "4.7.0", "Temporary authentication failure");
pub const AUTH_BUSY: Reply = Reply::new(
    454,
    "4.7.0",
    "Too many authentication attempts in progress, try again later",
);
pub const MESSAGE_TOO_BIG: Reply = Reply::new(
    552,
    "5.3.4",
    "Message size exceeds fixed maximum message size",
);
pub const TOO_MANY_RECIPIENTS: Reply = Reply::new(452, "4.5.3", "Too many recipients");
pub const NO_VALID_RECIPIENTS: Reply = Reply::new(554, "5.5.1", "No valid recipients");
pub const BARE_NEWLINE: Reply = Reply::new(
    554,
    "5.6.11",
    "Bare CR or LF in message data; lines must end with CRLF. Closing connection",
);
pub const BDAT_TOO_BIG: Reply = Reply::new(
    552,
    "5.3.4",
    "Chunk would make the message larger than the fixed maximum message size. Closing connection",
);
pub const NUL_IN_DATA: Reply = Reply::new(
    554,
    "5.6.0",
    "NUL byte in message data is not allowed. Closing connection",
);
pub const TEXT_LINE_TOO_LONG: Reply = Reply::new(
    554,
    "5.6.0",
    "Message has a line that is too long (RFC 5321 4.5.3.1.6)",
);
pub const BINARY_NEEDS_BDAT: Reply =
    Reply::new(503, "5.5.1", "BODY=BINARYMIME requires BDAT, not DATA");
pub const TOO_MANY_HOPS: Reply = Reply::new(554, "5.4.6", "Too many Received: headers; mail loop?");
pub const SPOOL_FAILED: Reply = Reply::new(
    451,
    "4.3.0",
    "Local error in processing; message not accepted, try again later",
);
pub const SPOOL_FULL: Reply =
    Reply::new(452, "4.3.1", "Insufficient system storage; try again later");
pub const TOO_MANY_ERRORS: Reply = Reply::new(421, "4.7.0", "Too many errors; closing connection");
pub const TIMEOUT: Reply = Reply::new(421, "4.4.2", "Timeout; closing connection");
pub const TOO_MANY_CONNECTIONS: Reply =
    Reply::new(421, "4.7.0", "Too many connections; try again later");
pub const TOO_MANY_FROM_IP: Reply = Reply::new(
    421,
    "4.7.0",
    "Too many connections from your address; try again later",
);
pub const FLOOD_REFUSED: Reply = Reply::new(
    451,
    "4.7.1",
    "Unusual volume of mail to many domains from your account or address; try again later",
);
pub const PREGREET: Reply = Reply::new(
    554,
    "5.5.1",
    "Protocol error: you talked before the greeting",
);
pub const BANNED: Reply = Reply::new(
    421,
    "4.7.0",
    "Too many failed logins from your address; try again later",
);
pub const UNAUTH_PIPELINING: Reply = Reply::new(
    554,
    "5.5.0",
    "Improper use of SMTP command pipelining: message content sent before the 354",
);
pub const CONNECTING_TOO_FAST: Reply = Reply::new(
    421,
    "4.7.0",
    "Too many connections from your address in the last minute; try again later",
);
pub const SHUTTING_DOWN: Reply = Reply::new(421, "4.3.2", "Service shutting down; try again later");
pub const CONNECTION_FILTERED: Reply = Reply::new(
    554,
    "5.7.1",
    "Connections from your address are not accepted here",
);
pub const HTTP_REFUSED: Reply = Reply::new(
    554,
    "5.7.0",
    "This is an SMTP server, not HTTP; closing connection",
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_line_wire_form() {
        let r = Reply::with_text(250, "", "relay.example\nPIPELINING\nSIZE 10");
        assert_eq!(
            r.to_wire(),
            "250-relay.example\r\n250-PIPELINING\r\n250 SIZE 10\r\n"
        );
        assert_eq!(OK.to_wire(), "250 2.0.0 OK\r\n");
    }
}
