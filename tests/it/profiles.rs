//! Smart-host profiles against the providers' protocols on loopback: an
//! OAuth2 token endpoint and Microsoft Graph over HTTPS from a test CA
//! (support/oauth_peer.rs), SMTP servers that require STARTTLS and check
//! XOAUTH2 tokens against that endpoint, routing by sender and network,
//! sender rewriting, and provider refusals that must defer, never bounce.

use crate::support::client::SmtpClient;
use crate::support::dns::TestDns;
use crate::support::oauth_peer::{Authority, OAuthPeer};
use crate::support::server::{ProcessServer, TestServer, binary, complete_config};
use crate::support::sink::{Behaviour, Sink, tls_config};
use crate::support::tls::TestCa;
use crate::support::{WAIT, run_with_timeout, strip_received};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

const CLIENT_ID: &str = "app-1234";
const CLIENT_SECRET: &str = "cs-Zq8~very-secret-client-value";

/// The provider: DNS names for its token endpoint, Graph and SMTP hosts,
/// certificates from its own CA, and the app registration's secret.
struct Provider {
    dir: tempfile::TempDir,
    dns: TestDns,
    ca: TestCa,
    peer: OAuthPeer,
    ca_file: PathBuf,
    secret_file: PathBuf,
}

impl Provider {
    async fn start() -> Provider {
        let dns = TestDns::start().await;
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        std::fs::create_dir(&pki).unwrap();
        let ca = TestCa::generate_for(
            &pki,
            &[
                "login.test",
                "graph.test",
                "smtp.office.test",
                "smtp.isp.test",
            ],
        );
        let peer = OAuthPeer::start(
            "127.0.0.70",
            tls_config(&ca),
            Authority::new(CLIENT_ID, CLIENT_SECRET),
        )
        .await;
        dns.host("login.test", "127.0.0.70");
        dns.host("graph.test", "127.0.0.70");
        dns.host("smtp.office.test", "127.0.0.71");
        dns.host("smtp.isp.test", "127.0.0.72");
        let secret_file = dir.path().join("client.secret");
        std::fs::write(&secret_file, format!("{CLIENT_SECRET}\n")).unwrap();
        std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let ca_file = ca.ca_file(dir.path());
        Provider {
            dir,
            dns,
            ca,
            peer,
            ca_file,
            secret_file,
        }
    }

    fn authority(&self) -> &Arc<Authority> {
        &self.peer.authority
    }

    fn token_url(&self) -> String {
        format!(
            "https://login.test:{}/contoso/oauth2/v2.0/token",
            self.peer.addr.port()
        )
    }

    /// An SMTP server that requires STARTTLS and tokens of `authority`.
    async fn smtp(&self, ip: &str, authority: Arc<Authority>) -> Sink {
        Sink::start(
            ip,
            0,
            Behaviour {
                tls: Some(tls_config(&self.ca)),
                bearer: Some(authority),
                ..Behaviour::accept_all()
            },
        )
        .await
    }

    /// A `[[smarthost]]` with XOAUTH2 by client credentials to `sink`.
    fn xoauth2_profile(&self, name: &str, sink: &Sink, extra: &str) -> String {
        format!(
            "[[smarthost]]\nname = \"{name}\"\nhosts = \"smtp.office.test:{}\"\nca_file = \"{}\"\nauth = \"xoauth2\"\nuser = \"relay@contoso.test\"\noauth_token_url = \"{}\"\noauth_client_id = \"{CLIENT_ID}\"\noauth_client_secret_file = \"{}\"\noauth_scope = \"https://outlook.office365.com/.default\"\n{extra}\n",
            sink.addr.port(),
            self.ca_file.display(),
            self.token_url(),
            self.secret_file.display()
        )
    }

    fn config(&self, delivery: &str, rest: &str) -> String {
        format!(
            "{}\n[[network]]\nrange = \"127.0.0.0/24\"\nauth = \"none\"\n[delivery]\nretry_schedule = [\"1s\"]\n{delivery}\n{rest}",
            self.dns.config()
        )
    }
}

async fn submit_from(
    server: &TestServer,
    source: &str,
    from: &str,
    to: &[&str],
    body: &[u8],
) -> String {
    let mut c = SmtpClient::greeted(server.addr(), source, "submit.test").await;
    let r = c.send_mail(from, to, body).await;
    assert_eq!(r.code, 250, "{r:?}");
    c.expect("QUIT", 221).await;
    r.text().rsplit(' ').next().unwrap().to_string()
}

/// Waits (bounded) until the first recipient of `id` has a recorded attempt.
async fn attempted(server: &TestServer, id: &str) -> portcullis::spool::RecipientState {
    let start = std::time::Instant::now();
    loop {
        let s = server.spool().load(&crate::support::qid(id)).unwrap().state;
        if s.recipients[0].last_error().is_some() {
            return s.recipients[0].clone();
        }
        assert!(start.elapsed() < WAIT, "no attempt recorded for {id}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_token_is_used_and_a_new_one_fetched_when_it_expires() {
    let p = Provider::start().await;
    // Tokens live 62 s and are not used in their last minute: 2 s of use.
    p.authority().lifetime.store(62, Ordering::SeqCst);
    // The server hangs up after each message, as busy providers do: the
    // second message needs a new connection, hence a valid token.
    let smtp = Sink::start(
        "127.0.0.71",
        0,
        Behaviour {
            tls: Some(tls_config(&p.ca)),
            bearer: Some(Arc::clone(p.authority())),
            close_after_data: true,
            ..Behaviour::accept_all()
        },
    )
    .await;
    let config = p.config(
        "mode = \"smarthost\"",
        &p.xoauth2_profile("m365", &smtp, ""),
    );
    let server = TestServer::start(&config).await;
    submit_from(
        &server,
        "127.0.0.2",
        "app@client.test",
        &["far@anywhere.example"],
        b"Subject: one\r\n\r\nx\r\n",
    )
    .await;
    let got = smtp.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1, "delivered with XOAUTH2");
    assert!(got[0].tls, "over STARTTLS");
    let (user, first) = got[0].auth.clone().expect("logged in");
    assert_eq!(user, "relay@contoso.test");
    tokio::time::sleep(Duration::from_secs(3)).await;
    submit_from(
        &server,
        "127.0.0.2",
        "app@client.test",
        &["far@anywhere.example"],
        b"Subject: two\r\n\r\nx\r\n",
    )
    .await;
    let got = smtp.wait_for(2, WAIT).await;
    assert_eq!(got.len(), 2);
    let (_, second) = got[1].auth.clone().expect("logged in");
    assert_ne!(first, second, "the expired token was replaced");
    assert!(p.authority().grant_count("client_credentials") >= 2);
    // Kept for the next start: 0600, the newest token, no client secret.
    let file = server.data_dir().join("oauth").join("m365.json");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains(second.trim_start_matches("Bearer ")));
    assert!(!text.contains(CLIENT_SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_refreshed_once_then_the_profile_rests_and_nothing_bounces() {
    let p = Provider::start().await;
    // This SMTP server trusts another authority: every token is refused.
    let smtp = p.smtp("127.0.0.71", Authority::new("elsewhere", "x")).await;
    let config = p.config(
        "mode = \"smarthost\"",
        &p.xoauth2_profile("m365", &smtp, ""),
    );
    let server = TestServer::start(&config).await;
    let id = submit_from(
        &server,
        "127.0.0.2",
        "app@client.test",
        &["far@anywhere.example"],
        b"Subject: s\r\n\r\nx\r\n",
    )
    .await;
    let r = attempted(&server, &id).await;
    assert_eq!(
        r.status,
        portcullis::spool::RecipientStatus::Queued,
        "deferred, never bounced: {:?}",
        r.last_error()
    );
    assert!(
        r.last_error()
            .as_deref()
            .unwrap_or_default()
            .contains("535"),
        "{:?}",
        r.last_error()
    );
    assert_eq!(
        p.authority().grant_count("client_credentials"),
        2,
        "one token, then one refresh after the refusal"
    );
    let rest_until = r.next_attempt.unwrap();
    assert!(
        rest_until >= unix_now() + 200,
        "the profile rests ({rest_until})"
    );
    assert!(smtp.messages().is_empty());
    // While it rests, more mail waits without a connection or a token request.
    let connections = smtp.connections.load(Ordering::SeqCst);
    submit_from(
        &server,
        "127.0.0.2",
        "app@client.test",
        &["other@anywhere.example"],
        b"Subject: s2\r\n\r\nx\r\n",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(smtp.connections.load(Ordering::SeqCst), connections);
    assert_eq!(p.authority().grant_count("client_credentials"), 2);
    let queued = server.queued();
    assert_eq!(queued.len(), 2, "no bounce was queued: {queued:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_switched_off_defers_and_says_what_to_do() {
    let p = Provider::start().await;
    let smtp = Sink::start(
        "127.0.0.71",
        0,
        Behaviour {
            tls: Some(tls_config(&p.ca)),
            auth_reply: Some(
                "550 5.7.30 Basic authentication is not supported for Client Submission.",
            ),
            ..Behaviour::accept_all()
        },
    )
    .await;
    let pass = p.dir.path().join("smarthost.pass");
    std::fs::write(&pass, "hunter2-password\n").unwrap();
    // The old [delivery] keys: the profile "default".
    let delivery = format!(
        "mode = \"smarthost\"\nsmarthost = \"smtp.office.test:{}\"\nsmarthost_user = \"relay@contoso.test\"\nsmarthost_password_file = \"{}\"\nsmarthost_ca_file = \"{}\"\n",
        smtp.addr.port(),
        pass.display(),
        p.ca_file.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::generate(dir.path());
    let path = dir.path().join("portcullis.toml");
    let admin_port = crate::support::free_port("127.0.0.1");
    std::fs::write(
        &path,
        complete_config(
            &p.config(
                &delivery,
                &format!("[admin]\naddress = \"127.0.0.1:{admin_port}\"\n"),
            ),
            dir.path(),
            &ca,
        ),
    )
    .unwrap();
    let server = ProcessServer::spawn(&path);
    let mut c = SmtpClient::greeted(server.addr, "127.0.0.2", "submit.test").await;
    let r = c
        .send_mail(
            "app@client.test",
            &["far@anywhere.example"],
            b"Subject: s\r\n\r\nx\r\n",
        )
        .await;
    assert_eq!(r.code, 250);
    assert!(
        server.wait_for_log("rejected basic authentication: switch profile"),
        "{}",
        server.log.lock().unwrap()
    );
    assert!(server.wait_for_log("recipient deferred"));
    let log = server.log.lock().unwrap().clone();
    assert!(!log.contains("delivery report queued"), "{log}");
    let metrics = ureq::get(&format!("http://127.0.0.1:{admin_port}/metrics"))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    assert!(
        metrics.contains("portcullis_profile_resting{profile=\"default\"} 1"),
        "{metrics}"
    );
    assert!(
        !log.contains("hunter2"),
        "the password never reaches the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_split_by_route_and_the_sender_rewritten_byte_for_byte() {
    let p = Provider::start().await;
    let office = p.smtp("127.0.0.71", Arc::clone(p.authority())).await;
    let isp = Sink::start(
        "127.0.0.72",
        0,
        Behaviour {
            tls: Some(tls_config(&p.ca)),
            require_auth: Some(("office@isp.test".into(), "isp-pass".into())),
            ..Behaviour::accept_all()
        },
    )
    .await;
    let pass = p.dir.path().join("isp.pass");
    std::fs::write(&pass, "isp-pass\n").unwrap();
    let profiles = format!(
        "{}[[smarthost]]\nname = \"isp\"\nhosts = \"smtp.isp.test:{}\"\nca_file = \"{}\"\nuser = \"office@isp.test\"\npassword_file = \"{}\"\n\n[[route]]\ndomain = \"partner.test\"\nvia = \"isp\"\n\n[[route]]\nsender = \"*@app.test\"\nvia = \"m365\"\n\n[[route]]\nnetwork = \"127.0.0.3/32\"\nvia = \"isp\"\n",
        p.xoauth2_profile("m365", &office, "rewrite_sender = \"relay@contoso.test\""),
        isp.addr.port(),
        p.ca_file.display(),
        pass.display()
    );
    let server = TestServer::start(&p.config("", &profiles)).await;
    let body = b"DKIM-Signature: v=1; a=rsa-sha256; d=app.test; s=s1;\r\n h=from:subject; b=AAAA\r\nFrom: \"Scanner 3F\" <scanner@app.test>\r\nTo: a@partner.test, b@far.test\r\nSubject: scan\r\n\r\nbody line\r\n";
    submit_from(
        &server,
        "127.0.0.2",
        "scanner@app.test",
        &["a@partner.test", "b@far.test"],
        body,
    )
    .await;
    let via_isp = isp.wait_for(1, WAIT).await;
    let via_office = office.wait_for(1, WAIT).await;
    assert_eq!(via_isp.len(), 1);
    assert_eq!(via_isp[0].rcpts, vec!["a@partner.test"], "route[0]: domain");
    assert_eq!(
        via_isp[0].from, "scanner@app.test",
        "only the m365 profile rewrites"
    );
    assert_eq!(strip_received(&via_isp[0].data), body);
    assert_eq!(via_office.len(), 1);
    assert_eq!(via_office[0].rcpts, vec!["b@far.test"], "route[1]: sender");
    assert_eq!(via_office[0].from, "relay@contoso.test");
    assert_eq!(
        String::from_utf8_lossy(strip_received(&via_office[0].data)),
        "From: \"Scanner 3F\" <relay@contoso.test>\r\nReply-To: \"Scanner 3F\" <scanner@app.test>\r\nTo: a@partner.test, b@far.test\r\nSubject: scan\r\n\r\nbody line\r\n",
        "From rewritten, the original in Reply-To, the broken signature removed"
    );
    // route[2]: by the client's network.
    submit_from(
        &server,
        "127.0.0.3",
        "someone@elsewhere.test",
        &["c@far.test"],
        b"Subject: n\r\n\r\nx\r\n",
    )
    .await;
    let via_isp = isp.wait_for(2, WAIT).await;
    assert_eq!(via_isp.len(), 2);
    assert_eq!(via_isp[1].rcpts, vec!["c@far.test"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_transport_posts_the_mime_with_the_token_and_honours_429() {
    let p = Provider::start().await;
    let profile = format!(
        "[[smarthost]]\nname = \"graph\"\ntransport = \"graph\"\ngraph_url = \"https://graph.test:{}\"\nca_file = \"{}\"\nauth = \"xoauth2\"\nuser = \"relay@contoso.test\"\noauth_token_url = \"{}\"\noauth_client_id = \"{CLIENT_ID}\"\noauth_client_secret_file = \"{}\"\noauth_scope = \"https://graph.microsoft.com/.default\"\n",
        p.peer.addr.port(),
        p.ca_file.display(),
        p.token_url(),
        p.secret_file.display()
    );
    let server = TestServer::start(&p.config("mode = \"smarthost\"", &profile)).await;
    submit_from(
        &server,
        "127.0.0.2",
        "app@client.test",
        &["x@far.test", "hidden@far.test"],
        b"To: x@far.test\r\nSubject: via graph\r\n\r\nhello\r\n",
    )
    .await;
    let start = std::time::Instant::now();
    while p.peer.mails().is_empty() && start.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mails = p.peer.mails();
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].user, "relay@contoso.test");
    let mime = String::from_utf8_lossy(&mails[0].mime).into_owned();
    assert!(mime.contains("Subject: via graph\r\n"), "{mime}");
    assert!(
        mime.contains("Bcc: hidden@far.test\r\n"),
        "the envelope recipient the header does not name: {mime}"
    );
    let start = std::time::Instant::now();
    while !server.queued().is_empty() && start.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(server.queued().is_empty(), "delivered and removed");
    // Throttled: deferred no sooner than Graph's Retry-After.
    p.authority().throttle.store(true, Ordering::SeqCst);
    let id = submit_from(
        &server,
        "127.0.0.2",
        "app@client.test",
        &["y@far.test"],
        b"Subject: later\r\n\r\nx\r\n",
    )
    .await;
    let r = attempted(&server, &id).await;
    assert_eq!(r.status, portcullis::spool::RecipientStatus::Queued);
    assert!(
        r.last_error()
            .as_deref()
            .unwrap_or_default()
            .contains("429")
    );
    assert!(r.next_attempt.unwrap() >= unix_now() + 5, "Retry-After: 7");
    assert_eq!(p.peer.mails().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_code_login_then_mail_flows_on_refreshed_tokens() {
    let p = Provider::start().await;
    let smtp = p.smtp("127.0.0.71", Arc::clone(p.authority())).await;
    // A public client signed in by a person: no secret, refresh tokens.
    let profile = format!(
        "[[smarthost]]\nname = \"m365\"\nhosts = \"smtp.office.test:{}\"\nca_file = \"{}\"\nauth = \"xoauth2\"\nuser = \"relay@contoso.test\"\noauth_token_url = \"{}\"\noauth_client_id = \"{CLIENT_ID}\"\noauth_grant = \"refresh_token\"\noauth_scope = \"https://outlook.office.com/SMTP.Send offline_access\"\n",
        smtp.addr.port(),
        p.ca_file.display(),
        p.token_url()
    );
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::generate(dir.path());
    let path = dir.path().join("portcullis.toml");
    let text = complete_config(&p.config("mode = \"smarthost\"", &profile), dir.path(), &ca);
    std::fs::write(&path, &text).unwrap();
    let (ok, out, err) = run_with_timeout(
        std::process::Command::new(binary())
            .args(["check-config", "--config"])
            .arg(&path),
        WAIT,
    );
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("portcullis oauth login m365") || err.contains("portcullis oauth login m365"),
        "check-config says nobody signed in: {out}{err}"
    );
    let status = |json: bool| {
        let mut cmd = std::process::Command::new(binary());
        cmd.args(["oauth", "status", "--config"]).arg(&path);
        if json {
            cmd.arg("--json");
        }
        run_with_timeout(&mut cmd, WAIT)
    };
    let (ok, out, _) = status(true);
    assert!(!ok, "not signed in: exit 1");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["profiles"][0]["name"], "m365");
    assert_eq!(v["profiles"][0]["logged_in"], false);

    // Tokens from the sign-in expire at once: delivery must refresh them.
    p.authority().lifetime.store(61, Ordering::SeqCst);
    let mut login = std::process::Command::new(binary())
        .args(["oauth", "login", "m365", "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while p.authority().approve_devices() == 0 {
        assert!(start.elapsed() < WAIT, "no device code was requested");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let start = std::time::Instant::now();
    let exit = loop {
        if let Some(s) = login.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < WAIT, "login did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut out = String::new();
    std::io::Read::read_to_string(&mut login.stdout.take().unwrap(), &mut out).unwrap();
    assert!(exit.success(), "{out}");
    assert!(
        out.contains("https://microsoft.test/devicelogin") && out.contains("PCX-7421"),
        "{out}"
    );
    assert!(
        !out.contains("at-") && !out.contains("rt-"),
        "no token printed: {out}"
    );
    let (ok, out, _) = status(true);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["profiles"][0]["logged_in"], true);
    assert!(v["profiles"][0]["expires"].is_string());
    let file = dir.path().join("data/oauth/m365.json");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let server =
        crate::support::server::TestServer::start_at(&text, Some(&dir.path().join("data"))).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    submit_from(
        &server,
        "127.0.0.2",
        "app@client.test",
        &["far@anywhere.example"],
        b"Subject: s\r\n\r\nx\r\n",
    )
    .await;
    let got = smtp.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert!(
        p.authority().grant_count("refresh_token") >= 1,
        "the signed-in user's refresh token brought a fresh access token"
    );
    let from_sign_in = p.authority().issued.lock().unwrap()[0].clone();
    let (_, used) = got[0].auth.clone().unwrap();
    assert_ne!(
        used,
        format!("Bearer {from_sign_in}"),
        "the expired sign-in token is not used"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_secrets_never_reach_logs_transcripts_or_metrics() {
    let p = Provider::start().await;
    let smtp = p.smtp("127.0.0.71", Arc::clone(p.authority())).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::generate(dir.path());
    let transcripts = dir.path().join("transcripts");
    let admin_port = crate::support::free_port("127.0.0.1");
    let rest = format!(
        "{}[log]\ntranscript = \"{}\"\n[admin]\naddress = \"127.0.0.1:{admin_port}\"\n",
        p.xoauth2_profile("m365", &smtp, ""),
        transcripts.display()
    );
    let path = dir.path().join("portcullis.toml");
    std::fs::write(
        &path,
        complete_config(&p.config("mode = \"smarthost\"", &rest), dir.path(), &ca),
    )
    .unwrap();
    let server = ProcessServer::spawn(&path);
    let mut c = SmtpClient::greeted(server.addr, "127.0.0.2", "submit.test").await;
    let r = c
        .send_mail(
            "app@client.test",
            &["far@anywhere.example"],
            b"Subject: s\r\n\r\nx\r\n",
        )
        .await;
    assert_eq!(r.code, 250);
    assert_eq!(smtp.wait_for(1, WAIT).await.len(), 1);
    assert!(server.wait_for_log("delivered"));
    let metrics = ureq::get(&format!("http://127.0.0.1:{admin_port}/metrics"))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    let mut everything = server.log.lock().unwrap().clone() + &metrics;
    for entry in walk(&transcripts) {
        everything.push_str(&String::from_utf8_lossy(&std::fs::read(entry).unwrap()));
    }
    assert!(
        everything.contains("AUTH XOAUTH2"),
        "the transcript shows the login"
    );
    let issued = p.authority().issued.lock().unwrap().clone();
    assert!(!issued.is_empty());
    for secret in issued.iter().map(String::as_str).chain([CLIENT_SECRET]) {
        assert!(!everything.contains(secret), "{secret} leaked");
    }
    // Nor in base64, as SASL carries it.
    use base64::Engine;
    let sasl = base64::engine::general_purpose::STANDARD.encode(format!(
        "user=relay@contoso.test\x01auth=Bearer {}\x01\x01",
        issued[0]
    ));
    assert!(!everything.contains(&sasl));
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn the_readme_provider_examples_parse_and_fill_their_presets() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("## Worked examples: Microsoft 365, Google Workspace")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("the provider examples section");
    let blocks: Vec<&str> = section
        .split("```toml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    assert_eq!(blocks.len(), 3, "one example per provider");
    let expected_hosts = [
        "smtp.office365.com",
        "smtp.gmail.com",
        "smtp-relay.gmail.com",
    ];
    for (block, host) in blocks.iter().zip(expected_hosts) {
        let config: portcullis::config::Config = toml::from_str(block).unwrap();
        let p = config.profile("default").expect("a profile named default");
        assert_eq!(p.hosts[0].host, host, "{block}");
        assert_eq!(p.hosts[0].port, 587);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_tokens_are_written_never_leaves_a_torn_token_file() {
    let p = Provider::start().await;
    let smtp = p.smtp("127.0.0.71", Arc::clone(p.authority())).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::generate(dir.path());
    let path = dir.path().join("portcullis.toml");
    std::fs::write(
        &path,
        complete_config(
            &p.config(
                "mode = \"smarthost\"",
                &p.xoauth2_profile("m365", &smtp, ""),
            ),
            dir.path(),
            &ca,
        ),
    )
    .unwrap();
    let file = dir.path().join("data/oauth/m365.json");
    let mut saw_a_file = 0;
    for round in 0..24u64 {
        let mut child = std::process::Command::new(binary())
            .args(["oauth", "login", "m365", "--config"])
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Kill at a different moment of the fetch-and-save each round.
        std::thread::sleep(Duration::from_millis(5 + round * 4));
        let _ = child.kill();
        let _ = child.wait();
        if let Ok(bytes) = std::fs::read(&file) {
            saw_a_file += 1;
            let v: serde_json::Value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("round {round}: torn token file: {e}"));
            assert!(v["access_token"].is_string(), "round {round}: {v}");
        }
        let leftovers: Vec<_> = std::fs::read_dir(file.parent().unwrap())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n != "m365.json" && !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        assert!(leftovers.is_empty(), "round {round}: {leftovers:?}");
    }
    assert!(
        saw_a_file > 0,
        "some rounds got as far as saving the tokens"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauthbearer_is_used_where_only_it_is_offered() {
    let p = Provider::start().await;
    let smtp = Sink::start(
        "127.0.0.71",
        0,
        Behaviour {
            tls: Some(tls_config(&p.ca)),
            bearer: Some(Arc::clone(p.authority())),
            oauthbearer: true,
            ..Behaviour::accept_all()
        },
    )
    .await;
    let config = p.config(
        "mode = \"smarthost\"",
        &p.xoauth2_profile("m365", &smtp, ""),
    );
    let server = TestServer::start(&config).await;
    let id = submit_from(
        &server,
        "127.0.0.2",
        "app@client.test",
        &["far@anywhere.example"],
        b"Subject: rfc7628\r\n\r\nx\r\n",
    )
    .await;
    let got = smtp.wait_for(1, WAIT).await;
    let state = server
        .spool()
        .load(&crate::support::qid(&id))
        .map(|m| m.state.recipients[0].last_error());
    assert_eq!(got.len(), 1, "delivered with OAUTHBEARER: {state:?}");
    let (user, token) = got[0].auth.clone().unwrap();
    assert_eq!(user, "relay@contoso.test");
    assert!(p.authority().valid(token.trim_start_matches("Bearer ")));
}
