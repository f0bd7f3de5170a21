//! A real Postfix (smtpd, cleanup, qmgr, virtual) as a destination: a private
//! instance with its own configuration, queue and mailboxes in a temp dir,
//! listening on one loopback address. Mailboxes are Maildirs, so a test
//! counts what arrived by reading files. Needs root (Postfix's daemons run
//! as the `postfix` user that Debian's package creates).

use super::WAIT;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub struct PostfixMta {
    config_dir: PathBuf,
    mail_dir: PathBuf,
    pub addr: String,
    /// Postfix's own log, for a failed test's message.
    log: PathBuf,
}

/// The services a receiving-only Postfix needs; chroot off, as the queue is a temp dir.
const MASTER_CF: &str = "\
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
virtual   unix  - n n - - virtual
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
tlsmgr    unix  - - n 1000? 1 tlsmgr
";

impl PostfixMta {
    /// Starts Postfix on `ip` (a free port) taking mail for `domain`, with
    /// one Maildir per name in `mailboxes`; any other recipient of `domain`
    /// gets Postfix's "550 5.1.1 … User unknown".
    pub fn start(ip: &str, domain: &str, mailboxes: &[&str], dir: &Path) -> PostfixMta {
        Self::start_with(ip, domain, mailboxes, dir, "")
    }

    /// As `start`, with more main.cf lines (TLS settings, say).
    pub fn start_with(
        ip: &str,
        domain: &str,
        mailboxes: &[&str],
        dir: &Path,
        extra_main_cf: &str,
    ) -> PostfixMta {
        let root = dir.join("postfix");
        let (config_dir, queue, data, mail_dir) = (
            root.join("etc"),
            root.join("queue"),
            root.join("data"),
            root.join("mail"),
        );
        for d in [&config_dir, &queue, &data, &mail_dir] {
            std::fs::create_dir_all(d).unwrap();
        }
        // Postfix's daemons (user postfix) walk from / to their queue.
        let mut walk = Some(root.as_path());
        while let Some(d) = walk.filter(|d| d.starts_with(dir)) {
            set_mode(d, 0o755);
            walk = d.parent();
        }
        set_mode(dir, 0o755);
        let (uid, gid) = postfix_ids();
        for d in [&data, &mail_dir] {
            std::os::unix::fs::chown(d, Some(uid), Some(gid)).unwrap();
        }
        let port = super::free_port(ip);
        let addr = format!("{ip}:{port}");
        let log = root.join("maillog");
        let maps = config_dir.join("mailboxes");
        let entries: String = mailboxes
            .iter()
            .map(|m| format!("{m}@{domain} {m}/\n"))
            .collect();
        std::fs::write(&maps, entries).unwrap();
        let main_cf = format!(
            "compatibility_level = 3.6\nqueue_directory = {queue}\ndata_directory = {data}\n\
             mail_owner = postfix\nsetgid_group = postdrop\ninet_interfaces = loopback-only\n\
             inet_protocols = ipv4\nmyhostname = mx.{domain}\nmydestination =\nmynetworks = 127.0.0.0/8\n\
             virtual_mailbox_domains = {domain}\nvirtual_mailbox_maps = texthash:{maps}\n\
             virtual_mailbox_base = {mail}\nvirtual_uid_maps = static:{uid}\nvirtual_gid_maps = static:{gid}\n\
             maillog_file = {log}\nmaillog_file_prefixes = {root}\nrelayhost =\n\
             default_transport = error:this test instance sends nothing out\n\
             smtpd_peername_lookup = no\nsmtp_dns_support_level = disabled\n",
            queue = queue.display(),
            data = data.display(),
            maps = maps.display(),
            mail = mail_dir.display(),
            log = log.display(),
            root = root.display(),
        );
        std::fs::write(config_dir.join("main.cf"), main_cf + extra_main_cf).unwrap();
        std::fs::write(
            config_dir.join("master.cf"),
            format!("{addr} inet n - n - - smtpd\n{MASTER_CF}"),
        )
        .unwrap();
        let mta = PostfixMta {
            config_dir,
            mail_dir,
            addr,
            log,
        };
        let ok = mta.postfix("start");
        assert!(ok, "postfix did not start:\n{}", mta.log());
        let start = Instant::now();
        while std::net::TcpStream::connect(&mta.addr).is_err() {
            assert!(
                start.elapsed() < WAIT,
                "postfix does not answer:\n{}",
                mta.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        mta
    }

    fn postfix(&self, action: &str) -> bool {
        let (ok, _, _) = super::run_with_timeout(
            Command::new("postfix")
                .arg("-c")
                .arg(&self.config_dir)
                .arg(action),
            WAIT,
        );
        ok
    }

    /// Postfix's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The messages delivered to `mailbox`'s Maildir.
    pub fn mailbox(&self, mailbox: &str) -> Vec<String> {
        let dir = self.mail_dir.join(mailbox).join("new");
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .collect()
    }

    /// Waits (bounded by `limit`) until `mailbox` holds `n` messages; returns them.
    pub async fn wait_for(&self, mailbox: &str, n: usize, limit: Duration) -> Vec<String> {
        let start = Instant::now();
        loop {
            let got = self.mailbox(mailbox);
            if got.len() >= n || start.elapsed() > limit {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for PostfixMta {
    fn drop(&mut self) {
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(&self.config_dir)
            .arg("stop")
            .status();
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The uid and gid of the `postfix` user.
fn postfix_ids() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"postfix")).then(|| (f[2].parse().unwrap(), f[3].parse().unwrap()))
        })
        .expect("a postfix user (./test.sh installs Debian's postfix package)")
}
