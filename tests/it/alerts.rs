//! `[[alert]]` on the real conditions: the next hop down stalls delivery
//! (the alert fires by webhook and by mail, and resolves when the hop comes
//! back), and the open-relay self-test finding a relay fires `open_relay`.

use crate::support::client::SmtpClient;
use crate::support::server::TestServer;
use crate::support::sink::{Behaviour, Sink};
use crate::support::webhook_receiver::Receiver;
use crate::support::{WAIT, free_port};
use serde_json::Value;
use std::time::Duration;

fn alerts<'a>(taken: &'a [Value], on: &str, state: &str) -> Vec<&'a Value> {
    taken
        .iter()
        .filter(|v| v["event"] == "alert" && v["alert"] == on && v["state"] == state)
        .collect()
}

/// The office relays through a smart host on 127.0.0.95:`port` (down until
/// the test says), retried every second; the admin page for alice;
/// webhook "ops" to `webhook`; then `alerts` ([[alert]] rules).
fn stalling_config(users: &std::path::Path, port: u16, webhook: &str, alerts: &str) -> String {
    format!(
        "[auth]\nusers_file = \"{}\"\n[admin]\naddress = \"127.0.0.1:0\"\nusers = [\"alice\"]\n[[network]]\nrange = \"127.0.0.0/24\"\nauth = \"none\"\n[delivery]\nmode = \"smarthost\"\nsmarthost = \"127.0.0.95:{port}\"\nsmarthost_tls = \"none\"\nretry_schedule = [\"1s\"]\n[[webhook]]\nname = \"ops\"\nurl = \"{webhook}\"\n{alerts}",
        users.display()
    )
}

/// One message from the office, accepted (it then waits for the next hop).
async fn send_one_that_waits(addr: std::net::SocketAddr) {
    let mut c = SmtpClient::greeted(addr, "127.0.0.2", "pc.office.test").await;
    let r = c
        .send_mail(
            "app@office.test",
            &["someone@far.example"],
            b"Subject: waits\r\n\r\nbody\r\n",
        )
        .await;
    assert_eq!(r.code, 250);
    c.expect("QUIT", 221).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_queue_fires_by_webhook_and_mail_and_resolves_when_the_hop_returns() {
    let receiver = Receiver::start("127.0.0.1", "unused").await;
    let port = free_port("127.0.0.95");
    let users = tempfile::NamedTempFile::new().unwrap();
    crate::support::write_users(users.path(), &[("alice", "wonderland")]);
    let server = TestServer::start(&stalling_config(
        users.path(),
        port,
        &receiver.url(),
        "[[alert]]\non = \"delivery_stalled\"\nfor = \"2s\"\nwebhook = \"ops\"\nemail = \"oncall@far.example\"\n[[alert]]\non = \"queue_size\"\nthreshold = 50\nwebhook = \"ops\"\n",
    ))
    .await;
    send_one_that_waits(server.addr()).await;
    let taken = receiver
        .wait_until(WAIT, |t| {
            !alerts(t, "delivery_stalled", "firing").is_empty()
        })
        .await;
    let fired = alerts(&taken, "delivery_stalled", "firing");
    assert_eq!(fired.len(), 1, "{taken:#?}");
    assert!(
        fired[0]["detail"]
            .as_str()
            .unwrap()
            .contains("waiting and nothing delivered"),
        "{}",
        fired[0]
    );
    assert!(
        alerts(&taken, "queue_size", "firing").is_empty(),
        "below its threshold"
    );
    // The dashboard shows it while it lasts, and the webhook's outbox.
    let admin = server.admin.unwrap();
    let dashboard = tokio::task::block_in_place(|| {
        let mut web = crate::support::web::Web::new(admin);
        web.login("alice", "wonderland");
        web.get("/api/dashboard").json()
    });
    assert_eq!(
        dashboard["alerts"][0]["alert"], "delivery_stalled",
        "{dashboard}"
    );
    assert_eq!(dashboard["webhooks"][0][0], "ops", "{dashboard}");
    // The next hop comes back: the message, then the alert's mail, go out,
    // and the alert resolves.
    let sink = Sink::start("127.0.0.95", port, Behaviour::accept_all()).await;
    let got = sink.wait_for(2, Duration::from_secs(30)).await;
    assert!(got.len() >= 2, "{got:?}");
    let notice = got
        .iter()
        .find(|m| m.rcpts == ["oncall@far.example"])
        .expect("the alert's mail");
    assert_eq!(notice.from, "", "sent with the null sender");
    let text = String::from_utf8_lossy(&notice.data);
    assert!(
        text.contains("Subject: [Portcullis relay.test] ALERT: delivery_stalled"),
        "{text}"
    );
    let taken = receiver
        .wait_until(Duration::from_secs(30), |t| {
            !alerts(t, "delivery_stalled", "resolved").is_empty()
        })
        .await;
    assert_eq!(
        alerts(&taken, "delivery_stalled", "resolved").len(),
        1,
        "{taken:#?}"
    );
    server.stop().await;
}

/// An alert firing when the server restarts is not told again while it
/// holds (the rule states are kept in the data dir), the dashboard still
/// shows it, and it resolves once the condition clears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_firing_across_a_restart_is_not_told_twice() {
    let receiver = Receiver::start("127.0.0.1", "unused").await;
    let port = free_port("127.0.0.95");
    let data = tempfile::tempdir().unwrap();
    let users = tempfile::NamedTempFile::new().unwrap();
    crate::support::write_users(users.path(), &[("alice", "wonderland")]);
    let config = stalling_config(
        users.path(),
        port,
        &receiver.url(),
        "[[alert]]\non = \"delivery_stalled\"\nfor = \"2s\"\nwebhook = \"ops\"\n",
    );
    let first = TestServer::start_at(&config, Some(data.path())).await;
    send_one_that_waits(first.addr()).await;
    receiver
        .wait_until(WAIT, |t| {
            !alerts(t, "delivery_stalled", "firing").is_empty()
        })
        .await;
    first.stop().await;
    assert!(
        data.path().join("alerts.json").exists(),
        "the states are kept"
    );

    let second = TestServer::start_at(&config, Some(data.path())).await;
    // Several evaluations after the restart (one a second), the mail still
    // waiting: nothing new told.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let taken = receiver.taken();
    assert_eq!(
        alerts(&taken, "delivery_stalled", "firing").len(),
        1,
        "{taken:#?}"
    );
    assert!(
        alerts(&taken, "delivery_stalled", "resolved").is_empty(),
        "{taken:#?}"
    );
    let dashboard = tokio::task::block_in_place(|| {
        let mut web = crate::support::web::Web::new(second.admin.unwrap());
        web.login("alice", "wonderland");
        web.get("/api/dashboard").json()
    });
    assert_eq!(
        dashboard["alerts"][0]["alert"], "delivery_stalled",
        "still shown as firing: {dashboard}"
    );
    // The next hop comes back: the alert resolves, once.
    let _sink = Sink::start("127.0.0.95", port, Behaviour::accept_all()).await;
    let taken = receiver
        .wait_until(Duration::from_secs(40), |t| {
            !alerts(t, "delivery_stalled", "resolved").is_empty()
        })
        .await;
    assert_eq!(
        alerts(&taken, "delivery_stalled", "resolved").len(),
        1,
        "{taken:#?}"
    );
    assert_eq!(
        alerts(&taken, "delivery_stalled", "firing").len(),
        1,
        "{taken:#?}"
    );
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_found_by_the_self_test_fires_open_relay() {
    let receiver = Receiver::start("127.0.0.1", "unused").await;
    // A domain that is not ours taken as inbound: strangers' mail to it is
    // accepted, which is what the self-test's far recipient looks like.
    let _server = TestServer::start(&format!(
        "[diagnostics]\nself_test_on_start = true\n[[network]]\nrange = \"127.0.0.1/32\"\nauth = \"none\"\n[relay]\nallow_open_relay = true\ninbound_domains = [\"portcullis-relay-test.example\"]\n[delivery]\nmode = \"smarthost\"\nsmarthost = \"127.0.0.1:1\"\nsmarthost_tls = \"none\"\n[[webhook]]\nname = \"ops\"\nurl = \"{}\"\n[[alert]]\non = \"open_relay\"\nwebhook = \"ops\"\n",
        receiver.url()
    ))
    .await;
    let taken = receiver
        .wait_until(WAIT, |t| !alerts(t, "open_relay", "firing").is_empty())
        .await;
    let fired = alerts(&taken, "open_relay", "firing");
    assert_eq!(fired.len(), 1, "{taken:#?}");
    assert!(
        fired[0]["detail"].as_str().unwrap().contains("relayed"),
        "{}",
        fired[0]
    );
}

/// A flood from a trusted address is held: `held` notifications name the
/// release command, `flood_held` fires, and resolves once the mail is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_flood_fires_flood_held_and_resolves_on_release() {
    let receiver = Receiver::start("127.0.0.1", "unused").await;
    let sink = Sink::start("127.0.0.98", 0, Behaviour::accept_all()).await;
    let server = TestServer::start(&format!(
        "[[network]]\nrange = \"127.0.0.0/24\"\nauth = \"none\"\n[delivery]\nmode = \"smarthost\"\nsmarthost = \"{}\"\nsmarthost_tls = \"none\"\nretry_schedule = [\"1s\"]\n[[webhook]]\nname = \"ops\"\nurl = \"{}\"\nevents = [\"held\"]\n[[alert]]\non = \"flood_held\"\nwebhook = \"ops\"\n",
        sink.addr,
        receiver.url()
    ))
    .await;
    let mut c = SmtpClient::greeted(server.addr(), "127.0.0.21", "pc21.office.lan").await;
    for i in 0..300 {
        let r = c
            .send_mail(
                "clerk@office.example",
                &[&format!("x@domain{i}.example")],
                b"Subject: offer\r\n\r\nx\r\n",
            )
            .await;
        assert_eq!(r.code, 250, "{r:?}");
    }
    c.expect("QUIT", 221).await;
    let taken = receiver
        .wait_until(WAIT, |t| !alerts(t, "flood_held", "firing").is_empty())
        .await;
    let fired = alerts(&taken, "flood_held", "firing");
    assert_eq!(fired.len(), 1, "{taken:#?}");
    assert!(
        fired[0]["detail"].as_str().unwrap().contains("127.0.0.21"),
        "{}",
        fired[0]
    );
    let held: Vec<&Value> = taken.iter().filter(|v| v["event"] == "held").collect();
    assert!(!held.is_empty());
    assert_eq!(held[0]["source"], "127.0.0.21");
    assert_eq!(
        held[0]["release"],
        "portcullis queue release --source 127.0.0.21"
    );
    let config = server.dir.path().join("flood.toml");
    std::fs::write(&config, toml::to_string(&server.config).unwrap()).unwrap();
    let (ok, out, err) = tokio::task::block_in_place(|| {
        crate::support::portcullis(&config, &["queue", "release", "--source", "127.0.0.21"])
    });
    assert!(ok, "{out}{err}");
    let taken = receiver
        .wait_until(Duration::from_secs(30), |t| {
            !alerts(t, "flood_held", "resolved").is_empty()
        })
        .await;
    assert_eq!(
        alerts(&taken, "flood_held", "resolved").len(),
        1,
        "{taken:#?}"
    );
}

/// The NAT sentinel withdrawing trust from a router fires `nat_suspected`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_losing_its_trust_fires_nat_suspected() {
    let receiver = Receiver::start("127.0.0.1", "unused").await;
    let server = TestServer::start(&format!(
        "[[network]]\nrange = \"127.0.0.0/24\"\nauth = \"none\"\n[delivery]\nmode = \"smarthost\"\nsmarthost = \"127.0.0.1:1\"\nsmarthost_tls = \"none\"\n[[webhook]]\nname = \"ops\"\nurl = \"{}\"\n[[alert]]\non = \"nat_suspected\"\nwebhook = \"ops\"\n",
        receiver.url()
    ))
    .await;
    for i in 0..60 {
        let mut c = SmtpClient::connect(server.addr(), "127.0.0.253").await;
        c.expect(&format!("EHLO mx{i}.sender{i}.com"), 250).await;
        c.cmd(&format!("MAIL FROM:<news@sender{i}.com>")).await;
        c.cmd(&format!("RCPT TO:<victim{i}@far{i}.example>")).await;
        c.expect("QUIT", 221).await;
    }
    let taken = receiver
        .wait_until(WAIT, |t| !alerts(t, "nat_suspected", "firing").is_empty())
        .await;
    let fired = alerts(&taken, "nat_suspected", "firing");
    assert_eq!(fired.len(), 1, "{taken:#?}");
    assert!(
        fired[0]["detail"].as_str().unwrap().contains("127.0.0.253"),
        "{}",
        fired[0]
    );
}
