//! The Settings page's JSON API against a real server process with a real
//! config file: saving keeps the file byte for byte as written (comments
//! too), keeps backups and a change log, reloads; structured edits keep
//! every comment; risky sections need the password again; an open relay, a
//! trusted router, a lock-out, a stale version and a read-only file are
//! refused; a reload that fails puts the old file back; an earlier version
//! can be restored.

use crate::support::client::SmtpClient;
use crate::support::server::{ProcessServer, complete_config};
use crate::support::tls::TestCa;
use crate::support::web::Web;
use crate::support::{free_port, write_users};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

pub struct Rig {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
    pub server: ProcessServer,
    pub web: Web,
    csrf: String,
    pub admin: std::net::SocketAddr,
}

const COMMENTED: &str = "# Portcullis for the office — edited by hand and from the page.\n\n[admin]\n# the page, loopback only\naddress = \"127.0.0.1:ADMINPORT\"\nusers = [\"alice\"]   # who may log in\n\n# Printers and PCs relay without a password.\n[[network]]\nrange = \"127.0.0.2/32\"\nauth = \"none\"\n\n[delivery]\n# retry slowly: the next hop is far away\nretry_schedule = [\"1h\"]\n";

pub fn start(extra: &str) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::generate(dir.path());
    let users = dir.path().join("users");
    write_users(&users, &[("alice", "wonderland"), ("bob", "builder")]);
    let admin_port = free_port("127.0.0.1");
    let text = COMMENTED.replace("ADMINPORT", &admin_port.to_string());
    // The completed file: the test's own lines first, as an admin wrote them.
    let completed = complete_config(&text, dir.path(), &ca);
    let table: toml::Table = toml::from_str(&completed).unwrap();
    let mut extra_lines = String::new();
    for key in ["server", "tls", "dns", "listener"] {
        let mut one = toml::Table::new();
        one.insert(key.into(), table[key].clone());
        extra_lines.push_str(&toml::to_string(&one).unwrap());
    }
    let file = format!(
        "{text}\n[auth]\nusers_file = \"{}\"\n{extra}\n{extra_lines}",
        users.display()
    );
    let path = dir.path().join("portcullis.toml");
    std::fs::write(&path, &file).unwrap();
    let server = ProcessServer::spawn(&path);
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let mut web = Web::new(admin);
    let login = web.login("alice", "wonderland");
    assert!(login.status < 400, "{}", login.body);
    let csrf = web.csrf();
    Rig {
        _dir: dir,
        path,
        server,
        web,
        csrf,
        admin,
    }
}

impl Rig {
    fn get(&mut self) -> Value {
        let page = self.web.get("/api/settings");
        assert_eq!(page.status, 200, "{}", page.body);
        page.json()
    }

    fn post(&mut self, route: &str, body: Value) -> (u16, Value) {
        let csrf = self.csrf.clone();
        let page = self.web.post(route, &[("X-CSRF-Token", &csrf)], Some(body));
        let json = serde_json::from_str(&page.body).unwrap_or(Value::Null);
        (page.status, json)
    }

    fn file(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap()
    }
}

fn keys(findings: &Value) -> Vec<String> {
    findings
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["key"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn comments(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.contains('#')).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_is_saved_as_written_reloaded_logged_and_restorable() {
    let mut rig = tokio::task::block_in_place(|| start(""));
    let original = rig.file();
    let now = tokio::task::block_in_place(|| rig.get());
    assert_eq!(now["toml"], original.as_str());
    assert_eq!(now["editable"], true);
    let version = now["version"].as_str().unwrap().to_string();
    // A change outside the risky sections, with a new comment of its own.
    let candidate = original.replace(
        "retry_schedule = [\"1h\"]\n",
        "retry_schedule = [\"1h\", \"4h\"] # and then every 4 hours\n",
    );
    let (status, body) = tokio::task::block_in_place(|| {
        rig.post(
            "/api/settings",
            json!({"version": version, "toml": candidate}),
        )
    });
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["saved"], true);
    assert_eq!(rig.file(), candidate, "written exactly as submitted");
    let mut backup = rig.path.as_os_str().to_owned();
    backup.push(".1");
    assert_eq!(
        std::fs::read_to_string(PathBuf::from(backup)).unwrap(),
        original
    );
    assert!(
        rig.server
            .wait_for_log("configuration changed from the admin page")
    );
    assert!(rig.server.wait_for_log("reload"));

    // A structured edit of a risky section: the password again, and every comment stays.
    let version = body["version"].as_str().unwrap().to_string();
    let add_lan = json!({"version": version, "edits": [
        {"op": "append", "path": ["network"], "value": {"range": "127.0.0.3/32", "auth": "none"}}
    ]});
    let (status, _) =
        tokio::task::block_in_place(|| rig.post("/api/settings/edit", add_lan.clone()));
    assert_eq!(status, 403, "relay rules need the password again");
    let mut with_password = add_lan.clone();
    with_password["password"] = json!("wonderland");
    let (status, body) =
        tokio::task::block_in_place(|| rig.post("/api/settings/edit", with_password));
    assert_eq!(status, 200, "{body}");
    let edited = rig.file();
    assert_eq!(
        comments(&edited),
        comments(&candidate),
        "every comment kept, in order"
    );
    assert!(edited.contains("range = \"127.0.0.3/32\""));
    // The new range relays for real.
    let mut c = SmtpClient::greeted(rig.server.addr, "127.0.0.3", "pc3.office.test").await;
    c.expect("MAIL FROM:<a@office.test>", 250).await;
    c.expect("RCPT TO:<someone@far.example>", 250).await;
    c.expect("QUIT", 221).await;

    // The change log, newest first, with diffs; then the original comes back.
    let history = tokio::task::block_in_place(|| rig.web.get("/api/settings/history").json());
    let changes = history["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[0]["user"], "alice");
    assert!(
        changes[1]["diff"]
            .as_str()
            .unwrap()
            .contains("+retry_schedule = [\"1h\", \"4h\"]")
    );
    let first = changes[1]["before"].as_str().unwrap().to_string();
    let version = body["version"].as_str().unwrap().to_string();
    let (status, body) = tokio::task::block_in_place(|| {
        rig.post(
            "/api/settings/restore",
            json!({"version": version, "restore": first, "password": "wonderland"}),
        )
    });
    assert_eq!(status, 200, "{body}");
    assert_eq!(rig.file(), original);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_classic_mistakes_cannot_be_saved() {
    let mut rig = tokio::task::block_in_place(|| start(""));
    let original = rig.file();
    let version = tokio::task::block_in_place(|| rig.get())["version"]
        .as_str()
        .unwrap()
        .to_string();
    let save = |rig: &mut Rig, text: String| {
        tokio::task::block_in_place(|| {
            rig.post(
                "/api/settings",
                json!({"version": version, "toml": text, "password": "wonderland"}),
            )
        })
    };
    // "Authentication not required for anyone": an open relay.
    let open = original.replace("range = \"127.0.0.2/32\"", "range = \"0.0.0.0/0\"");
    let (status, body) = save(&mut rig, open.clone());
    assert_eq!(status, 422, "{body}");
    assert!(
        keys(&body["findings"])
            .iter()
            .any(|k| k.starts_with("network")),
        "{body}"
    );
    let (_, checked) =
        tokio::task::block_in_place(|| rig.post("/api/settings/check", json!({"toml": open})));
    assert_eq!(checked["ok"], false);
    // allow_open_relay is for the file only.
    let escape = format!("{original}\n[relay]\nallow_open_relay = true\n");
    let (status, body) = save(&mut rig, escape);
    assert_eq!(status, 422);
    assert!(
        keys(&body["findings"]).contains(&"relay.allow_open_relay".to_string()),
        "{body}"
    );
    // Locking oneself out of the page.
    let (status, body) = save(
        &mut rig,
        original.replace("users = [\"alice\"]", "users = [\"bob\"]"),
    );
    assert_eq!(status, 422);
    assert!(
        keys(&body["findings"]).contains(&"admin.users".to_string()),
        "{body}"
    );
    // The router inside a trusted range (when this machine has a default route).
    let machine = portcullis::diagnostics::audit::Machine::read();
    if let Some(std::net::IpAddr::V4(gw)) = machine.gateways.first() {
        let router = format!("{original}\n[[network]]\nrange = \"{gw}/32\"\nauth = \"none\"\n");
        let (status, body) = save(&mut rig, router);
        assert_eq!(status, 422, "{body}");
        assert!(
            body.to_string().contains(&gw.to_string()),
            "the router is named: {body}"
        );
    }
    // Nothing of that reached the file.
    assert_eq!(rig.file(), original);
    // A fine change passes the check.
    let (_, checked) = tokio::task::block_in_place(|| {
        rig.post(
            "/api/settings/check",
            json!({"toml": original.replace("\"1h\"", "\"2h\"")}),
        )
    });
    assert_eq!(checked["ok"], true, "{checked}");
    // Two admins: the second save, made on the old version, is refused with the difference.
    let first = original.replace("\"1h\"", "\"2h\"");
    let (status, _) = save(&mut rig, first);
    assert_eq!(status, 200);
    let (status, body) = save(&mut rig, original.replace("\"1h\"", "\"3h\""));
    assert_eq!(status, 409, "{body}");
    assert!(body["diff"].as_str().unwrap().contains("3h"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_fails_puts_the_previous_file_back() {
    let mut rig = tokio::task::block_in_place(|| start(""));
    let original = rig.file();
    let version = tokio::task::block_in_place(|| rig.get())["version"]
        .as_str()
        .unwrap()
        .to_string();
    // Valid, but the address is taken: only the reload finds out.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap();
    let candidate = format!("{original}\n[[listener]]\naddress = \"{busy}\"\nkind = \"smtp\"\n");
    let (status, body) = tokio::task::block_in_place(|| {
        rig.post(
            "/api/settings",
            json!({"version": version, "toml": candidate, "password": "wonderland"}),
        )
    });
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("previous file was put back"),
        "{body}"
    );
    assert_eq!(rig.file(), original);
    // The server runs on, on its old rules.
    let mut c = SmtpClient::greeted(rig.server.addr, "127.0.0.2", "pc.office.test").await;
    c.expect("MAIL FROM:<a@office.test>", 250).await;
    c.expect("QUIT", 221).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_file_is_shown_not_changed_and_preview_explains_before_and_after() {
    let mut rig = tokio::task::block_in_place(|| start(""));
    // Preview: the Internet sample is refused before and after; a typed address too.
    let original = rig.file();
    let lan = original.replace("range = \"127.0.0.2/32\"", "range = \"10.9.0.0/16\"");
    let (status, body) = tokio::task::block_in_place(|| {
        rig.post(
            "/api/settings/preview",
            json!({"toml": lan, "ips": ["10.9.1.1"]}),
        )
    });
    assert_eq!(status, 200, "{body}");
    let rows = body["rows"].as_array().unwrap();
    let typed = rows.iter().find(|r| r["ip"] == "10.9.1.1").unwrap();
    assert_eq!(typed["before"]["verdict"], "refuse");
    assert_eq!(typed["after"]["verdict"], "accept");
    assert_eq!(typed["changed"], true);
    let internet = rows
        .iter()
        .find(|r| r["client"].as_str().unwrap().starts_with("an Internet"))
        .unwrap();
    assert_eq!(internet["after"]["verdict"], "refuse");
    drop(rig);

    let mut rig = tokio::task::block_in_place(|| start("")); // a fresh file
    let text = rig
        .file()
        .replace("[admin]\n", "[admin]\nsettings = \"read-only\"\n");
    std::fs::write(&rig.path, &text).unwrap();
    rig.server.reload_by_signal();
    assert!(rig.server.wait_for_log("reload"));
    let mut shown = tokio::task::block_in_place(|| rig.get());
    for _ in 0..50 {
        if shown["editable"] == false {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        shown = tokio::task::block_in_place(|| rig.get());
    }
    assert_eq!(shown["editable"], false, "{shown}");
    assert!(shown["reason"].as_str().unwrap().contains("read-only"));
    let version = shown["version"].as_str().unwrap().to_string();
    let (status, _) = tokio::task::block_in_place(|| {
        rig.post("/api/settings", json!({"version": version, "toml": text.replace("\"1h\"", "\"2h\""), "password": "wonderland"}))
    });
    assert_eq!(status, 403);
    assert_eq!(rig.file(), text);
    let _ = Path::new("");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_added_reset_and_removed_with_the_password_again() {
    let mut rig = tokio::task::block_in_place(|| start(""));
    let add =
        json!({"name": "scanner", "new_password": "a long password 1", "password": "wonderland"});
    let mut without = add.clone();
    without["password"] = Value::Null;
    let (status, _) = tokio::task::block_in_place(|| rig.post("/api/users", without));
    assert_eq!(status, 403, "the admin's password again");
    let (status, body) = tokio::task::block_in_place(|| rig.post("/api/users", add));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["action"], "added");
    let listed = tokio::task::block_in_place(|| rig.web.get("/api/users").json());
    let names: Vec<&str> = listed["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice", "bob", "scanner"]);
    assert!(
        !listed.to_string().contains("$argon2"),
        "no hash leaves the server"
    );
    // The new login works for SMTP AUTH at once.
    let submission = rig.server.addr;
    let mut c = SmtpClient::greeted(submission, "127.0.0.9", "scanner.office.test").await;
    let r = c.auth_plain("scanner", "a long password 1").await;
    assert_eq!(r.code, 235, "{r:?}");
    c.expect("QUIT", 221).await;
    // A short password is refused; removing oneself too.
    let (status, _) = tokio::task::block_in_place(|| {
        rig.post(
            "/api/users",
            json!({"name": "scanner", "new_password": "short", "password": "wonderland"}),
        )
    });
    assert_eq!(status, 400);
    let (status, _) = tokio::task::block_in_place(|| {
        rig.post("/api/users/alice/delete", json!({"password": "wonderland"}))
    });
    assert_eq!(status, 422);
    let (status, _) = tokio::task::block_in_place(|| {
        rig.post(
            "/api/users/scanner/delete",
            json!({"password": "wonderland"}),
        )
    });
    assert_eq!(status, 200);
    let mut c = SmtpClient::greeted(submission, "127.0.0.9", "scanner.office.test").await;
    let r = c.auth_plain("scanner", "a long password 1").await;
    assert_eq!(r.code, 535, "removed: refused at once: {r:?}");
}
