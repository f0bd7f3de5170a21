//! The admin page over real HTTP: login, the JSON API and its guards (401
//! without a session, 403 without the CSRF token or from another origin),
//! queue actions reaching the queue manager, /metrics moving with mail.

use crate::support::client::SmtpClient;
use crate::support::server::TestServer;
use crate::support::web::Web;
use crate::support::{WAIT, free_port, write_users};
use serde_json::json;

/// A server with the admin page on, alice an admin and bob only an SMTP
/// user, 127.0.0.10 trusted, and mail for hop.example routed to a port
/// nobody listens on (so it stays queued).
pub async fn admin_server(extra: &str) -> TestServer {
    let users = tempfile::NamedTempFile::new().unwrap();
    let (_, users_path) = users.keep().unwrap();
    write_users(&users_path, &[("alice", "wonderland"), ("bob", "builder")]);
    let port = free_port("127.0.0.1");
    TestServer::start(&format!(
        "[auth]\nusers_file = \"{}\"\n[admin]\naddress = \"127.0.0.1:0\"\nusers = [\"alice\"]\n{extra}\n[[network]]\nrange = \"127.0.0.10/32\"\nauth = \"none\"\n[delivery]\nretry_schedule = [\"1h\"]\n[[route]]\ndomain = \"hop.example\"\nhost = \"127.0.0.1:{port}\"\n",
        users_path.display()
    ))
    .await
}

pub async fn send_one(server: &TestServer, subject: &str) -> String {
    let mut c = SmtpClient::greeted(server.addr(), "127.0.0.10", "office.test").await;
    let r = c
        .send_mail(
            "app@office.test",
            &["user@hop.example"],
            format!("Subject: {subject}\r\n\r\nthe body {subject}\r\n").as_bytes(),
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    c.expect("QUIT", 221).await;
    r.text().rsplit(' ').next().unwrap().to_string()
}

fn block<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_is_required_and_sets_a_strict_cookie() {
    let server = admin_server("").await;
    let mut web = Web::new(server.admin.expect("admin page on"));
    block(|| {
        assert_eq!(web.get("/api/session").status, 401);
        assert_eq!(web.get("/api/queue").status, 401);
        assert_eq!(web.get("/api/dashboard").status, 401);
        assert_eq!(web.get("/api/events").status, 401);
        let root = web.get("/");
        assert!(root.status == 303 || root.status == 307, "{}", root.status);
        assert_eq!(root.header("location"), Some("/login"));
        let form = web.get("/login");
        assert_eq!(form.status, 200);
        assert!(form.body.contains("name=\"user\"") && form.body.contains("name=\"password\""));

        // Wrong password, unknown user, and a valid SMTP user who is not an admin.
        for (user, pass) in [("alice", "wrong"), ("mallory", "x"), ("bob", "builder")] {
            let r = web.login(user, pass);
            assert_eq!(r.status, 401, "{user}: {}", r.body);
            assert!(web.cookie.is_none());
        }
        assert_eq!(web.get("/api/session").status, 401);

        let ok = web.login("alice", "wonderland");
        assert_eq!(ok.status, 303, "{}", ok.body);
        let cookie = ok.header("set-cookie").unwrap();
        assert!(cookie.contains("HttpOnly"), "{cookie}");
        assert!(cookie.contains("SameSite=Strict"), "{cookie}");
        assert!(
            !cookie.contains("Secure"),
            "plain HTTP on loopback: {cookie}"
        );
        let s = web.get("/api/session").json();
        assert_eq!(s["user"], "alice");
        assert!(s["csrf"].as_str().unwrap().len() >= 32);

        // Every page renders for the admin.
        for page in ["/", "/queue", "/log", "/diagnostics", "/settings"] {
            let p = web.get(page);
            assert_eq!(p.status, 200, "{page}: {}", p.body);
            assert!(p.body.contains("Log out"), "{page}");
        }
        let dashboard = web.get("/api/dashboard").json();
        assert!(
            dashboard["relay_rules"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r.as_str().unwrap().contains("127.0.0.10")),
            "{dashboard}"
        );

        // Logout needs the CSRF token, then ends the session.
        assert_eq!(web.post_form("/logout", &[]).status, 403);
        let csrf = web.csrf();
        assert_eq!(web.post_form("/logout", &[("csrf", &csrf)]).status, 303);
        assert_eq!(web.get("/api/session").status, 401);

        // API clients may log in with JSON and get the CSRF token at once.
        let bad = web.post(
            "/login",
            &[],
            Some(json!({"user": "alice", "password": "no"})),
        );
        assert_eq!(bad.status, 401);
        assert!(bad.json()["error"].is_string());
        let good = web.post(
            "/login",
            &[],
            Some(json!({"user": "alice", "password": "wonderland"})),
        );
        assert_eq!(good.status, 200, "{}", good.body);
        assert_eq!(good.json()["csrf"].as_str().unwrap(), web.csrf());
    });
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_actions_need_csrf_and_reach_the_queue_manager() {
    let server = admin_server("").await;
    let id = send_one(&server, "first").await;
    let id2 = send_one(&server, "second").await;
    let mut web = Web::new(server.admin.unwrap());
    let mut outsider = Web::new(server.admin.unwrap());
    let spool = server.spool();
    block(|| {
        assert_eq!(web.login("alice", "wonderland").status, 303);
        let list = web.get("/api/queue").json();
        let ids: Vec<&str> = list["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert!(
            ids.contains(&id.as_str()) && ids.contains(&id2.as_str()),
            "{list}"
        );
        assert!(!list.to_string().contains("the body"), "no bodies on lists");
        let page = web.get("/queue");
        assert!(page.body.contains(&id), "the queue page shows the id");
        let filtered = web.get("/api/queue?domain=other.example").json();
        assert_eq!(filtered["messages"].as_array().unwrap().len(), 0);

        let hold = format!("/api/queue/{id}/hold");
        // No session: 401. Session without the token, a wrong token, or
        // another site's Origin: 403.
        assert_eq!(outsider.post(&hold, &[], None).status, 401);
        assert_eq!(web.post(&hold, &[], None).status, 403);
        assert_eq!(
            web.post(&hold, &[("X-CSRF-Token", "nope")], None).status,
            403
        );
        let csrf = web.csrf();
        let forged = web.post(
            &hold,
            &[("X-CSRF-Token", &csrf), ("Origin", "http://evil.example")],
            None,
        );
        assert_eq!(forged.status, 403);
        assert!(
            !spool.is_held(&crate::support::qid(&id)),
            "nothing changed yet"
        );

        let r = web.post(&hold, &[("X-CSRF-Token", &csrf)], None);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["changed"][0]["id"], id.as_str());
        assert!(spool.is_held(&crate::support::qid(&id)), "held on disk");
        let shown = web.get(&format!("/api/queue/{id}")).json();
        assert_eq!(shown["state"]["held"], true);
        assert!(shown.get("body").is_none(), "no body unless asked");
        let with_body = web.get(&format!("/api/queue/{id}?body=1")).json();
        assert!(
            with_body["body"]
                .as_str()
                .unwrap()
                .contains("the body first")
        );

        let r = web.post(
            &format!("/api/queue/{id}/release"),
            &[("X-CSRF-Token", &csrf)],
            None,
        );
        assert_eq!(r.status, 200);
        assert!(
            !spool.is_held(&crate::support::qid(&id)),
            "released on disk"
        );
        let r = web.post(
            &format!("/api/queue/{id}/retry"),
            &[("X-CSRF-Token", &csrf)],
            None,
        );
        assert_eq!(r.status, 200);
        assert!(
            r.json()["changed"][0]["result"]
                .as_str()
                .unwrap()
                .contains("due")
        );
        assert_eq!(
            web.post(
                &format!("/api/queue/{id}/explode"),
                &[("X-CSRF-Token", &csrf)],
                None
            )
            .status,
            404
        );

        // A selection: hold both, then delete both.
        let both = json!({"ids": [id, id2]});
        let r = web.post(
            "/api/queue/selection/hold",
            &[("X-CSRF-Token", &csrf)],
            Some(both.clone()),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["changed"].as_array().unwrap().len(), 2);
        assert_eq!(
            web.get("/api/queue?state=held").json()["messages"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        let r = web.post(
            &format!("/api/queue/{id}/delete"),
            &[("X-CSRF-Token", &csrf)],
            None,
        );
        assert_eq!(r.status, 200);
        // The HTML form path: the token as a form field.
        let r = web.post_form(
            "/queue/action",
            &[("csrf", &csrf), ("one", &format!("delete {id2}"))],
        );
        assert_eq!(r.status, 303, "{}", r.body);
        assert_eq!(
            web.get("/api/queue").json()["messages"]
                .as_array()
                .unwrap()
                .len(),
            0
        );
    });
    assert!(server.queued().is_empty(), "deleted from the spool");
    // The queue manager logged each command as an event.
    let mut web = Web::new(server.admin.unwrap());
    block(|| {
        web.login("alice", "wonderland");
        let log = web.get("/api/events?limit=1000").json();
        let commands = log["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "queue_command")
            .count();
        assert!(commands >= 5, "{log}");
    });
    server.stop().await;
}

/// Parses Prometheus text into (name with labels, value).
fn samples(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (name, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            (
                name.to_string(),
                value.parse().unwrap_or_else(|_| panic!("bad value {l:?}")),
            )
        })
        .collect()
}

fn sample(text: &str, name: &str) -> f64 {
    samples(text)
        .into_iter()
        .find(|(n, _)| n == name)
        .map_or(0.0, |(_, v)| v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_no_login_and_move_with_mail() {
    let server = admin_server("").await;
    let mut web = Web::new(server.admin.unwrap());
    let before = block(|| web.get("/metrics"));
    assert_eq!(before.status, 200);
    // Without asking for OpenMetrics: the classic text format, counters
    // typed by their sample name.
    assert_eq!(
        before.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert!(!before.body.contains("# EOF"), "{}", before.body);
    assert!(
        before
            .body
            .contains("# TYPE portcullis_messages_accepted_total counter\n"),
        "{}",
        before.body
    );
    let openmetrics = block(|| {
        web.get_with(
            "/metrics",
            &[("Accept", "application/openmetrics-text; version=1.0.0")],
        )
    });
    assert!(openmetrics.body.trim_end().ends_with("# EOF"));
    assert!(
        openmetrics
            .body
            .contains("# TYPE portcullis_messages_accepted counter\n")
    );
    let accepted = "portcullis_messages_accepted_total";
    let refused = "portcullis_rcpt_refused_total{reason=\"needs_auth\"}";
    assert_eq!(sample(&before.body, accepted), 0.0);

    send_one(&server, "counted").await;
    let mut c = SmtpClient::greeted(server.addr(), "127.0.0.3", "outsider.test").await;
    c.expect("MAIL FROM:<x@outsider.test>", 250).await;
    c.expect("RCPT TO:<victim@elsewhere.example>", 554).await;
    c.expect("QUIT", 221).await;

    let after = block(|| web.get("/metrics")).body;
    assert_eq!(sample(&after, accepted), 1.0, "{after}");
    assert_eq!(sample(&after, refused), 1.0, "{after}");
    assert_eq!(sample(&after, "portcullis_queue_messages"), 1.0, "{after}");
    assert!(sample(&after, "portcullis_connections_total{listener=\"smtp\"}") >= 2.0);
    for family in [
        "portcullis_queue_oldest_message_age_seconds",
        "portcullis_delivery_latency_seconds_count",
        "portcullis_guard_untrusted_addresses",
    ] {
        assert!(after.contains(family), "{family} in {after}");
    }
    server.stop().await;
}

/// Why each session ended is a typed fact, counted by reason: a QUIT, an
/// HTTP request on the SMTP port, and a client that keeps sending commands
/// the server refuses until `server.max_errors` (20 by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_end_with_a_counted_reason() {
    let server = admin_server("").await;
    let mut web = Web::new(server.admin.unwrap());
    let closed =
        |reason: &str| format!("portcullis_connections_closed_total{{reason=\"{reason}\"}}");

    let mut c = SmtpClient::greeted(server.addr(), "127.0.0.3", "a.test").await;
    c.expect("QUIT", 221).await;
    assert!(c.closed().await);

    let mut c = SmtpClient::connect(server.addr(), "127.0.0.3").await;
    let r = c.cmd("GET / HTTP/1.1").await;
    assert_eq!(r.code, 554, "{}", r.text());
    assert!(c.closed().await);

    let mut c = SmtpClient::greeted(server.addr(), "127.0.0.3", "b.test").await;
    let mut last = 0;
    for _ in 0..25 {
        let r = c.cmd("XYZZY").await;
        last = r.code;
        if r.code == 421 {
            break;
        }
    }
    assert_eq!(last, 421, "too many errors end the session");
    assert!(c.closed().await);

    // The session's end is counted once its task has finished: ask a few times.
    let mut body = String::new();
    for _ in 0..50 {
        body = block(|| web.get("/metrics")).body;
        if sample(&body, &closed("too_many_errors")) >= 1.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(sample(&body, &closed("quit")), 1.0, "{body}");
    assert_eq!(sample(&body, &closed("http_request")), 1.0, "{body}");
    assert_eq!(sample(&body, &closed("too_many_errors")), 1.0, "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_count_toward_the_auth_ban() {
    let server =
        admin_server("[limits]\nauth_failures_before_ban = 3\nban_duration = \"1h\"\n").await;
    let mut web = Web::new(server.admin.unwrap());
    block(|| {
        for _ in 0..3 {
            assert_eq!(web.login("alice", "guess").status, 401);
        }
        // Banned now: even the right password is refused from this address.
        let r = web.login("alice", "wonderland");
        assert_eq!(r.status, 403, "{}", r.body);
        assert!(web.cookie.is_none());
    });
    // The SMTP side shares the ban.
    let mut c = SmtpClient::connect_raw(server.addr(), "127.0.0.1").await;
    let banner = c.read_reply().await;
    assert!(banner.code >= 400, "{banner:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_expire() {
    let server = admin_server("session_idle = \"1s\"\n").await;
    let mut web = Web::new(server.admin.unwrap());
    block(|| {
        assert_eq!(web.login("alice", "wonderland").status, 303);
        assert_eq!(web.get("/api/session").status, 200);
        std::thread::sleep(std::time::Duration::from_millis(1500));
        assert_eq!(web.get("/api/session").status, 401);
    });
    server.stop().await;
}

#[test]
fn a_public_admin_address_needs_https() {
    let err = portcullis::config::Config::parse(
        "[admin]\naddress = \"0.0.0.0:8025\"\nusers = [\"alice\"]\n",
        "t",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("admin.address") && err.contains("HTTPS"),
        "{err}"
    );
    portcullis::config::Config::parse(
        "[admin]\naddress = \"0.0.0.0:8025\"\nusers = [\"alice\"]\ntls = true\n",
        "t",
    )
    .expect("with tls = true it is fine");
}

/// `[log] transcript`: both sides of an inbound session (AUTH masked) and
/// of the outbound delivery are written to the day's file; content is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcripts_record_both_directions_with_secrets_masked() {
    use crate::support::sink::{Behaviour, Sink};
    let users = tempfile::NamedTempFile::new().unwrap();
    let (_, users_path) = users.keep().unwrap();
    write_users(&users_path, &[("bob", "builder")]);
    let port = free_port("127.0.0.84");
    let sink = Sink::start("127.0.0.84", port, Behaviour::accept_all()).await;
    let transcripts = tempfile::tempdir().unwrap();
    let server = TestServer::start(&format!(
        "[auth]\nusers_file = \"{}\"\nallow_plaintext = true\n[log]\ntranscript = \"{}\"\ntranscript_days = 2\n[[route]]\ndomain = \"hop.example\"\nhost = \"127.0.0.84:{port}\"\n",
        users_path.display(),
        transcripts.path().display()
    ))
    .await;
    let mut c = SmtpClient::greeted(server.addr(), "127.0.0.5", "laptop.test").await;
    let secret = "AGJvYgBidWlsZGVy"; // \0bob\0builder
    c.expect(&format!("AUTH PLAIN {secret}"), 235).await;
    let r = c
        .send_mail(
            "bob@office.test",
            &["user@hop.example"],
            b"Subject: private\r\n\r\nconfidential words\r\n",
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    c.expect("QUIT", 221).await;
    sink.wait_for(1, std::time::Duration::from_secs(20)).await;

    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let file = transcripts.path().join(format!("transcript-{today}.log"));
    let mut text = String::new();
    for _ in 0..100 {
        text = std::fs::read_to_string(&file).unwrap_or_default();
        if text.contains("out 127.0.0.84") && text.contains("(message content") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(text.contains("in smtp 127.0.0.5:"), "{text}");
    assert!(text.contains("C: EHLO laptop.test"), "{text}");
    assert!(text.contains("S: 220 relay.test ESMTP"), "{text}");
    assert!(text.contains("C: AUTH PLAIN ****"), "{text}");
    assert!(!text.contains(secret), "the AUTH secret is masked: {text}");
    assert!(text.contains("C: MAIL FROM:<bob@office.test>"), "{text}");
    assert!(text.contains(&format!("out 127.0.0.84:{port}")), "{text}");
    assert!(text.contains("C: RCPT TO:<user@hop.example>"), "{text}");
    assert!(text.contains("(message content"), "{text}");
    assert!(
        !text.contains("confidential words"),
        "no message content: {text}"
    );
    server.stop().await;
}

/// One HTTP/1.1 request over TLS; the whole response as text.
async fn https_request(
    addr: std::net::SocketAddr,
    ca: &crate::support::tls::TestCa,
    request: &str,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(ca.client_config());
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(crate::support::WAIT, tls.read_to_end(&mut out))
        .await
        .expect("response in time")
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

/// `[admin] tls = true`: the page is served over HTTPS with the server's
/// certificate, and the session cookie is marked Secure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_admin_marks_the_cookie_secure() {
    let server = admin_server("tls = true\n").await;
    let addr = server.admin.unwrap();
    let body = "user=alice&password=wonderland";
    let response = https_request(
        addr,
        &server.ca,
        &format!(
            "POST /login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 303"), "{response}");
    let cookie = response
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("{response}"));
    assert!(
        cookie.contains("Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    let metrics = https_request(
        addr,
        &server.ca,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        metrics.contains("portcullis_messages_accepted_total"),
        "{metrics}"
    );
    // Plain HTTP to the HTTPS port gets nothing useful.
    let plain = tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(std::time::Duration::from_secs(5)))
            .build()
            .into();
        agent.get(format!("http://{addr}/metrics")).call().is_ok()
    })
    .await
    .unwrap();
    assert!(!plain, "plain HTTP must not be served on the HTTPS port");
    server.stop().await;
}

/// One client cannot take every admin connection: past its share, its new
/// connections are closed at once, and another client is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_take_every_admin_connection() {
    use tokio::io::AsyncReadExt;
    let server = admin_server("").await;
    let admin = server.admin.unwrap();
    let mut hog = Vec::new();
    for _ in 0..8 {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        hog.push(s.connect(admin).await.unwrap());
    }
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut extra = s.connect(admin).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), extra.read(&mut buf))
        .await
        .expect("closed at once, not left waiting");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the 9th connection is closed: {read:?}"
    );
    let mut web = Web::new(admin);
    assert_eq!(
        block(|| web.get("/login").status),
        200,
        "another client is served"
    );
    drop(hog);
    server.stop().await;
}

/// Failed logins from the trusted LAN are counted and logged, not banned
/// (a typo must not lock the office and its admin out); a stranger's ban
/// is listed and lifted with `portcullis ban`, on the admin page and
/// through its API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lan_is_not_banned_and_bans_are_listed_and_lifted() {
    let server =
        admin_server("[limits]\nauth_failures_before_ban = 3\nban_duration = \"1h\"\n").await;
    let config = server.dir.path().join("cli.toml");
    std::fs::write(&config, toml::to_string(&server.config).unwrap()).unwrap();
    let ban_cli = |args: &[&str]| {
        block(|| {
            crate::support::run_with_timeout(
                std::process::Command::new(crate::support::server::binary())
                    .arg("ban")
                    .args(args)
                    .arg("--config")
                    .arg(&config),
                crate::support::WAIT,
            )
        })
    };
    // The trusted LAN address: four failures, still welcome.
    let mut lan = SmtpClient::greeted(server.addr(), "127.0.0.10", "office.test").await;
    for _ in 0..4 {
        assert_eq!(lan.auth_plain("bob", "typo").await.code, 535);
    }
    assert_eq!(lan.auth_plain("bob", "builder").await.code, 235);
    let mut again = SmtpClient::connect_raw(server.addr(), "127.0.0.10").await;
    assert_eq!(again.read_reply().await.code, 220, "not banned at connect");

    // Two strangers earn bans.
    for stranger in ["127.0.3.50", "127.0.3.51"] {
        let mut c = SmtpClient::greeted(server.addr(), stranger, "guesser.test").await;
        for _ in 0..2 {
            assert_eq!(c.auth_plain("bob", "guess").await.code, 535);
        }
        assert_eq!(c.auth_plain("bob", "guess").await.code, 421);
    }
    let (ok, out, err) = ban_cli(&["list", "--json"]);
    assert!(ok, "{out}{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ips: Vec<&str> = listed["bans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["ip"].as_str().unwrap())
        .collect();
    assert_eq!(ips, ["127.0.3.50", "127.0.3.51"], "{out}");
    assert!(listed["bans"][0]["seconds_left"].as_u64().unwrap() > 3000);

    // Lifted from the command line: welcome again at once.
    let (ok, out, err) = ban_cli(&["lift", "127.0.3.50"]);
    assert!(ok && out.contains("ban lifted"), "{out}{err}");
    let mut back = SmtpClient::connect_raw(server.addr(), "127.0.3.50").await;
    assert_eq!(back.read_reply().await.code, 220);

    // And from the admin page: listed on Diagnostics, lifted by its form.
    let mut web = Web::new(server.admin.unwrap());
    block(|| {
        assert_eq!(web.login("alice", "wonderland").status, 303);
        let bans = web.get("/api/bans").json();
        assert_eq!(bans["bans"].as_array().unwrap().len(), 1, "{bans}");
        let page = web.get("/diagnostics");
        assert!(page.body.contains("127.0.3.51"), "{}", page.body);
        // Without the CSRF token nothing is lifted.
        assert_eq!(web.post("/api/bans/127.0.3.51/lift", &[], None).status, 403);
        let csrf = web.csrf();
        let lifted = web.post_form("/bans/lift", &[("csrf", &csrf), ("ip", "127.0.3.51")]);
        assert_eq!(lifted.status, 303, "{}", lifted.body);
        assert_eq!(
            web.get("/api/bans").json()["bans"]
                .as_array()
                .unwrap()
                .len(),
            0
        );
    });
    let mut back = SmtpClient::connect_raw(server.addr(), "127.0.3.51").await;
    assert_eq!(back.read_reply().await.code, 220);
    let (ok, out, _) = ban_cli(&["list"]);
    assert!(ok && out.contains("no address is banned"), "{out}");
    server.stop().await;
}

/// The message page says where the message stands in words (the queue's
/// own vocabulary, as `queue list` says it) and has its Hold/Release,
/// Retry and Delete buttons; the page has an icon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_message_page_has_words_and_buttons() {
    let server = admin_server("").await;
    let id = send_one(&server, "buttons").await;
    let mut web = Web::new(server.admin.unwrap());
    block(|| {
        let icon = web.get("/favicon.ico");
        assert_eq!(icon.status, 200);
        assert_eq!(icon.header("content-type"), Some("image/svg+xml"));
        assert_eq!(web.login("alice", "wonderland").status, 303);
        let page = web.get(&format!("/queue/{id}")).body;
        assert!(page.contains("id=\"message-actions\""), "{page}");
        assert!(page.contains(&format!("value=\"hold {id}\"")), "{page}");
        assert!(page.contains(&format!("value=\"delete {id}\"")), "{page}");
        assert!(
            !page.contains(">false<") && !page.contains(">true<"),
            "{page}"
        );
        let state = page.split("id=\"message-state\">").nth(1).unwrap();
        assert!(
            ["queued", "deferred", "delivering"]
                .iter()
                .any(|w| state.starts_with(w)),
            "{state}"
        );
        let csrf = web.csrf();
        let held = web.post_form(
            "/queue/action",
            &[("csrf", &csrf), ("one", &format!("hold {id}"))],
        );
        assert_eq!(held.status, 303);
        let page = web.get(&format!("/queue/{id}")).body;
        assert!(page.contains("id=\"message-state\">held<"), "{page}");
        assert!(page.contains(&format!("value=\"release {id}\"")), "{page}");
        // The list says the same word.
        let rows = web.get("/api/queue").json();
        assert_eq!(rows["messages"][0]["state"], "held", "{rows}");
    });
    server.stop().await;
}

/// The dashboard's figures survive a restart: the minute counts are kept
/// in the data directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_history_survives_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let users = data.path().join("users");
    write_users(&users, &[("alice", "wonderland")]);
    let toml = format!(
        "[auth]\nusers_file = \"{}\"\n[admin]\naddress = \"127.0.0.1:0\"\nusers = [\"alice\"]\n[[network]]\nrange = \"127.0.0.10/32\"\nauth = \"none\"\n[delivery]\nretry_schedule = [\"1h\"]\n[[route]]\ndomain = \"hop.example\"\nhost = \"127.0.0.1:1\"\n",
        users.display()
    );
    let spool = data.path().join("spool");
    let received_today = |server: &TestServer| {
        let mut web = Web::new(server.admin.unwrap());
        block(|| {
            assert_eq!(web.login("alice", "wonderland").status, 303);
            web.get("/api/dashboard").json()["last_day"]["received"]
                .as_u64()
                .unwrap()
        })
    };
    let server = TestServer::start_at(&toml, Some(&spool)).await;
    send_one(&server, "before the restart").await;
    assert_eq!(received_today(&server), 1);
    server.stop().await;
    let server = TestServer::start_at(&toml, Some(&spool)).await;
    assert_eq!(received_today(&server), 1, "the count came back");
    server.stop().await;
}

/// DNS rebinding: a page elsewhere points its own name at 127.0.0.1, and
/// the browser sends that name as Host. The admin page answers only to its
/// addresses and names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_page_answers_only_to_its_own_host_names() {
    let server = admin_server("").await;
    let addr = server.admin.unwrap();
    let ask = |host: String| {
        block(|| {
            use std::io::{Read, Write};
            let mut tcp = std::net::TcpStream::connect(addr).unwrap();
            tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
            write!(
                tcp,
                "GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut answer = String::new();
            let _ = tcp.read_to_string(&mut answer);
            answer
        })
    };
    let evil = ask(format!("rebind.evil.example:{}", addr.port()));
    assert!(evil.starts_with("HTTP/1.1 421"), "{evil}");
    assert!(!evil.contains("portcullis_"), "no metrics for the rebinder");
    let ours = ask(format!("127.0.0.1:{}", addr.port()));
    assert!(ours.starts_with("HTTP/1.1 200"), "{ours}");
    let named = ask(format!("localhost:{}", addr.port()));
    assert!(named.starts_with("HTTP/1.1 200"), "{named}");
    server.stop().await;
}

/// Slowloris: connections that drip a request one byte at a time look busy
/// but never finish; each is closed once its request has taken too long,
/// and a real client is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_dripped_byte_by_byte_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = admin_server("").await;
    let admin = server.admin.unwrap();
    let mut drips = Vec::new();
    for i in 0..5 {
        for _ in 0..8 {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.bind(format!("127.0.4.{}:0", 10 + i).parse().unwrap())
                .unwrap();
            let stream = s.connect(admin).await.unwrap();
            drips.push(tokio::spawn(async move {
                let mut stream = stream;
                let request = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
                let started = std::time::Instant::now();
                for b in request.iter().cycle() {
                    if started.elapsed() > WAIT || stream.write_all(&[*b]).await.is_err() {
                        break;
                    }
                    let mut buf = [0u8; 64];
                    match tokio::time::timeout(std::time::Duration::from_millis(250), stream.read(&mut buf)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => break,
                        _ => {}
                    }
                }
                started.elapsed()
            }));
        }
    }
    let mut web = Web::new(admin);
    assert_eq!(
        block(|| web.get("/login").status),
        200,
        "a real client is served"
    );
    for d in drips {
        let lasted = d.await.unwrap();
        assert!(lasted < WAIT, "a dripping connection lasted {lasted:?}");
    }
    server.stop().await;
}
