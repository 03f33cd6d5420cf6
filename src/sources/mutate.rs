//! Test support: Microsoft's example pages mutated the ways real answers go wrong (cut short,
//! wrong types, deep nesting, huge strings, invalid escapes, duplicate keys), from a seeded
//! generator so a failure can be replayed. The property tests of every source's page parsing
//! and normalization draw their cases from here.

use serde_json::Value;

use crate::normalize::SourceKind;

/// A small deterministic generator (xorshift64*): the cases of a run depend only on its seed.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// How many cases each property test runs: bounded for CI, `M365_PROPTEST_CASES` for more.
pub(crate) fn cases() -> usize {
    std::env::var("M365_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

/// A Microsoft example from `../shared/reference/microsoft/`.
pub(crate) fn reference(name: &str) -> String {
    let path = format!(
        "{}/../shared/reference/microsoft/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every JSON pointer of `v`, the root included.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                pointers(child, p, out);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                pointers(child, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

const MARK: &str = "\u{1}mutation\u{1}";

/// `page` (JSON text) mutated once, in one of the ways answers break.
pub(crate) fn mutate(page: &str, rng: &mut Rng) -> String {
    let Ok(mut v) = serde_json::from_str::<Value>(page) else {
        return page.to_string();
    };
    let mut all = Vec::new();
    pointers(&v, String::new(), &mut all);
    let target = all[rng.below(all.len())].clone();
    match rng.below(6) {
        // Cut short, anywhere (a body that is not complete JSON).
        0 => {
            let text = v.to_string();
            let mut cut = rng.below(text.len());
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text[..cut].to_string()
        }
        // A wrong type in any field.
        1 => {
            let wrong = [
                Value::Null,
                Value::from(true),
                Value::from(-1),
                Value::from(1.5e300),
                Value::from("x"),
                Value::Array(vec![Value::Null, Value::from(1)]),
                serde_json::json!({"unexpected": [{}]}),
            ];
            if let Some(slot) = v.pointer_mut(&target) {
                *slot = wrong[rng.below(wrong.len())].clone();
            }
            v.to_string()
        }
        // Deep nesting, past what a parser should recurse into.
        2 => {
            let depth = 20 + rng.below(300);
            let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            if let Some(slot) = v.pointer_mut(&target) {
                *slot = Value::from(MARK);
            }
            v.to_string().replacen(&format!("\"{MARK}\""), &nested, 1)
        }
        // A huge string.
        3 => {
            if let Some(slot) = v.pointer_mut(&target) {
                *slot = Value::from("A\u{fffd}é".repeat(20_000 + rng.below(100_000)));
            }
            v.to_string()
        }
        // An invalid escape: a lone surrogate, or an escape that is not one.
        4 => {
            if let Some(slot) = v.pointer_mut(&target) {
                *slot = Value::from(MARK);
            }
            let bad = ["\\ud800x", "\\udfff", "\\u12", "\\x41", "\\"][rng.below(5)];
            v.to_string()
                .replacen(&format!("\"{MARK}\""), &format!("\"{bad}\""), 1)
        }
        // A duplicate key: an object's first member written twice, the second with another value.
        _ => {
            let Some(Value::Object(m)) = v.pointer(&target).cloned() else {
                return v.to_string();
            };
            let Some((k, _)) = m.iter().next() else {
                return v.to_string();
            };
            let first = serde_json::json!({ k.clone(): "duplicate" }).to_string();
            let whole = Value::Object(m.clone()).to_string();
            let dup = format!("{},{}", &first[..first.len() - 1], &whole[1..]);
            if let Some(slot) = v.pointer_mut(&target) {
                *slot = Value::from(MARK);
            }
            v.to_string().replacen(&format!("\"{MARK}\""), &dup, 1)
        }
    }
}

/// Microsoft's example listing pages of every source polled by time: (source, list, file).
pub(crate) const EXAMPLE_PAGES: [(SourceKind, &str, &str); 7] = [
    (SourceKind::Alerts, "", "graph-alerts_v2-list.json"),
    (SourceKind::Incidents, "", "graph-incidents-list.json"),
    (
        SourceKind::Incidents,
        "",
        "graph-incident-expand-alerts.json",
    ),
    (
        SourceKind::Submissions,
        "emailThreats",
        "graph-emailThreatSubmission-list.json",
    ),
    (
        SourceKind::Submissions,
        "urlThreats",
        "graph-urlThreatSubmission-list.json",
    ),
    (
        SourceKind::Submissions,
        "fileThreats",
        "graph-fileThreatSubmission-list.json",
    ),
    (SourceKind::CloudApps, "date", "mda-alerts-list.json"),
];
