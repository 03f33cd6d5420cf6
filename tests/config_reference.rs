//! The README's configuration reference names exactly the keys the configuration structs accept:
//! serde's "unknown field" error lists every key of a section, so a key added to the code without
//! a row, or a row for a key the code no longer has, fails here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use m365_ingest::config::Settings;

/// The keys a section accepts, read from the error an unknown key gets.
fn accepted(section: &str) -> BTreeSet<String> {
    let toml = format!("[{section}]\nno_such_key_zz = 1\n");
    let err = Settings::from_toml(&toml).unwrap_err().to_string();
    // "expected one of `a`, `b`" or, for two keys, "expected `a` or `b`".
    let list = err
        .split("expected")
        .nth(1)
        .and_then(|l| l.split(" for key").next())
        .unwrap_or_else(|| panic!("no key list in: {err}"));
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The keys the README's reference table documents, by section (`sources` for the `….x` rows).
fn documented() -> BTreeMap<String, BTreeSet<String>> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table = readme
        .split("## Configuration reference")
        .nth(1)
        .expect("README has a configuration reference")
        .split("\n## ")
        .next()
        .unwrap();
    let mut keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for row in table
        .lines()
        .filter(|l| l.starts_with("| `") || l.starts_with("| …") || l.starts_with("| `…"))
    {
        let cell = row.split('|').nth(1).unwrap();
        let names: Vec<&str> = cell.split('`').skip(1).step_by(2).collect();
        let Some(first) = names.first() else { continue };
        let (section, _) = split_key(first);
        for name in &names {
            let (s, key) = split_key(name);
            let s = if name.contains('.') {
                s
            } else {
                section.clone()
            };
            if key == "enabled" && s == "sources" {
                keys.entry("tenants".into())
                    .or_default()
                    .insert("sources".into());
            }
            if s == "context" {
                keys.entry("tenants".into())
                    .or_default()
                    .insert("context".into());
            }
            keys.entry(s).or_default().insert(key);
        }
    }
    keys
}

/// `store.url` → (store, url); `tenants.<name>.x` → (tenants, x);
/// `tenants.<name>.sources.<source>.x` and `….x` → (sources, x);
/// `tenants.<name>.context.x` → (context, x).
fn split_key(name: &str) -> (String, String) {
    let name = name.trim_start_matches('…').trim_start_matches('.');
    let parts: Vec<&str> = name.split('.').collect();
    let last = parts.last().unwrap().to_string();
    let section = match parts.as_slice() {
        [_] => "sources".to_string(),
        ["tenants", _, "sources", ..] => "sources".to_string(),
        ["tenants", _, "context", _] => "context".to_string(),
        ["tenants", _, _] => "tenants".to_string(),
        [s, ..] => s.to_string(),
        [] => unreachable!(),
    };
    (section, last)
}

#[test]
fn the_readme_reference_documents_every_key_and_only_those() {
    let documented = documented();
    for (section, probe) in [
        ("store", "store"),
        ("server", "server"),
        ("log", "log"),
        ("forward", "forward"),
        ("leases", "leases"),
        ("tenants", "tenants.x"),
        ("sources", "tenants.x.sources.alerts"),
        ("context", "tenants.x.context"),
    ] {
        let code = accepted(probe);
        let docs = documented.get(section).cloned().unwrap_or_default();
        let undocumented: Vec<_> = code.difference(&docs).collect();
        let stale: Vec<_> = docs.difference(&code).collect();
        assert!(
            undocumented.is_empty() && stale.is_empty(),
            "[{section}]: keys without a README row: {undocumented:?}; README rows for keys the code does not accept: {stale:?}"
        );
    }
}
