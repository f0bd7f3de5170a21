//! Envelope addresses (RFC 5321 4.1.2, RFC 6531 for UTF-8). Parses a path,
//! strips any source route, folds the domain to one spelling (lower case,
//! no trailing dot) and reports local-part forms that hide a second destination.

use std::fmt;
use std::net::IpAddr;

const MAX_LOCAL_PART: usize = 64;
const MAX_DOMAIN: usize = 255;
const MAX_PATH: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Domain {
    /// A host name, lower case, without a trailing dot.
    Name(String),
    /// `[192.0.2.1]` or `[IPv6:2001:db8::1]`.
    Literal(IpAddr),
}

impl Domain {
    /// A domain name as written anywhere (config, DNS, an address) in the one
    /// form used for comparing: trimmed, lower case, no trailing dot.
    pub fn normalize(name: &str) -> String {
        // ASCII blanks only: a Unicode space (U+0085 NEL…) is part of the name,
        // and the parser refuses it, so that parsing is the same every time.
        let name = name.trim_ascii();
        name.strip_suffix('.').unwrap_or(name).to_lowercase()
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Domain::Name(n) => f.write_str(n),
            Domain::Literal(IpAddr::V4(a)) => write!(f, "[{a}]"),
            Domain::Literal(IpAddr::V6(a)) => write!(f, "[IPv6:{a}]"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mailbox {
    /// The local part as the client wrote it, quotes included when quoted.
    pub local: String,
    pub domain: Domain,
}

impl Mailbox {
    /// The local part without quoting (for inspection, not for delivery).
    pub fn local_unquoted(&self) -> String {
        if self.local.starts_with('"') && self.local.ends_with('"') && self.local.len() >= 2 {
            let inner = &self.local[1..self.local.len() - 1];
            let mut out = String::with_capacity(inner.len());
            let mut escaped = false;
            for ch in inner.chars() {
                if escaped || ch != '\\' {
                    out.push(ch);
                    escaped = false;
                } else {
                    escaped = true;
                }
            }
            out
        } else {
            self.local.clone()
        }
    }

    /// A name for a form of local part that routes mail to a second destination
    /// through a server that honours it: the percent hack, bang paths, a quoted @.
    pub fn hidden_route(&self) -> Option<&'static str> {
        let local = self.local_unquoted();
        if local.contains('@') {
            Some("a local part holding another address")
        } else if local.contains('%') {
            Some("the percent hack (user%host@domain)")
        } else if local.contains('!') {
            Some("a bang path (host!user@domain)")
        } else {
            None
        }
    }

    pub fn is_utf8(&self) -> bool {
        !self.local.is_ascii() || matches!(&self.domain, Domain::Name(n) if !n.is_ascii())
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

/// What a MAIL or RCPT path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Path {
    /// `<>`: the null reverse path of bounces.
    Null,
    /// `<postmaster>` without a domain (RCPT only, RFC 5321 4.5.1).
    Postmaster,
    Mailbox(Mailbox),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("address must be enclosed in <>")]
    NoBrackets,
    #[error("address is too long")]
    TooLong,
    #[error("local part is too long (at most 64 octets)")]
    LocalTooLong,
    #[error("domain is too long (at most 255 octets)")]
    DomainTooLong,
    #[error("address has no domain")]
    NoDomain,
    #[error("invalid character in address")]
    BadChar,
    #[error("invalid local part")]
    BadLocal,
    #[error("invalid domain")]
    BadDomain,
    #[error("invalid address literal")]
    BadLiteral,
    #[error("invalid source route")]
    BadRoute,
    #[error("UTF-8 address without SMTPUTF8")]
    NeedsUtf8,
}

/// Parses `<path> params…` after "FROM:" or "TO:". Returns the path and the
/// rest of the line (the ESMTP parameters).
pub fn parse_path(input: &str, utf8: bool) -> Result<(Path, &str), AddressError> {
    let input = input.trim_start();
    let Some(body) = input.strip_prefix('<') else {
        return Err(AddressError::NoBrackets);
    };
    let end = closing_bracket(body).ok_or(AddressError::NoBrackets)?;
    let inner = &body[..end];
    let rest = &body[end + 1..];
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err(AddressError::BadChar);
    }
    if inner.len() > MAX_PATH {
        return Err(AddressError::TooLong);
    }
    if !utf8 && !inner.is_ascii() {
        return Err(AddressError::NeedsUtf8);
    }
    if inner.is_empty() {
        return Ok((Path::Null, rest));
    }
    if inner.eq_ignore_ascii_case("postmaster") {
        return Ok((Path::Postmaster, rest));
    }
    let mailbox_text = strip_source_route(inner)?;
    Ok((Path::Mailbox(parse_mailbox(mailbox_text)?), rest))
}

/// Finds the '>' that closes the path, skipping quoted strings.
fn closing_bracket(s: &str) -> Option<usize> {
    let mut in_quote = false;
    let mut escaped = false;
    for (i, ch) in s.char_indices() {
        match ch {
            _ if escaped => escaped = false,
            '\\' if in_quote => escaped = true,
            '"' => in_quote = !in_quote,
            '>' if !in_quote => return Some(i),
            _ => {}
        }
    }
    None
}

/// `@a,@b:user@c` → `user@c` (RFC 5321 says to ignore the route; C.3).
fn strip_source_route(s: &str) -> Result<&str, AddressError> {
    if !s.starts_with('@') {
        return Ok(s);
    }
    let colon = s.find(':').ok_or(AddressError::BadRoute)?;
    for hop in s[..colon].split(',') {
        let host = hop.strip_prefix('@').ok_or(AddressError::BadRoute)?;
        parse_domain(host).map_err(|_| AddressError::BadRoute)?;
    }
    Ok(&s[colon + 1..])
}

/// Parses `local@domain` (no brackets).
pub fn parse_mailbox(s: &str) -> Result<Mailbox, AddressError> {
    let (local, domain) = split_local_domain(s)?;
    if local.len() > MAX_LOCAL_PART {
        return Err(AddressError::LocalTooLong);
    }
    check_local(local)?;
    Ok(Mailbox {
        local: local.to_string(),
        domain: parse_domain(domain)?,
    })
}

fn split_local_domain(s: &str) -> Result<(&str, &str), AddressError> {
    if s.starts_with('"') {
        let mut escaped = false;
        for (i, ch) in s.char_indices().skip(1) {
            match ch {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    let rest = &s[i + 1..];
                    let domain = rest.strip_prefix('@').ok_or(AddressError::NoDomain)?;
                    return Ok((&s[..=i], domain));
                }
                _ => {}
            }
        }
        return Err(AddressError::BadLocal);
    }
    let at = s.rfind('@').ok_or(AddressError::NoDomain)?;
    Ok((&s[..at], &s[at + 1..]))
}

fn is_atext(ch: char) -> bool {
    ch.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(ch) || !ch.is_ascii()
}

fn check_local(local: &str) -> Result<(), AddressError> {
    if local.is_empty() {
        return Err(AddressError::BadLocal);
    }
    if local.starts_with('"') {
        let inner = &local[1..local.len() - 1];
        let mut escaped = false;
        for ch in inner.chars() {
            if escaped {
                if !(' '..='~').contains(&ch) {
                    return Err(AddressError::BadChar);
                }
                escaped = false;
            } else if ch == '\\' {
                escaped = true;
            } else if ch == '"' || (ch.is_ascii() && !(' '..='~').contains(&ch)) {
                return Err(AddressError::BadChar);
            }
        }
        return Ok(());
    }
    // Dot-string: atoms separated by single dots.
    if local
        .split('.')
        .any(|atom| atom.is_empty() || !atom.chars().all(is_atext))
    {
        return Err(AddressError::BadLocal);
    }
    Ok(())
}

/// A domain or address literal, folded to lower case without a trailing dot.
pub fn parse_domain(s: &str) -> Result<Domain, AddressError> {
    if let Some(lit) = s.strip_prefix('[') {
        let lit = lit.strip_suffix(']').ok_or(AddressError::BadLiteral)?;
        let ip = if let Some(v6) = lit.get(..5).filter(|p| p.eq_ignore_ascii_case("IPv6:")) {
            let _ = v6;
            lit[5..].parse::<std::net::Ipv6Addr>().map(IpAddr::V6)
        } else {
            lit.parse::<std::net::Ipv4Addr>().map(IpAddr::V4)
        };
        return ip
            .map(|ip| Domain::Literal(ip.to_canonical()))
            .map_err(|_| AddressError::BadLiteral);
    }
    let name = Domain::normalize(s);
    if name.is_empty() {
        return Err(AddressError::NoDomain);
    }
    if name.len() > MAX_DOMAIN {
        return Err(AddressError::DomainTooLong);
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| {
                c.is_ascii_alphanumeric()
                    || c == '-'
                    || (!c.is_ascii() && !c.is_control() && !c.is_whitespace())
            });
        if !ok {
            return Err(AddressError::BadDomain);
        }
    }
    Ok(Domain::Name(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailbox(s: &str) -> Mailbox {
        match parse_path(s, true).unwrap().0 {
            Path::Mailbox(m) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn plain_and_null_and_postmaster() {
        assert_eq!(parse_path("<>", false).unwrap().0, Path::Null);
        assert_eq!(
            parse_path("<PostMaster>", false).unwrap().0,
            Path::Postmaster
        );
        let m = mailbox("<Joe.Bloggs@Example.LAN.>");
        assert_eq!(m.local, "Joe.Bloggs");
        assert_eq!(m.domain, Domain::Name("example.lan".into()));
    }

    #[test]
    fn parameters_are_returned() {
        let (_, rest) = parse_path("<a@b.c> SIZE=100 BODY=8BITMIME", false).unwrap();
        assert_eq!(rest, " SIZE=100 BODY=8BITMIME");
    }

    #[test]
    fn source_route_is_stripped_to_the_final_destination() {
        let m = mailbox("<@ours.lan,@relay.lan:victim@elsewhere.example>");
        assert_eq!(m.domain, Domain::Name("elsewhere.example".into()));
        assert!(parse_path("<@ours.lan victim@x.example>", true).is_err());
    }

    #[test]
    fn hidden_routes_are_reported() {
        assert!(
            mailbox("<user%other.example@ours.lan>")
                .hidden_route()
                .is_some()
        );
        assert!(
            mailbox("<other.example!user@ours.lan>")
                .hidden_route()
                .is_some()
        );
        let q = mailbox("<\"user@other.example\"@ours.lan>");
        assert_eq!(q.domain, Domain::Name("ours.lan".into()));
        assert!(q.hidden_route().is_some());
        assert!(mailbox("<plain.user@ours.lan>").hidden_route().is_none());
    }

    #[test]
    fn unicode_blanks_and_controls_are_no_part_of_a_domain() {
        // Found by the address fuzzer: a trailing U+0085 (NEL) label was
        // trimmed away, so the domain read differently the second time.
        let crash = "<\u{d310}@e-\u{8a}\u{85}\u{85}.\u{85}>";
        assert!(parse_path(crash, true).is_err());
        assert!(parse_path("<x@example.lan\u{85}>", true).is_err());
        assert!(parse_path("<x@ex\u{a0}ample.lan>", true).is_err());
        assert!(
            parse_path("<x@b\u{fc}cher.example>", true).is_ok(),
            "real UTF-8 names still parse"
        );
    }

    #[test]
    fn literals() {
        assert_eq!(
            mailbox("<u@[192.0.2.1]>").domain,
            Domain::Literal("192.0.2.1".parse().unwrap())
        );
        assert_eq!(
            mailbox("<u@[IPv6:::1]>").domain,
            Domain::Literal("::1".parse().unwrap())
        );
        assert!(parse_path("<u@[999.1.1.1]>", true).is_err());
    }

    #[test]
    fn malformed_addresses_are_refused() {
        for bad in [
            "a@b.c",
            "<a@b.c",
            "<a..b@c.d>",
            "<@c.d>",
            "<a@>",
            "<a@-x.com>",
            "<a@b.c>x",
            "<a b@c.d>",
        ] {
            assert!(parse_path(bad, true).is_err(), "{bad}");
        }
        assert_eq!(
            parse_path("<jörg@example.de>", false).unwrap_err(),
            AddressError::NeedsUtf8
        );
        assert!(parse_path("<jörg@example.de>", true).is_ok());
    }

    #[test]
    fn lengths_are_bounded() {
        let long_local = format!("<{}@x.example>", "a".repeat(65));
        assert_eq!(
            parse_path(&long_local, true).unwrap_err(),
            AddressError::LocalTooLong
        );
        let long = format!("<a@{}.example>", "b".repeat(300));
        assert_eq!(parse_path(&long, true).unwrap_err(), AddressError::TooLong);
    }
}
