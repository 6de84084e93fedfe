//! Footprint of an agent holding many connections: N TCP connections
//! between two holders of one agent process on loopback; the agent's and
//! the holders' resident memory before and after.
//!
//!     cargo bench -p faultlab-agent --bench held [-- N]      (default 10 000)
//!
//! Runs the release agent with its open-files limit raised to the hard limit
//! (its systemd unit sets 65536).

use faultlab_proto::v1 as pb;
use pb::agent_client::AgentClient;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> BenchResult<()> {
    let count: u32 = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(10_000);
    let mut agent = Command::new("sh")
        .args([
            "-c",
            concat!(
                "ulimit -n \"$(ulimit -Hn)\" && exec ",
                env!("CARGO_BIN_EXE_faultlab-agent"),
                " --listen 127.0.0.1:0"
            ),
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = agent.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let address = line
        .trim()
        .strip_prefix("listening on ")
        .ok_or("no address")?;
    let mut client = AgentClient::connect(format!("http://{address}")).await?;
    let idle = rss_kib(agent.id());
    let spawn = |label: &str| pb::SpawnHolderRequest {
        label: label.to_owned(),
        session: String::new(),
    };
    let server = client.spawn_holder(spawn("server")).await?.into_inner();
    let dialer = client.spawn_holder(spawn("client")).await?.into_inner();
    let listening = client
        .listen(pb::ListenRequest {
            holder_id: server.holder_id,
            address: "127.0.0.1:0".to_owned(),
            backlog: 4096,
            options: None,
        })
        .await?
        .into_inner();
    let holders_before = rss_kib(server.pid) + rss_kib(dialer.pid);
    let started = std::time::Instant::now();
    for _ in 0..count {
        let dialled = client
            .dial(pb::ConnectRequest {
                holder_id: dialer.holder_id,
                address: listening.local_address.clone(),
                options: None,
                timeout_ms: 5_000,
            })
            .await?
            .into_inner();
        if dialled.conn_id == 0 {
            return Err(format!("connect failed: {:?}", dialled.observation).into());
        }
        client
            .accept(pb::AcceptRequest {
                listener_id: listening.listener_id,
                timeout_ms: 5_000,
            })
            .await?;
    }
    let took = started.elapsed();
    let agent_after = rss_kib(agent.id());
    let holders_after = rss_kib(server.pid) + rss_kib(dialer.pid);
    println!(
        "{count} connections held ({} sockets) in {took:.1?}: agent RSS {:.1} → {:.1} MiB; \
         its two holders {:.1} → {:.1} MiB; total {:.1} MiB",
        2 * count,
        mib(idle),
        mib(agent_after),
        mib(holders_before),
        mib(holders_after),
        mib(agent_after + holders_after)
    );
    let _ = agent.kill();
    let _ = agent.wait();
    Ok(())
}
