//! Diagnostics from outside: `portcullis audit` run as an admin would, the
//! router case inside a network namespace of the test's own (a veth pair and
//! a default route; nothing leaves the machine).

use crate::support::netns::Namespace;
use crate::support::server::binary;
use crate::support::{WAIT, run_with_timeout};
use std::process::Command;

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn audit_names_the_router_inside_a_trusted_range() {
    let dir = tempfile::tempdir().unwrap();
    let ns = Namespace::with_default_route("10.77.0.2/24", "10.77.0.1");
    let lan = "[[listener]]\naddress = \"127.0.0.1:2525\"\n[[network]]\nrange = \"10.77.0.0/24\"\nauth = \"none\"\n";
    let (code, findings) = ns.audit(&write(dir.path(), "lan.toml", lan));
    assert_eq!(code, 2, "{findings:?}");
    let router = findings
        .iter()
        .find(|f| f["key"] == "network[0].exclude")
        .unwrap_or_else(|| panic!("no router finding: {findings:?}"));
    assert_eq!(router["severity"], "risk");
    assert!(router["message"].as_str().unwrap().contains("10.77.0.1"));
    assert_eq!(
        router["fix"],
        "in network[0], set exclude = [\"10.77.0.1\"]"
    );
    // With the router excluded, the same machine gives a clean bill.
    let fixed = format!("{lan}exclude = [\"10.77.0.1\"]\n");
    let (code, findings) = ns.audit(&write(dir.path(), "fixed.toml", &fixed));
    assert_eq!((code, findings.len()), (0, 0), "{findings:?}");
}

fn audit_here(config: &std::path::Path) -> (i32, Vec<serde_json::Value>) {
    let (_, out, err) = run_with_timeout(
        Command::new(binary())
            .args(["audit", "--json", "--config"])
            .arg(config),
        WAIT,
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {err}"));
    let findings = v["findings"].as_array().unwrap().clone();
    let worst = findings.iter().map(|f| match f["severity"].as_str() {
        Some("risk") => 2,
        Some("warning") => 1,
        _ => 0,
    });
    (worst.max().unwrap_or(0), findings)
}

#[test]
fn audit_finds_each_classic_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "open.toml",
            "[[network]]\nrange = \"0.0.0.0/0\"\nauth = \"none\"\n[relay]\nallow_open_relay = true\n",
            "network[0].range",
            "risk",
        ),
        (
            "unfiltered.toml",
            "[[listener]]\naddress = \"0.0.0.0:2525\"\n[tls]\ncert = \"/dev/null\"\nkey = \"/dev/null\"\n[[network]]\nrange = \"192.168.7.0/24\"\nauth = \"none\"\n",
            "access.filter",
            "warning",
        ),
        (
            "plaintext.toml",
            "[[listener]]\naddress = \"0.0.0.0:2525\"\n[auth]\nallow_plaintext = true\n",
            "auth.allow_plaintext",
            "risk",
        ),
        (
            "smarthost.toml",
            "[delivery]\nmode = \"smarthost\"\nsmarthost = \"smtp.isp.example:25\"\nsmarthost_tls = \"none\"\nsmarthost_user = \"u\"\nsmarthost_password_file = \"/nonexistent/pass\"\n",
            "delivery.smarthost_tls",
            "risk",
        ),
    ];
    for (file, text, key, severity) in cases {
        let (worst, findings) = audit_here(&write(dir.path(), file, text));
        let f = findings
            .iter()
            .find(|f| f["key"] == key)
            .unwrap_or_else(|| panic!("{file}: no finding for {key}: {findings:?}"));
        assert_eq!(f["severity"], severity, "{file}: {f}");
        assert!(!f["fix"].as_str().unwrap().is_empty());
        assert!(worst >= if severity == "risk" { 2 } else { 1 });
    }
}

/// The TOML of README's worked example, as printed.
fn readme_example() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find("## Worked example").unwrap();
    let block = &readme[start..];
    let toml_start = block.find("```toml\n").unwrap() + 8;
    let toml_end = toml_start + block[toml_start..].find("```").unwrap();
    block[toml_start..toml_end].to_string()
}

/// The README's worked example, with its files present, passes the audit
/// without a finding on a machine whose router it excludes.
#[test]
fn the_readme_example_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = readme_example();
    for file in ["cert.pem", "key.pem", "users", "smarthost.pass"] {
        let path = write(dir.path(), file, "x");
        text = text.replace(
            &format!("/etc/portcullis/{file}"),
            &path.display().to_string(),
        );
    }
    let config = write(dir.path(), "example.toml", &text);
    let ns = Namespace::with_default_route("192.168.1.50/24", "192.168.1.1");
    let (code, findings) = ns.audit(&config);
    assert_eq!((code, findings.len()), (0, 0), "{findings:#?}");
}

fn relay_test(addr: std::net::SocketAddr, source: &str) -> (i32, serde_json::Value) {
    let output = Command::new(binary())
        .args(["relay-test", &addr.to_string(), "--json", "--timeout", "10"])
        .args(["--source-ip", source])
        .output()
        .expect("run relay-test");
    let v: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stderr)));
    (output.status.code().unwrap_or(-1), v)
}

fn verdicts(report: &serde_json::Value) -> Vec<(String, String)> {
    report["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_string(),
                t["verdict"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Every trick in the battery is refused by a closed Portcullis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_test_finds_a_closed_portcullis_closed() {
    let server = crate::support::server::TestServer::start(
        "[[network]]\nrange = \"127.0.0.0/24\"\nauth = \"none\"\n[relay]\ninbound_domains = [\"example.lan\"]\n",
    )
    .await;
    let addr = server.addr();
    let (code, report) = tokio::task::spawn_blocking(move || relay_test(addr, "127.0.3.40"))
        .await
        .unwrap();
    let all = verdicts(&report);
    assert!(all.len() >= 30, "the whole battery ran: {all:?}");
    let not_refused: Vec<_> = all.iter().filter(|(_, v)| v != "refused").collect();
    assert!(not_refused.is_empty(), "{not_refused:?}\n{report:#}");
    assert_eq!((code, report["relayed"].as_u64()), (0, Some(0)));
    assert!(server.queued().is_empty(), "nothing was queued");
}

/// An open Portcullis (allowed explicitly) is caught, test by test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_test_catches_an_open_relay() {
    let server = crate::support::server::TestServer::start(
        "[[network]]\nrange = \"0.0.0.0/0\"\nauth = \"none\"\n[relay]\nallow_open_relay = true\n[delivery]\nmode = \"smarthost\"\nsmarthost = \"127.0.0.1:1\"\nsmarthost_tls = \"none\"\n",
    )
    .await;
    let addr = server.addr();
    let (code, report) = tokio::task::spawn_blocking(move || relay_test(addr, "127.0.3.41"))
        .await
        .unwrap();
    let all = verdicts(&report);
    let relayed: Vec<&String> = all
        .iter()
        .filter(|(_, v)| v == "relayed")
        .map(|(n, _)| n)
        .collect();
    assert!(
        relayed.contains(&&"foreign sender to foreign recipient".to_string()),
        "{all:?}"
    );
    assert!(relayed.contains(&&"null sender".to_string()), "{all:?}");
    assert_eq!(report["relayed"].as_u64(), Some(relayed.len() as u64));
    assert_eq!(code, 1, "exit status says it relayed");
    // Hidden-route forms are still refused even by an open Portcullis.
    assert!(
        all.iter().any(|(n, v)| n == "bang path" && v == "refused"),
        "{all:?}"
    );
    // Each relayed test left its token in a queued message (the header-only
    // test adds one, accepted for the server's own postmaster).
    let queued = server.queued();
    assert_eq!(queued.len(), relayed.len() + 1, "{queued:?}");
    let body = String::from_utf8_lossy(
        &server
            .spool()
            .read_body(&crate::support::qid(&queued[0]))
            .unwrap(),
    )
    .to_string();
    assert!(body.contains("PCL-RELAY-TEST-"), "{body}");
}

/// A server that takes RCPT but refuses DATA relays nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_test_counts_a_refused_data_as_refused() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.88:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        for _ in 0..64 {
            let Ok(Ok((tcp, _))) = tokio::time::timeout(WAIT, listener.accept()).await else {
                return;
            };
            tokio::spawn(async move {
                let (r, mut w) = tcp.into_split();
                let mut lines = BufReader::new(r).lines();
                let _ = w.write_all(b"220 picky.test ESMTP\r\n").await;
                while let Ok(Ok(Some(line))) = tokio::time::timeout(WAIT, lines.next_line()).await {
                    let verb = line
                        .split([' ', ':'])
                        .next()
                        .unwrap_or_default()
                        .to_ascii_uppercase();
                    let reply: &[u8] = match verb.as_str() {
                        "EHLO" | "HELO" => b"250 picky.test\r\n",
                        "MAIL" | "RCPT" | "RSET" => b"250 OK\r\n",
                        "DATA" => b"554 5.7.1 no data for you\r\n",
                        "QUIT" => b"221 bye\r\n",
                        _ => b"500 what\r\n",
                    };
                    let _ = w.write_all(reply).await;
                    if verb == "QUIT" {
                        return;
                    }
                }
            });
        }
    });
    let (code, report) = tokio::task::spawn_blocking(move || relay_test(addr, "127.0.0.89"))
        .await
        .unwrap();
    let all = verdicts(&report);
    assert!(all.iter().all(|(_, v)| v == "refused"), "{all:?}");
    assert_eq!(code, 0);
    server.abort();
}

/// nmap's smtp-open-relay script, run from an outside host (a network
/// namespace), finds no relay on a server with Portcullis's default network
/// rules, and does find the open one: the check can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nmap_finds_no_open_relay_on_the_default_rules() {
    let ns = Namespace::with_default_route("10.78.0.2/24", "10.78.0.1");
    ns.link_host_end("10.78.0.1/24");
    // Port 25, where nmap's script looks for SMTP (the address is the test's own).
    let listener = "[[listener]]\naddress = \"10.78.0.1:25\"\n";
    let default_rules = "[[network]]\nrange = \"127.0.0.0/8\"\nauth = \"none\"\n[[network]]\nrange = \"::1\"\nauth = \"none\"\n";
    let open_rules = "[[network]]\nrange = \"0.0.0.0/0\"\nauth = \"none\"\n[relay]\nallow_open_relay = true\n[delivery]\nmode = \"smarthost\"\nsmarthost = \"127.0.0.1:1\"\nsmarthost_tls = \"none\"\n";
    for (rules, open) in [(default_rules, false), (open_rules, true)] {
        let server = crate::support::server::TestServer::start(&format!("{listener}{rules}")).await;
        let port = server.addr().port().to_string();
        let (ok, out) = tokio::task::block_in_place(|| {
            ns.run(
                "nmap",
                &[
                    "-n",
                    "-Pn",
                    "-p",
                    &port,
                    "--script",
                    "smtp-open-relay",
                    "10.78.0.1",
                ],
            )
        });
        assert!(ok, "nmap failed: {out}");
        assert!(out.contains("smtp-open-relay"), "the script ran: {out}");
        if open {
            assert!(out.contains("Server is an open relay"), "{out}");
        } else {
            assert!(!out.contains("Server is an open relay"), "{out}");
            assert!(out.contains("doesn't seem to be an open relay"), "{out}");
            assert!(server.queued().is_empty());
        }
        server.stop().await;
    }
}

fn spawn_with(text: &str) -> (tempfile::TempDir, crate::support::server::ProcessServer) {
    let dir = tempfile::tempdir().unwrap();
    let ca = crate::support::tls::TestCa::generate(dir.path());
    let config = crate::support::server::complete_config(text, dir.path(), &ca);
    let path = write(dir.path(), "portcullis.toml", &config);
    let server = crate::support::server::ProcessServer::spawn(&path);
    (dir, server)
}

/// With self_test_on_start, a closed server tests itself from an untrusted
/// loopback address and says it passed.
#[test]
fn self_test_on_start_passes_on_a_closed_server() {
    let (_dir, server) = spawn_with(
        "[diagnostics]\nself_test_on_start = true\n[[network]]\nrange = \"127.0.0.1\"\nauth = \"none\"\n",
    );
    assert!(
        server.wait_for_log("open-relay self-test passed"),
        "{}",
        server.log.lock().unwrap()
    );
    assert!(server.log.lock().unwrap().contains("source=127.0.0.2"));
}

/// When every local address is trusted there is no stranger's seat to test
/// from: the self-test says so instead of passing.
#[test]
fn self_test_on_start_says_when_it_cannot_test() {
    let (_dir, server) = spawn_with(
        "[diagnostics]\nself_test_on_start = true\n[[network]]\nrange = \"127.0.0.0/8\"\nauth = \"none\"\n",
    );
    assert!(
        server.wait_for_log("self-test skipped"),
        "{}",
        server.log.lock().unwrap()
    );
    assert!(!server.log.lock().unwrap().contains("self-test passed"));
}

fn doctor(config: &std::path::Path, extra: &[&str]) -> (i32, Vec<serde_json::Value>) {
    let output = Command::new(binary())
        .args(["doctor", "--json", "--timeout", "3", "--config"])
        .arg(config)
        .args(extra)
        .output()
        .expect("run doctor");
    let v: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stderr)));
    (
        output.status.code().unwrap_or(-1),
        v["checks"].as_array().unwrap().clone(),
    )
}

fn status_of<'a>(checks: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    checks
        .iter()
        .find(|c| c["name"].as_str().unwrap().starts_with(name))
        .unwrap_or_else(|| panic!("no check {name}: {checks:#?}"))
}

/// A well set-up machine: every lookup and connection goes to loopback
/// servers the test runs, and every check passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_a_well_set_up_machine() {
    use crate::support::dns::TestDns;
    use crate::support::sink::{Behaviour, Sink};
    let dns = TestDns::start().await;
    // The public address is only looked up, never connected to (a
    // documentation address: loopback reverse names are answered locally).
    dns.host("relay.test", "192.0.2.77");
    dns.ptr("192.0.2.77", "relay.test");
    dns.mail_domain("probe.example", "127.0.0.90");
    let mx = Sink::start("127.0.0.90", 0, Behaviour::accept_all()).await;
    let server = crate::support::server::TestServer::start(&format!(
        "{}[[network]]\nrange = \"127.0.0.1\"\nauth = \"none\"\n[delivery]\nmx_port = {}\n",
        dns.config(),
        mx.addr.port()
    ))
    .await;
    let mut bound = server.config.clone();
    bound.listener[0].address = server.addr();
    let path = server.dir.path().join("doctor.toml");
    std::fs::write(&path, toml::to_string(&bound).unwrap()).unwrap();
    let (code, checks) = tokio::task::block_in_place(|| {
        doctor(
            &path,
            &[
                "--public-ip",
                "192.0.2.77",
                "--probe-domain",
                "probe.example",
            ],
        )
    });
    for name in [
        "host name resolves",
        "reverse DNS",
        "forward-confirmed reverse DNS",
        "HELO name matches reverse DNS",
        "outbound port 25",
        "not an open relay",
    ] {
        assert_eq!(
            status_of(&checks, name)["status"],
            "ok",
            "{name}: {checks:#?}"
        );
    }
    assert_eq!(code, 0);
}

/// No reverse DNS and port 25 blocked: each fails with the fix an admin needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_names_missing_reverse_dns_and_a_blocked_port_25() {
    use crate::support::dns::TestDns;
    let dns = TestDns::start().await;
    dns.host("relay.test", "192.0.2.79");
    dns.mail_domain("probe.example", "127.0.0.91"); // nothing listens there
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "doctor.toml",
        &format!(
            "{}[server]\nhostname = \"relay.test\"\n[[listener]]\naddress = \"127.0.0.1:1\"\n[delivery]\nmx_port = 1\n",
            dns.config()
        ),
    );
    let (code, checks) = tokio::task::block_in_place(|| {
        doctor(
            &path,
            &[
                "--public-ip",
                "192.0.2.79",
                "--probe-domain",
                "probe.example",
            ],
        )
    });
    let ptr = status_of(&checks, "reverse DNS");
    assert_eq!(ptr["status"], "fail", "{ptr}");
    assert!(ptr["fix"].as_str().unwrap().contains("PTR"));
    let port25 = status_of(&checks, "outbound port 25");
    assert_eq!(port25["status"], "fail", "{port25}");
    assert!(
        port25["fix"]
            .as_str()
            .unwrap()
            .contains("smart host on port 587"),
        "{port25}"
    );
    assert_eq!(code, 1);
}

/// The smart host check goes through TLS and AUTH with the configured
/// credentials, and tells a wrong password apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_the_smart_host_login() {
    use crate::support::dns::TestDns;
    use crate::support::sink::{Behaviour, Sink, tls_config};
    let dns = TestDns::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = crate::support::tls::TestCa::generate(dir.path());
    let smarthost = Sink::start(
        "127.0.0.92",
        0,
        Behaviour {
            tls: Some(tls_config(&ca)),
            require_auth: Some(("office".into(), "right".into())),
            ..Behaviour::accept_all()
        },
    )
    .await;
    dns.host("relay.test", "127.0.0.92");
    for (password, expect) in [("right", "ok"), ("wrong", "fail")] {
        let pass = write(dir.path(), "pass", password);
        let path = write(
            dir.path(),
            "doctor.toml",
            &format!(
                "{}[server]\nhostname = \"relay.test\"\n[[listener]]\naddress = \"127.0.0.1:1\"\n[delivery]\nmode = \"smarthost\"\nsmarthost = \"relay.test:{}\"\nsmarthost_tls = \"starttls\"\nsmarthost_user = \"office\"\nsmarthost_password_file = \"{}\"\nsmarthost_ca_file = \"{}\"\n",
                dns.config(),
                smarthost.addr.port(),
                pass.display(),
                ca.ca_file(dir.path()).display()
            ),
        );
        let (_, checks) =
            tokio::task::block_in_place(|| doctor(&path, &["--public-ip", "127.0.0.92"]));
        let sh = status_of(&checks, "smart host");
        assert_eq!(sh["status"], expect, "{password}: {sh}");
        if expect == "ok" {
            assert!(
                sh["detail"]
                    .as_str()
                    .unwrap()
                    .contains("credentials accepted"),
                "{sh}"
            );
        }
        assert_eq!(status_of(&checks, "outbound port 25")["status"], "skipped");
    }
}

/// A private Postfix instance on its own loopback address, port 25 (where
/// nmap's script looks), relaying to a port nobody listens on. Stopped on drop.
struct PrivatePostfix {
    conf: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl PrivatePostfix {
    fn start(ip: &str, open: bool) -> PrivatePostfix {
        let dir = tempfile::tempdir().unwrap();
        // Postfix's daemons run as the postfix user and must reach their queue.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let conf = dir.path().join("conf");
        let (queue, data) = (dir.path().join("queue"), dir.path().join("data"));
        for d in [&conf, &queue, &data] {
            std::fs::create_dir_all(d).unwrap();
        }
        let (ok, _, err) = run_with_timeout(Command::new("chown").arg("postfix").arg(&data), WAIT);
        assert!(ok, "{err}");
        let relay = if open {
            // Postfix refuses to run without a rule that can refuse; trusting
            // every network is how an open Postfix is made in real life.
            "mynetworks = 0.0.0.0/0\nsmtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n"
        } else {
            "mynetworks = 127.0.0.250/32\nsmtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n"
        };
        std::fs::write(
            conf.join("main.cf"),
            format!(
                "compatibility_level = 3.6\nqueue_directory = {}\ndata_directory = {}\ncommand_directory = /usr/sbin\ndaemon_directory = /usr/lib/postfix/sbin\nmeta_directory = /etc/postfix\nshlib_directory = /usr/lib/postfix\nmail_owner = postfix\nsetgid_group = postdrop\nmyhostname = postfix.test\nmydestination =\nalias_maps =\nalias_database =\nlocal_recipient_maps =\ninet_interfaces = 127.0.0.1\ninet_protocols = ipv4\n{relay}relayhost = [127.0.0.1]:1\nmaillog_file = {}\nmaillog_file_prefixes = /var, /dev/stdout, {}\nsmtp_tls_security_level = none\nsmtpd_tls_security_level = none\nbiff = no\nsmtpd_peername_lookup = no\nsmtp_dns_support_level = disabled\n",
                queue.display(),
                data.display(),
                dir.path().join("maillog").display(),
                dir.path().display()
            ),
        )
        .unwrap();
        // Debian's master.cf with smtpd on our address (inet_interfaces must name
        // a configured interface address; the service line binds ours) and
        // nothing chrooted.
        let master =
            std::fs::read_to_string("/etc/postfix/master.cf").expect("postfix installed (test.sh)");
        let mut out = String::new();
        for line in master.lines() {
            let mut fields: Vec<String> = line.split_whitespace().map(str::to_string).collect();
            let service = !line.starts_with([' ', '\t', '#']) && fields.len() >= 8;
            if service {
                if fields[0] == "smtp" && fields[1] == "inet" {
                    fields[0] = format!("{ip}:25");
                }
                fields[4] = "n".into();
                out.push_str(&fields.join(" "));
            } else {
                out.push_str(line);
            }
            out.push('\n');
        }
        std::fs::write(conf.join("master.cf"), out).unwrap();
        let (ok, out, err) = run_with_timeout(
            Command::new("postfix").arg("-c").arg(&conf).arg("start"),
            WAIT,
        );
        assert!(ok, "postfix start: {out}{err}");
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect((ip, 25)).is_err() {
            assert!(
                started.elapsed() < WAIT,
                "postfix did not listen on {ip}:25"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        PrivatePostfix { conf, _dir: dir }
    }
}

impl Drop for PrivatePostfix {
    fn drop(&mut self) {
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(&self.conf)
            .arg("stop")
            .output();
    }
}

/// relay-test and nmap's smtp-open-relay give the same verdict on a real
/// Postfix, open and closed.
#[test]
fn relay_test_agrees_with_nmap_on_postfix() {
    for (ip, open) in [("127.0.0.96", false), ("127.0.0.97", true)] {
        let postfix = PrivatePostfix::start(ip, open);
        let target: std::net::SocketAddr = format!("{ip}:25").parse().unwrap();
        let (code, report) = relay_test(target, "127.0.0.1");
        let (ok, nmap) = run_with_timeout(
            Command::new("nmap").args(["-n", "-Pn", "-p", "25", "--script", "smtp-open-relay", ip]),
            std::time::Duration::from_secs(120),
        )
        .map_ok();
        assert!(ok, "{nmap}");
        let nmap_open = nmap.contains("Server is an open relay");
        assert!(
            nmap_open || nmap.contains("doesn't seem to be an open relay"),
            "{nmap}"
        );
        let ours_open = report["relayed"].as_u64().unwrap() > 0;
        assert_eq!(
            ours_open,
            open,
            "relay-test on {} Postfix:\n{report:#}",
            if open { "open" } else { "closed" }
        );
        assert_eq!(nmap_open, open, "nmap: {nmap}");
        assert_eq!(code, if open { 1 } else { 0 });
        drop(postfix);
    }
}

trait MapOk {
    fn map_ok(self) -> (bool, String);
}

impl MapOk for (bool, String, String) {
    fn map_ok(self) -> (bool, String) {
        (self.0, format!("{}{}", self.1, self.2))
    }
}

/// DNS list zones that are dead or list everything are risks the audit names
/// (asked through the config's own resolver: the test's DNS server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_names_dead_and_list_everything_zones() {
    let dns = crate::support::dns::TestDns::start().await;
    dns.silent("2.0.0.127.dead.test");
    dns.silent("1.0.0.127.dead.test");
    dns.dns_list("all.test");
    dns.host("1.0.0.127.all.test", "127.0.0.2");
    dns.dns_list("fine.test");
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "zones.toml",
        &format!(
            "{}[checks]\ndnsbl = [\"dead.test\", \"all.test\", \"fine.test\"]\ndns_timeout = \"1s\"\n",
            dns.config()
        ),
    );
    let (worst, findings) = tokio::task::block_in_place(|| audit_here(&path));
    assert_eq!(worst, 2);
    let zones: Vec<&str> = findings
        .iter()
        .filter(|f| f["key"] == "checks.dnsbl")
        .map(|f| f["message"].as_str().unwrap())
        .collect();
    assert_eq!(zones.len(), 2, "{findings:#?}");
    assert!(
        zones
            .iter()
            .any(|m| m.contains("dead.test") && m.contains("does not answer"))
    );
    assert!(
        zones
            .iter()
            .any(|m| m.contains("all.test") && m.contains("everything"))
    );
}

/// relay-test pointed at this machine's own relay, from an address that
/// relay trusts: it says so and tests from a seat it does not trust
/// (nothing relays); asked to test from the trusted address all the same,
/// it reports what relayed by design and leaves no test message queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_test_on_this_machines_relay_tests_as_a_stranger_and_leaves_nothing_queued() {
    let port = crate::support::free_port("127.0.0.1");
    let server = crate::support::server::TestServer::start(&format!(
        "[[listener]]\naddress = \"127.0.0.1:{port}\"\nkind = \"smtp\"\n[[network]]\nrange = \"127.0.0.0/30\"\nauth = \"none\"\n"
    ))
    .await;
    let config = server.dir.path().join("relay.toml");
    std::fs::write(&config, toml::to_string(&server.config).unwrap()).unwrap();
    let run = |extra: &[&str]| {
        let output = Command::new(binary())
            .args([
                "relay-test",
                &format!("127.0.0.1:{port}"),
                "--json",
                "--timeout",
                "10",
            ])
            .args(extra)
            .arg("--config")
            .arg(&config)
            .output()
            .expect("run relay-test");
        let v: serde_json::Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stderr)));
        (output.status.code().unwrap_or(-1), v)
    };
    let (code, report) = tokio::task::block_in_place(|| run(&[]));
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["relayed"].as_u64(), Some(0));
    assert_eq!(report["this_server"], true);
    assert!(
        report["seat_note"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1 is trusted"),
        "{report:#}"
    );
    let seat = report["source"].as_str().unwrap().to_string();
    assert_eq!(
        seat, "127.0.0.4",
        "the first loopback address the config does not trust"
    );

    let (code, report) = tokio::task::block_in_place(|| run(&["--source-ip", "127.0.0.2"]));
    assert_eq!(
        code, 1,
        "from a trusted seat it relays, by design: {report:#}"
    );
    assert!(report["seat_note"].as_str().unwrap().contains("by design"));
    let relayed = report["relayed"].as_u64().unwrap();
    assert!(relayed > 0);
    assert!(
        report["deleted_test_messages"].as_u64().unwrap() >= relayed,
        "{report:#}"
    );
    assert!(
        server.queued().is_empty(),
        "no test message is left to deliver"
    );
}

/// The worked example's TOML exactly as README prints it, with only what a
/// test must change: file paths, listener addresses, its DNS pointed at the
/// test's own server, and the test CA trusted for the smart hosts. The ISP's
/// first smart host is down; the failover on 465 (TLS from the first byte,
/// AUTH) takes the message at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_example_runs_as_written() {
    use crate::support::sink::{Behaviour, Sink, tls_config};
    let example = &readme_example();
    assert!(
        example.contains("smtps://smtp2.isp.example:465"),
        "{example}"
    );

    let dir = tempfile::tempdir().unwrap();
    let ca =
        crate::support::tls::TestCa::generate_for(dir.path(), &["smtp2.isp.example", "localhost"]);
    let dns = crate::support::dns::TestDns::start().await;
    dns.host("smtp.isp.example", "127.0.0.72");
    dns.host("smtp2.isp.example", "127.0.0.73");
    let isp = Sink::start(
        "127.0.0.73",
        465,
        Behaviour {
            implicit_tls: Some(tls_config(&ca)),
            require_auth: Some(("office@example.lan".into(), "isp secret".into())),
            ..Behaviour::accept_all()
        },
    )
    .await;
    let pass = write(dir.path(), "smarthost.pass", "isp secret\n");
    let users = dir.path().join("users");
    let ca_file = ca.ca_file(dir.path());
    let (smtp, submission) = (
        crate::support::free_port("127.0.0.1"),
        crate::support::free_port("127.0.0.1"),
    );
    let text = example
        .replace(
            "/etc/portcullis/cert.pem",
            &ca.cert_path.display().to_string(),
        )
        .replace(
            "/etc/portcullis/key.pem",
            &ca.key_path.display().to_string(),
        )
        .replace("/etc/portcullis/users", &users.display().to_string())
        .replace(
            "/etc/portcullis/smarthost.pass",
            &pass.display().to_string(),
        )
        .replace(
            "/var/lib/portcullis",
            &dir.path().join("data").display().to_string(),
        )
        .replace("0.0.0.0:25", &format!("127.0.0.1:{smtp}"))
        .replace("0.0.0.0:587", &format!("127.0.0.1:{submission}"))
        .replace(
            "[delivery]\n",
            &format!(
                "[delivery]\nsmarthost_ca_file = \"{}\"\n",
                ca_file.display()
            ),
        );
    let text = format!("{text}\n{}", dns.config());
    let config = write(dir.path(), "portcullis.toml", &text);
    let (ok, out, err) = run_with_timeout(
        Command::new(binary())
            .args(["check-config", "--config"])
            .arg(&config),
        WAIT,
    );
    assert!(ok, "{out}{err}");
    assert!(
        !format!("{out}{err}").contains("smarthost["),
        "no TLS/port mismatch: {out}{err}"
    );
    let _server = crate::support::server::ProcessServer::spawn(&config);
    crate::support::write_users(&users, &[("alice", "wonderland")]);
    // Alice on the road: STARTTLS and AUTH on 587, then mail to anywhere.
    let submission: std::net::SocketAddr = format!("127.0.0.1:{submission}").parse().unwrap();
    let mut alice = crate::support::client::SmtpClient::connect(submission, "127.0.0.1").await;
    alice.expect("EHLO laptop.example.lan", 250).await;
    alice.starttls(ca.client_config()).await;
    alice.expect("EHLO laptop.example.lan", 250).await;
    assert_eq!(alice.auth_plain("alice", "wonderland").await.code, 235);
    let r = alice
        .send_mail(
            "alice@example.lan",
            &["partner@anywhere.example"],
            b"Subject: from the road\r\n\r\nhello\r\n",
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    // The first smart host refuses connections; the failover on 465 takes
    // the message with TLS from the first byte and the ISP password.
    let got = isp.wait_for(1, WAIT).await;
    assert_eq!(
        got.len(),
        1,
        "delivered through smtps://smtp2.isp.example:465"
    );
    assert!(got[0].tls);
    assert_eq!(
        got[0].auth,
        Some(("office@example.lan".to_string(), "isp secret".to_string()))
    );
    assert_eq!(got[0].rcpts, ["partner@anywhere.example"]);
}
