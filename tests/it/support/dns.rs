//! A tiny authoritative DNS server on a loopback UDP port, for tests only:
//! MX, A and AAAA records, NXDOMAIN, and names that never get an answer.

use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA, MX, PTR, SOA, TXT};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use tokio::net::UdpSocket;

#[derive(Default)]
struct Zone {
    /// Answers carry the AD bit (as a validating resolver's would).
    authentic: bool,
    records: HashMap<(String, RecordType), Vec<RData>>,
    silent: HashSet<String>,
    queries: Vec<(String, RecordType)>,
}

pub struct TestDns {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    task: tokio::task::JoinHandle<()>,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_lowercase()
}

fn fqdn(name: &str) -> Name {
    Name::from_ascii(format!("{}.", name.trim_end_matches('.'))).unwrap()
}

impl TestDns {
    pub async fn start() -> TestDns {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(Zone::default()));
        let z = Arc::clone(&zone);
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                if let Some(reply) = answer(&z, &query) {
                    let _ = socket.send_to(&reply, peer).await;
                }
            }
        });
        TestDns { addr, zone, task }
    }

    /// The `[dns]` section that points Portcullis here.
    pub fn config(&self) -> String {
        format!(
            "[dns]\nnameservers = [\"{}\"]\ntimeout = \"1s\"\n",
            self.addr
        )
    }

    fn add(&self, name: &str, rtype: RecordType, data: RData) {
        self.zone
            .lock()
            .unwrap()
            .records
            .entry((key(name), rtype))
            .or_default()
            .push(data);
    }

    /// A mail domain with one mail server: `mx.DOMAIN` (preference 10) at `ip`.
    pub fn mail_domain(&self, domain: &str, ip: &str) {
        let host = format!("mx.{domain}");
        self.mx(domain, 10, &host);
        self.host(&host, ip);
    }

    pub fn mx(&self, domain: &str, preference: u16, host: &str) {
        self.add(
            domain,
            RecordType::MX,
            RData::MX(MX::new(preference, fqdn(host))),
        );
    }

    /// RFC 7505: a single MX with preference 0 and the root as exchange.
    pub fn null_mx(&self, domain: &str) {
        self.add(domain, RecordType::MX, RData::MX(MX::new(0, Name::root())));
    }

    pub fn host(&self, name: &str, ip: &str) {
        match ip.parse::<IpAddr>().unwrap() {
            IpAddr::V4(v4) => self.add(name, RecordType::A, RData::A(A(v4))),
            IpAddr::V6(v6) => self.add(name, RecordType::AAAA, RData::AAAA(AAAA(v6))),
        }
    }

    /// A TXT record (a DNS list's reason).
    pub fn txt(&self, name: &str, text: &str) {
        self.add(
            name,
            RecordType::TXT,
            RData::TXT(TXT::new(vec![text.to_string()])),
        );
    }

    /// A TXT record longer than one DNS string (a DKIM key): split into
    /// strings of 255 octets, as zone files publish it.
    pub fn txt_long(&self, name: &str, text: &str) {
        let parts = text
            .as_bytes()
            .chunks(255)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        self.add(name, RecordType::TXT, RData::TXT(TXT::new(parts)));
    }

    /// Answers from now on carry the AD bit, as a validating resolver's
    /// would for a signed zone (DANE tests).
    pub fn set_authentic(&self, on: bool) {
        self.zone.lock().unwrap().authentic = on;
    }

    /// A TLSA record (usage, selector, matching type, data).
    pub fn tlsa(&self, name: &str, usage: u8, selector: u8, matching: u8, data: Vec<u8>) {
        use hickory_resolver::proto::rr::rdata::TLSA;
        self.add(
            name,
            RecordType::TLSA,
            RData::TLSA(TLSA::new(
                usage.into(),
                selector.into(),
                matching.into(),
                data,
            )),
        );
    }

    /// A DNS list zone that passes the health check: 127.0.0.2 listed, 127.0.0.1 not.
    pub fn dns_list(&self, zone: &str) {
        self.host(&format!("2.0.0.127.{zone}"), "127.0.0.2");
        self.txt(&format!("2.0.0.127.{zone}"), "test entry");
    }

    /// Lists `ip` in `zone` with return code `code` (RFC 5782 name, v4 or v6).
    pub fn list_in(&self, zone: &str, ip: &str, code: &str, reason: Option<&str>) {
        let name = portcullis::checks::dns_lists::query_name(ip.parse().unwrap(), zone);
        self.host(&name, code);
        if let Some(r) = reason {
            self.txt(&name, r);
        }
    }

    /// A PTR record: `ip` reverses to `name`.
    pub fn ptr(&self, ip: &str, name: &str) {
        let reverse = portcullis::dns::reverse_name(ip.parse().unwrap());
        self.add(&reverse, RecordType::PTR, RData::PTR(PTR(fqdn(name))));
    }

    /// Queries for this name are never answered (a broken DNS server).
    pub fn silent(&self, name: &str) {
        self.zone.lock().unwrap().silent.insert(key(name));
    }

    /// How many queries asked about `name`.
    pub fn queries_for(&self, name: &str) -> usize {
        self.zone
            .lock()
            .unwrap()
            .queries
            .iter()
            .filter(|(n, _)| *n == key(name))
            .count()
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(zone: &Mutex<Zone>, query: &Message) -> Option<Vec<u8>> {
    let q = query.queries.first()?;
    let name = key(&q.name().to_ascii());
    let rtype = q.query_type();
    let mut z = zone.lock().unwrap();
    z.queries.push((name.clone(), rtype));
    if z.silent.contains(&name) {
        return None;
    }
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata.message_type = MessageType::Response;
    reply.metadata.authoritative = true;
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.metadata.authentic_data = z.authentic;
    reply.add_query(q.clone());
    let exists = z.records.keys().any(|(n, _)| *n == name);
    match z.records.get(&(name.clone(), rtype)) {
        Some(datas) => {
            for d in datas {
                reply.add_answer(Record::from_rdata(q.name().clone(), 60, d.clone()));
            }
        }
        None => {
            reply.metadata.response_code = if exists {
                ResponseCode::NoError
            } else {
                ResponseCode::NXDomain
            };
            let soa = SOA::new(fqdn("ns.test"), fqdn("hostmaster.test"), 1, 60, 60, 60, 60);
            reply.add_authority(Record::from_rdata(Name::root(), 60, RData::SOA(soa)));
        }
    }
    reply.to_vec().ok()
}
