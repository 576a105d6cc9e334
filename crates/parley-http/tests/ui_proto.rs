//! The web UI speaks the native protocol over `/v1/ws` with its own small
//! protobuf code (`ui/proto.js`). Its numbers must be the schema's: this
//! compiles `proto/parley.proto` and checks every message field and enum
//! value `proto.js` names in its table against it, and that `proto.js`
//! writes no field number anywhere but in that table.

use std::collections::BTreeMap;
use std::path::Path;

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
        "f.has(",
        "f.get(",
        ".uint(",
        ".string(",
        ".bytesField(",
        ".packed(",
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
