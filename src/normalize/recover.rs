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
use super::map::{check_required_string, member_str};
use super::Unusable;

/// The outcome of one typed attempt: `Err` if the typed parse failed, else what `build` made.
pub(crate) type Attempt<R> = Result<Result<R, Unusable>, serde_json::Error>;

/// Runs `attempt` on `text`; if its typed parse fails, salvages the item and runs it again.
///
/// `attempt(text, notes)` parses the typed struct from `text` and builds the result, passing
/// `notes` on to `normalization_error`. `probe` is the typed parse alone. `strict` names the
/// members that must be strings when present (the id first, then the version), so that a
/// wrongly typed one is refused with a precise reason instead of being dropped.
pub(crate) fn parse_with_recovery<R>(
    text: &str,
    strict: &[&str],
    probe: &dyn Fn(&str) -> Result<(), serde_json::Error>,
    attempt: &mut dyn FnMut(&str, Vec<String>) -> Attempt<R>,
) -> Result<R, Unusable> {
    let first_error = match attempt(text, Vec::new()) {
        Ok(built) => return built,
        Err(e) => e,
    };
    let Some(rec) = recover(text, probe) else {
        return Err(Unusable {
            reason: "not a JSON object".to_owned(),
            native_id: None,
        });
    };
    let id = strict.first().and_then(|f| member_str(&rec.members, f));
    for (i, field) in strict.iter().enumerate() {
        check_required_string(&rec.members, field, if i == 0 { None } else { id })?;
    }
    let mut notes = rec.notes();
    if notes.is_empty() {
        // Every member parses alone but not together: a duplicated member, say.
        notes.push(format!(
            "the item was re-read after: {}",
            error_text(&first_error)
        ));
    }
    match attempt(&rec.cleaned, notes.clone()) {
        Ok(built) => built,
        Err(e) => {
            // Not expected (each member passed alone); keep identity and version only.
            notes.push(format!(
                "only the id and version could be read: {}",
                error_text(&e)
            ));
            let minimal: Map<String, Value> = strict
                .iter()
                .filter_map(|f| Some(((*f).to_owned(), rec.members.get(*f)?.clone())))
                .collect();
            match attempt(&Value::Object(minimal).to_string(), notes) {
                Ok(built) => built,
                Err(e) => Err(Unusable {
                    reason: format!("unreadable: {}", error_text(&e)),
                    native_id: id.map(str::to_owned),
                }),
            }
        }
    }
}

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
