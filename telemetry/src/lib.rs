//! OpenTelemetry traces for faultlab's two binaries, set up in one place.
//!
//! A lab engineer already has a trace backend (Jaeger, Tempo, Phoenix...).
//! A faultlab run must land there as *one* trace: the controller's run,
//! cases and steps, and every agent's requests and socket calls beneath
//! them. This crate gives both binaries the same pieces:
//!
//! - [`Telemetry`]: the exporter, configured by the standard `OTEL_*`
//!   variables or by [`OtlpArgs`] flags; nothing at all (no thread, no
//!   layer, no span built) when no endpoint is configured.
//! - [`TraceContext`] (client side) and [`grpc_server_span`] (server side):
//!   W3C `traceparent` in gRPC metadata, so an agent continues the
//!   controller's trace.
//! - [`trace_id`] / [`span_id`]: what reports print and link to.
//!
//! Export runs on a runtime of its own: the SDK exports from a plain thread,
//! and tonic and hyper need a Tokio reactor, which the binaries' runtimes
//! cannot lend while they shut down.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{Status, TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;

pub use opentelemetry::KeyValue as Attribute;

/// How long the last export may take at exit.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one export may wait for the backend.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether spans are exported by this process; checked before any span
/// work, so tracing costs nothing when it is off.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether this process exports traces.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The wire protocol to the trace backend (`OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// OTLP over gRPC (port 4317 by convention).
    Grpc,
    /// OTLP over HTTP with protobuf bodies (port 4318, path /v1/traces).
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

/// Trace export flags; each overrides its standard variable.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct OtlpArgs {
    /// Send traces to this OTLP endpoint (e.g. http://127.0.0.1:4317 for
    /// gRPC, http://127.0.0.1:4318 for HTTP). Default:
    /// $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or $OTEL_EXPORTER_OTLP_ENDPOINT;
    /// with neither, no traces are made.
    #[arg(long, value_name = "URL", global = true)]
    pub otlp_endpoint: Option<String>,
    /// OTLP protocol. Default: $OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf.
    #[arg(long, value_enum, value_name = "PROTOCOL", global = true)]
    pub otlp_protocol: Option<Protocol>,
}

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A variable or flag has a value we cannot use.
    #[error("{name}: {value:?} is not one of {expected}")]
    BadSetting {
        /// The variable or flag.
        name: &'static str,
        /// Its value.
        value: String,
        /// What would do.
        expected: &'static str,
    },
    /// The exporter refused its configuration (e.g. a malformed endpoint).
    #[error("cannot set up trace export to {endpoint}: {source}")]
    Exporter {
        /// Where traces were to go.
        endpoint: String,
        /// Why not.
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// The export runtime could not start.
    #[error("cannot start the trace export thread: {0}")]
    Runtime(#[from] std::io::Error),
}

/// Where traces go, resolved from flags and variables.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Destination {
    protocol: Protocol,
    /// The full URL spans are sent to (for HTTP, with /v1/traces).
    url: String,
}

/// Where this process sends its traces, once [`Telemetry::start`] found out.
static DESTINATION: OnceLock<Destination> = OnceLock::new();

fn variable(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .filter(|value| !value.trim().is_empty())
}

/// Resolve the destination; `None` when tracing is off.
fn destination(
    args: &OtlpArgs,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Option<Destination>, TelemetryError> {
    if lookup("OTEL_SDK_DISABLED").is_some_and(|value| value.eq_ignore_ascii_case("true"))
        || lookup("OTEL_TRACES_EXPORTER").is_some_and(|value| value == "none")
    {
        return Ok(None);
    }
    let protocol = match args.otlp_protocol {
        Some(protocol) => protocol,
        None => {
            let (name, value) = match lookup("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") {
                Some(value) => ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", Some(value)),
                None => (
                    "OTEL_EXPORTER_OTLP_PROTOCOL",
                    lookup("OTEL_EXPORTER_OTLP_PROTOCOL"),
                ),
            };
            match value.as_deref() {
                None | Some("http/protobuf") => Protocol::HttpProtobuf,
                Some("grpc") => Protocol::Grpc,
                Some(other) => {
                    return Err(TelemetryError::BadSetting {
                        name,
                        value: other.to_owned(),
                        expected: "grpc, http/protobuf",
                    });
                }
            }
        }
    };
    // The flag is a base URL, like OTEL_EXPORTER_OTLP_ENDPOINT; the
    // signal's own variable is the full URL.
    let base = |base: String| match protocol {
        Protocol::Grpc => base,
        Protocol::HttpProtobuf if base.ends_with("/v1/traces") => base,
        Protocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
    };
    let url = match (
        args.otlp_endpoint.clone(),
        lookup("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        lookup("OTEL_EXPORTER_OTLP_ENDPOINT"),
    ) {
        (Some(flag), _, _) => base(flag),
        (None, Some(full), _) => full,
        (None, None, Some(generic)) => base(generic),
        (None, None, None) => return Ok(None),
    };
    Ok(Some(Destination { protocol, url }))
}

/// Variables that make a child process (an agent of a local lab) send its
/// traces where this process sends its own; empty when this process does
/// not export. A child in another network namespace has a loopback of its
/// own, so a loopback endpoint is rewritten to `gateway`, this host's
/// address on the child's network (the backend must listen there).
pub fn child_environment(gateway: Option<std::net::IpAddr>) -> Vec<(&'static str, String)> {
    let Some(destination) = DESTINATION.get().filter(|_| enabled()) else {
        return Vec::new();
    };
    let url = match gateway {
        Some(gateway) => on_host(&destination.url, gateway),
        None => destination.url.clone(),
    };
    let protocol = match destination.protocol {
        Protocol::Grpc => "grpc",
        Protocol::HttpProtobuf => "http/protobuf",
    };
    vec![
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", protocol.to_owned()),
    ]
}

/// `url` with a loopback host replaced by `gateway`.
fn on_host(url: &str, gateway: std::net::IpAddr) -> String {
    let Ok(uri) = url.parse::<tonic::codegen::http::Uri>() else {
        return url.to_owned();
    };
    let loopback = uri.host().is_some_and(|host| {
        host == "localhost"
            || host
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    });
    if !loopback {
        return url.to_owned();
    }
    let gateway = match gateway {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
    };
    let port = uri
        .port_u16()
        .map_or_else(String::new, |port| format!(":{port}"));
    let path = match uri.path_and_query().map(|path| path.as_str()) {
        None | Some("/") => "",
        Some(path) => path,
    };
    format!(
        "{}://{gateway}{port}{path}",
        uri.scheme_str().unwrap_or("http")
    )
}

/// This process's trace export; flushes what is left when dropped.
pub struct Telemetry {
    exporting: Option<Exporting>,
}

struct Exporting {
    provider: SdkTracerProvider,
    tracer: opentelemetry_sdk::trace::Tracer,
    runtime: tokio::runtime::Runtime,
}

impl Telemetry {
    /// No export (the holder processes, and every process with no endpoint).
    pub fn off() -> Self {
        Self { exporting: None }
    }

    /// Start exporting if an endpoint is configured; `service` names this
    /// program unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES`
    /// does. Sampling follows `OTEL_TRACES_SAMPLER` (default: parent-based,
    /// always on).
    pub fn start(service: &str, args: &OtlpArgs) -> Result<Self, TelemetryError> {
        let Some(destination) = destination(args, variable)? else {
            return Ok(Self::off());
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-export")
            .enable_all()
            .build()?;
        let failed = |source| TelemetryError::Exporter {
            endpoint: destination.url.clone(),
            source,
        };
        // tonic's channel spawns its connection task on the current runtime.
        let exporter = {
            let _entered = runtime.enter();
            match destination.protocol {
                Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_timeout(EXPORT_TIMEOUT)
                    .with_endpoint(&destination.url)
                    .build()
                    .map_err(failed)?,
                Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_timeout(EXPORT_TIMEOUT)
                    .with_endpoint(&destination.url)
                    .build()
                    .map_err(failed)?,
            }
        };
        let exporter = OnRuntime {
            inner: exporter,
            runtime: runtime.handle().clone(),
            destination: destination.url.clone(),
            failing: Arc::new(AtomicBool::new(false)),
        };
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource(service))
            .build();
        let tracer = provider.tracer(service.to_owned());
        let _ = DESTINATION.set(destination);
        ENABLED.store(true, Ordering::Relaxed);
        Ok(Self {
            exporting: Some(Exporting {
                provider,
                tracer,
                runtime,
            }),
        })
    }

    /// The layer that turns this program's spans into OpenTelemetry spans
    /// (only spans of faultlab's own crates, at info level and above).
    pub fn layer<S>(&self) -> Option<impl tracing_subscriber::Layer<S> + use<S>>
    where
        S: tracing::Subscriber + for<'span> LookupSpan<'span>,
    {
        use tracing_subscriber::Layer as _;
        let exporting = self.exporting.as_ref()?;
        // A prefix: faultlab, faultlab_agent.
        let ours = Targets::new().with_target("faultlab", tracing::Level::INFO);
        Some(
            tracing_opentelemetry::layer()
                .with_tracer(exporting.tracer.clone())
                .with_location(false)
                .with_threads(false)
                .with_target(false)
                .with_tracked_inactivity(false)
                .with_filter(ours),
        )
    }

    /// Export what is left and stop (also done on drop).
    pub fn shutdown(&mut self) {
        if let Some(exporting) = self.exporting.take() {
            ENABLED.store(false, Ordering::Relaxed);
            let _ = exporting.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT);
            exporting.runtime.shutdown_background();
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn resource(service: &str) -> Resource {
    // The builder reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES.
    let detected = Resource::builder().build();
    let named = detected
        .get(&opentelemetry::Key::new("service.name"))
        .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
    let mut builder = Resource::builder();
    if !named {
        builder = builder.with_service_name(service.to_owned());
    }
    builder
        .with_attributes([
            KeyValue::new("process.pid", i64::from(std::process::id())),
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        ])
        .build()
}

/// The exporter, driven on the export runtime, saying once when the
/// backend cannot be reached (and once when it can again).
#[derive(Debug)]
struct OnRuntime<E> {
    inner: E,
    runtime: tokio::runtime::Handle,
    destination: String,
    failing: Arc<AtomicBool>,
}

impl<E: SpanExporter> SpanExporter for OnRuntime<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let count = batch.len();
        // The SDK calls this from its own export thread, never a runtime's.
        let result = self.runtime.block_on(self.inner.export(batch));
        match &result {
            Err(error) if !self.failing.swap(true, Ordering::Relaxed) => {
                tracing::warn!(
                    target: "faultlab_telemetry",
                    "traces are not being delivered to {}: {error} ({count} spans lost; faultlab goes on, and will say when delivery works again)",
                    self.destination
                );
            }
            Ok(()) if self.failing.swap(false, Ordering::Relaxed) => {
                tracing::warn!(
                    target: "faultlab_telemetry",
                    "traces are being delivered to {} again",
                    self.destination
                );
            }
            _ => {}
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The trace id of `span` in hex, when it is being exported.
pub fn trace_id(span: &Span) -> Option<String> {
    let context = enabled().then(|| span.context())?;
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// The span id of `span` in hex, when it is being exported.
pub fn span_id(span: &Span) -> Option<String> {
    let context = enabled().then(|| span.context())?;
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.span_id().to_string())
}

/// Mark `span` failed with `message` (no-op when not exporting).
pub fn fail(span: &Span, message: &str) {
    if enabled() {
        span.set_status(Status::error(message.to_owned()));
    }
}

/// Set attributes on `span` (no-op when not exporting).
pub fn annotate(span: &Span, attributes: impl IntoIterator<Item = KeyValue>) {
    if enabled() {
        for attribute in attributes {
            span.set_attribute(attribute.key, attribute.value);
        }
    }
}

/// Add an event at `at` to `span` (no-op when not exporting).
pub fn event_at(
    span: &Span,
    name: &'static str,
    at: std::time::SystemTime,
    attributes: Vec<KeyValue>,
) {
    if enabled() {
        span.add_event_with_timestamp(name, at, attributes);
    }
}

/// Client side: puts the current span's context into each request's
/// metadata as W3C `traceparent`.
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceContext;

impl tonic::service::Interceptor for TraceContext {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if enabled() {
            let context = Span::current().context();
            TraceContextPropagator::new()
                .inject_context(&context, &mut MetadataInjector(request.metadata_mut()));
        }
        Ok(request)
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a tonic::codegen::http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|key| key.as_str()).collect()
    }
}

/// Server side: the span of one gRPC request, continuing the caller's
/// trace when the request carries one; `server` names this server (its
/// listening address). `Span::none()` when not exporting.
pub fn grpc_server_span<B>(request: &tonic::codegen::http::Request<B>, server: &str) -> Span {
    if !enabled() {
        return Span::none();
    }
    let path = request.uri().path();
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or(("", path));
    let span = tracing::info_span!(
        target: "faultlab_agent",
        "grpc request",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        server.address = %server,
    );
    let parent: Context =
        TraceContextPropagator::new().extract(&HeaderExtractor(request.headers()));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn resolve(args: &OtlpArgs, vars: &[(&str, &str)]) -> Result<Option<Destination>, String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        destination(args, |name| vars.get(name).cloned()).map_err(|error| error.to_string())
    }

    #[test]
    fn nothing_configured_means_no_tracing() {
        assert_eq!(resolve(&OtlpArgs::default(), &[]), Ok(None));
        assert_eq!(
            resolve(
                &OtlpArgs::default(),
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
                    ("OTEL_SDK_DISABLED", "true")
                ]
            ),
            Ok(None)
        );
    }

    #[test]
    fn variables_choose_the_protocol_and_flags_override_them() {
        let from_env = resolve(
            &OtlpArgs::default(),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ],
        );
        assert_eq!(
            from_env,
            Ok(Some(Destination {
                protocol: Protocol::Grpc,
                url: "http://127.0.0.1:4317".to_owned(),
            }))
        );
        let http = resolve(
            &OtlpArgs::default(),
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")],
        );
        assert_eq!(
            http.map(|found| found.map(|d| d.url)),
            Ok(Some("http://127.0.0.1:4318/v1/traces".to_owned()))
        );
        let flags = OtlpArgs {
            otlp_endpoint: Some("http://127.0.0.1:4318/".to_owned()),
            otlp_protocol: Some(Protocol::HttpProtobuf),
        };
        let from_flags = resolve(&flags, &[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]);
        assert_eq!(
            from_flags.map(|found| found.map(|d| d.url)),
            Ok(Some("http://127.0.0.1:4318/v1/traces".to_owned()))
        );
    }

    #[test]
    fn a_child_in_a_namespace_is_pointed_at_this_host() {
        let gateway = std::net::IpAddr::from([198, 18, 120, 1]);
        for (url, expected) in [
            ("http://127.0.0.1:4317", "http://198.18.120.1:4317"),
            (
                "http://localhost:4318/v1/traces",
                "http://198.18.120.1:4318/v1/traces",
            ),
            ("http://[::1]:4317", "http://198.18.120.1:4317"),
            ("http://collector.lab:4317", "http://collector.lab:4317"),
        ] {
            assert_eq!(on_host(url, gateway), expected, "{url}");
        }
    }

    #[test]
    fn an_unknown_protocol_is_named() {
        let error = resolve(
            &OtlpArgs::default(),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon"),
            ],
        );
        assert_eq!(
            error,
            Err(
                "OTEL_EXPORTER_OTLP_PROTOCOL: \"carrier-pigeon\" is not one of grpc, http/protobuf"
                    .to_owned()
            )
        );
    }

    #[test]
    fn context_crosses_grpc_metadata() {
        // Without the layer, no context is made up.
        let mut interceptor = TraceContext;
        let request = tonic::service::Interceptor::call(&mut interceptor, tonic::Request::new(()));
        assert!(request.is_ok_and(|r| r.metadata().get("traceparent").is_none()));
        // A traceparent in headers is read back as the parent context.
        let mut headers = tonic::codegen::http::HeaderMap::new();
        headers.insert(
            "traceparent",
            tonic::codegen::http::HeaderValue::from_static(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        );
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(&headers));
        assert_eq!(
            parent.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }
}
