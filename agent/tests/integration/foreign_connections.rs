//! Connections the agent does not own: a plain program's sockets (this test
//! process's own std sockets stand in for the application) are listed with
//! their states and, with the `process` capability, destroyed by 4-tuple:
//! the peer reads ECONNRESET, the owner ECONNABORTED. Destroying needs
//! CAP_NET_ADMIN (CI runs as root).

use crate::common;

use common::{AgentProcess, Host, TestResult};
use faultlab_proto::v1 as pb;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;
use tonic::Code;

async fn agent(allow_process: bool) -> Result<Host, Box<dyn std::error::Error>> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_faultlab-agent"));
    command.args(["--listen", "127.0.0.1:0"]);
    if allow_process {
        command.args(["--allow", "process"]);
    }
    Host::attach(AgentProcess::start_with(command)?).await
}

#[tokio::test]
async fn another_programs_connection_is_listed_and_aborted_by_its_four_tuple() -> TestResult {
    let mut host = agent(true).await?;
    let info = host
        .rpc
        .host_info(pb::HostInfoRequest {})
        .await?
        .into_inner();
    assert!(info.capabilities.iter().any(|c| c == "process"));
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let server_address = listener.local_addr()?;
    let mut client = TcpStream::connect(server_address)?;
    let (mut server, _) = listener.accept()?;
    let client_address = client.local_addr()?;
    // The peer closes: the server, which does not, is left in CLOSE-WAIT.
    let peer = TcpStream::connect(server_address)?;
    let (lingering, _) = listener.accept()?;
    drop(peer);
    std::thread::sleep(Duration::from_millis(50));

    let listed = host
        .rpc
        .list_connections(pb::ListConnectionsRequest {
            filter: Some(pb::ConnectionFilter {
                local_port: u32::from(server_address.port()),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .connections;
    let states: Vec<(&str, &str)> = listed
        .iter()
        .map(|c| (c.remote_address.as_str(), c.state_name.as_str()))
        .collect();
    assert_eq!(listed.len(), 2, "{states:?}");
    assert!(
        listed
            .iter()
            .any(|c| c.remote_address == client_address.to_string()
                && c.state == pb::TcpState::Established as i32),
        "{states:?}"
    );
    assert!(
        listed.iter().any(|c| c.state_name == "CLOSE-WAIT"),
        "{states:?}"
    );

    let aborted = host
        .rpc
        .abort_connections(pb::AbortConnectionsRequest {
            filter: Some(pb::ConnectionFilter {
                local: server_address.to_string(),
                remote: client_address.to_string(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .aborted;
    assert_eq!(aborted.len(), 1, "{aborted:?}");
    client.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buffer = [0u8; 16];
    let read = client.read(&mut buffer);
    assert_eq!(
        read.as_ref().map_err(std::io::Error::raw_os_error).err(),
        Some(Some(104)), // ECONNRESET
        "the client should read ECONNRESET: {read:?}"
    );
    let wrote = server.write(b"late");
    assert_eq!(
        wrote.map_err(|error| error.raw_os_error()).err(),
        Some(Some(103)), // ECONNABORTED
        "the owner of a destroyed socket gets ECONNABORTED"
    );
    drop(lingering);
    Ok(())
}

#[tokio::test]
async fn aborting_needs_the_process_capability_and_a_narrow_filter() -> TestResult {
    let mut plain = agent(false).await?;
    let denied = plain
        .rpc
        .abort_connections(pb::AbortConnectionsRequest {
            filter: Some(pb::ConnectionFilter {
                local_port: 9,
                ..Default::default()
            }),
        })
        .await
        .err()
        .ok_or("abort without the capability was accepted")?;
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("--allow process"), "{denied:?}");
    let fault = plain
        .rpc
        .process_fault(pb::ProcessFaultRequest {
            target: Some(pb::process_fault_request::Target::Pid(1)),
            action: pb::ProcessAction::Kill as i32,
        })
        .await
        .err()
        .ok_or("a process fault without the capability was accepted")?;
    assert_eq!(fault.code(), Code::PermissionDenied);

    let mut allowed = agent(true).await?;
    let everything = allowed
        .rpc
        .abort_connections(pb::AbortConnectionsRequest {
            filter: Some(pb::ConnectionFilter::default()),
        })
        .await
        .err()
        .ok_or("aborting every connection of the host was accepted")?;
    assert_eq!(everything.code(), Code::InvalidArgument, "{everything:?}");
    let itself = allowed
        .rpc
        .process_fault(pb::ProcessFaultRequest {
            target: Some(pb::process_fault_request::Target::Pid(
                allowed.process.pid(),
            )),
            action: pb::ProcessAction::Kill as i32,
        })
        .await
        .err()
        .ok_or("the agent agreed to kill itself")?;
    assert_eq!(itself.code(), Code::FailedPrecondition, "{itself:?}");
    Ok(())
}
