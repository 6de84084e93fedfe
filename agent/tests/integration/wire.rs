//! Wire evidence: what the agents' captures saw, on two network-namespace
//! hosts (needs root), for the cases whose proof is on the wire.

use crate::common;

use common::netns::NetLab;
use common::{Host, TestResult};
use faultlab_proto::v1 as pb;

async fn start(host: &mut Host, id: &str, port: u16) -> TestResult {
    host.rpc
        .start_capture(pb::StartCaptureRequest {
            id: id.to_owned(),
            ports: vec![u32::from(port)],
        })
        .await?;
    Ok(())
}

async fn stop(
    host: &mut Host,
    id: &str,
) -> Result<Vec<pb::WireSegment>, Box<dyn std::error::Error>> {
    Ok(host
        .rpc
        .stop_capture(pb::StopCaptureRequest { id: id.to_owned() })
        .await?
        .into_inner()
        .segments)
}

fn show(label: &str, segments: &[pb::WireSegment]) {
    for segment in segments {
        eprintln!(
            "{label}: {} > {} {} len {}",
            segment.source, segment.destination, segment.flags, segment.payload
        );
    }
}

/// Two hosts, a connection from host 0 to port `port` of host 1, captures on both.
async fn connected(
    lab: &NetLab,
    port: u16,
) -> Result<(Host, Host, u64, u64), Box<dyn std::error::Error>> {
    let mut client = lab.agent(0, &[]).await?;
    let mut server = lab.agent(1, &[]).await?;
    let info = server
        .rpc
        .host_info(pb::HostInfoRequest {})
        .await?
        .into_inner();
    assert!(
        info.capabilities.contains(&"capture".to_owned()),
        "{info:?}"
    );
    start(&mut client, "case", port).await?;
    start(&mut server, "case", port).await?;
    let client_holder = client.holder("client").await?;
    let server_holder = server.holder("server").await?;
    let listening = server
        .listen_on(server_holder, format!("{}:{port}", lab.ip(1)))
        .await?;
    let dialled = client
        .dial(client_holder, &listening.local_address, None)
        .await?;
    let accepted = server.accept(listening.listener_id).await?;
    Ok((client, server, dialled.conn_id, accepted.conn_id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_puts_a_reset_and_no_fin_on_the_wire() -> TestResult {
    let lab = NetLab::new(2)?;
    let server_address = format!("{}:7007", lab.ip(1));
    let (mut client, mut server, client_conn, server_conn) = connected(&lab, 7007).await?;
    server.send_data(server_conn, &[1u8; 500]).await?;
    let aborted = server.close(server_conn, pb::CloseMode::Abort).await?;
    let read = client.recv_to_end(client_conn).await?;
    assert_eq!(read.error_name, "ECONNRESET");
    let (sent, seen) = (
        stop(&mut server, "case").await?,
        stop(&mut client, "case").await?,
    );
    show("server", &sent);
    show("client", &seen);

    let from_server = |segments: &[pb::WireSegment]| -> Vec<String> {
        segments
            .iter()
            .filter(|segment| segment.source == server_address)
            .map(|segment| segment.flags.clone())
            .collect()
    };
    for (view, segments) in [("server", &sent), ("client", &seen)] {
        let flags = from_server(segments);
        assert!(
            flags.iter().any(|flags| flags.contains('R')),
            "{view} saw no RST from the server: {flags:?}"
        );
        assert!(
            !flags.iter().any(|flags| flags.contains('F')),
            "{view} saw a FIN from the server: {flags:?}"
        );
        assert_eq!(
            flags.first().map(String::as_str),
            Some("S."),
            "{view}: the handshake comes first"
        );
    }
    // The reset left the server after the abort began, on the same clock.
    let reset = sent
        .iter()
        .find(|segment| segment.flags.contains('R'))
        .ok_or("no reset")?;
    assert!(reset.mono_ns >= aborted.start_mono_ns);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_close_sends_its_fin_after_all_the_data() -> TestResult {
    let lab = NetLab::new(2)?;
    let client_ip = lab.ip(0).to_string();
    let (mut client, mut server, client_conn, server_conn) = connected(&lab, 7008).await?;
    client.send_messages(client_conn, 1_000, 100).await?;
    client.close(client_conn, pb::CloseMode::Graceful).await?;
    let read = server.recv_to_end(server_conn).await?;
    assert_eq!((read.outcome(), read.bytes), (pb::Outcome::Eof, 100_000));
    let seen = stop(&mut server, "case").await?;
    stop(&mut client, "case").await?;
    let from_client: Vec<&pb::WireSegment> = seen
        .iter()
        .filter(|segment| segment.source.starts_with(&format!("{client_ip}:")))
        .collect();
    let fin = from_client
        .iter()
        .position(|segment| segment.flags.contains('F'))
        .ok_or("the server saw no FIN from the client")?;
    let before: u64 = from_client[..=fin]
        .iter()
        .map(|segment| u64::from(segment.payload))
        .sum();
    let after: u64 = from_client[fin + 1..]
        .iter()
        .map(|segment| u64::from(segment.payload))
        .sum();
    eprintln!(
        "{} segments from the client; FIN at #{fin}",
        from_client.len()
    );
    assert_eq!(
        (before, after),
        (100_000, 0),
        "every byte before the FIN, none after"
    );
    assert!(
        !from_client
            .iter()
            .any(|segment| segment.flags.contains('R'))
    );
    Ok(())
}
