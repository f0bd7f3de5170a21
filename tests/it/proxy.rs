//! PROXY protocol behind a real HAProxy (v1 and v2), and hand-written headers
//! for the cases HAProxy would never send.

use crate::support::client::{SmtpClient, tcp_from};
use crate::support::free_port;
use crate::support::server::TestServer;
use tokio::io::AsyncWriteExt;

async fn relay_verdict(addr: std::net::SocketAddr, source: &str) -> u16 {
    let mut c = SmtpClient::greeted(addr, source, "client.test").await;
    c.expect("MAIL FROM:<a@client.test>", 250).await;
    c.cmd("RCPT TO:<far@elsewhere.example>").await.code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_behind_haproxy_sets_the_client() {
    let server = TestServer::start(
        "[[listener]]\naddress = \"127.0.0.1:0\"\nproxy_protocol = true\nproxy_from = [\"127.0.0.1\"]\n[[network]]\nrange = \"127.0.0.2\"\nauth = \"none\"\n",
    )
    .await;
    let (v1, v2) = (free_port("127.0.0.98"), free_port("127.0.0.98"));
    let dir = tempfile::tempdir().unwrap();
    let _haproxy = crate::support::haproxy::start(
        dir.path(),
        &format!(
            "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\nfrontend v1\n  bind 127.0.0.98:{v1}\n  default_backend relay_v1\nfrontend v2\n  bind 127.0.0.98:{v2}\n  default_backend relay_v2\nbackend relay_v1\n  server portcullis {addr} send-proxy\nbackend relay_v2\n  server portcullis {addr} send-proxy-v2\n",
            addr = server.addr()
        ),
        ("127.0.0.98", v2),
    );
    for port in [v1, v2] {
        let front: std::net::SocketAddr = format!("127.0.0.98:{port}").parse().unwrap();
        // The LAN client behind the proxy may relay; an outsider may not.
        assert_eq!(relay_verdict(front, "127.0.0.2").await, 250, "port {port}");
        assert_eq!(relay_verdict(front, "127.0.3.5").await, 554, "port {port}");
    }
    // Not a proxy: refused before any banner.
    let mut direct = SmtpClient::connect_raw(server.addr(), "127.0.0.5").await;
    assert!(
        direct.closed().await,
        "a connection not from proxy_from is refused"
    );
    // A malformed header from the proxy's address: refused.
    let mut bad = tcp_from("127.0.0.1", server.addr()).await;
    bad.write_all(b"PROXY TCP4 not-an-address\r\nEHLO x\r\n")
        .await
        .unwrap();
    assert!(SmtpClient::from_stream(bad).closed().await);
    // A hand-written v1 header is read exactly: the dialogue follows intact.
    let mut ok = tcp_from("127.0.0.1", server.addr()).await;
    ok.write_all(b"PROXY TCP4 127.0.0.2 127.0.0.1 40000 25\r\n")
        .await
        .unwrap();
    let mut c = SmtpClient::from_stream(ok);
    assert_eq!(c.read_reply().await.code, 220);
    c.expect("EHLO lan.test", 250).await;
    c.expect("MAIL FROM:<a@client.test>", 250).await;
    c.expect("RCPT TO:<far@elsewhere.example>", 250).await;
}

/// A header that arrives in pieces is waited for, wherever it is cut: cut
/// after "40000 " the v1 line once read as a malformed (empty) port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_split_across_segments_is_waited_for() {
    let server = TestServer::start(
        "[[listener]]\naddress = \"127.0.0.1:0\"\nproxy_protocol = true\nproxy_from = [\"127.0.0.1\"]\n[[network]]\nrange = \"127.0.0.2\"\nauth = \"none\"\n",
    )
    .await;
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    v2.extend_from_slice(&[127, 0, 0, 2, 127, 0, 0, 1, 0x9c, 0x40, 0, 25]);
    let v1 = b"PROXY TCP4 127.0.0.2 127.0.0.1 40000 25\r\n".to_vec();
    for (header, cut) in [(v1.clone(), 37), (v1, 6), (v2.clone(), 5), (v2, 20)] {
        let mut tcp = tcp_from("127.0.0.1", server.addr()).await;
        tcp.set_nodelay(true).unwrap();
        tcp.write_all(&header[..cut]).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        tcp.write_all(&header[cut..]).await.unwrap();
        let mut c = SmtpClient::from_stream(tcp);
        assert_eq!(c.read_reply().await.code, 220, "cut at {cut}");
        c.expect("EHLO lan.test", 250).await;
        c.expect("MAIL FROM:<a@client.test>", 250).await;
        // The client the header names (a LAN address) may relay.
        c.expect("RCPT TO:<far@elsewhere.example>", 250).await;
    }
}

/// The load balancer's own health checks (PROXY v2 LOCAL, no client) are
/// not held to the per-address rate cap: a check every 300 ms must not
/// lock HAProxy out and take the node out of service. A client behind
/// it is still held to the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_from_the_proxy_skip_the_rate_cap() {
    let server = TestServer::start(
        "[server]\nmax_connection_rate_per_ip = 3\n[[listener]]\naddress = \"127.0.0.1:0\"\nproxy_protocol = true\nproxy_from = [\"127.0.0.1\"]\n",
    )
    .await;
    // Signature, version 2 + LOCAL, family unspecified, no addresses.
    let local = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";
    for i in 0..8 {
        let mut tcp = tcp_from("127.0.0.1", server.addr()).await;
        tcp.write_all(local).await.unwrap();
        let mut c = SmtpClient::from_stream(tcp);
        assert_eq!(c.read_reply().await.code, 220, "health check {i}");
        c.expect("QUIT", 221).await;
    }
    let mut codes = Vec::new();
    for _ in 0..5 {
        let mut tcp = tcp_from("127.0.0.1", server.addr()).await;
        tcp.write_all(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\n")
            .await
            .unwrap();
        codes.push(SmtpClient::from_stream(tcp).read_reply().await.code);
    }
    assert_eq!(
        codes,
        [220, 220, 220, 421, 421],
        "a proxied client is held to the cap"
    );
}
