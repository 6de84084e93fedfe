//! Every case of the catalogue (shared/CASES.md) that needs no network
//! isolation, played by two real agent processes on loopback through the
//! gRPC API. Each test asserts what Linux really gives (measured on kernel
//! 6.x); where the seed saw something else on Windows, a comment says so.

use crate::common;

use common::{MODE_ALL, Pair, TestResult, outcome};
use faultlab_proto::v1 as pb;
use pb::{CloseMode, Outcome};
use std::time::Duration;

const MESSAGE_COUNT: u32 = 1_000;
const MESSAGE_SIZE: u32 = 100;
const ALL_MESSAGES: u64 = MESSAGE_COUNT as u64 * MESSAGE_SIZE as u64;
/// Time for a segment and its answer to cross loopback before the next call.
/// Not a measured bound: the tests only need the answer to have arrived.
const SETTLE: Duration = Duration::from_millis(50);

fn show(label: &str, observation: &pb::Observation) {
    eprintln!(
        "{label}: {:?} bytes={} error={}({}) sigpipe={} unread={} took={}us",
        observation.outcome(),
        observation.bytes,
        observation.error_name,
        observation.os_error,
        observation.sigpipe,
        observation.unread_bytes,
        observation
            .end_mono_ns
            .saturating_sub(observation.start_mono_ns)
            / 1_000
    );
}

/// S2: the client sends many messages then closes: the server gets them all, then EOF.
/// Seed (Windows) says the same.
#[tokio::test]
async fn s2_graceful_close_delivers_every_message_then_eof() -> TestResult {
    let mut lab = Pair::connect().await?;
    let sent = lab
        .client
        .send_messages(lab.client_conn, MESSAGE_COUNT, MESSAGE_SIZE)
        .await?;
    assert_eq!(sent.outcome(), Outcome::Ok);
    assert_eq!(sent.messages, u64::from(MESSAGE_COUNT));
    let closed = lab
        .client
        .close(lab.client_conn, CloseMode::Graceful)
        .await?;
    assert_eq!(closed.outcome(), Outcome::Ok);

    let received = lab.server.recv_to_end(lab.server_conn).await?;
    show("server recv", &received);
    assert_eq!(received.outcome(), Outcome::Eof);
    assert_eq!(received.bytes, ALL_MESSAGES);
    Ok(())
}

/// S3: the client sends many messages, then its process exits without closing.
/// Linux: the kernel closes the socket like close(): all messages, then EOF.
/// Seed (Windows client): part of the messages, then WSAECONNRESET 10054.
#[tokio::test]
async fn s3_exit_without_close_delivers_every_message_then_eof_on_linux() -> TestResult {
    let mut lab = Pair::connect().await?;
    let sent = lab
        .client
        .send_messages(lab.client_conn, MESSAGE_COUNT, MESSAGE_SIZE)
        .await?;
    assert_eq!(sent.outcome(), Outcome::Ok);
    let exit = lab
        .client
        .rpc
        .exit_holder(pb::ExitHolderRequest {
            holder_id: lab.client_holder,
            exit_code: 3,
        })
        .await?
        .into_inner();
    assert_eq!((exit.exit_code, exit.signal), (Some(3), None));

    let received = lab.server.recv_to_end(lab.server_conn).await?;
    show("server recv", &received);
    assert_eq!(received.outcome(), Outcome::Eof);
    assert_eq!(received.bytes, ALL_MESSAGES);
    Ok(())
}

/// S4: the client is killed (SIGKILL) while sending flat out.
/// Linux: the kernel still sends what was queued, then FIN: the server's
/// reader sees EOF, not a reset. Seed (Windows): WSAECONNRESET 10054 quickly.
#[tokio::test]
async fn s4_kill_while_sending_ends_in_eof_on_linux() -> TestResult {
    let mut lab = Pair::connect().await?;
    lab.server
        .rpc
        .watch(pb::WatchRequest {
            conn_id: lab.server_conn,
        })
        .await?;
    let mut sender = lab.client.rpc.clone();
    let conn_id = lab.client_conn;
    let sending = tokio::spawn(async move {
        sender
            .send(pb::SendRequest {
                conn_id,
                payload: Some(pb::send_request::Payload::ByteCount(1 << 34)),
                timeout_ms: 20_000,
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let killed = lab
        .client
        .rpc
        .kill_holder(pb::KillHolderRequest {
            holder_id: lab.client_holder,
        })
        .await?
        .into_inner();
    assert_eq!(killed.signal, Some(9));

    // The send in flight ends with the holder: the agent says so, and lives on.
    let interrupted = sending.await?;
    let status = interrupted.err().ok_or("a send cut by a kill must fail")?;
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("signal 9"), "{status:?}");
    let kind = status.metadata().get("faultlab-error");
    assert_eq!(
        kind.and_then(|value| value.to_str().ok()),
        Some("holder-gone")
    );

    let ended = lab
        .server
        .connection_ended(lab.server_conn, Duration::from_secs(10))
        .await?;
    show("server watch", &ended);
    assert_eq!(ended.outcome(), Outcome::Eof);
    assert!(ended.bytes > 0);
    eprintln!(
        "detected {} us after the kill",
        ended.end_mono_ns.saturating_sub(killed.mono_ns) / 1_000
    );
    Ok(())
}

/// S5: the client closes normally; the server, not yet aware, sends.
/// Linux: the first send succeeds (the closed socket answers RST), a later
/// one fails with EPIPE 32 (SIGPIPE suppressed and reported).
/// Seed (Windows): WSAECONNABORTED 10053.
#[tokio::test]
async fn s5_send_after_peer_close_fails_with_epipe() -> TestResult {
    let mut lab = Pair::connect().await?;
    lab.client
        .close(lab.client_conn, CloseMode::Graceful)
        .await?;
    tokio::time::sleep(SETTLE).await;

    let first = lab
        .server
        .send_data(lab.server_conn, b"are you there?")
        .await?;
    show("server send 1", &first);
    assert_eq!(first.outcome(), Outcome::Ok);
    tokio::time::sleep(SETTLE).await;
    let second = lab.server.send_data(lab.server_conn, b"hello?").await?;
    show("server send 2", &second);
    assert_eq!(second.outcome(), Outcome::Error);
    assert_eq!((second.os_error, second.error_name.as_str()), (32, "EPIPE"));
    assert!(second.sigpipe);
    Ok(())
}

/// C1: the server closes; the client sends twice: the first succeeds, the
/// second fails with EPIPE 32 and would raise SIGPIPE.
/// Seed (Windows): the second fails with WSAECONNABORTED 10053.
#[tokio::test]
async fn c1_second_send_after_server_close_fails_with_epipe() -> TestResult {
    let mut lab = Pair::connect().await?;
    lab.server
        .close(lab.server_conn, CloseMode::Graceful)
        .await?;
    tokio::time::sleep(SETTLE).await;

    let first = lab.client.send_data(lab.client_conn, b"first").await?;
    show("client send 1", &first);
    assert_eq!(first.outcome(), Outcome::Ok);
    tokio::time::sleep(SETTLE).await;
    let second = lab.client.send_data(lab.client_conn, b"second").await?;
    show("client send 2", &second);
    assert_eq!(second.outcome(), Outcome::Error);
    assert_eq!(second.error_name, "EPIPE");
    assert!(second.sigpipe);
    Ok(())
}

/// C2: the server sends data then closes; the client sends one packet
/// (provoking RST), then receives.
/// Linux: all the data, then a normal EOF (as the seed says for Linux).
/// Seed (Windows): recv fails with WSAECONNABORTED 10053.
#[tokio::test]
async fn c2_data_then_eof_survive_the_reset_on_linux() -> TestResult {
    let mut lab = Pair::connect().await?;
    let sent = lab
        .server
        .send_messages(lab.server_conn, MESSAGE_COUNT, MESSAGE_SIZE)
        .await?;
    assert_eq!(sent.outcome(), Outcome::Ok);
    lab.server
        .close(lab.server_conn, CloseMode::Graceful)
        .await?;
    tokio::time::sleep(SETTLE).await;

    let provoking = lab.client.send_data(lab.client_conn, b"late").await?;
    show("client send", &provoking);
    assert_eq!(provoking.outcome(), Outcome::Ok);
    tokio::time::sleep(SETTLE).await;
    let received = lab.client.recv_to_end(lab.client_conn).await?;
    show("client recv", &received);
    assert_eq!(received.outcome(), Outcome::Eof);
    assert_eq!(received.bytes, ALL_MESSAGES);
    Ok(())
}

/// C3: the server closes while data it never read sits in its receive
/// buffer: the kernel sends RST instead of FIN, and the client's recv fails
/// with ECONNRESET 104 (seed, Windows: 10054).
#[tokio::test]
async fn c3_close_with_unread_data_resets_the_peer() -> TestResult {
    let mut lab = Pair::connect().await?;
    lab.client.send_data(lab.client_conn, b"never read").await?;
    let closed = lab
        .server
        .close(lab.server_conn, CloseMode::WithUnread)
        .await?;
    show("server close", &closed);
    assert_eq!(closed.outcome(), Outcome::Ok);
    assert_eq!(closed.unread_bytes, 10);

    let received = lab.client.recv_to_end(lab.client_conn).await?;
    show("client recv", &received);
    assert_eq!(received.outcome(), Outcome::Error);
    assert_eq!(
        (received.os_error, received.error_name.as_str()),
        (104, "ECONNRESET")
    );
    Ok(())
}

/// C3, the overtaking part: data the server sent before its reset is still
/// in the client's receive buffer. Linux still hands that data to recv()
/// before reporting ECONNRESET; the seed saw the RST overtake it on Windows.
#[tokio::test]
async fn c3_data_already_received_is_read_before_the_reset_on_linux() -> TestResult {
    let mut lab = Pair::connect().await?;
    lab.server.send_data(lab.server_conn, &[7u8; 1000]).await?;
    lab.client.send_data(lab.client_conn, b"never read").await?;
    let closed = lab
        .server
        .close(lab.server_conn, CloseMode::WithUnread)
        .await?;
    assert!(closed.unread_bytes > 0);
    tokio::time::sleep(SETTLE).await;

    let received = lab.client.recv_to_end(lab.client_conn).await?;
    show("client recv", &received);
    assert_eq!(received.outcome(), Outcome::Error);
    assert_eq!(received.error_name, "ECONNRESET");
    assert_eq!(received.bytes, 1000);
    Ok(())
}

/// A1: close with SO_LINGER {on, 0} while data is still queued: RST, the
/// queued data is discarded, the peer's recv fails with ECONNRESET.
#[tokio::test]
async fn a1_linger_abort_discards_queued_data_and_resets() -> TestResult {
    let small_buffers = pb::SocketOptions {
        recv_buffer_bytes: Some(16 * 1024),
        ..Default::default()
    };
    let mut lab = Pair::connect_with(Some(small_buffers), None).await?;
    // Fill the client's receive buffer and the server's send buffer.
    let sent = lab
        .server
        .send(
            lab.server_conn,
            pb::send_request::Payload::ByteCount(64 << 20),
            300,
        )
        .await?;
    show("server send", &sent);
    assert_eq!(
        sent.outcome(),
        Outcome::Timeout,
        "the peer reads nothing: send must block"
    );
    let aborted = lab.server.close(lab.server_conn, CloseMode::Abort).await?;
    assert_eq!(aborted.outcome(), Outcome::Ok);

    let received = lab.client.recv_to_end(lab.client_conn).await?;
    show("client recv", &received);
    assert_eq!(received.outcome(), Outcome::Error);
    assert_eq!(received.error_name, "ECONNRESET");
    assert!(
        received.bytes < sent.bytes,
        "the abort must discard queued data: received {} of {}",
        received.bytes,
        sent.bytes
    );
    Ok(())
}

/// A1 seen by a watcher: the background reader reports the reset, with the
/// time it was first seen.
#[tokio::test]
async fn a1_a_watcher_sees_the_reset_when_it_arrives() -> TestResult {
    let mut lab = Pair::connect().await?;
    lab.client
        .rpc
        .watch(pb::WatchRequest {
            conn_id: lab.client_conn,
        })
        .await?;
    let aborted = lab.server.close(lab.server_conn, CloseMode::Abort).await?;
    let ended = lab
        .client
        .connection_ended(lab.client_conn, Duration::from_secs(10))
        .await?;
    show("client watch", &ended);
    assert_eq!(ended.outcome(), Outcome::Error);
    assert_eq!(ended.error_name, "ECONNRESET");
    assert!(ended.end_mono_ns >= aborted.start_mono_ns);
    eprintln!(
        "reset seen {} us after the abort started",
        (ended.end_mono_ns - aborted.start_mono_ns) / 1_000
    );
    Ok(())
}

/// H1: shutdown(write): the peer reads EOF and can still answer; the
/// half-closed side still receives.
#[tokio::test]
async fn h1_half_close_still_receives_the_answer() -> TestResult {
    let mut lab = Pair::connect().await?;
    lab.client.send_data(lab.client_conn, b"request").await?;
    let shut = lab
        .client
        .close(lab.client_conn, CloseMode::ShutdownWrite)
        .await?;
    assert_eq!(shut.call(), pb::Call::Shutdown);
    assert_eq!(shut.outcome(), Outcome::Ok);

    let request = lab.server.recv_to_end(lab.server_conn).await?;
    assert_eq!((request.outcome(), request.bytes), (Outcome::Eof, 7));
    let answer = lab
        .server
        .send_data(lab.server_conn, b"answer after your FIN")
        .await?;
    assert_eq!(answer.outcome(), Outcome::Ok);
    lab.server
        .close(lab.server_conn, CloseMode::Graceful)
        .await?;

    let received = lab.client.recv_to_end(lab.client_conn).await?;
    show("client recv", &received);
    assert_eq!((received.outcome(), received.bytes), (Outcome::Eof, 21));
    Ok(())
}

/// F1: connect to a port nobody listens on: ECONNREFUSED 111 (Windows 10061).
#[tokio::test]
async fn f1_connect_to_a_closed_port_is_refused() -> TestResult {
    let mut host = common::Host::start().await?;
    let holder = host.holder("client").await?;
    let (listener, address) = host.listen(holder, None).await?;
    host.rpc
        .stop_listening(pb::StopListeningRequest {
            listener_id: listener,
        })
        .await?;
    let dialled = host.dial(holder, &address, None).await?;
    assert_eq!(dialled.conn_id, 0);
    assert_eq!(outcome(&dialled.observation), Outcome::Error);
    let observation = dialled.observation.ok_or("no observation")?;
    show("client connect", &observation);
    assert_eq!(observation.call(), pb::Call::Connect);
    assert_eq!(
        (observation.os_error, observation.error_name.as_str()),
        (111, "ECONNREFUSED")
    );
    Ok(())
}

/// The receive side's view is what the scenario asks: RECV_MODE_ALL with a
/// byte limit stops at the limit and says OK.
#[tokio::test]
async fn recv_all_stops_at_its_limit() -> TestResult {
    let mut lab = Pair::connect().await?;
    lab.client.send_messages(lab.client_conn, 10, 100).await?;
    let part = lab
        .server
        .recv(lab.server_conn, MODE_ALL, 250, 5_000)
        .await?;
    assert_eq!((part.outcome(), part.bytes), (Outcome::Ok, 250));
    let nothing_more = lab
        .server
        .recv(lab.server_conn, MODE_ALL, 1_000, 200)
        .await?;
    assert_eq!(
        (nothing_more.outcome(), nothing_more.bytes),
        (Outcome::Timeout, 750)
    );
    Ok(())
}
