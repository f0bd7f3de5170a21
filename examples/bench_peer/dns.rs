//! A loopback DNS server with fixed answers for the checks case: the
//! client's PTR and A records (so forward-confirmed reverse DNS passes) and
//! NXDOMAIN for everything else (so the client is on no DNS list). Both
//! relays ask this one server: Portcullis through `[dns] nameservers`,
//! Postfix through the resolv.conf of its own mount namespace.

use anyhow::Context;
use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, PTR, SOA};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use tokio::net::UdpSocket;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    listen: SocketAddr,
    /// HOSTNAME=IPV4: an A record, and the PTR record back to HOSTNAME.
    #[arg(long)]
    host: Vec<String>,
    /// A DNS list zone's RFC 5782 test entry: 127.0.0.2 listed (A 127.0.0.2),
    /// so that a relay's health check of the zone passes.
    #[arg(long)]
    test_entry: Vec<String>,
    /// Where the number of queries answered so far is written.
    #[arg(long)]
    count_file: Option<std::path::PathBuf>,
    /// Time to live of every answer, negative ones included (seconds).
    #[arg(long, default_value_t = 300)]
    ttl: u32,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut records: HashMap<(String, RecordType), RData> = HashMap::new();
    for pair in &args.host {
        let (name, ip) = pair.split_once('=').context("--host takes HOSTNAME=IPV4")?;
        let ip: Ipv4Addr = ip.parse().with_context(|| format!("--host {pair}"))?;
        records.insert((key(name), RecordType::A), RData::A(A(ip)));
        let reverse = portcullis::dns::reverse_name(IpAddr::V4(ip));
        records.insert(
            (key(&reverse), RecordType::PTR),
            RData::PTR(PTR(Name::from_ascii(format!("{}.", key(name)))?)),
        );
    }
    for zone in &args.test_entry {
        let name = format!("2.0.0.127.{}", key(zone));
        records.insert(
            (name, RecordType::A),
            RData::A(A(Ipv4Addr::new(127, 0, 0, 2))),
        );
    }
    let socket = UdpSocket::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    if let Some(path) = args.count_file.clone() {
        tokio::spawn(crate::sink::write_count(
            std::sync::Arc::clone(&answered),
            path,
        ));
    }
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = socket.recv_from(&mut buf).await?;
        let Ok(query) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        if let Some(reply) = answer(&records, &query, args.ttl) {
            let _ = socket.send_to(&reply, peer).await;
            answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn answer(
    records: &HashMap<(String, RecordType), RData>,
    query: &Message,
    ttl: u32,
) -> Option<Vec<u8>> {
    let q = query.queries.first()?;
    let name = key(&q.name().to_ascii());
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata.message_type = MessageType::Response;
    reply.metadata.authoritative = true;
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.add_query(q.clone());
    match records.get(&(name.clone(), q.query_type())) {
        Some(data) => {
            reply.add_answer(Record::from_rdata(q.name().clone(), ttl, data.clone()));
        }
        None => {
            let exists = records.keys().any(|(n, _)| *n == name);
            reply.metadata.response_code = if exists {
                ResponseCode::NoError
            } else {
                ResponseCode::NXDomain
            };
            let root = Name::root();
            let soa = SOA::new(
                root.clone(),
                root.clone(),
                1,
                ttl as i32,
                ttl as i32,
                ttl as i32,
                ttl,
            );
            reply.add_authority(Record::from_rdata(root, ttl, RData::SOA(soa)));
        }
    }
    reply.to_vec().ok()
}
