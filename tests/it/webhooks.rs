//! `[[webhook]]` and `[[alert]]` against a loopback receiver that checks
//! signatures and can fail, hang and come back: each notification arrives
//! (once after de-duplication by id, across a kill -9), the outbox stays
//! bounded while the receiver is away, and alerts fire and resolve on the
//! real condition (a next hop down, an open relay found by the self-test).

use crate::support::WAIT;
use crate::support::client::SmtpClient;
use crate::support::server::{ProcessServer, TestServer, complete_config};
use crate::support::sink::{Behaviour, Sink};
use crate::support::tls::TestCa;
use crate::support::webhook_receiver::{Mode, Receiver, check_signature};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

const SECRET: &str = "whsec-test-0123456789";

fn secret_file(dir: &Path) -> String {
    let path = dir.join("webhook.secret");
    std::fs::write(&path, format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    path.display().to_string()
}

fn webhook(receiver: &Receiver, secret: &str, events: &str, extra: &str) -> String {
    format!(
        "[[webhook]]\nname = \"ops\"\nurl = \"{}\"\nevents = [{events}]\nsecret_file = \"{secret}\"\n{extra}\n",
        receiver.url()
    )
}

async fn send(addr: std::net::SocketAddr, to: &[&str], subject: &str) -> String {
    let mut c = SmtpClient::greeted(addr, "127.0.0.2", "pc.office.test").await;
    let r = c
        .send_mail(
            "app@office.test",
            to,
            format!("Subject: {subject}\r\n\r\nbody\r\n").as_bytes(),
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    c.expect("QUIT", 221).await;
    r.text().rsplit(' ').next().unwrap().to_string()
}

fn of_kind<'a>(taken: &'a [Value], kind: &str) -> Vec<&'a Value> {
    taken.iter().filter(|v| v["event"] == kind).collect()
}

/// Notifications after de-duplication by id.
fn unique(taken: &[Value]) -> Vec<Value> {
    let mut seen = HashSet::new();
    taken
        .iter()
        .filter(|v| seen.insert(v["id"].as_str().unwrap_or_default().to_string()))
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_delivery_and_acceptance_is_told_signed_once_per_recipient() {
    let sink = Sink::start("127.0.0.91", 0, Behaviour::accept_all()).await;
    let receiver = Receiver::start("127.0.0.1", SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&format!(
        "[[network]]\nrange = \"127.0.0.0/24\"\nauth = \"none\"\n[delivery]\nmode = \"smarthost\"\nsmarthost = \"127.0.0.91:{}\"\nsmarthost_tls = \"none\"\n{}",
        sink.addr.port(),
        webhook(
            &receiver,
            &secret_file(dir.path()),
            "\"accepted\", \"delivered\", \"bounced\"",
            ""
        )
    ))
    .await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            send(
                server.addr(),
                &["a@far.example", "b@far.example"],
                &format!("m{i}"),
            )
            .await,
        );
    }
    assert_eq!(sink.wait_for(3, WAIT).await.len(), 3);
    let taken = receiver
        .wait_until(WAIT, |t| {
            of_kind(t, "delivered").len() >= 6 && of_kind(t, "accepted").len() >= 3
        })
        .await;
    let delivered = of_kind(&taken, "delivered");
    assert_eq!(delivered.len(), 6, "{taken:#?}");
    assert_eq!(of_kind(&taken, "accepted").len(), 3);
    let pairs: HashSet<(String, String)> = delivered
        .iter()
        .map(|v| {
            (
                v["queue_id"].as_str().unwrap().to_string(),
                v["recipient"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for id in &ids {
        assert!(pairs.contains(&(id.clone(), "a@far.example".into())));
        assert!(pairs.contains(&(id.clone(), "b@far.example".into())));
    }
    for v in &delivered {
        assert_eq!(v["sender"], "app@office.test");
        assert!(v["time"].as_str().unwrap().ends_with('Z'), "{v}");
        assert_eq!(v["result"]["code"], 250);
        assert!(!v["id"].as_str().unwrap().is_empty());
    }
    // Nobody asked for deferrals: none were sent.
    assert!(of_kind(&taken, "deferred").is_empty());
    let posts = receiver.posts();
    assert!(
        posts.iter().all(|p| p.signed),
        "every post is signed with the secret"
    );
    let header = posts[0].signature.clone().unwrap();
    assert!(!check_signature(b"another secret", &header, &posts[0].body));
    // The secret is in no log line, event or page.
    let metrics = std::fs::read_dir(server.data_dir().join("webhooks/ops"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .collect::<String>();
    assert!(!metrics.contains(SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_fails_or_hangs_gets_everything_once_it_answers() {
    let sink = Sink::start("127.0.0.92", 0, Behaviour::accept_all()).await;
    let receiver = Receiver::start("127.0.0.1", SECRET).await;
    receiver.set_mode(Mode::Fail);
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&format!(
        "[[network]]\nrange = \"127.0.0.0/24\"\nauth = \"none\"\n[delivery]\nmode = \"smarthost\"\nsmarthost = \"127.0.0.92:{}\"\nsmarthost_tls = \"none\"\n{}",
        sink.addr.port(),
        webhook(&receiver, &secret_file(dir.path()), "\"delivered\"", "timeout = \"2s\"")
    ))
    .await;
    for i in 0..4 {
        send(server.addr(), &[&format!("r{i}@far.example")], "x").await;
    }
    assert_eq!(sink.wait_for(4, WAIT).await.len(), 4);
    // It is tried, refused, and tried again within 30 s.
    let start = std::time::Instant::now();
    while receiver.posts().len() < 2 && start.elapsed() < Duration::from_secs(40) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let posts = receiver.posts();
    assert!(posts.len() >= 2, "a failed notification is tried again");
    assert!(posts.iter().all(|p| p.status == 500));
    let gap = posts[1].at - posts[0].at;
    assert!(gap <= Duration::from_secs(30), "first retry after {gap:?}");
    // While it hangs past the timeout, nothing is taken; then it comes back.
    receiver.set_mode(Mode::Hang);
    tokio::time::sleep(Duration::from_secs(3)).await;
    receiver.set_mode(Mode::Ok);
    let taken = receiver
        .wait_until(Duration::from_secs(90), |t| unique(t).len() >= 4)
        .await;
    let unique = unique(&taken);
    assert_eq!(unique.len(), 4, "{taken:#?}");
    let recipients: HashSet<&str> = unique
        .iter()
        .map(|v| v["recipient"].as_str().unwrap())
        .collect();
    assert_eq!(recipients.len(), 4);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_survive_kill_9_and_arrive_once_after_deduplication() {
    let sink = Sink::start("127.0.0.93", 0, Behaviour::accept_all()).await;
    let receiver = Receiver::start("127.0.0.1", SECRET).await;
    receiver.set_mode(Mode::Fail);
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::generate(dir.path());
    let path = dir.path().join("portcullis.toml");
    std::fs::write(
        &path,
        complete_config(
            &format!(
                "[[network]]\nrange = \"127.0.0.0/24\"\nauth = \"none\"\n[delivery]\nmode = \"smarthost\"\nsmarthost = \"127.0.0.93:{}\"\nsmarthost_tls = \"none\"\n{}",
                sink.addr.port(),
                webhook(&receiver, &secret_file(dir.path()), "\"delivered\", \"accepted\"", "")
            ),
            dir.path(),
            &ca,
        ),
    )
    .unwrap();
    let mut server = ProcessServer::spawn(&path);
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(
            send(
                server.addr,
                &["x@far.example", "y@far.example"],
                &format!("k{i}"),
            )
            .await,
        );
    }
    assert_eq!(sink.wait_for(10, WAIT).await.len(), 10);
    // The receiver took nothing yet; the server dies without a word.
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill9();
    assert!(receiver.taken().is_empty());
    receiver.set_mode(Mode::Ok);
    let _server = ProcessServer::spawn(&path);
    let taken = receiver
        .wait_until(Duration::from_secs(60), |t| unique(t).len() >= 30)
        .await;
    let unique = unique(&taken);
    assert_eq!(unique.len(), 30, "10 accepted + 20 delivered: {taken:#?}");
    let mut per_recipient: HashMap<(String, String), usize> = HashMap::new();
    for v in of_kind(&unique, "delivered") {
        *per_recipient
            .entry((
                v["queue_id"].as_str().unwrap().into(),
                v["recipient"].as_str().unwrap().into(),
            ))
            .or_default() += 1;
    }
    assert_eq!(per_recipient.len(), 20);
    assert!(per_recipient.values().all(|&n| n == 1), "{per_recipient:?}");
    for id in &ids {
        assert!(per_recipient.contains_key(&(id.clone(), "x@far.example".into())));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_stays_bounded_while_its_receiver_is_away() {
    let sink = Sink::start("127.0.0.94", 0, Behaviour::accept_all()).await;
    let receiver = Receiver::start("127.0.0.1", SECRET).await;
    receiver.set_mode(Mode::Fail);
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&format!(
        "[server]\nmax_recipients = 1000\n[admin]\naddress = \"127.0.0.1:0\"\n[[network]]\nrange = \"127.0.0.0/24\"\nauth = \"none\"\n[delivery]\nmode = \"smarthost\"\nsmarthost = \"127.0.0.94:{}\"\nsmarthost_tls = \"none\"\n{}",
        sink.addr.port(),
        webhook(&receiver, &secret_file(dir.path()), "\"delivered\"", "outbox_max_bytes = 65536")
    ))
    .await;
    let rcpts: Vec<String> = (0..600).map(|i| format!("r{i}@far.example")).collect();
    let rcpts: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    send(server.addr(), &rcpts, "many").await;
    assert_eq!(sink.wait_for(1, WAIT).await.len(), 1);
    let outbox = server.data_dir().join("webhooks/ops");
    let size = || -> u64 {
        std::fs::read_dir(&outbox)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    };
    let admin = server.admin.expect("admin page on");
    let metrics = move || {
        tokio::task::block_in_place(|| crate::support::web::Web::new(admin).get("/metrics").body)
    };
    let start = std::time::Instant::now();
    while start.elapsed() < WAIT
        && !metrics().contains("portcullis_webhook_notifications_dropped_total{")
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = metrics();
    let dropped: u64 = text
        .lines()
        .find(|l| l.starts_with("portcullis_webhook_notifications_dropped_total{"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("a drop counter: {text}"));
    assert!(dropped > 300, "{dropped} dropped");
    assert!(size() <= 65536, "the outbox holds {} bytes", size());
    receiver.set_mode(Mode::Ok);
    let pending = 600 - dropped as usize;
    let taken_all = receiver
        .wait_until(Duration::from_secs(60), |t| unique(t).len() >= pending)
        .await;
    assert_eq!(
        unique(&taken_all).len(),
        pending,
        "what was not dropped arrives, and nothing else"
    );
    assert!(
        of_kind(&taken_all, "delivered")
            .iter()
            .any(|v| v["recipient"] == "r599@far.example"),
        "the newest is kept"
    );
}

/// The Python lines README gives receivers verify a real post, and refuse
/// it once a byte of the body changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_python_verifies_a_real_post() {
    let receiver = Receiver::start("127.0.0.1", SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&format!(
        "[[network]]\nrange = \"127.0.0.0/24\"\nauth = \"none\"\n[delivery]\nretry_schedule = [\"1h\"]\n[[route]]\ndomain = \"far.example\"\nhost = \"127.0.0.1:1\"\n{}",
        webhook(&receiver, &secret_file(dir.path()), "\"accepted\"", "")
    ))
    .await;
    send(server.addr(), &["a@far.example"], "py").await;
    receiver.wait_until(WAIT, |t| !t.is_empty()).await;
    let post = receiver.posts().remove(0);
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = &readme[readme.find("### `[[webhook]]`").unwrap()..];
    let code = section
        .split("```python\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a Python block in the webhook section");
    let script = dir.path().join("verify.py");
    std::fs::write(
        &script,
        format!(
            "{code}\nimport sys\nbody = open(sys.argv[3], 'rb').read()\nprint(verify(sys.argv[1].encode(), sys.argv[2], body))\n"
        ),
    )
    .unwrap();
    let run = |body: &[u8]| {
        let path = dir.path().join("body");
        std::fs::write(&path, body).unwrap();
        let out = std::process::Command::new("python3")
            .arg(&script)
            .arg(SECRET)
            .arg(post.signature.as_deref().unwrap())
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(run(&post.body), "True");
    let mut changed = post.body.clone();
    changed[10] ^= 1;
    assert_eq!(run(&changed), "False");
}
