//! How long scoring one message takes with the committed model.

use criterion::{Criterion, criterion_group, criterion_main};
use parley_filter::Model;

fn score(c: &mut Criterion) {
    let Ok(model) = Model::builtin() else { return };
    let short = "are we still on for lunch tomorrow?";
    let spam = "WINNER!! You have won a £1000 prize, call 09061701461 to claim now";
    let long = "ok see you at 7, bring the tickets and your umbrella please ".repeat(16);
    c.bench_function("score short chat", |b| {
        b.iter(|| model.score(std::hint::black_box(short)))
    });
    c.bench_function("score sms spam", |b| b.iter(|| model.score(std::hint::black_box(spam))));
    c.bench_function("score 1 KB message", |b| {
        b.iter(|| model.score(std::hint::black_box(&long)))
    });
    // What `parley-bench relay` sends: 32 hex digits, then padding.
    let relay = format!("{:016x}{:016x}{}", 12345u64, 987_654_321_000u64, "x".repeat(224));
    c.bench_function("score 256-byte relay body", |b| {
        b.iter(|| model.score(std::hint::black_box(&relay)))
    });
}

criterion_group!(benches, score);
criterion_main!(benches);
