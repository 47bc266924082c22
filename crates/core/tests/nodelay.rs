//! Every HTTPS connection between roles runs with TCP_NODELAY on both ends: requests and
//! answers are small and each waits for the other, so Nagle's algorithm plus delayed ACKs
//! would add tens of milliseconds to every round trip.
#![cfg(target_os = "linux")]

use mcloud_core::server::serve;
use mcloud_core::tls::{client, default_names, NodeIdentity};
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;

/// (local, peer, nodelay) of every connected TCP socket this process holds.
fn connected_sockets() -> Vec<(SocketAddr, SocketAddr, bool)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").expect("reading /proc/self/fd") {
        let Ok(entry) = entry else { continue };
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if !is_socket {
            continue;
        }
        // SAFETY: the descriptor is open (listed just now) and only borrowed for the three
        // queries below; a descriptor closed meanwhile makes them fail, which is skipped.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let sock = socket2::SockRef::from(&fd);
        let (Ok(local), Ok(peer), Ok(nodelay)) =
            (sock.local_addr(), sock.peer_addr(), sock.tcp_nodelay())
        else {
            continue;
        };
        if let (Some(local), Some(peer)) = (local.as_socket(), peer.as_socket()) {
            out.push((local, peer, nodelay));
        }
    }
    out
}

#[tokio::test]
async fn server_and_client_connections_run_without_nagle() {
    let identity = NodeIdentity::generate(&default_names()).unwrap();
    let router = axum::Router::new().route("/v1/health", axum::routing::get(|| async { "ok" }));
    let roots = std::sync::Arc::new(
        mcloud_core::auth::peer::PartyRoots::new(std::slice::from_ref(&identity.ca_pem)).unwrap(),
    );
    let server = serve(router, "127.0.0.1:0".parse().unwrap(), &identity, roots)
        .await
        .unwrap();
    let http = client(std::slice::from_ref(&identity.ca_pem)).unwrap();
    let answer = http
        .get(format!("{}/v1/health", server.url()))
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success());
    // The keep-alive connection is still open: look at both of its ends.
    let sockets = connected_sockets();
    let server_side: Vec<_> = sockets.iter().filter(|s| s.0 == server.addr).collect();
    let client_side: Vec<_> = sockets.iter().filter(|s| s.1 == server.addr).collect();
    assert!(
        !server_side.is_empty(),
        "no accepted connection found in {sockets:?}"
    );
    assert!(
        !client_side.is_empty(),
        "no client connection found in {sockets:?}"
    );
    for (local, peer, nodelay) in server_side.iter().chain(&client_side) {
        assert!(
            nodelay,
            "connection {local} -> {peer} runs without TCP_NODELAY"
        );
    }
    server.shutdown().await;
}
