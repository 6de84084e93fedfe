//! `faultlab connections`: every program's TCP connections on the agents'
//! hosts, with their states.

use super::{AgentsGiven, TlsArgs, say, say_unreachable};
use faultlab_proto::v1 as pb;
use std::io::Write;

/// Which agents, and which connections.
#[derive(clap::Args)]
pub struct ConnectionsArgs {
    #[command(flatten)]
    given: AgentsGiven,
    /// Only connections with this local port.
    #[arg(long)]
    port: Option<u16>,
    /// Only connections with this remote address (or address:port).
    #[arg(long)]
    remote: Option<String>,
    /// Listening sockets too.
    #[arg(long)]
    listening: bool,
}

/// Print a line per connection; whether every agent answered.
pub async fn connections(args: ConnectionsArgs, tls: &TlsArgs) -> anyhow::Result<bool> {
    let filter = pb::ConnectionFilter {
        local_port: args.port.map_or(0, u32::from),
        remote: args.remote.unwrap_or_default(),
        local: String::new(),
        include_listening: args.listening,
    };
    let (entries, connector) = args.given.entries(tls)?;
    say!(
        "{:<14} {:<11} {:<28} {:<28} {:>8} {:>8}",
        "AGENT",
        "STATE",
        "LOCAL",
        "REMOTE",
        "RECV-Q",
        "SEND-Q"
    );
    let mut all_answered = true;
    for (name, address) in entries {
        match connector.connections(&address, filter.clone()).await {
            Ok(found) => {
                for connection in found {
                    say!(
                        "{:<14} {:<11} {:<28} {:<28} {:>8} {:>8}",
                        name,
                        connection.state_name,
                        connection.local_address,
                        connection.remote_address,
                        connection.recv_queue,
                        connection.send_queue
                    );
                }
            }
            Err(error) => {
                all_answered = false;
                say_unreachable(&name, &error)?;
            }
        }
    }
    Ok(all_answered)
}
