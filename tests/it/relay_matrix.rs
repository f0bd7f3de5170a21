//! The full relay matrix over real sockets: client ranges × AUTH × recipient
//! domain × connection filter. Expected replies are written out by hand.

use crate::support::client::SmtpClient;
use crate::support::server::TestServer;

const LAN: &str = "127.0.0.2"; // in a range with auth = "none"
const ROUTER: &str = "127.0.0.254"; // inside the LAN range but excluded
const AUTH_RANGE: &str = "127.0.1.2"; // range with auth = "required"
const DENIED: &str = "127.0.2.2"; // range with auth = "deny"
const OUTSIDER: &str = "127.0.3.2"; // in no range

fn config(filter: &str) -> String {
    let access = match filter {
        "off" => "[access]\nfilter = \"off\"\n".to_string(),
        "allow" => "[access]\nfilter = \"allow\"\nallow = [\"127.0.0.0/24\", \"127.0.1.0/24\"]\n"
            .to_string(),
        "deny" => "[access]\nfilter = \"deny\"\ndeny = [\"127.0.3.0/24\"]\n".to_string(),
        _ => unreachable!(),
    };
    format!(
        r#"
{access}
[[network]]
range = "127.0.0.0/24"
auth = "none"
exclude = ["127.0.0.254"]

[[network]]
range = "127.0.1.0/24"
auth = "required"

[[network]]
range = "127.0.2.0/24"
auth = "deny"

[relay]
inbound_domains = ["example.lan"]
"#
    )
}

/// What the table expects for a RCPT: 250 accepted, 554 relay refused.
fn expected_rcpt(client: &str, authed: bool, inbound: bool) -> u16 {
    if inbound {
        return 250; // anyone who may connect may send to our own domains
    }
    match (client, authed) {
        (LAN, _) => 250,
        (DENIED, _) => 554,
        (ROUTER | AUTH_RANGE | OUTSIDER, true) => 250,
        (ROUTER | AUTH_RANGE | OUTSIDER, false) => 554,
        _ => unreachable!(),
    }
}

fn connection_allowed(filter: &str, client: &str) -> bool {
    match filter {
        "off" => true,
        "allow" => [LAN, ROUTER, AUTH_RANGE].contains(&client),
        "deny" => client != OUTSIDER,
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_matrix() {
    let mut checked = 0;
    for filter in ["off", "allow", "deny"] {
        let server = TestServer::start(&config(filter)).await;
        crate::support::write_users(&server.config.users_file(), &[("alice", "wonderland")]);
        for client in [LAN, ROUTER, AUTH_RANGE, DENIED, OUTSIDER] {
            for authed in [false, true] {
                let case = format!("filter={filter} client={client} authed={authed}");
                let mut c = SmtpClient::connect_raw(server.addr(), client).await;
                let banner = c.read_reply().await;
                if !connection_allowed(filter, client) {
                    assert_eq!(banner.code, 554, "{case}: {banner:?}");
                    assert!(banner.text().contains("5.7.1"), "{case}: {banner:?}");
                    assert!(
                        c.closed().await,
                        "{case}: filtered connection must be closed"
                    );
                    checked += 1;
                    continue;
                }
                assert_eq!(banner.code, 220, "{case}");
                c.expect("EHLO client.test", 250).await;
                if authed {
                    assert_eq!(
                        c.auth_plain("alice", "wonderland").await.code,
                        235,
                        "{case}"
                    );
                }
                c.expect("MAIL FROM:<sender@client.test>", 250).await;
                for (rcpt, inbound) in [
                    ("someone@example.lan", true),
                    ("victim@elsewhere.example", false),
                ] {
                    let r = c.cmd(&format!("RCPT TO:<{rcpt}>")).await;
                    let want = expected_rcpt(client, authed, inbound);
                    assert_eq!(r.code, want, "{case} rcpt={rcpt}: {r:?}");
                    if want == 554 {
                        assert!(
                            r.text().starts_with("5.7.1 Relay access denied"),
                            "{case}: {r:?}"
                        );
                    }
                    checked += 1;
                }
                c.expect("QUIT", 221).await;
            }
        }
        server.stop().await;
    }
    // off: 10 sessions x 2 RCPTs; allow: 6 x 2 + 4 refused; deny: 8 x 2 + 2 refused.
    assert_eq!(
        checked,
        20 + 16 + 18,
        "every cell of the matrix was checked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_destinations_are_refused_for_untrusted_clients() {
    let server = TestServer::start(&config("off")).await;
    let forms = [
        "<victim%elsewhere.example@example.lan>",
        "<elsewhere.example!victim@example.lan>",
        "<\"victim@elsewhere.example\"@example.lan>",
        "<@example.lan:victim@elsewhere.example>",
        "<@example.lan,@example.lan:victim@elsewhere.example>",
        "<victim@[192.0.2.1]>",
        "<victim@[IPv6:2001:db8::1]>",
        "<victim@elsewhere.example.>",
        "<victim@ELSEWHERE.example>",
        "<victim@example.lan.elsewhere.example>",
        "<victim@example.lan@elsewhere.example>",
    ];
    for source in [OUTSIDER, ROUTER, AUTH_RANGE] {
        let mut c = SmtpClient::greeted(server.addr(), source, "x.test").await;
        c.expect("MAIL FROM:<a@x.test>", 250).await;
        for f in forms {
            let r = c.cmd(&format!("RCPT TO:{f}")).await;
            assert!(r.code >= 500, "{source} {f} must be refused: {r:?}");
        }
        // The plain inbound address still works, and the same session is usable.
        c.expect("RCPT TO:<Someone@EXAMPLE.LAN.>", 250).await;
        c.expect("QUIT", 221).await;
    }
    assert!(server.queued().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_relay_is_logged_as_nothing_spooled() {
    // An outsider's whole transaction to a foreign domain: refused at RCPT, DATA then has no recipients.
    let server = TestServer::start(&config("off")).await;
    let mut c = SmtpClient::greeted(server.addr(), OUTSIDER, "x.test").await;
    c.expect("MAIL FROM:<a@x.test>", 250).await;
    c.expect("RCPT TO:<v@elsewhere.example>", 554).await;
    c.expect("DATA", 554).await;
    c.expect("QUIT", 221).await;
    assert!(server.queued().is_empty());
}

/// For every row of the matrix — filter × client × AUTH × listener kind ×
/// recipient form — the staged policy (what `explain` and the audit ask)
/// and a real SMTP session give the same answer at every stage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_policy_and_real_sessions_agree() {
    use portcullis::config::ListenerKind;
    use portcullis::policy::{ClientFacts, Policy};
    use portcullis::smtp::address::parse_path;
    let listeners = "[[listener]]\naddress = \"127.0.0.1:0\"\nkind = \"smtp\"\n[[listener]]\naddress = \"127.0.0.1:0\"\nkind = \"submission\"\n";
    let rcpts = [
        "<someone@example.lan>",
        "<victim@elsewhere.example>",
        "<victim%elsewhere.example@example.lan>",
        "<\"victim@elsewhere.example\"@example.lan>",
        "<victim@[192.0.2.1]>",
        "<postmaster>",
    ];
    let mut rows = 0;
    for filter in ["off", "allow", "deny"] {
        let server = TestServer::start(&format!("{listeners}{}", config(filter))).await;
        crate::support::write_users(&server.config.users_file(), &[("alice", "wonderland")]);
        let policy = Policy::from_config(&server.config);
        for kind in [ListenerKind::Smtp, ListenerKind::Submission] {
            for client in [LAN, ROUTER, AUTH_RANGE, DENIED, OUTSIDER] {
                for authed in [false, true] {
                    let case = format!("filter={filter} {kind:?} client={client} authed={authed}");
                    let mut facts = ClientFacts::new(client.parse().unwrap(), kind);
                    let mut c = SmtpClient::connect_raw(server.addr_of(kind), client).await;
                    let banner = c.read_reply().await;
                    let connect = policy.connect(&facts);
                    match connect.refusal_reply() {
                        Some(want) => {
                            assert_eq!(banner.code, want.code, "{case}: {banner:?}");
                            rows += 1;
                            continue;
                        }
                        None => assert_eq!(banner.code, 220, "{case}"),
                    }
                    c.expect("EHLO client.test", 250).await;
                    if authed {
                        assert!(policy.auth(&facts).is_accept(), "{case}");
                        assert_eq!(
                            c.auth_plain("alice", "wonderland").await.code,
                            235,
                            "{case}"
                        );
                        facts.user = Some("alice".into());
                    }
                    let (sender, _) = parse_path("<sender@client.test>", true).unwrap();
                    let want = policy
                        .mail(&facts, &sender)
                        .refusal_reply()
                        .map_or(250, |r| r.code);
                    let r = c.cmd("MAIL FROM:<sender@client.test>").await;
                    assert_eq!(r.code, want, "{case} MAIL: {r:?}");
                    if r.code == 250 {
                        for rcpt in rcpts {
                            let (path, _) = parse_path(rcpt, true).unwrap();
                            let decision = policy.rcpt(&facts, &path);
                            let want = decision.refusal_reply().map_or(250, |r| r.code);
                            let r = c.cmd(&format!("RCPT TO:{rcpt}")).await;
                            assert_eq!(
                                r.code, want,
                                "{case} RCPT {rcpt}: {r:?} vs {:?}",
                                decision.steps
                            );
                            rows += 1;
                        }
                    }
                    c.expect("QUIT", 221).await;
                    rows += 1;
                }
            }
        }
        server.stop().await;
    }
    assert!(rows > 150, "the matrix was walked: {rows} rows");
}

/// `portcullis explain` (the real binary) gives the verdict and reply code a
/// real session gets, row by row: filters, ranges, the excluded router, deny
/// ranges, AUTH, smtp and submission listeners, hidden-route forms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_agrees_with_real_sessions() {
    use crate::support::{WAIT, run_with_timeout};
    use portcullis::config::ListenerKind;
    let listeners = "[[listener]]\naddress = \"127.0.0.1:0\"\nkind = \"smtp\"\n[[listener]]\naddress = \"127.0.0.1:0\"\nkind = \"submission\"\n";
    let rcpts = [
        "someone@example.lan",
        "victim@elsewhere.example",
        "victim%elsewhere.example@example.lan",
        "elsewhere.example!victim@example.lan",
    ];
    let mut rows = 0;
    for filter in ["off", "deny"] {
        let server = TestServer::start(&format!("{listeners}{}", config(filter))).await;
        crate::support::write_users(&server.config.users_file(), &[("alice", "wonderland")]);
        // The config as bound: real ports, so --listener names each one.
        let mut bound = server.config.clone();
        for l in bound.listener.iter_mut() {
            l.address = server.addr_of(l.kind);
        }
        let config_path = server.dir.path().join("explain.toml");
        std::fs::write(&config_path, toml::to_string(&bound).unwrap()).unwrap();
        for kind in [ListenerKind::Smtp, ListenerKind::Submission] {
            let addr = server.addr_of(kind);
            for client in [LAN, ROUTER, AUTH_RANGE, DENIED, OUTSIDER] {
                for authed in [false, true] {
                    for rcpt in rcpts {
                        let case =
                            format!("filter={filter} {kind:?} {client} authed={authed} {rcpt}");
                        // What a real session answers last.
                        let mut c = SmtpClient::connect_raw(addr, client).await;
                        let banner = c.read_reply().await;
                        let real = if banner.code != 220 {
                            banner.code
                        } else {
                            c.expect("EHLO client.test", 250).await;
                            if authed {
                                assert_eq!(c.auth_plain("alice", "wonderland").await.code, 235);
                            }
                            let mail = c.cmd("MAIL FROM:<sender@client.test>").await;
                            if mail.code != 250 {
                                mail.code
                            } else {
                                c.cmd(&format!("RCPT TO:<{rcpt}>")).await.code
                            }
                        };
                        // What explain says.
                        let mut cmd = std::process::Command::new(crate::support::server::binary());
                        cmd.args(["explain", "--json", "--config"])
                            .arg(&config_path)
                            .args(["--ip", client, "--listener", &addr.to_string()])
                            .args(["--from", "sender@client.test", "--to", rcpt]);
                        if authed {
                            cmd.args(["--auth", "alice"]);
                        }
                        let (ok, out, err) =
                            tokio::task::block_in_place(|| run_with_timeout(&mut cmd, WAIT));
                        let v: serde_json::Value = serde_json::from_str(&out)
                            .unwrap_or_else(|e| panic!("{case}: {e}: {out}{err}"));
                        let code: u16 = v["reply"].as_str().unwrap()[..3].parse().unwrap();
                        assert_eq!(code, real, "{case}: explain says {}", v["reply"]);
                        assert_eq!(ok, real == 250, "{case}: exit status follows the verdict");
                        rows += 1;
                    }
                }
            }
        }
        server.stop().await;
    }
    assert_eq!(rows, 2 * 2 * 5 * 2 * 4);
}
