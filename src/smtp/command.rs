//! Command lines (RFC 5321 4.1.1) and their ESMTP parameters, parsed into
//! values. A line that cannot be parsed yields the reply to send instead.

use super::address::{AddressError, Path, parse_path};
use super::reply::{self, Reply};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    SevenBit,
    EightBitMime,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    pub size: Option<u64>,
    pub body: Option<Body>,
    pub smtputf8: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Helo(String),
    Ehlo(String),
    Mail {
        path: Path,
        params: MailParams,
    },
    Rcpt {
        path: Path,
    },
    Data,
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    Noop,
    Quit,
    Vrfy,
    Expn,
    Help,
    StartTls,
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
}

/// What a line turned out to be when it is not a command we can run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unparsed {
    /// Reply with this and carry on.
    Reply(Reply),
    /// An HTTP request (cross-protocol attack): close at once.
    Http,
}

const HTTP_VERBS: &[&str] = &[
    "GET", "POST", "HEAD", "PUT", "CONNECT", "OPTIONS", "DELETE", "PATCH", "TRACE",
];

/// Parses one command line without its line ending. `utf8` says whether
/// SMTPUTF8 is announced, so that UTF-8 addresses are allowed.
pub fn parse(line: &str) -> Result<Command, Unparsed> {
    // NUL and other control characters have no place in a command (a tab may
    // separate words); a lenient next hop might drop them and read another command.
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return Err(Unparsed::Reply(Reply::new(
            500,
            "5.5.2",
            "Command contains control characters",
        )));
    }
    let (verb, args) = match line.find(' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, ""),
    };
    let upper = verb.to_ascii_uppercase();
    if looks_like_http(&upper, line) {
        return Err(Unparsed::Http);
    }
    let no_args = |cmd: Command| {
        if args.trim().is_empty() {
            Ok(cmd)
        } else {
            Err(Unparsed::Reply(reply::NO_PARAMETERS))
        }
    };
    match upper.as_str() {
        "HELO" | "EHLO" => {
            let name = args.trim();
            if name.is_empty() || name.contains(char::is_whitespace) && upper == "HELO" {
                return Err(Unparsed::Reply(reply::HELO_NEEDS_DOMAIN));
            }
            // EHLO may carry junk after the name in the wild; keep the first word.
            let name = name
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            Ok(if upper == "HELO" {
                Command::Helo(name)
            } else {
                Command::Ehlo(name)
            })
        }
        "MAIL" => parse_mail(args),
        "RCPT" => parse_rcpt(args),
        "DATA" => no_args(Command::Data),
        "BDAT" => parse_bdat(args),
        "RSET" => no_args(Command::Rset),
        "NOOP" => Ok(Command::Noop),
        "QUIT" => no_args(Command::Quit),
        "VRFY" => Ok(Command::Vrfy),
        "EXPN" => Ok(Command::Expn),
        "HELP" => Ok(Command::Help),
        "STARTTLS" => no_args(Command::StartTls),
        "AUTH" => {
            let mut parts = args.split_whitespace();
            let mechanism = parts.next().unwrap_or_default().to_ascii_uppercase();
            if mechanism.is_empty() {
                return Err(Unparsed::Reply(Reply::new(
                    501,
                    "5.5.4",
                    "AUTH needs a mechanism",
                )));
            }
            let initial = parts.next().map(str::to_string);
            if parts.next().is_some() {
                return Err(Unparsed::Reply(Reply::new(
                    501,
                    "5.5.4",
                    "Syntax: AUTH mechanism [initial-response]",
                )));
            }
            Ok(Command::Auth { mechanism, initial })
        }
        _ => Err(Unparsed::Reply(reply::SYNTAX_ERROR)),
    }
}

fn looks_like_http(upper_verb: &str, line: &str) -> bool {
    if HTTP_VERBS.contains(&upper_verb) {
        return true;
    }
    let lower = line.to_ascii_lowercase();
    lower.starts_with("host:") || lower.starts_with("user-agent:")
}

/// Strips the "FROM:" / "TO:" keyword, allowing the common space after the colon.
fn strip_keyword<'a>(args: &'a str, keyword: &str) -> Option<&'a str> {
    let head = args.get(..keyword.len())?;
    if head.eq_ignore_ascii_case(keyword) {
        Some(args[keyword.len()..].trim_start())
    } else {
        None
    }
}

fn address_reply(e: AddressError, what: &'static str) -> Unparsed {
    let code = if e == AddressError::NeedsUtf8 {
        "5.6.7"
    } else {
        "5.1.7"
    };
    let code = if what == "Recipient" && code == "5.1.7" {
        "5.1.3"
    } else {
        code
    };
    Unparsed::Reply(Reply::with_text(
        553,
        code,
        format!("{what} address rejected: {e}"),
    ))
}

/// The verb of a command line for the log: one of the SMTP verbs we know,
/// or "(unknown)". Never the client's own words.
pub fn verb_name(line: &str) -> &'static str {
    const VERBS: [&str; 14] = [
        "HELO", "EHLO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT", "VRFY", "EXPN",
        "HELP", "STARTTLS", "AUTH",
    ];
    let word = line.split([' ', ':']).next().unwrap_or_default();
    VERBS
        .iter()
        .find(|v| v.eq_ignore_ascii_case(word))
        .copied()
        .unwrap_or("(unknown)")
}

fn parse_mail(args: &str) -> Result<Command, Unparsed> {
    let Some(rest) = strip_keyword(args, "FROM:") else {
        return Err(Unparsed::Reply(Reply::new(
            501,
            "5.5.4",
            "Syntax: MAIL FROM:<address> [parameters]",
        )));
    };
    let (_, params_text) = parse_path(rest, true).map_err(|e| address_reply(e, "Sender"))?;
    let params = parse_mail_params(params_text)?;
    let (path, _) = parse_path(rest, params.smtputf8).map_err(|e| address_reply(e, "Sender"))?;
    Ok(Command::Mail { path, params })
}

fn parse_mail_params(text: &str) -> Result<MailParams, Unparsed> {
    let mut params = MailParams::default();
    let mut seen: Vec<(String, Option<&str>)> = Vec::new();
    for param in text.split_whitespace() {
        let (key, value) = match param.split_once('=') {
            Some((k, v)) => (k.to_ascii_uppercase(), Some(v)),
            None => (param.to_ascii_uppercase(), None),
        };
        // RFC 5321 4.1.1.2 allows each parameter once, but clients repeat
        // one verbatim (Python's smtplib sends SMTPUTF8 twice when asked for
        // it) and Postfix takes that. Two different values (SIZE=1 SIZE=2)
        // would leave us guessing, so those are refused.
        if let Some((_, earlier)) = seen.iter().find(|(k, _)| *k == key) {
            let same = match (earlier, value) {
                (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
                (a, b) => a.is_none() && b.is_none(),
            };
            if same {
                continue;
            }
            return Err(Unparsed::Reply(Reply::with_text(
                501,
                "5.5.4",
                format!("Conflicting values for MAIL parameter {key}"),
            )));
        }
        seen.push((key.clone(), value));
        match (key.as_str(), value) {
            ("SIZE", Some(v)) => {
                let size = v.parse::<u64>().map_err(|_| {
                    Unparsed::Reply(Reply::new(501, "5.5.4", "SIZE needs a number of octets"))
                })?;
                params.size = Some(size);
            }
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => {
                params.body = Some(Body::SevenBit)
            }
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => {
                params.body = Some(Body::EightBitMime)
            }
            ("BODY", _) => {
                return Err(Unparsed::Reply(Reply::new(
                    555,
                    "5.5.4",
                    "BODY must be 7BIT or 8BITMIME",
                )));
            }
            ("SMTPUTF8", None) => params.smtputf8 = true,
            // RFC 4954 5: AUTH=<> or an identity; we only trust our own AUTH, so it is noted and ignored.
            ("AUTH", Some(_)) => {}
            _ => {
                return Err(Unparsed::Reply(Reply::with_text(
                    555,
                    "5.5.4",
                    format!("Unsupported MAIL parameter {key}"),
                )));
            }
        }
    }
    Ok(params)
}

fn parse_rcpt(args: &str) -> Result<Command, Unparsed> {
    let Some(rest) = strip_keyword(args, "TO:") else {
        return Err(Unparsed::Reply(Reply::new(
            501,
            "5.5.4",
            "Syntax: RCPT TO:<address>",
        )));
    };
    let (path, params) = parse_path(rest, true).map_err(|e| address_reply(e, "Recipient"))?;
    if let Some(p) = params.split_whitespace().next() {
        return Err(Unparsed::Reply(Reply::with_text(
            555,
            "5.5.4",
            format!(
                "Unsupported RCPT parameter {}",
                p.split('=').next().unwrap_or(p)
            ),
        )));
    }
    if path == Path::Null {
        return Err(Unparsed::Reply(Reply::new(
            553,
            "5.1.3",
            "Recipient address rejected: empty address",
        )));
    }
    Ok(Command::Rcpt { path })
}

fn parse_bdat(args: &str) -> Result<Command, Unparsed> {
    let syntax = || Unparsed::Reply(Reply::new(501, "5.5.4", "Syntax: BDAT size [LAST]"));
    let mut parts = args.split_whitespace();
    let size = parts
        .next()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(syntax)?;
    let last = match parts.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(syntax()),
    };
    if parts.next().is_some() {
        return Err(syntax());
    }
    Ok(Command::Bdat { size, last })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::address::{Domain, Path};

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(
            parse("ehlo client.example"),
            Ok(Command::Ehlo("client.example".into()))
        );
        assert_eq!(parse("QuIt"), Ok(Command::Quit));
        assert_eq!(parse("data"), Ok(Command::Data));
    }

    #[test]
    fn mail_with_parameters() {
        let Ok(Command::Mail { path, params }) =
            parse("MAIL FROM: <a@b.example> SIZE=1000 BODY=8BITMIME SMTPUTF8")
        else {
            panic!()
        };
        assert!(matches!(path, Path::Mailbox(m) if m.domain == Domain::Name("b.example".into())));
        assert_eq!(params.size, Some(1000));
        assert_eq!(params.body, Some(Body::EightBitMime));
        assert!(params.smtputf8);
    }

    #[test]
    fn utf8_sender_needs_smtputf8() {
        assert!(parse("MAIL FROM:<jörg@example.de>").is_err());
        assert!(parse("MAIL FROM:<jörg@example.de> SMTPUTF8").is_ok());
    }

    #[test]
    fn errors_have_codes() {
        let code = |l: &str| match parse(l) {
            Err(Unparsed::Reply(r)) => r.code,
            other => panic!("{other:?}"),
        };
        assert_eq!(code("FOO"), 500);
        assert_eq!(code("MAIL TO:<a@b.c>"), 501);
        assert_eq!(code("MAIL FROM:<a@b.c> XYZ=1"), 555);
        assert_eq!(code("RCPT TO:<a@b.c> NOTIFY=NEVER"), 555);
        assert_eq!(code("RCPT TO:<>"), 553);
        assert_eq!(code("BDAT x"), 501);
        assert_eq!(code("MAIL FROM:<a@b.c> SIZE=1 SIZE=2"), 501);
        assert_eq!(code("MAIL FROM:<a@b.c> BODY=7BIT BODY=8BITMIME"), 501);
        assert_eq!(code("MAIL FROM:<a@b.c> SMTPUTF8 SMTPUTF8=x"), 501);
        assert_eq!(code("MAIL FROM:<a@b.c> BODY=7BIT body=8BITMIME"), 501);
        assert_eq!(code("EHLO a\0b"), 500);
        assert_eq!(code("HELO a\x1bb"), 500);
        assert_eq!(code("RCPT TO:<a\0@b.c>"), 500);
        assert_eq!(code("DATA now"), 501);
    }

    #[test]
    fn http_is_recognised() {
        assert_eq!(parse("GET / HTTP/1.1"), Err(Unparsed::Http));
        assert_eq!(
            parse("CONNECT mail.example:25 HTTP/1.0"),
            Err(Unparsed::Http)
        );
        assert_eq!(parse("Host: example.com"), Err(Unparsed::Http));
    }

    #[test]
    fn bdat() {
        assert_eq!(
            parse("BDAT 100 LAST"),
            Ok(Command::Bdat {
                size: 100,
                last: true
            })
        );
        assert_eq!(
            parse("BDAT 0"),
            Ok(Command::Bdat {
                size: 0,
                last: false
            })
        );
    }
}
