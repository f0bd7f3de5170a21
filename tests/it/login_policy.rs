//! `[[policy]]` rules per login and per network, through real SMTP: each
//! rule refused and accepted at its stage with its code, `explain` agreeing,
//! `redirect_to` recording the originals, `messages_per_hour` counting.

use crate::support::client::SmtpClient;
use crate::support::server::TestServer;
use portcullis::diagnostics::explain::{self, Question, Verdict};

const LAN: &str = "127.0.0.2";
const OUTSIDER: &str = "127.0.3.9";

const RULES: &str = "[[network]]\nrange = \"127.0.0.2/32\"\nauth = \"none\"\n\
[[policy]]\nuser = \"app1\"\nallowed_senders = [\"noreply@app.example\"]\nallowed_recipient_domains = [\"partner.example\", \"*.partner.example\"]\nmessages_per_hour = 2\n\
[[policy]]\nuser = \"staging\"\nredirect_to = \"inbox@test.example\"\n\
[[policy]]\nnetwork = \"127.0.0.2/32\"\nallowed_senders = \"*@office.example\"\n";

async fn logged_in(server: &TestServer, user: &str) -> SmtpClient {
    let mut c = SmtpClient::greeted(server.addr(), OUTSIDER, "app.test").await;
    assert_eq!(c.auth_plain(user, "pw").await.code, 235);
    c
}

fn question(user: Option<&str>, ip: &str, from: &str, to: &str) -> Question {
    Question {
        ip: ip.parse().unwrap(),
        listener: None,
        helo: "app.test".into(),
        auth: user.map(String::from),
        tls: false,
        smtputf8: false,
        from: from.into(),
        to: vec![to.into()],
        checks: Default::default(),
        recipient_checks: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_sends_only_as_its_senders_to_its_domains_within_its_rate() {
    let server = TestServer::start(RULES).await;
    crate::support::write_users(
        &server.config.users_file(),
        &[("app1", "pw"), ("staging", "pw")],
    );
    let mut c = logged_in(&server, "app1").await;
    let r = c.expect("MAIL FROM:<boss@app.example>", 550).await;
    assert!(
        r.text().starts_with("5.7.1") && r.text().contains("policy[0].allowed_senders"),
        "{r:?}"
    );
    c.expect("MAIL FROM:<noreply@app.example>", 250).await;
    let r = c.expect("RCPT TO:<x@other.example>", 550).await;
    assert!(
        r.text().contains("policy[0].allowed_recipient_domains"),
        "{r:?}"
    );
    c.expect("RCPT TO:<a@partner.example>", 250).await;
    c.expect("RCPT TO:<b@eu.partner.example>", 250).await;
    c.expect("RSET", 250).await;
    for n in 0..2 {
        let r = c
            .send_mail(
                "noreply@app.example",
                &["a@partner.example"],
                format!("Subject: {n}\r\n\r\nx\r\n").as_bytes(),
            )
            .await;
        assert_eq!(r.code, 250, "{r:?}");
    }
    let r = c.expect("MAIL FROM:<noreply@app.example>", 450).await;
    assert!(
        r.text().starts_with("4.7.1") && r.text().contains("policy[0].messages_per_hour"),
        "{r:?}"
    );

    // The same rules through explain.
    let config = &server.config;
    let e = explain::explain(
        config,
        &question(
            Some("app1"),
            OUTSIDER,
            "boss@app.example",
            "a@partner.example",
        ),
    );
    assert_eq!(e.verdict, Verdict::Refuse);
    assert!(e.reply.contains("policy[0].allowed_senders"), "{}", e.reply);
    assert!(
        e.steps
            .iter()
            .any(|s| s.text.contains("policy[0] applies (user app1)"))
    );
    let e = explain::explain(
        config,
        &question(
            Some("app1"),
            OUTSIDER,
            "noreply@app.example",
            "x@other.example",
        ),
    );
    assert_eq!(e.verdict, Verdict::Refuse);
    assert!(e.reply.contains("policy[0].allowed_recipient_domains"));
    let e = explain::explain(
        config,
        &question(
            Some("app1"),
            OUTSIDER,
            "noreply@app.example",
            "a@partner.example",
        ),
    );
    assert_eq!(e.verdict, Verdict::Accept, "{:?}", e.steps);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_rule_binds_the_lan_and_other_logins_are_free() {
    let server = TestServer::start(RULES).await;
    crate::support::write_users(&server.config.users_file(), &[("other", "pw")]);
    let mut lan = SmtpClient::greeted(server.addr(), LAN, "pc.office.test").await;
    let r = lan.expect("MAIL FROM:<someone@gmail.example>", 550).await;
    assert!(r.text().contains("policy[2].allowed_senders"), "{r:?}");
    lan.expect("MAIL FROM:<alice@office.example>", 250).await;
    lan.expect("RCPT TO:<far@anywhere.example>", 250).await;
    // A login no rule names is bound by none.
    let mut c = logged_in(&server, "other").await;
    c.expect("MAIL FROM:<anyone@anywhere.example>", 250).await;
    c.expect("RCPT TO:<far@anywhere.example>", 250).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_to_sends_everything_to_one_mailbox_and_keeps_the_originals() {
    let server = TestServer::start(RULES).await;
    crate::support::write_users(&server.config.users_file(), &[("staging", "pw")]);
    let mut c = logged_in(&server, "staging").await;
    let r = c
        .send_mail(
            "app@staging.example",
            &["customer@real.example", "other@real2.example"],
            b"Subject: order\r\n\r\nyour order\r\n",
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    let ids = server.queued();
    assert_eq!(ids.len(), 1);
    let m = server.spool().load(&crate::support::qid(&ids[0])).unwrap();
    let rcpts: Vec<String> = m
        .envelope
        .recipients
        .iter()
        .map(|r| r.address.clone())
        .collect();
    assert_eq!(rcpts, vec!["inbox@test.example"]);
    let body = String::from_utf8(
        server
            .spool()
            .read_body(&crate::support::qid(&ids[0]))
            .unwrap(),
    )
    .unwrap();
    assert!(
        body.contains("\r\nX-Original-To: customer@real.example,\r\n\tother@real2.example\r\nSubject: order\r\n"),
        "{body}"
    );
}

#[test]
fn check_config_names_the_risky_and_the_broken_rules() {
    let broken =
        portcullis::config::Config::parse("[[policy]]\nallowed_senders = \"$user\"\n", "t")
            .unwrap_err()
            .to_string();
    assert!(
        broken.contains("policy[0]") && broken.contains("matcher"),
        "{broken}"
    );
    let broken =
        portcullis::config::Config::parse("[[policy]]\nuser = \"a\"\nvia = \"nowhere\"\n", "t")
            .unwrap_err()
            .to_string();
    assert!(broken.contains("policy[0].via"), "{broken}");
    let c = portcullis::config::Config::parse(
        "[[policy]]\nuser = [\"ci@app.example\"]\nallowed_senders = [\"*@app.example\", \"*@bank.example\"]\n",
        "t",
    )
    .unwrap();
    let risky: Vec<_> = c
        .findings()
        .into_iter()
        .filter(|f| f.key == "policy[0].allowed_senders")
        .collect();
    assert_eq!(risky.len(), 1, "{risky:?}");
    assert!(risky[0].value.contains("bank.example"));
}
