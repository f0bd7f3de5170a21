//! The Microsoft Graph transport: a profile with `transport = "graph"`
//! sends each message with `POST {graph_url}/v1.0/users/{user}/sendMail`,
//! the MIME message base64-encoded as the body (Content-Type: text/plain),
//! with the profile's OAuth2 token. For tenants where SMTP AUTH is off.
//!
//! Graph takes the recipients from the MIME header (To, Cc, Bcc), not from
//! an envelope: the envelope recipients of this delivery that the header
//! does not name are added as a `Bcc:` field (Graph does not show Bcc to
//! anyone), and a `Bcc:` already present is replaced by that list.

use super::result::{AttemptResult, Stage};
use crate::attempt::EnhancedStatus;
use base64::Engine;

/// How Graph answered one sendMail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphAnswer {
    /// 202 Accepted.
    Sent,
    /// 401: the token was refused.
    TokenRefused(AttemptResult),
    /// 403, 404: the app or the mailbox is not allowed; a profile matter.
    NotAllowed(AttemptResult),
    /// 429: throttled; `retry_after` seconds when Graph said.
    Throttled(AttemptResult, Option<i64>),
    /// 5xx, a lost connection: try again later.
    Temporary(AttemptResult, Option<i64>),
    /// 400, 413 and the like: this message will never go.
    Permanent(AttemptResult),
}

/// Sends one message; `content` is the message as it leaves (rewritten).
pub async fn send_mail(
    http: &reqwest::Client,
    graph_url: &str,
    user: &str,
    token: &str,
    content: &[u8],
    recipients: &[String],
) -> GraphAnswer {
    let url = format!(
        "{graph_url}/v1.0/users/{}/sendMail",
        form_urlencoded::byte_serialize(user.as_bytes()).collect::<String>()
    );
    let host = reqwest::Url::parse(graph_url)
        .ok()
        .and_then(|u| u.host_str().map(String::from))
        .unwrap_or_else(|| graph_url.to_string());
    let mime = with_envelope_recipients(content, recipients);
    let body = base64::engine::general_purpose::STANDARD.encode(&mime);
    let response = http
        .post(&url)
        .bearer_auth(token)
        .header(reqwest::header::CONTENT_TYPE, "text/plain")
        .body(body)
        .send()
        .await;
    let response = match response {
        Ok(r) => r,
        Err(e) => {
            let mut text = format!("Graph sendMail could not be reached: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            return GraphAnswer::Temporary(result(&host, EnhancedStatus::new(4, 4, 1), text), None);
        }
    };
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    if status == 202 || status == 200 {
        return GraphAnswer::Sent;
    }
    // Graph's error body: {"error": {"code": "...", "message": "..."}}.
    let said = response
        .json::<serde_json::Value>()
        .await
        .ok()
        .map(|v| {
            let code = v["error"]["code"].as_str().unwrap_or_default().to_string();
            let message: String = v["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .chars()
                .take(300)
                .collect();
            format!("{code}: {message}")
        })
        .unwrap_or_default();
    let text = format!("Graph sendMail answered HTTP {status} {said}");
    match status {
        401 => GraphAnswer::TokenRefused(result(&host, EnhancedStatus::new(4, 7, 0), text)),
        403 | 404 => GraphAnswer::NotAllowed(result(&host, EnhancedStatus::new(4, 7, 1), text)),
        429 => GraphAnswer::Throttled(
            result(&host, EnhancedStatus::new(4, 7, 0), text),
            retry_after,
        ),
        408 | 500..=599 => GraphAnswer::Temporary(
            result(&host, EnhancedStatus::new(4, 3, 0), text),
            retry_after,
        ),
        413 => GraphAnswer::Permanent(result(&host, EnhancedStatus::new(5, 3, 4), text)),
        _ => GraphAnswer::Permanent(result(&host, EnhancedStatus::new(5, 6, 0), text)),
    }
}

fn result(host: &str, enhanced: EnhancedStatus, text: String) -> AttemptResult {
    AttemptResult {
        stage: Stage::Data,
        code: None,
        enhanced: Some(enhanced),
        remote: Some(host.to_string()),
        remote_ip: None,
        tls_policy: None,
        text,
    }
}

/// The message with a `Bcc:` naming the envelope recipients its To and Cc
/// do not (see the module doc); an existing Bcc is dropped.
fn with_envelope_recipients(content: &[u8], recipients: &[String]) -> Vec<u8> {
    let header_end = memchr::memmem::find(content, b"\r\n\r\n").map_or(content.len(), |i| i + 2);
    let mut out = Vec::with_capacity(content.len() + 64);
    // Copy the header without Bcc fields (and their folded lines), noting
    // what To and Cc (folded lines included) name.
    let mut skipping = false;
    let mut in_to_or_cc = false;
    let mut visible = String::new();
    for line in content[..header_end].split_inclusive(|&b| b == b'\n') {
        let lower = String::from_utf8_lossy(line).to_ascii_lowercase();
        if !matches!(line.first(), Some(b' ' | b'\t')) {
            skipping = lower.starts_with("bcc:");
            in_to_or_cc = lower.starts_with("to:") || lower.starts_with("cc:");
        }
        if in_to_or_cc {
            visible.push_str(&lower);
        }
        if !skipping {
            out.extend_from_slice(line);
        }
    }
    let hidden: Vec<&str> = recipients
        .iter()
        .map(String::as_str)
        .filter(|r| !visible.contains(&r.to_ascii_lowercase()))
        .collect();
    if !hidden.is_empty() {
        out.extend_from_slice(format!("Bcc: {}\r\n", hidden.join(", ")).as_bytes());
    }
    out.extend_from_slice(&content[header_end..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_recipients_not_in_the_header_become_bcc() {
        let msg = b"From: a@x.example\r\nTo: b@y.example\r\nBcc: old@z.example\r\nSubject: s\r\n\r\nBcc: body stays\r\n";
        let out = with_envelope_recipients(msg, &["B@y.example".into(), "c@z.example".into()]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "From: a@x.example\r\nTo: b@y.example\r\nSubject: s\r\nBcc: c@z.example\r\n\r\nBcc: body stays\r\n"
        );
    }
}
