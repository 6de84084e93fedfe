//! The audit log: who changed what on this host, and what came of it.
//!
//! An agent acts on a lab host for whoever holds a certificate of the lab's
//! CA; every call that changes something (all but `HostInfo` and `Events`)
//! leaves one structured line (target `faultlab_agent::audit`): the
//! caller's certificate name, the call, the request, the result.

use crate::tls;
use std::fmt::Debug;
use tonic::{Request, Response, Status};

/// Target of the audit lines, for filters (`RUST_LOG=faultlab_agent::audit=info`).
pub const TARGET: &str = "faultlab_agent::audit";
/// Longest request text kept (payload bytes would flood the log).
const MAX_REQUEST_CHARS: usize = 300;

/// One call being audited.
pub struct Audit {
    /// Nothing is formatted when audit lines are filtered out.
    enabled: bool,
    caller: String,
    rpc: &'static str,
    request: String,
}

impl Audit {
    /// Note who asked for `rpc`, and what.
    pub fn of<T: Debug>(request: &Request<T>, rpc: &'static str) -> Self {
        let enabled = tracing::enabled!(target: TARGET, tracing::Level::INFO);
        if !enabled {
            return Self {
                enabled,
                caller: String::new(),
                rpc,
                request: String::new(),
            };
        }
        let mut text = format!("{:?}", request.get_ref());
        if text.len() > MAX_REQUEST_CHARS {
            let mut cut = MAX_REQUEST_CHARS;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push_str("...");
        }
        Self {
            enabled,
            caller: tls::caller(request),
            rpc,
            request: text,
        }
    }

    /// Log the call with its result.
    pub fn record<R>(&self, result: &Result<Response<R>, Status>) {
        if !self.enabled {
            return;
        }
        let outcome = match result {
            Ok(_) => "ok".to_owned(),
            Err(status) => format!("{:?}: {}", status.code(), status.message()),
        };
        tracing::info!(
            target: TARGET,
            caller = %self.caller,
            rpc = self.rpc,
            request = %self.request,
            result = %outcome,
            "audit"
        );
    }
}
