//! The `faultlab` command line.

use clap::{Parser, Subcommand};

/// faultlab: run TCP fault scenarios across lab hosts.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show each agent's host, OS, kernel, boot id and version.
    Agents {
        /// Agent addresses (host:port).
        #[arg(required = true)]
        addresses: Vec<String>,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Agents { addresses } => {
            println!(
                "{:<22} {:<16} {:<28} {:<22} {:<8} {:<38}",
                "AGENT", "HOST", "OS", "KERNEL", "VERSION", "BOOT ID"
            );
            let mut unreachable = 0;
            for address in &addresses {
                match faultlab::agents::host_info(address).await {
                    Ok(info) => println!(
                        "{:<22} {:<16} {:<28} {:<22} {:<8} {:<38}",
                        address,
                        info.hostname,
                        info.os_version,
                        info.kernel_version,
                        info.agent_version,
                        info.boot_id
                    ),
                    Err(error) => {
                        unreachable += 1;
                        println!("{address:<22} unreachable: {error}");
                    }
                }
            }
            if unreachable > 0 {
                anyhow::bail!("{unreachable} of {} agents unreachable", addresses.len());
            }
            Ok(())
        }
    }
}
