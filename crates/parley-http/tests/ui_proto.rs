//! The web UI speaks the native protocol over `/v1/ws` with its own small
//! protobuf code (`ui/proto.js`). Its numbers must be the schema's: this
//! compiles `proto/parley.proto` and checks every message field and enum
//! value `proto.js` names in its table against it, and that `proto.js`
//! writes no field number anywhere but in that table. Then, in Node
//! (`e2e/proto.mjs`), that `proto.js` reads what prost writes and writes
//! what prost reads, for the frames least like the others on the wire: the
//! spam folder's (a float, packed ids, lists of messages).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{require_or_skip, runs};
use parley_proto::v1;
use prost::Message as _;
use serde_json::{Value, json};

const PROTO_JS: &str = include_str!("../ui/proto.js");

/// Where the table of numbers starts and ends in `proto.js`.
const TABLE_START: &str = "const S = {";
const TABLE_END: &str = "\n  };";

/// (message or enum, field or value) → number, from the compiled schema.
fn schema_numbers() -> BTreeMap<(String, String), i32> {
    let proto_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let set = protox::compile([proto_dir.join("parley.proto")], [&proto_dir]).expect("the schema compiles");
    let mut numbers = BTreeMap::new();
    for file in &set.file {
        for message in &file.message_type {
            assert!(
                message.nested_type.is_empty(),
                "nested messages are not looked into here"
            );
            for field in &message.field {
                numbers.insert((message.name().to_owned(), field.name().to_owned()), field.number());
            }
            for nested in &message.enum_type {
                for value in &nested.value {
                    numbers.insert((nested.name().to_owned(), value.name().to_owned()), value.number());
                }
            }
        }
        for enumeration in &file.enum_type {
            for value in &enumeration.value {
                numbers.insert((enumeration.name().to_owned(), value.name().to_owned()), value.number());
            }
        }
    }
    numbers
}

/// The text of `proto.js`'s table, and the rest of the file.
fn split_table() -> (&'static str, String) {
    let start = PROTO_JS.find(TABLE_START).expect("proto.js has its table of numbers");
    let end = start + PROTO_JS[start..].find(TABLE_END).expect("the table ends");
    let table = &PROTO_JS[start + TABLE_START.len()..end];
    let rest = format!("{}{}", &PROTO_JS[..start], &PROTO_JS[end..]);
    (table, rest)
}

/// Drops `//` comments (proto.js has no `//` inside strings).
fn without_comments(text: &str) -> String {
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The table's entries: `Type: { name: number, ... }`, in order.
fn table_numbers(table: &str) -> Vec<(String, String, i32)> {
    let table = without_comments(table);
    let mut entries = Vec::new();
    let mut rest = table.as_str();
    while let Some(open) = rest.find('{') {
        let type_name = rest[..open]
            .trim()
            .trim_start_matches(',')
            .trim()
            .trim_end_matches(':')
            .trim();
        let close = rest[open..].find('}').expect("each entry closes") + open;
        for pair in rest[open + 1..close].split(',') {
            let pair = pair.trim();
            if pair.is_empty() {
                continue;
            }
            let (name, number) = pair
                .split_once(':')
                .unwrap_or_else(|| panic!("not name: number: {pair:?}"));
            let number = number
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("{type_name}.{name}: not a number: {number:?}"));
            entries.push((type_name.to_owned(), name.trim().to_owned(), number));
        }
        rest = &rest[close + 1..];
    }
    entries
}

#[test]
fn every_number_the_web_ui_uses_is_the_schemas() {
    let schema = schema_numbers();
    let (table, rest) = split_table();
    let used = table_numbers(table);
    assert!(
        used.iter().any(|(t, n, _)| t == "ClientFrame" && n == "request_id")
            && used.iter().any(|(t, _, _)| t == "ErrorCode"),
        "the table was read: {used:?}"
    );
    let mut wrong = Vec::new();
    for (type_name, name, number) in &used {
        match schema.get(&(type_name.clone(), name.clone())) {
            Some(n) if n == number => {}
            Some(n) => wrong.push(format!("{type_name}.{name} is {n} in the schema, {number} in proto.js")),
            None => wrong.push(format!(
                "{type_name}.{name} (= {number} in proto.js) is not in the schema"
            )),
        }
    }
    assert!(
        wrong.is_empty(),
        "ui/proto.js disagrees with proto/parley.proto:\n{}",
        wrong.join("\n")
    );

    // Outside the table, field numbers are only ever named, never written.
    let code = without_comments(&rest);
    let takes_a_field_first = [
        "num(f, ",
        "str(f, ",
        "bool(f, ",
        "all(f, ",
        "bytes(f, ",
        "float(f, ",
        "uints(f, ",
        "f.has(",
        "f.get(",
        ".uint(",
        ".string(",
        ".bytesField(",
        ".packed(",
        ".bool(",
        ".message(",
        "frame(id, ",
    ];
    let mut literal = Vec::new();
    for call in takes_a_field_first {
        for (at, _) in code.match_indices(call) {
            let after = code[at + call.len()..].trim_start();
            if after.starts_with(|c: char| c.is_ascii_digit()) {
                let line = code[..at].lines().count();
                literal.push(format!("line {line}: {call}{}", &after[..after.len().min(12)]));
            }
        }
    }
    assert!(
        literal.is_empty(),
        "proto.js writes field numbers outside its table:\n{}",
        literal.join("\n")
    );
}

/// Longest the Node side may take.
const NODE_LIMIT: Duration = Duration::from_secs(60);

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

fn server_frame(request_id: u64, body: v1::server_frame::Body) -> Vec<u8> {
    v1::ServerFrame {
        request_id,
        body: Some(body),
    }
    .encode_to_vec()
}

fn client_frame(hex: &Value) -> v1::ClientFrame {
    let hex = hex.as_str().expect("a hex string");
    v1::ClientFrame::decode(from_hex(hex).as_slice()).expect("prost decodes what proto.js wrote")
}

#[test]
fn proto_js_reads_and_writes_the_spam_folder_frames_as_prost_does() {
    use v1::server_frame::Body as S;
    if !require_or_skip("node", runs("node")) {
        return;
    }
    let held = |id, from: &str, body: &str, filter: &str, score| v1::HeldMessage {
        id,
        from: from.to_owned(),
        timestamp_ms: 1_767_000_000_123,
        body: body.to_owned(),
        client_msg_id: format!("c{id}"),
        filter: filter.to_owned(),
        score,
    };
    // Scores that a float holds exactly, so that both sides print the same.
    let frames = [
        server_frame(
            7,
            S::Held(v1::HeldBatch {
                messages: vec![
                    held(3, "ben", "héllo <b>there</b>", "spam", 0.75),
                    held(1 << 40, "pager:Vera", "second", "reported", 0.5),
                ],
                more: true,
            }),
        ),
        server_frame(
            8,
            S::Released(v1::Released {
                released: vec![
                    v1::ReleasedMessage { id: 3, seq: 12 },
                    v1::ReleasedMessage { id: 4, seq: 300 },
                ],
            }),
        ),
        server_frame(
            9,
            S::HeldDropped(v1::HeldDropped {
                ids: vec![1, 300, 1 << 40],
            }),
        ),
        // The same, unpacked, as a proto3 reader must also take it.
        from_hex("0809c2040408010802"),
        server_frame(
            10,
            S::SpamReported(v1::SpamReported {
                reported: vec![v1::ReportedMessage { seq: 5, id: 6 }],
            }),
        ),
        server_frame(
            11,
            S::Sent(v1::Sent {
                client_msg_id: "m1".to_owned(),
                message_id: 77,
                timestamp_ms: 5,
                held: true,
                ..Default::default()
            }),
        ),
        server_frame(
            12,
            S::Error(v1::Error {
                code: v1::ErrorCode::Rejected as i32,
                message: "refused".to_owned(),
                reason: "blocked_words".to_owned(),
                ..Default::default()
            }),
        ),
    ];
    let e2e = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e");
    let mut node = Command::new("node")
        .arg(e2e.join("proto.mjs"))
        .args(frames.iter().map(|f| to_hex(f)))
        .current_dir(&e2e)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start node");
    let status = parley_testkit::wait_for_exit("node proto.mjs", &mut node, NODE_LIMIT);
    let mut out = String::new();
    if let Some(mut stdout) = node.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut stdout, &mut out);
    }
    assert!(status.success(), "node proto.mjs failed ({status:?}):\n{out}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), frames.len() + 1, "{out}");

    let message = |id: u64, from: &str, body: &str, filter: &str, score: f64| {
        json!({ "id": id, "from": from, "timestamp_ms": 1_767_000_000_123u64, "body": body,
                "client_msg_id": format!("c{id}"), "filter": filter, "score": score })
    };
    let expected = [
        json!({ "request_id": 7, "kind": "held", "body": { "messages": [
            message(3, "ben", "héllo <b>there</b>", "spam", 0.75),
            message(1 << 40, "pager:Vera", "second", "reported", 0.5),
        ], "more": true } }),
        json!({ "request_id": 8, "kind": "released", "body": { "released": [
            { "id": 3, "seq": 12 }, { "id": 4, "seq": 300 },
        ] } }),
        json!({ "request_id": 9, "kind": "held_dropped", "body": { "ids": [1, 300, 1u64 << 40] } }),
        json!({ "request_id": 9, "kind": "held_dropped", "body": { "ids": [1, 2] } }),
        json!({ "request_id": 10, "kind": "spam_reported", "body": { "reported": [{ "seq": 5, "id": 6 }] } }),
        json!({ "request_id": 11, "kind": "sent", "body": {
            "client_msg_id": "m1", "message_id": 77, "seq": 0, "duplicate": false, "held": true } }),
        json!({ "request_id": 12, "kind": "error", "body": {
            "code": 42, "message": "refused", "retry_after_ms": 0, "reason": "blocked_words" } }),
    ];
    for (got, want) in lines.iter().zip(&expected) {
        assert_eq!(got, want, "proto.js decoded a frame otherwise than prost wrote it");
    }

    use v1::client_frame::Body as C;
    let written = &lines[frames.len()];
    let expected_client = [
        (
            "list_held",
            1,
            C::ListHeld(v1::ListHeld {
                after_id: 42,
                limit: 100,
            }),
        ),
        (
            "release_held",
            2,
            C::ReleaseHeld(v1::ReleaseHeld {
                ids: vec![5, 300, 1 << 40],
            }),
        ),
        (
            "drop_held_as_spam",
            3,
            C::DropHeld(v1::DropHeld {
                ids: vec![7],
                spam: true,
            }),
        ),
        (
            "drop_held",
            4,
            C::DropHeld(v1::DropHeld {
                ids: vec![8, 9],
                spam: false,
            }),
        ),
        ("report_spam", 5, C::ReportSpam(v1::ReportSpam { seqs: vec![11, 12] })),
    ];
    for (name, request_id, body) in expected_client {
        assert_eq!(
            client_frame(&written[name]),
            v1::ClientFrame {
                request_id,
                body: Some(body)
            },
            "{name}: prost read otherwise what proto.js wrote"
        );
    }
}
