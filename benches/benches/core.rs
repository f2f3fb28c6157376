//! Micro-benchmarks of the per-request and per-frame work: SAS verification, control
//! message encode/decode, and unmasking a relayed frame payload.
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

criterion_group!(benches, sas, control, masking);
criterion_main!(benches);
