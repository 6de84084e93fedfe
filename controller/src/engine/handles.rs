//! Who and what a run talks to: the agents (client, host, clock offset),
//! the applications under test placed among them, and the run clock every
//! time is put on.

use crate::agents::{self, AgentsError};
use crate::inventory::Inventory;
use crate::lab::outside::LabSide;
use crate::report::AgentReport;
use crate::targets::{Target, TargetHost};
use faultlab_proto::Capability;
use faultlab_proto::v1 as pb;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Clock samples taken per agent to measure its offset.
const CLOCK_SAMPLES: usize = 8;
/// How long an agent whose host may be booting gets to answer.
const BOOT_CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// A clock offset older than this is measured again before the next case:
/// two clocks drift apart (tens of µs per second between hosts without
/// NTP), and a long run must not carry its first offset to the end.
pub(super) const CLOCK_REFRESH: Duration = Duration::from_secs(30);

/// Nanoseconds since the run started, on the controller.
#[derive(Clone, Copy, Debug)]
pub struct RunClock {
    start: Instant,
    start_wall: SystemTime,
}

impl RunClock {
    /// Start now.
    pub fn start() -> Self {
        Self {
            start: Instant::now(),
            start_wall: SystemTime::now(),
        }
    }

    /// Now, in ns since the start.
    pub fn now_ns(&self) -> i64 {
        i64::try_from(self.start.elapsed().as_nanos()).unwrap_or(i64::MAX)
    }

    /// The controller's wall clock at run-clock time `t_ns`.
    pub fn wall(&self, t_ns: i64) -> SystemTime {
        let offset = Duration::from_nanos(t_ns.unsigned_abs());
        if t_ns >= 0 {
            self.start_wall + offset
        } else {
            self.start_wall - offset
        }
    }
}

/// An agent of the run: its client, host and clock.
pub struct AgentHandle {
    /// Name in the inventory.
    pub name: String,
    /// gRPC address.
    pub address: String,
    /// Address listeners bind to and peers connect to.
    pub test_ip: IpAddr,
    /// Client (cheap to clone).
    pub client: agents::Client,
    /// What it said about its host (when the run began).
    pub info: pb::HostInfoReply,
    /// Its boot and clock, measured again after each new boot.
    boot: std::sync::Mutex<Boot>,
    /// What its lab can do to its host from outside (local labs).
    pub lab: Option<LabSide>,
    /// This controller's session on the agent, open while the handle
    /// lives (see [`AgentHandle::open_session`]).
    session: std::sync::Mutex<Option<tonic::Streaming<pb::SessionEvent>>>,
}

/// A host's boot as its agent's clock sees it: its monotonic clock starts
/// again at each.
#[derive(Clone, Debug)]
struct Boot {
    id: String,
    /// Agent monotonic ns minus run-clock ns.
    clock_offset_ns: i64,
    /// Round trip of the sample the offset came from.
    clock_rtt_ns: u64,
    /// When it was measured, on the run clock.
    measured_at_ns: i64,
    /// This boot's first offset, when it was measured, and its sample's
    /// round trip: against the latest, how fast this clock drifts from the
    /// run clock.
    first: (i64, i64, u64),
}

impl Boot {
    /// Parts per billion this clock ran fast (+) or slow (−) against the
    /// run clock between this boot's first offset and its latest, and how
    /// far that can be off (the two offsets' errors over the time between
    /// them); `None` until measured again.
    fn drift_ppb(&self) -> Option<(i64, u64)> {
        let (first_offset_ns, first_at_ns, first_rtt_ns) = self.first;
        let span_ns = self.measured_at_ns - first_at_ns;
        let per_billion =
            |ns: i128| i64::try_from(ns * 1_000_000_000 / i128::from(span_ns)).unwrap_or(i64::MAX);
        (span_ns > 0).then(|| {
            let error_ns = i128::from(first_rtt_ns / 2 + self.clock_rtt_ns / 2);
            (
                per_billion(i128::from(self.clock_offset_ns - first_offset_ns)),
                per_billion(error_ns).unsigned_abs(),
            )
        })
    }
}

/// How long an agent may take to open a session.
const SESSION_TIMEOUT: Duration = Duration::from_secs(5);

impl AgentHandle {
    /// Connect, ask for host info, and measure the clock offset.
    pub async fn connect(
        connector: &agents::Connector,
        name: &str,
        address: &str,
        test_ip: Option<IpAddr>,
        clock: &RunClock,
    ) -> Result<Self, AgentsError> {
        let mut client = connector.connect(address).await?;
        let (boot, info) =
            measure(&mut client, clock)
                .await
                .map_err(|status| AgentsError::Call {
                    address: address.to_owned(),
                    status,
                })?;
        let test_ip = test_ip
            .or_else(|| {
                address
                    .rsplit_once(':')
                    .and_then(|(host, _)| host.trim_matches(['[', ']']).parse().ok())
            })
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        Ok(Self {
            name: name.to_owned(),
            address: address.to_owned(),
            test_ip,
            client,
            info,
            boot: std::sync::Mutex::new(boot),
            lab: None,
            session: std::sync::Mutex::new(None),
        })
    }

    /// Connect to every agent of `inventory`, in its order.
    pub async fn connect_all(
        connector: &agents::Connector,
        inventory: &Inventory,
        clock: &RunClock,
    ) -> Result<Vec<Arc<Self>>, AgentsError> {
        let mut handles = Vec::new();
        for entry in &inventory.agents {
            let mut handle =
                Self::connect(connector, &entry.name, &entry.address, entry.test_ip, clock)
                    .await
                    .map_err(|error| AgentsError::Agent {
                        name: entry.name.clone(),
                        error: Box::new(error),
                    })?;
            handle.lab.clone_from(&entry.lab);
            handles.push(Arc::new(handle));
        }
        Ok(handles)
    }

    /// Whether `capability` can be had on its host, by us: from its agent,
    /// or from its lab (`link`: a cable to pull; `power`), unless the
    /// agent's access rules deny it to our certificate.
    pub(crate) fn offers(&self, capability: Capability) -> bool {
        !self.denies(capability)
            && (self
                .info
                .capabilities
                .iter()
                .any(|c| c == capability.name())
                || self
                    .lab
                    .as_ref()
                    .is_some_and(|lab| lab.capabilities().contains(&capability)))
    }

    /// Whether its agent's access rules deny `capability` to us.
    pub(crate) fn denies(&self, capability: Capability) -> bool {
        let ruled = capability.ruled_as().name();
        self.info.denied.iter().any(|c| c == ruled)
    }

    /// An agent's monotonic time on the run clock.
    pub(super) fn run_ns(&self, mono_ns: u64) -> i64 {
        self.to_run_clock()(mono_ns)
    }

    /// [`Self::run_ns`] for many times at once: the offset read once.
    pub(super) fn to_run_clock(&self) -> impl Fn(u64) -> i64 + use<> {
        let offset_ns = self.clock_offset_ns();
        move |mono_ns| i64::try_from(mono_ns).unwrap_or(i64::MAX) - offset_ns
    }

    /// Its monotonic clock minus the run clock, in ns (this boot's).
    pub fn clock_offset_ns(&self) -> i64 {
        self.boot().clock_offset_ns
    }

    /// The round trip of the sample its clock offset came from, in ns.
    pub fn clock_rtt_ns(&self) -> u64 {
        self.boot().clock_rtt_ns
    }

    /// How far a time of this agent at `t_ns` (run clock) can be off on
    /// the run's axis: half its offset sample's round trip, plus how far
    /// its clock can have drifted since that offset was measured, once its
    /// drift is known (drift and its error, times the time since).
    pub fn clock_uncertainty_ns(&self, t_ns: i64) -> u64 {
        let boot = self.boot();
        let since_ns = u128::from((t_ns - boot.measured_at_ns).unsigned_abs());
        let drifted_ns = boot.drift_ppb().map_or(0, |(drift, error)| {
            let ppb = u128::from(drift.unsigned_abs()) + u128::from(error);
            u64::try_from(ppb * since_ns / 1_000_000_000).unwrap_or(u64::MAX)
        });
        boot.clock_rtt_ns / 2 + drifted_ns
    }

    /// Whether its host booted since it was last measured: if so, its
    /// clock is measured again (a new boot's monotonic clock starts anew).
    pub(super) async fn booted_again(&self, clock: &RunClock) -> bool {
        let mut client = self.client.clone();
        let measured = tokio::time::timeout(BOOT_CHECK_TIMEOUT, measure(&mut client, clock)).await;
        let Ok(Ok((boot, _))) = measured else {
            return false;
        };
        {
            let mut known = self
                .boot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if boot.id == known.id {
                return false;
            }
            *known = boot;
        }
        // A new boot is a new agent, which knows no session: the holders
        // the run spawns from now on must die with it too.
        self.open_session().await;
        true
    }

    /// Open this controller's session on the agent (see [`session_id`]):
    /// the holders spawned in it die when the handle (the run) ends, even
    /// if the controller is killed. An agent that cannot (an older one) is
    /// logged: its holders would outlive a killed controller until the
    /// next Reset.
    pub(super) async fn open_session(&self) {
        let request = pb::SessionRequest {
            id: session_id().to_owned(),
        };
        let opened =
            tokio::time::timeout(SESSION_TIMEOUT, self.client.clone().session(request)).await;
        let stream = match opened {
            Ok(Ok(reply)) => Some(reply.into_inner()),
            Ok(Err(status)) => {
                tracing::warn!(agent = %self.name, %status, "no session: holders of a killed controller would outlive it");
                None
            }
            Err(_) => {
                tracing::warn!(agent = %self.name, "no session: the agent did not answer");
                None
            }
        };
        *self
            .session
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = stream;
    }

    /// Measure its clock again if the offset is older than `older_than`
    /// ([`CLOCK_REFRESH`] between cases; same boot only, and a failed
    /// measurement keeps the old one).
    pub(super) async fn refresh_clock(&self, clock: &RunClock, older_than: Duration) {
        let age = clock.now_ns() - self.boot().measured_at_ns;
        if age < i64::try_from(older_than.as_nanos()).unwrap_or(i64::MAX) {
            return;
        }
        let mut client = self.client.clone();
        let measured = tokio::time::timeout(BOOT_CHECK_TIMEOUT, measure(&mut client, clock)).await;
        if let Ok(Ok((boot, _))) = measured {
            let mut known = self
                .boot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if boot.id == known.id {
                tracing::debug!(
                    agent = %self.name,
                    drift_ns = boot.clock_offset_ns - known.clock_offset_ns,
                    "clock offset measured again"
                );
                *known = Boot {
                    first: known.first,
                    ..boot
                };
            }
        }
    }

    fn boot(&self) -> Boot {
        self.boot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(super) fn report(&self) -> AgentReport {
        AgentReport {
            name: self.name.clone(),
            address: self.address.clone(),
            test_ip: self.test_ip.to_string(),
            hostname: self.info.hostname.clone(),
            os_family: self.info.os_family.clone(),
            os_version: self.info.os_version.clone(),
            kernel_version: self.info.kernel_version.clone(),
            arch: self.info.arch.clone(),
            agent_version: self.info.agent_version.clone(),
            boot_id: self.boot().id,
            capabilities: self.info.capabilities.clone(),
            clock_offset_ns: self.clock_offset_ns(),
            clock_rtt_ns: self.clock_rtt_ns(),
            clock_drift_ppb: self.boot().drift_ppb().map(|(drift, _)| drift),
            clock_drift_error_ppb: self.boot().drift_ppb().map(|(_, error)| error),
        }
    }
}

/// Sample an agent's clock against the run clock [`CLOCK_SAMPLES`] times;
/// the sample with the shortest round trip gives the offset.
async fn measure(
    client: &mut agents::Client,
    clock: &RunClock,
) -> Result<(Boot, pb::HostInfoReply), tonic::Status> {
    let mut best: Option<(u64, i64, pb::HostInfoReply)> = None;
    for _ in 0..CLOCK_SAMPLES {
        let sent = clock.now_ns();
        let info = client.host_info(pb::HostInfoRequest {}).await?.into_inner();
        let received = clock.now_ns();
        let rtt = u64::try_from(received - sent).unwrap_or(0);
        let midpoint = sent + (received - sent) / 2;
        let offset = i64::try_from(info.mono_ns).unwrap_or(i64::MAX) - midpoint;
        if best.as_ref().is_none_or(|(best_rtt, _, _)| rtt < *best_rtt) {
            best = Some((rtt, offset, info));
        }
    }
    let (clock_rtt_ns, clock_offset_ns, info) =
        best.ok_or_else(|| tonic::Status::internal("no clock sample"))?;
    let measured_at_ns = clock.now_ns();
    let boot = Boot {
        id: info.boot_id.clone(),
        clock_offset_ns,
        clock_rtt_ns,
        measured_at_ns,
        first: (clock_offset_ns, measured_at_ns, clock_rtt_ns),
    };
    Ok((boot, info))
}

/// Why an application could not be placed in the lab.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    /// Its address names an agent the lab does not have.
    #[error("target {target:?}: no agent {agent:?} in the lab to take the address of")]
    NoAddress {
        /// The target.
        target: String,
        /// The agent its address names.
        agent: String,
    },
    /// Its host's agent is not in the lab.
    #[error("target {target:?}: no agent {agent:?} in the lab (its host's agent)")]
    NoHost {
        /// The target.
        target: String,
        /// Its host's agent.
        agent: String,
    },
}

/// An application under test, placed in the lab.
pub struct TargetHandle {
    /// What it is.
    pub target: Target,
    /// Where clients reach it.
    pub address: SocketAddr,
    /// The agent on its host, if any.
    pub host: Option<Arc<AgentHandle>>,
}

impl TargetHandle {
    /// Place `target` among the lab's `agents` (its host may be named by an agent's name).
    pub fn place(target: Target, agents: &[Arc<AgentHandle>]) -> Result<Self, PlaceError> {
        let by_name = |name: &str| agents.iter().find(|agent| agent.name == name);
        let address = target
            .address(|name| by_name(name).map(|agent| agent.test_ip))
            .ok_or_else(|| PlaceError::NoAddress {
                target: target.name.clone(),
                agent: match &target.host {
                    TargetHost::Agent(name) => name.clone(),
                    TargetHost::Ip(_) => String::new(),
                },
            })?;
        let host = match &target.agent {
            Some(name) => Some(Arc::clone(by_name(name).ok_or_else(|| {
                PlaceError::NoHost {
                    target: target.name.clone(),
                    agent: name.clone(),
                }
            })?)),
            None => None,
        };
        Ok(Self {
            target,
            address,
            host,
        })
    }

    pub(super) fn label(&self) -> String {
        if self.target.name == self.address.to_string()
            || self
                .target
                .name
                .ends_with(&format!(":{}", self.address.port()))
        {
            format!("app {}", self.address)
        } else {
            format!("app {} ({})", self.target.name, self.address)
        }
    }
}

/// This controller process's session on the agents: holders it spawns name
/// it, and live while one of its session streams is open (a run holds one
/// on each agent; see `run`).
pub fn session_id() -> &'static str {
    static SESSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SESSION.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos());
        format!("controller-{}-{nanos:x}", std::process::id())
    })
}

#[cfg(test)]
mod tests {
    use super::super::fake_agent;
    use super::*;

    #[tokio::test]
    async fn an_old_clock_offset_is_measured_again_and_a_fresh_one_kept() {
        let clock = RunClock::start();
        let Ok(agents) = fake_agent::hosts(1, &clock).await else {
            panic!("no fake agent");
        };
        let agent = &agents[0];
        let first = agent.boot().measured_at_ns;
        agent.refresh_clock(&clock, CLOCK_REFRESH).await;
        assert_eq!(agent.boot().measured_at_ns, first, "fresh: kept");
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(
            agent.boot().drift_ppb(),
            None,
            "one measurement: no drift yet"
        );
        agent.refresh_clock(&clock, Duration::from_millis(1)).await;
        assert!(agent.boot().measured_at_ns > first, "old: measured again");
        assert!(agent.boot().drift_ppb().is_some(), "two: a drift");
        // Its times carry the drift's worth of error as they get older.
        let now = agent.boot().measured_at_ns;
        assert!(
            agent.clock_uncertainty_ns(now + 60_000_000_000) >= agent.clock_uncertainty_ns(now),
            "an older offset is no better"
        );
    }
    #[tokio::test]
    async fn an_agent_that_booted_again_gets_the_session_opened_again() {
        let clock = RunClock::start();
        let Ok(mut agents) = fake_agent::handles(1, fake_agent::Faults::default(), &clock).await
        else {
            panic!("no fake agent");
        };
        let (agent, script) = agents.remove(0);
        let sessions = || {
            script
                .calls()
                .iter()
                .filter(|call| call.rpc == "Session")
                .count()
        };
        agent.open_session().await;
        assert_eq!(sessions(), 1);
        assert!(!agent.booted_again(&clock).await, "same boot");
        assert_eq!(sessions(), 1, "the same boot keeps its session");
        script.reboot();
        assert!(agent.booted_again(&clock).await, "a new boot id");
        assert_eq!(sessions(), 2, "a new boot's agent knows no session");
        assert!(agent.session.lock().is_ok_and(|open| open.is_some()));
    }
}
