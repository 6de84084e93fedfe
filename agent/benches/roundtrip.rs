//! Round trip of one agent command against a bare tonic service, measured in
//! the same run on loopback.
//!
//! - baseline: the standard gRPC health `Check` on a server with nothing else
//!   (tonic-health): what any tonic call costs here.
//! - `host_info`: an agent command answered by the agent itself.
//! - `send 1 byte`: an agent command that goes through a holder process and a
//!   real socket: gRPC → agent → pipe → holder → send() → back.
//!
//! Rounds interleave the three so machine noise hits them alike. Run:
//! `cargo bench -p faultlab-agent --bench roundtrip` (ITERATIONS=n to change).

#![allow(missing_docs)]

use faultlab_agent::AgentConfig;
use faultlab_proto::v1 as pb;
use pb::agent_client::AgentClient;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

struct Samples {
    name: &'static str,
    nanos: Vec<u64>,
}

impl Samples {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            nanos: Vec::new(),
        }
    }

    fn add(&mut self, elapsed: Duration) {
        self.nanos
            .push(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
    }

    fn percentile(&self, p: f64) -> f64 {
        let mut sorted = self.nanos.clone();
        sorted.sort_unstable();
        let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted.get(index).copied().unwrap_or(0) as f64 / 1_000.0
    }

    fn report(&self, baseline: Option<&Samples>) {
        let (p50, p99) = (self.percentile(0.5), self.percentile(0.99));
        let ratio = baseline.map_or(String::new(), |base| {
            format!("   {:.2}x baseline p50", p50 / base.percentile(0.5))
        });
        println!(
            "{:<28} p50 {p50:>8.1} us   p99 {p99:>8.1} us{ratio}",
            self.name
        );
    }
}

async fn start_agent() -> BenchResult<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let config = AgentConfig::new(PathBuf::from(env!("CARGO_BIN_EXE_faultlab-agent")));
    tokio::spawn(faultlab_agent::serve(
        listener,
        config,
        std::future::pending(),
    ));
    Ok(format!("http://{address}"))
}

async fn start_bare_tonic() -> BenchResult<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let (_reporter, health) = tonic_health::server::health_reporter();
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(incoming),
    );
    Ok(format!("http://{address}"))
}

/// A connection between two holders of the agent; returns the sending end.
async fn connection(agent: &mut AgentClient<tonic::transport::Channel>) -> BenchResult<u64> {
    let holder = |label: &str| pb::SpawnHolderRequest {
        label: label.to_owned(),
        session: String::new(),
    };
    let server = agent.spawn_holder(holder("server")).await?.into_inner();
    let client = agent.spawn_holder(holder("client")).await?.into_inner();
    let listening = agent
        .listen(pb::ListenRequest {
            holder_id: server.holder_id,
            address: "127.0.0.1:0".to_owned(),
            backlog: 1,
            options: None,
        })
        .await?
        .into_inner();
    let mut accepting = agent.clone();
    let accept = tokio::spawn(async move {
        accepting
            .accept(pb::AcceptRequest {
                listener_id: listening.listener_id,
                timeout_ms: 5_000,
            })
            .await
    });
    let dialled = agent
        .dial(pb::ConnectRequest {
            holder_id: client.holder_id,
            address: listening.local_address,
            options: None,
            timeout_ms: 5_000,
        })
        .await?
        .into_inner();
    accept.await??;
    Ok(dialled.conn_id)
}

async fn run(iterations: usize) -> BenchResult<()> {
    let mut agent = AgentClient::connect(start_agent().await?).await?;
    let bare_channel = tonic::transport::Endpoint::from_shared(start_bare_tonic().await?)?
        .connect()
        .await?;
    let mut bare = HealthClient::new(bare_channel);
    let conn_id = connection(&mut agent).await?;
    let send = || pb::SendRequest {
        conn_id,
        payload: Some(pb::send_request::Payload::Data(vec![b'x'])),
        timeout_ms: 1_000,
    };
    let check = || HealthCheckRequest {
        service: String::new(),
    };

    let mut baseline = Samples::new("bare tonic (health Check)");
    let mut host_info = Samples::new("agent HostInfo");
    let mut send_one = Samples::new("agent Send 1 byte (holder)");
    for round in 0..(iterations + iterations / 10) {
        let warm = round >= iterations / 10;
        let started = Instant::now();
        bare.check(check()).await?;
        let took = started.elapsed();
        if warm {
            baseline.add(took);
        }
        let started = Instant::now();
        agent.host_info(pb::HostInfoRequest {}).await?;
        let took = started.elapsed();
        if warm {
            host_info.add(took);
        }
        let started = Instant::now();
        let sent = agent.send(send()).await?.into_inner();
        let took = started.elapsed();
        if sent.outcome() != pb::Outcome::Ok {
            return Err(format!("send failed: {sent:?}").into());
        }
        if warm {
            send_one.add(took);
        }
    }
    println!("{iterations} round trips each, loopback, one client connection:");
    baseline.report(None);
    host_info.report(Some(&baseline));
    send_one.report(Some(&baseline));
    Ok(())
}

fn main() -> BenchResult<()> {
    let iterations = std::env::var("ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(5_000);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(iterations))
}
