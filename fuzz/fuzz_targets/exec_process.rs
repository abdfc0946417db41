//! An exec's process JSON (the spec of an Exec request) and the request's terminal flag:
//! `with_terminal` must hand the runtime a spec whose `terminal` is the request's.
//!
//! Input: one byte (its low bit is the request's `terminal`), then the spec.
//!
//! The runtime that reads the spec decides what "its terminal" is. runc reads process.json
//! with Go's encoding/json into `specs.Process`: keys match the field's name without regard to
//! case, each match in document order sets the field (the last wins), a `null` leaves it as it
//! was, and a value of another type fails the exec. The sandbox backend (serde, exact keys)
//! reads a subset of what runc does.
#![no_main]

use std::fmt;

use libfuzzer_sys::fuzz_target;
use libshim::fuzzing::with_terminal;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

/// A JSON object's top-level members in document order, duplicates kept.
struct Members(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Each;
        impl<'de> Visitor<'de> for Each {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(Each)
    }
}

/// Go's encoding/json key folding (`foldName`, Go 1.21+): ASCII letters without case,
/// anything else through unicode.ToUpper(unicode.ToLower(c)), simple case mappings; so
/// `termınal` and `TERMİNAL` name `terminal` too.
fn go_fold(key: &str) -> String {
    let simple =
        |mapped: &mut dyn Iterator<Item = char>, c: char| match (mapped.next(), mapped.next()) {
            (Some(m), None) => m,
            _ => c,
        };
    key.chars()
        .map(|c| match c {
            _ if c.is_ascii() => c.to_ascii_uppercase(),
            // Go's simple lower case of U+0130 is `i` (Rust's full mapping adds a dot above).
            '\u{130}' => 'I',
            _ => {
                let lower = simple(&mut c.to_lowercase(), c);
                simple(&mut lower.to_uppercase(), lower)
            }
        })
        .collect()
}

/// The terminal runc sees in `spec`, or `None` when it refuses the spec.
fn runc_terminal(spec: &[u8]) -> Option<bool> {
    let Members(members) = serde_json::from_slice(spec).ok()?;
    let mut terminal = false;
    for (key, value) in members {
        if go_fold(&key) != "TERMINAL" {
            continue;
        }
        match value {
            Value::Bool(b) => terminal = b,
            Value::Null => {}
            _ => return None,
        }
    }
    Some(terminal)
}

/// The terminal the sandbox backend sees (serde's exact `terminal`), or `None` when it
/// refuses the spec (serde refuses a duplicate field).
fn sandbox_terminal(spec: &[u8]) -> Option<bool> {
    let Members(members) = serde_json::from_slice(spec).ok()?;
    let mut found = None;
    for (key, value) in members {
        if key == "terminal" {
            if found.is_some() {
                return None;
            }
            found = Some(match value {
                Value::Bool(b) => b,
                Value::Null => false,
                _ => return None,
            });
        }
    }
    Some(found.unwrap_or(false))
}

fuzz_target!(|data: &[u8]| {
    let Some((&flag, spec)) = data.split_first() else {
        return;
    };
    let terminal = flag & 1 == 1;
    let Ok(out) = with_terminal(spec, terminal) else {
        return;
    };
    let value: Value = serde_json::from_slice(&out).expect("the spec handed on is JSON");
    assert!(value.is_object());
    if let Some(seen) = runc_terminal(&out) {
        assert_eq!(seen, terminal, "runc would see terminal={seen}");
    }
    if let Some(seen) = sandbox_terminal(&out) {
        assert_eq!(seen, terminal, "the sandbox would see terminal={seen}");
    }
});
