//! Codec micro-benchmarks: encoding and decoding the frames on the hot path
//! (a Send request and a Push of one or many messages).

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use parley_proto::v1::{self, client_frame, server_frame};
use parley_proto::{ClientFrame, ServerFrame, decode_frame, encode_frame};

const MAX: usize = 1 << 20;

fn send_frame(body_bytes: usize) -> ClientFrame {
    ClientFrame {
        request_id: 123_456,
        body: Some(client_frame::Body::Send(v1::SendMessage {
            to: "recipient-42".into(),
            client_msg_id: "0123456789abcdef0123456789abcdef".into(),
            body: "x".repeat(body_bytes),
        })),
    }
}

fn push_frame(messages: usize, body_bytes: usize) -> ServerFrame {
    let message = |i: u64| v1::Message {
        message_id: 1_000_000 + i,
        seq: 500 + i,
        from: "sender-7".into(),
        timestamp_ms: 1_795_000_000_000 + i,
        body: "x".repeat(body_bytes),
        client_msg_id: "0123456789abcdef0123456789abcdef".into(),
        acked: false,
    };
    ServerFrame {
        request_id: 0,
        body: Some(server_frame::Body::Push(v1::Push {
            messages: (0..messages as u64).map(message).collect(),
        })),
    }
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    for size in [64usize, 1024] {
        let frame = send_frame(size);
        let mut wire = BytesMut::new();
        encode_frame(&frame, &mut wire, MAX).unwrap();
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("encode_send_{size}B"), |b| {
            let mut buf = BytesMut::with_capacity(4096);
            b.iter(|| {
                buf.clear();
                encode_frame(black_box(&frame), &mut buf, MAX).unwrap();
            })
        });
        group.bench_function(format!("decode_send_{size}B"), |b| {
            b.iter(|| {
                let mut buf = wire.clone();
                black_box(decode_frame::<ClientFrame>(&mut buf, MAX).unwrap())
            })
        });
    }
    for batch in [1usize, 32] {
        let frame = push_frame(batch, 64);
        let mut wire = BytesMut::new();
        encode_frame(&frame, &mut wire, MAX).unwrap();
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(format!("encode_push_{batch}x64B"), |b| {
            let mut buf = BytesMut::with_capacity(16 * 1024);
            b.iter(|| {
                buf.clear();
                encode_frame(black_box(&frame), &mut buf, MAX).unwrap();
            })
        });
        group.bench_function(format!("decode_push_{batch}x64B"), |b| {
            b.iter(|| {
                let mut buf = wire.clone();
                black_box(decode_frame::<ServerFrame>(&mut buf, MAX).unwrap())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
