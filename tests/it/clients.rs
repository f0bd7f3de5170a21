//! Real third-party clients: Python's smtplib and swaks, over plain SMTP,
//! STARTTLS and implicit TLS, with and without AUTH. Spooled bytes must match.

use crate::support::server::TestServer;
use crate::support::{WAIT, run_with_timeout, strip_received};
use std::process::Command;

const CONFIG: &str = r#"
[[listener]]
address = "127.0.0.1:0"
kind = "smtp"

[[listener]]
address = "127.0.0.1:0"
kind = "submission"

[[listener]]
address = "127.0.0.1:0"
kind = "smtps"

[[network]]
range = "127.0.0.0/24"
auth = "none"

[relay]
inbound_domains = ["example.lan"]
"#;

/// A message with CRLF line ends, a leading dot and 8-bit text.
const MESSAGE: &[u8] = b"From: sender@client.test\r\nTo: rcpt@elsewhere.example\r\nSubject: real client\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello from a real client.\r\n.a line that starts with a dot\r\nGr\xc3\xbc\xc3\x9fe\r\n";

/// The content of the one message spooled since the last call (IDs seen
/// before are in `seen`).
fn only_new_message(server: &TestServer, seen: &mut Vec<String>) -> Vec<u8> {
    let new: Vec<String> = server
        .queued()
        .into_iter()
        .filter(|id| !seen.contains(id))
        .collect();
    assert_eq!(new.len(), 1, "exactly one message spooled");
    seen.push(new[0].clone());
    server
        .spool()
        .read_body(&crate::support::qid(&new[0]))
        .unwrap()
}

fn smtplib(server: &TestServer, port: u16, mode: &str, auth: bool, source: &str) -> (bool, String) {
    let dir = server.dir.path();
    let msg_path = dir.join("message.eml");
    std::fs::write(&msg_path, MESSAGE).unwrap();
    let ca = server.ca.ca_file(dir);
    let script = r#"
import smtplib, ssl, sys
port, mode, auth, source, msg_path, ca = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1", sys.argv[4], sys.argv[5], sys.argv[6]
ctx = ssl.create_default_context(cafile=ca)
if mode == "implicit":
    s = smtplib.SMTP_SSL("localhost", port, source_address=(source, 0), context=ctx, timeout=20)
else:
    s = smtplib.SMTP("localhost", port, source_address=(source, 0), timeout=20)
s.ehlo("python.client.test")
if mode == "starttls":
    s.starttls(context=ctx)
    s.ehlo("python.client.test")
if auth:
    s.login("carol", "s3cret")
refused = s.sendmail("sender@client.test", ["rcpt@elsewhere.example"], open(msg_path, "rb").read())
s.quit()
print("refused", refused)
"#;
    let (ok, out, err) = run_with_timeout(
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(port.to_string())
            .arg(mode)
            .arg(if auth { "1" } else { "0" })
            .arg(source)
            .arg(&msg_path)
            .arg(&ca),
        WAIT,
    );
    (ok, out + &err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_smtplib() {
    let server = TestServer::start(CONFIG).await;
    let mut seen = Vec::new();
    crate::support::write_users(&server.config.users_file(), &[("carol", "s3cret")]);
    use portcullis::config::ListenerKind::*;
    // (listener, mode, auth, source address)
    let cases = [
        (Smtp, "plain", false, "127.0.0.2"),
        (Smtp, "starttls", false, "127.0.0.2"),
        (Smtp, "starttls", true, "127.0.5.5"),
        (Submission, "starttls", true, "127.0.5.5"),
        (Smtps, "implicit", true, "127.0.5.5"),
        (Smtps, "implicit", false, "127.0.0.2"),
    ];
    for (kind, mode, auth, source) in cases {
        let port = server.addr_of(kind).port();
        let case = format!("{kind:?} {mode} auth={auth} from {source}");
        let (ok, out) = tokio::task::block_in_place(|| smtplib(&server, port, mode, auth, source));
        let refused_without_auth = kind != Smtp && !auth;
        if refused_without_auth {
            assert!(
                !ok,
                "{case}: submission without AUTH must be refused: {out}"
            );
            assert!(out.contains("530"), "{case}: {out}");
            assert_eq!(server.queued().len(), seen.len(), "nothing new spooled");
            continue;
        }
        assert!(ok, "{case}: {out}");
        let body = only_new_message(&server, &mut seen);
        assert_eq!(strip_received(&body), MESSAGE, "{case}: byte-exact");
        let header = String::from_utf8_lossy(&body[..body.len() - MESSAGE.len()]).into_owned();
        if mode != "plain" {
            assert!(header.contains("using TLSv1."), "{case}: {header}");
        }
        let proto = match (mode != "plain", auth) {
            (true, true) => "ESMTPSA",
            (true, false) => "ESMTPS",
            (false, _) => "ESMTP ",
        };
        assert!(
            header.contains(&format!("with {proto}")),
            "{case}: {header}"
        );
    }
    // An outsider without AUTH cannot relay through smtplib either.
    let port = server.addr_of(Smtp).port();
    let (ok, out) =
        tokio::task::block_in_place(|| smtplib(&server, port, "starttls", false, "127.0.5.5"));
    assert!(!ok && out.contains("554"), "{out}");
    assert_eq!(server.queued().len(), seen.len(), "nothing new spooled");
}

fn swaks(args: &[&str]) -> (bool, String) {
    let (ok, out, err) = run_with_timeout(Command::new("swaks").args(args), WAIT);
    (ok, out + &err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_client() {
    let server = TestServer::start(CONFIG).await;
    let mut seen = Vec::new();
    crate::support::write_users(&server.config.users_file(), &[("dave", "pa55word")]);
    let dir = server.dir.path().to_path_buf();
    let msg_path = dir.join("swaks.eml");
    // swaks ends the data with its own CRLF before the dot, so the file leaves out the last one.
    std::fs::write(&msg_path, &MESSAGE[..MESSAGE.len() - 2]).unwrap();
    use portcullis::config::ListenerKind::*;
    let cases: [(_, &[&str], bool, &str); 5] = [
        (Smtp, &[], false, "127.0.0.3"),
        (Smtp, &["--tls"], false, "127.0.0.3"),
        (Smtp, &["--tls"], true, "127.0.6.6"),
        (Submission, &["--tls"], true, "127.0.6.6"),
        (Smtps, &["--tls-on-connect"], true, "127.0.6.6"),
    ];
    for (kind, tls, auth, source) in cases {
        let server_arg = server.addr_of(kind).to_string();
        let msg = msg_path.display().to_string();
        let mut args = vec![
            "--server",
            &server_arg,
            "--local-interface",
            source,
            "--from",
            "sender@client.test",
            "--to",
            "rcpt@elsewhere.example",
            "--helo",
            "swaks.client.test",
            "--data",
            &msg,
            "--timeout",
            "15",
        ];
        args.extend_from_slice(tls);
        if auth {
            args.extend_from_slice(&[
                "--auth",
                "PLAIN",
                "--auth-user",
                "dave",
                "--auth-password",
                "pa55word",
            ]);
        }
        let case = format!("{kind:?} {tls:?} auth={auth}");
        let (ok, out) = tokio::task::block_in_place(|| swaks(&args));
        assert!(ok, "{case}: {out}");
        assert!(out.contains("250 2.0.0 Ok: queued as"), "{case}: {out}");
        let body = only_new_message(&server, &mut seen);
        assert_eq!(strip_received(&body), MESSAGE, "{case}: byte-exact");
    }
    // Outsider without AUTH: swaks reports the relay refusal.
    let server_arg = server.addr_of(Smtp).to_string();
    let (ok, out) = tokio::task::block_in_place(|| {
        swaks(&[
            "--server",
            &server_arg,
            "--local-interface",
            "127.0.6.6",
            "--from",
            "a@client.test",
            "--to",
            "v@elsewhere.example",
            "--timeout",
            "15",
        ])
    });
    assert!(!ok, "{out}");
    assert!(out.contains("554 5.7.1"), "{out}");
    assert_eq!(server.queued().len(), seen.len(), "nothing new spooled");
}

/// smtplib's send_message adds SMTPUTF8 for an international address even
/// when the caller asked for it already, so the parameter comes twice; an
/// exact repetition is taken (as Postfix does), the message is spooled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtplib_repeating_smtputf8_is_accepted() {
    let server = TestServer::start(CONFIG).await;
    let port = server.addr().port();
    let script = r#"
import smtplib, sys
from email.message import EmailMessage
m = EmailMessage()
m["From"] = "jürgen@client.test"
m["To"] = "rcpt@elsewhere.example"
m["Subject"] = "twice"
m.set_content("Grüße")
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), source_address=("127.0.0.2", 0), timeout=20)
s.set_debuglevel(1)
s.ehlo("python.client.test")
s.send_message(m, mail_options=["SMTPUTF8"])
s.quit()
print("sent")
"#;
    let (ok, out, err) = tokio::task::block_in_place(|| {
        run_with_timeout(
            Command::new("python3")
                .arg("-c")
                .arg(script)
                .arg(port.to_string()),
            WAIT,
        )
    });
    assert!(ok && out.contains("sent"), "{out}{err}");
    assert!(
        err.contains("SMTPUTF8 SMTPUTF8"),
        "smtplib did send the parameter twice: {err}"
    );
    let queued = server.queued();
    assert_eq!(queued.len(), 1, "the message is spooled");
    let envelope = server
        .spool()
        .load(&crate::support::qid(&queued[0]))
        .unwrap()
        .envelope;
    assert_eq!(envelope.sender, "jürgen@client.test");
}
