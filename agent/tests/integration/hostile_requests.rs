//! Hostile requests to a real agent: random field values (huge counts, zero
//! or absurd durations, invalid addresses, unknown ids, unknown enum values)
//! always get a clear gRPC error, never a panic, never `Internal`/`Unknown`,
//! and the agent answers afterwards. Bounded for CI (PROPTEST_CASES for more).

use crate::common;

use common::Host;
use faultlab_proto::v1 as pb;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tonic::Code;

#[derive(Debug, Clone)]
enum Hostile {
    Send(pb::SendRequest),
    Recv(pb::RecvRequest),
    Close(pb::CloseRequest),
    Dial(pb::ConnectRequest),
    Listen(pb::ListenRequest),
    Options(pb::SetOptionsRequest),
    Isolate(pb::IsolateRequest),
    Heal(pb::HealRequest),
    LinkDown(pb::LinkDownRequest),
    Capture(pb::StartCaptureRequest),
    Connections(pb::ListConnectionsRequest),
    Abort(pb::AbortConnectionsRequest),
    Process(pb::ProcessFaultRequest),
    Tune(pb::ChangeTcpSettingRequest),
}

fn filter() -> impl Strategy<Value = Option<pb::ConnectionFilter>> {
    let text = "\\PC{0,24}";
    proptest::option::of((any::<u32>(), text, text, any::<bool>()).prop_map(
        |(local_port, remote, local, include_listening)| pb::ConnectionFilter {
            local_port,
            remote,
            local,
            include_listening,
        },
    ))
}

fn options() -> impl Strategy<Value = Option<pb::SocketOptions>> {
    proptest::option::of(
        (
            proptest::option::of((any::<bool>(), any::<u32>())),
            proptest::option::of((any::<bool>(), any::<u32>(), any::<u32>(), any::<u32>())),
            proptest::option::of(any::<u32>()),
            proptest::option::of(any::<u32>()),
        )
            .prop_map(
                |(linger, keepalive, user_timeout, buffer)| pb::SocketOptions {
                    linger: linger.map(|(enabled, seconds)| pb::Linger { enabled, seconds }),
                    keepalive: keepalive.map(|(enabled, idle_ms, interval_ms, count)| {
                        pb::Keepalive {
                            enabled,
                            idle_ms,
                            interval_ms,
                            count,
                        }
                    }),
                    user_timeout_ms: user_timeout,
                    nodelay: None,
                    send_buffer_bytes: buffer,
                    recv_buffer_bytes: buffer,
                },
            ),
    )
}

fn payload() -> impl Strategy<Value = Option<pb::send_request::Payload>> {
    proptest::option::of(prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..32).prop_map(pb::send_request::Payload::Data),
        (
            proptest::collection::vec(any::<u8>(), 0..32),
            any::<u64>(),
            any::<u32>()
        )
            .prop_map(|(text, count, interval_ms)| {
                pb::send_request::Payload::Template(pb::Template {
                    text,
                    count,
                    interval_ms,
                })
            }),
        any::<u64>().prop_map(pb::send_request::Payload::ByteCount),
        (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(count, size, interval_ms)| {
            pb::send_request::Payload::Messages(pb::Messages {
                count,
                size,
                interval_ms,
            })
        }),
    ])
}

fn hostile() -> impl Strategy<Value = Hostile> {
    let text = "\\PC{0,24}";
    prop_oneof![
        (any::<u64>(), payload(), any::<u32>()).prop_map(|(conn_id, payload, timeout_ms)| {
            Hostile::Send(pb::SendRequest {
                conn_id,
                payload,
                timeout_ms,
            })
        }),
        (any::<u64>(), any::<i32>(), any::<u64>(), any::<u32>()).prop_map(
            |(conn_id, mode, max_bytes, timeout_ms)| {
                Hostile::Recv(pb::RecvRequest {
                    conn_id,
                    mode,
                    max_bytes,
                    timeout_ms,
                    return_data: true,
                })
            }
        ),
        (any::<u64>(), any::<i32>(), any::<u32>()).prop_map(|(conn_id, mode, timeout_ms)| {
            Hostile::Close(pb::CloseRequest {
                conn_id,
                mode,
                timeout_ms,
            })
        }),
        (any::<u64>(), text, options(), any::<u32>()).prop_map(
            |(holder_id, address, options, timeout_ms)| {
                Hostile::Dial(pb::ConnectRequest {
                    holder_id,
                    address,
                    options,
                    timeout_ms,
                })
            }
        ),
        (any::<u64>(), text, any::<u32>(), options()).prop_map(
            |(holder_id, address, backlog, options)| {
                Hostile::Listen(pb::ListenRequest {
                    holder_id,
                    address,
                    backlog,
                    options,
                })
            }
        ),
        (any::<u64>(), any::<bool>(), options()).prop_map(|(id, listener, options)| {
            let target = if listener {
                pb::set_options_request::Target::ListenerId(id)
            } else {
                pb::set_options_request::Target::ConnId(id)
            };
            Hostile::Options(pb::SetOptionsRequest {
                target: Some(target),
                options,
            })
        }),
        (
            text,
            any::<i32>(),
            text,
            any::<u32>(),
            any::<i32>(),
            any::<u32>(),
            any::<bool>(),
            any::<i32>()
        )
            .prop_map(
                |(
                    id,
                    mode,
                    peer,
                    port,
                    direction,
                    deadline_ms,
                    include_control_channel,
                    connections,
                )| {
                    Hostile::Isolate(pb::IsolateRequest {
                        id,
                        mode,
                        peer,
                        port,
                        peer_port: port.rotate_left(16),
                        direction,
                        deadline_ms,
                        include_control_channel,
                        connections,
                    })
                }
            ),
        (text, any::<bool>()).prop_map(|(id, all)| Hostile::Heal(pb::HealRequest { id, all })),
        (text, text, any::<u32>(), any::<bool>()).prop_map(
            |(interface, address, deadline_ms, allow_control_interface)| {
                Hostile::LinkDown(pb::LinkDownRequest {
                    interface,
                    address,
                    deadline_ms,
                    allow_control_interface,
                })
            }
        ),
        (text, proptest::collection::vec(any::<u32>(), 0..4))
            .prop_map(|(id, ports)| Hostile::Capture(pb::StartCaptureRequest { id, ports })),
        filter().prop_map(|filter| Hostile::Connections(pb::ListConnectionsRequest { filter })),
        filter().prop_map(|filter| Hostile::Abort(pb::AbortConnectionsRequest { filter })),
        (0u8..4, any::<u32>(), text, any::<i32>()).prop_map(|(kind, pid, name, action)| {
            use pb::process_fault_request::Target;
            let target = match kind {
                0 => None,
                1 => Some(Target::Pid(pid)),
                2 => Some(Target::Name(name)),
                _ => Some(Target::Unit(name)),
            };
            Hostile::Process(pb::ProcessFaultRequest { target, action })
        }),
        (text, any::<i32>(), any::<u32>(), any::<u32>()).prop_map(
            |(id, setting, value, deadline_ms)| {
                Hostile::Tune(pb::ChangeTcpSettingRequest {
                    id,
                    setting,
                    value,
                    deadline_ms,
                })
            }
        ),
    ]
}

/// A scheduled start (`faultlab-start-at`) that never waits: none, the
/// past, too far ahead, or not a number.
fn start_at() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        4 => Just(None),
        1 => Just(Some("0".to_owned())),
        1 => (11_000_000_000u64..=u64::MAX).prop_map(|far| Some(far.to_string())),
        1 => "[ -~]{0,24}".prop_map(Some),
    ]
}

/// `message` with `start_at` as its scheduled start, if it makes a header.
fn scheduled<T>(message: T, start_at: &Option<String>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(value) = start_at.as_deref().and_then(|value| value.parse().ok()) {
        request
            .metadata_mut()
            .insert(faultlab_proto::START_AT_METADATA, value);
    }
    request
}

#[test]
fn random_requests_get_clear_errors_and_the_agent_lives_on()
-> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut host = runtime.block_on(Host::start())?;
    let mut runner = TestRunner::new(Config {
        cases: 400,
        ..Config::default()
    });
    let outcome = runner.run(&(hostile(), start_at()), |(request, start_at)| {
        let mut rpc = host.rpc.clone();
        let answered: Result<(), tonic::Status> = runtime.block_on(async move {
            match request {
                Hostile::Send(request) => rpc.send(scheduled(request, &start_at)).await.map(drop),
                Hostile::Recv(request) => rpc.recv(scheduled(request, &start_at)).await.map(drop),
                Hostile::Close(request) => rpc.close(scheduled(request, &start_at)).await.map(drop),
                Hostile::Dial(request) => rpc.dial(scheduled(request, &start_at)).await.map(drop),
                Hostile::Listen(request) => {
                    rpc.listen(scheduled(request, &start_at)).await.map(drop)
                }
                Hostile::Options(request) => rpc
                    .set_options(scheduled(request, &start_at))
                    .await
                    .map(drop),
                Hostile::Isolate(request) => {
                    rpc.isolate(scheduled(request, &start_at)).await.map(drop)
                }
                Hostile::Heal(request) => rpc.heal(scheduled(request, &start_at)).await.map(drop),
                Hostile::LinkDown(request) => {
                    rpc.link_down(scheduled(request, &start_at)).await.map(drop)
                }
                Hostile::Capture(request) => rpc
                    .start_capture(scheduled(request, &start_at))
                    .await
                    .map(drop),
                Hostile::Connections(request) => rpc
                    .list_connections(scheduled(request, &start_at))
                    .await
                    .map(drop),
                Hostile::Abort(request) => rpc
                    .abort_connections(scheduled(request, &start_at))
                    .await
                    .map(drop),
                Hostile::Process(request) => rpc
                    .process_fault(scheduled(request, &start_at))
                    .await
                    .map(drop),
                Hostile::Tune(request) => rpc
                    .change_tcp_setting(scheduled(request, &start_at))
                    .await
                    .map(drop),
            }
        });
        match answered {
            Ok(()) => Ok(()),
            Err(status) => {
                let clear = matches!(
                    status.code(),
                    Code::InvalidArgument
                        | Code::NotFound
                        | Code::FailedPrecondition
                        | Code::PermissionDenied
                );
                if clear && !status.message().is_empty() {
                    Ok(())
                } else {
                    Err(TestCaseError::fail(format!("unclear answer: {status:?}")))
                }
            }
        }
    });
    if let Err(failure) = outcome {
        return Err(format!("{failure}").into());
    }
    let info = runtime
        .block_on(host.rpc.host_info(pb::HostInfoRequest {}))?
        .into_inner();
    assert_eq!(info.pid, host.process.pid(), "the same agent still answers");
    Ok(())
}
