//! Micro-benchmarks of the per-request and per-frame work: SAS verification, control
//! message encode/decode, unmasking a relayed frame payload, and the broker's frame relay
//! loop beside a plain byte copy through the same in-memory pipes.
#![allow(missing_docs)]

use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use relay_core::control::{Accept, Headers, ListenerCommand};
use relay_core::frame::apply_mask;
use relay_core::sas::{Rights, SharedAccessKey, Target, authorize, create_token};

fn sas(c: &mut Criterion) {
    let rules = vec![SharedAccessKey {
        name: "root".into(),
        key: "a-reasonably-long-shared-access-key-string".into(),
        secondary_key: None,
        rights: Rights::MANAGE,
        hybrid_connection: None,
    }];
    let token = create_token(
        "http://127.0.0.1:9400/orders",
        "root",
        &rules[0].key,
        4_102_444_800,
    );
    let target = Target {
        hybrid_connection: "orders",
        path: "orders",
        needs: Rights::SEND,
        mount: "",
    };
    c.bench_function("sas_authorize", |b| {
        b.iter(|| authorize(&rules, black_box(&token), target, 1_800_000_000));
    });
}

fn control(c: &mut Criterion) {
    let accept = ListenerCommand::Accept(Accept {
        address: "wss://relay.example.com/$hc/orders/sub?x=1&sb-hc-action=accept&sb-hc-id=abc"
            .into(),
        id: "abc".into(),
        connect_headers: Headers(vec![
            ("Host".into(), "relay.example.com".into()),
            (
                "Sec-WebSocket-Key".into(),
                "dGhlIHNhbXBsZSBub25jZQ==".into(),
            ),
            ("Sec-WebSocket-Version".into(), "13".into()),
            ("User-Agent".into(), "bench".into()),
        ]),
        remote_endpoint: None,
    });
    let text = accept.encode();
    c.bench_function("control_encode_accept", |b| {
        b.iter(|| black_box(&accept).encode());
    });
    c.bench_function("control_decode_accept", |b| {
        b.iter(|| ListenerCommand::decode(black_box(text.as_bytes()), 65536));
    });
}

fn masking(c: &mut Criterion) {
    let mut buf = vec![0x5au8; 64 * 1024];
    let mut group = c.benchmark_group("frame");
    group.throughput(Throughput::Bytes(buf.len() as u64));
    group.bench_function("unmask_64k", |b| {
        b.iter(|| apply_mask(black_box(&mut buf), [1, 2, 3, 4], 3));
    });
    // Baseline in the same run: the textbook byte-at-a-time loop.
    group.bench_function("unmask_64k_bytewise_baseline", |b| {
        b.iter(|| {
            let key = [1u8, 2, 3, 4];
            for (i, byte) in black_box(&mut buf).iter_mut().enumerate() {
                *byte ^= key[(i + 3) % 4];
            }
        });
    });
    group.finish();
}

/// 1 MiB of masked 64 KiB binary frames from a sender, then its Close.
fn sender_frames() -> Vec<u8> {
    use relay_core::frame::{FrameHeader, MAX_HEADER_LEN, OpCode};
    let mut out = Vec::new();
    for _ in 0..16 {
        let key = [9, 8, 7, 6];
        let header = FrameHeader {
            fin: true,
            opcode: OpCode::Binary,
            mask: Some(key),
            payload_len: 64 * 1024,
        };
        let mut h = [0u8; MAX_HEADER_LEN];
        let n = header.encode(&mut h);
        out.extend_from_slice(&h[..n]);
        let mut payload = vec![0x42u8; 64 * 1024];
        apply_mask(&mut payload, key, 0);
        out.extend_from_slice(&payload);
    }
    let mut h = [0u8; MAX_HEADER_LEN];
    let close = FrameHeader {
        fin: true,
        opcode: OpCode::Close,
        mask: Some([0; 4]),
        payload_len: 2,
    };
    let n = close.encode(&mut h);
    out.extend_from_slice(&h[..n]);
    out.extend_from_slice(&1000u16.to_be_bytes());
    out
}

/// One relayed MiB through `relay_broker::pump::relay` (sender → listener, the listener then
/// closes back), against `tokio::io::copy` of the same bytes through the same kind of pipe.
fn relay_loop(c: &mut Criterion) {
    use relay_io::{Role, WsReader, WsWriter};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let frames = std::sync::Arc::new(sender_frames());
    let counters = relay_broker::Counters::default();
    let mut group = c.benchmark_group("relay");
    group.throughput(Throughput::Bytes(1 << 20));
    group.bench_function("broker_pump_1mib", |b| {
        b.iter(|| {
            rt.block_on(async {
                let (mut sender, s_broker) = tokio::io::duplex(256 * 1024);
                let (l_broker, listener) = tokio::io::duplex(256 * 1024);
                let (sr, sw) = tokio::io::split(s_broker);
                let (lr, lw) = tokio::io::split(l_broker);
                let relay = relay_broker::pump::relay(
                    (
                        WsReader::new(sr, Role::Server, 64 * 1024),
                        WsWriter::new(sw, Role::Server),
                    ),
                    (
                        WsReader::new(lr, Role::Server, 64 * 1024),
                        WsWriter::new(lw, Role::Server),
                    ),
                    tokio_util::sync::CancellationToken::new(),
                    &counters,
                );
                let frames = std::sync::Arc::clone(&frames);
                let send = async move {
                    sender.write_all(&frames).await.expect("write");
                    let mut back = Vec::new();
                    let _ = sender.read_to_end(&mut back).await;
                };
                let receive = async move {
                    let (r, w) = tokio::io::split(listener);
                    let (mut r, mut w) = (
                        WsReader::new(r, Role::Client, 64 * 1024),
                        WsWriter::new(w, Role::Client),
                    );
                    while let Ok(Some(m)) = r.message(1 << 20).await {
                        if matches!(m, relay_io::Message::Close(_)) {
                            break;
                        }
                    }
                    let _ = w.close(1000, "").await;
                };
                tokio::join!(relay, send, receive);
            });
        });
    });
    group.bench_function("plain_copy_1mib_baseline", |b| {
        b.iter(|| {
            rt.block_on(async {
                let (mut a, mut b1) = tokio::io::duplex(256 * 1024);
                let (mut b2, mut c2) = tokio::io::duplex(256 * 1024);
                let frames = std::sync::Arc::clone(&frames);
                let send = async move {
                    a.write_all(&frames).await.expect("write");
                    drop(a);
                };
                let copy = async move {
                    let _ = tokio::io::copy(&mut b1, &mut b2).await;
                    drop(b2);
                };
                let drain = async move {
                    let mut sink = Vec::new();
                    let _ = c2.read_to_end(&mut sink).await;
                };
                tokio::join!(send, copy, drain);
            });
        });
    });
    group.finish();
}

criterion_group!(benches, sas, control, masking, relay_loop);
criterion_main!(benches);
