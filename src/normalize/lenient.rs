//! Serde building blocks for reading Microsoft's JSON without copying and without tripping on
//! its type inconsistencies.
//!
//! [`Text`] borrows a string from the input whenever it has no escapes (the common case), so the
//! fast path allocates only for strings that need unescaping. The other types absorb documented
//! inconsistencies (API.md §3 "type traps", §11 gotcha 8): identifiers that are sometimes
//! numbers, integers that are sometimes strings, and property names whose type differs between
//! evidence types that share one flat parse struct.

use std::borrow::Cow;
use std::fmt;
use std::ops::Deref;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// A JSON string, borrowed from the input when it contains no escapes.
///
/// `Option<Cow<'a, str>>` cannot do this: serde borrows a `Cow` only when it is the field's
/// type itself, so inside an `Option` or a `Vec` it would always allocate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Text<'a>(pub Cow<'a, str>);

impl<'a> Text<'a> {
    pub(crate) const fn borrowed(s: &'a str) -> Self {
        Text(Cow::Borrowed(s))
    }
}

impl Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(TextVisitor).map(Text)
    }
}

/// An identifier that arrives as a string or as an integer, kept as text.
///
/// `cloudApplicationEvidence.appId` is Int64 while `oauthApplicationEvidence.appId` is a string;
/// MDA entity ids are either. Identifiers are never arithmetic, and JSON numbers beyond 2^53 lose
/// digits in JavaScript consumers, so the normalized form is always a string.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct IdText<'a>(pub Cow<'a, str>);

impl<'a> From<IdText<'a>> for Text<'a> {
    fn from(v: IdText<'a>) -> Self {
        Text(v.0)
    }
}

struct IdVisitor;

impl<'de> Visitor<'de> for IdVisitor {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string or a number")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_string()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Cow::Owned(match exact_i64(v) {
            Some(i) => i.to_string(),
            None => v.to_string(),
        }))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for IdText<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(IdVisitor).map(IdText)
    }
}

/// An Int64 that may also arrive as a numeric string or an integral float.
///
/// A string that is not a number gives `None` rather than an error: the value is still in
/// `raw`, and failing the whole evidence over `osBuild: "n/a"` would lose its useful fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LenientI64(pub Option<i64>);

struct I64Visitor;

impl Visitor<'_> for I64Visitor {
    type Value = Option<i64>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an integer or a numeric string")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(i64::try_from(v).ok())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(exact_i64(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.trim().parse().ok())
    }
}

impl<'de> Deserialize<'de> for LenientI64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(I64Visitor).map(LenientI64)
    }
}

/// Any JSON value; kept only when it is a string.
///
/// For property names that mean different things in different evidence types, e.g.
/// `ipAddress` (a string in `ipEvidence`, an `ipEvidence` object in `nicEvidence`): the flat
/// evidence struct must accept both or an unrelated evidence type would fail to parse.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LooseText<'a>(pub Option<Cow<'a, str>>);

struct LooseVisitor;

impl<'de> Visitor<'de> for LooseVisitor {
    type Value = Option<Cow<'de, str>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Some(Cow::Owned(v)))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for LooseText<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LooseVisitor).map(LooseText)
    }
}

/// Any JSON value; the strings in it (itself, or its array members) are kept.
///
/// For `urls`: strings in `analyzedMessageEvidence`, `urlEvidence` objects in
/// `teamsMessageEvidence`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LooseTextList<'a>(pub Vec<Text<'a>>);

struct LooseListVisitor;

impl<'de> Visitor<'de> for LooseListVisitor {
    type Value = Vec<Text<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(vec![Text::borrowed(v)])
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(vec![Text(Cow::Owned(v.to_owned()))])
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(item) = seq.next_element::<LooseText<'de>>()? {
            if let Some(s) = item.0 {
                out.push(Text(s));
            }
        }
        Ok(out)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Vec::new())
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for LooseTextList<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LooseListVisitor).map(LooseTextList)
    }
}

/// The `i64` a float denotes exactly, if any (JSON writers sometimes emit `22424.0`).
fn exact_i64(v: f64) -> Option<i64> {
    // 2^63 is exactly representable; anything at or beyond it does not fit.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    if v.is_finite() && v.fract() == 0.0 && (-LIMIT..LIMIT).contains(&v) {
        Some(v as i64)
    } else {
        None
    }
}

/// Converts an optional [`IdText`] into an optional [`Text`].
pub(crate) fn id_text(v: Option<IdText<'_>>) -> Option<Text<'_>> {
    v.map(Text::from)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Probe<'a> {
        #[serde(borrow)]
        t: Option<Text<'a>>,
        #[serde(borrow, default)]
        id: Option<IdText<'a>>,
        #[serde(default)]
        n: Option<LenientI64>,
        #[serde(borrow, default)]
        loose: Option<LooseText<'a>>,
        #[serde(borrow, default)]
        list: Option<LooseTextList<'a>>,
    }

    #[test]
    fn text_borrows_unless_it_must_unescape() {
        let p: Probe = serde_json::from_str(r#"{"t":"plain"}"#).unwrap();
        assert!(matches!(p.t.unwrap().0, Cow::Borrowed("plain")));
        let p: Probe = serde_json::from_str(r#"{"t":"a\"b"}"#).unwrap();
        assert_eq!(p.t.unwrap().0, "a\"b");
        assert!(serde_json::from_str::<Probe>(r#"{"t":5}"#).is_err());
        let p: Probe = serde_json::from_str(r#"{"t":null}"#).unwrap();
        assert!(p.t.is_none());
    }

    #[test]
    fn ids_accept_strings_and_numbers() {
        let id = |s: &str| {
            serde_json::from_str::<Probe>(s)
                .unwrap()
                .id
                .map(|v| v.0.into_owned())
        };
        assert_eq!(id(r#"{"t":null,"id":"abc"}"#).as_deref(), Some("abc"));
        assert_eq!(id(r#"{"t":null,"id":20940}"#).as_deref(), Some("20940"));
        assert_eq!(id(r#"{"t":null,"id":-3}"#).as_deref(), Some("-3"));
        assert_eq!(id(r#"{"t":null,"id":11.0}"#).as_deref(), Some("11"));
        assert!(serde_json::from_str::<Probe>(r#"{"t":null,"id":{}}"#).is_err());
    }

    #[test]
    fn lenient_integers() {
        let n = |s: &str| {
            serde_json::from_str::<Probe>(s)
                .unwrap()
                .n
                .and_then(|v| v.0)
        };
        assert_eq!(n(r#"{"t":null,"n":22424}"#), Some(22424));
        assert_eq!(n(r#"{"t":null,"n":"22424"}"#), Some(22424));
        assert_eq!(n(r#"{"t":null,"n":22424.0}"#), Some(22424));
        assert_eq!(n(r#"{"t":null,"n":"n/a"}"#), None);
        assert_eq!(n(r#"{"t":null,"n":1e300}"#), None);
        assert_eq!(n(r#"{"t":null,"n":18446744073709551615}"#), None);
    }

    #[test]
    fn loose_values_keep_strings_and_skip_the_rest() {
        let p: Probe = serde_json::from_str(
            r#"{"t":null,"loose":{"ipAddress":"1.2.3.4"},"list":["a",{"url":"b"},3,"c"]}"#,
        )
        .unwrap();
        assert_eq!(p.loose.unwrap().0, None);
        let list: Vec<String> = p.list.unwrap().0.iter().map(|t| t.to_string()).collect();
        assert_eq!(list, ["a", "c"]);
        let p: Probe = serde_json::from_str(r#"{"t":null,"loose":"x","list":"y"}"#).unwrap();
        assert_eq!(p.loose.unwrap().0.as_deref(), Some("x"));
        assert_eq!(p.list.unwrap().0.len(), 1);
    }
}
