//! The slow path: salvaging an item whose typed parse failed (design §4 rule 6).
//!
//! The fast path parses an item straight into a borrowed struct; one field of an unexpected
//! type (`title: 5`, `evidence: "oops"`) fails that whole parse. Here the item is read as a
//! `serde_json::Value` instead, each top-level member is tried alone against the same typed
//! struct, the members that fail are dropped, and the rest is re-serialized for a second typed
//! parse. The caller sends what parsed, with `normalization_error` naming the dropped members.
//! It is slow (a parse per member) and meant to run on a handful of odd items, never on a feed.

use serde_json::{Map, Value};

use super::entities::error_text;

/// What survived of an item, and what did not.
pub(crate) struct Recovered {
    /// The item's members, as parsed (for reading the id and version without the typed struct).
    pub members: Map<String, Value>,
    /// The item without the dropped members, as JSON text for the second typed parse.
    pub cleaned: String,
    /// `(member, why)` for each dropped member.
    pub dropped: Vec<(String, String)>,
}

impl Recovered {
    /// `normalization_error` notes for the dropped members.
    pub(crate) fn notes(&self) -> Vec<String> {
        self.dropped
            .iter()
            .map(|(n, why)| format!("{n}: dropped, {why}"))
            .collect()
    }
}

/// Splits `text` into members that `probe` accepts alone and members it rejects.
///
/// `probe` runs the typed parse on a one-member object. Returns `None` when `text` is not a JSON
/// object at all, which leaves nothing to salvage.
pub(crate) fn recover(
    text: &str,
    probe: &dyn Fn(&str) -> Result<(), serde_json::Error>,
) -> Option<Recovered> {
    let Ok(Value::Object(members)) = serde_json::from_str::<Value>(text) else {
        return None;
    };
    let mut kept = Map::new();
    let mut dropped = Vec::new();
    for (name, value) in &members {
        let mut single = Map::new();
        single.insert(name.clone(), value.clone());
        let single = Value::Object(single).to_string();
        match probe(&single) {
            Ok(()) => {
                kept.insert(name.clone(), value.clone());
            }
            Err(e) => dropped.push((name.clone(), error_text(&e))),
        }
    }
    Some(Recovered {
        members,
        cleaned: Value::Object(kept).to_string(),
        dropped,
    })
}
