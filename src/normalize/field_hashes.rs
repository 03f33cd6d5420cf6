//! One hash per normalized field, so that an `updated` event can name its `changed_fields`
//! (design §6) without keeping the previous body.
//!
//! The store persists [`FieldHashes::encode`] next to the alert for `dedup_retention` (180 days)
//! and compares the next forwarded version against it. Fields are hashed to 64 bits and stored,
//! and compared, by their low 32 bits (formats 2 and 3, issue 12: 92 and then 111 bytes less
//! per alert; a change goes unreported once in four billion, for a hint about which fields
//! changed). Hence the encoding is versioned and names each field by a permanent code (see
//! [`CODES`]; format 3 marks the codes present in a 32-bit map): adding a field later neither
//! shifts the others nor breaks decoding of rows written by an older build, and a row written
//! by a newer build decodes with its unknown fields skipped.
//!
//! What is hashed, and why (the writer in `body.rs` does the hashing):
//! - each field's JSON as serialized in the body, with xxh3;
//! - `entities`, `comments`, `indicators`, `mitre_techniques`, `tags` and `related` as sets:
//!   each element hashed, the hashes sorted, then hashed together, because Microsoft's order of
//!   evidence (and so of indicators) carries no meaning and changes between reads;
//! - `raw_status` folded into `status`, so a change of Microsoft's value is reported as `status`;
//! - not hashed: the envelope, `raw` (it changes with every version), `normalization_error`
//!   (about us, not the alert) and `updated_at` (it is the version: it changes every time, so it
//!   would be in every `changed_fields` and tell a consumer nothing).

use xxhash_rust::xxh3::xxh3_64;

/// The hashes of one normalized version, in body order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldHashes(pub Vec<(&'static str, u64)>);

/// Every hashed field with its permanent code. APPEND ONLY: never renumber or reuse a code,
/// because encoded hashes stay in the database for 180 days.
const CODES: &[(u8, &str)] = &[
    (1, "title"),
    (2, "description"),
    (3, "category"),
    (4, "product"),
    (5, "detection_source"),
    (6, "severity"),
    (7, "status"),
    (8, "classification"),
    (9, "determination"),
    (10, "assigned_to"),
    (11, "created_at"),
    (12, "first_activity_at"),
    (13, "last_activity_at"),
    (14, "resolved_at"),
    (15, "links"),
    (16, "incident_id"),
    (17, "related"),
    (18, "duplicate_of"),
    (19, "indicators"),
    (20, "mitre_techniques"),
    (21, "tags"),
    (22, "comments"),
    (23, "entities"),
];

/// Format 1 of [`FieldHashes::encode`], written until issue 12 and still read:
/// `[1]` then `[code, hash as 8 LE bytes]*`.
const FORMAT_V1: u8 = 1;
/// Format 2, still read, and written when a field's code does not fit format 3's map:
/// `[2]` then `[code, the hash's low 32 bits as 4 LE bytes]*`.
const FORMAT_V2: u8 = 2;
/// Format 3, written now (issue 12: 19 bytes less per alert than format 2): `[3]`, then which
/// codes are present as 4 LE bytes (bit `code - 1`), then each present field's low 32 bits as
/// 4 LE bytes, in code order.
const FORMAT_V3: u8 = 3;

impl FieldHashes {
    /// The stored form: 5 + 4 bytes per field (about 97 bytes).
    pub fn encode(&self) -> Vec<u8> {
        let mut by_code: Vec<(u8, u32)> = self
            .0
            .iter()
            .filter_map(|(name, hash)| Some((code_of(name)?, stored_bits(*hash))))
            .collect();
        by_code.sort_unstable_by_key(|(code, _)| *code);
        let fits = by_code.iter().all(|(code, _)| (1..=32).contains(code))
            && by_code.windows(2).all(|w| w[0].0 != w[1].0);
        if !fits {
            return self.encode_v2();
        }
        let present = by_code
            .iter()
            .fold(0u32, |map, (code, _)| map | 1 << (code - 1));
        let mut out = Vec::with_capacity(5 + 4 * by_code.len());
        out.push(FORMAT_V3);
        out.extend_from_slice(&present.to_le_bytes());
        for (_, bits) in by_code {
            out.extend_from_slice(&bits.to_le_bytes());
        }
        out
    }

    fn encode_v2(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 5 * self.0.len());
        out.push(FORMAT_V2);
        for (name, hash) in &self.0 {
            // A name without a code cannot be stored; `every_hashed_field_has_a_code` guarantees
            // the body writer never produces one.
            if let Some(code) = code_of(name) {
                out.push(code);
                out.extend_from_slice(&stored_bits(*hash).to_le_bytes());
            }
        }
        out
    }

    /// Reads what [`encode`](Self::encode) writes, or wrote in format 1; anything malformed
    /// gives an empty set (every field then counts as new, which at worst over-reports one
    /// `changed_fields`).
    pub fn decode(bytes: &[u8]) -> FieldHashes {
        let width = match bytes.first() {
            Some(&FORMAT_V1) => 8,
            Some(&FORMAT_V2) => 4,
            Some(&FORMAT_V3) => return Self::decode_v3(&bytes[1..]),
            _ => return FieldHashes::default(),
        };
        let rest = &bytes[1..];
        if !rest.len().is_multiple_of(1 + width) {
            return FieldHashes::default();
        }
        let mut out = Vec::with_capacity(rest.len() / (1 + width));
        for chunk in rest.chunks_exact(1 + width) {
            let mut h = [0u8; 8];
            h[..width].copy_from_slice(&chunk[1..]);
            // Codes from a newer build are skipped: this build does not produce those fields.
            if let Some(name) = name_of(chunk[0]) {
                out.push((name, u64::from_le_bytes(h)));
            }
        }
        FieldHashes(out)
    }

    fn decode_v3(rest: &[u8]) -> FieldHashes {
        let Some((map, hashes)) = rest.split_first_chunk::<4>() else {
            return FieldHashes::default();
        };
        let present = u32::from_le_bytes(*map);
        if hashes.len() != 4 * present.count_ones() as usize {
            return FieldHashes::default();
        }
        let codes = (1..=32u8).filter(|code| present & 1 << (code - 1) != 0);
        let out = codes
            .zip(hashes.chunks_exact(4))
            // Codes from a newer build are skipped: this build does not produce those fields.
            .filter_map(|(code, h)| {
                let bits = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
                Some((name_of(code)?, u64::from(bits)))
            })
            .collect();
        FieldHashes(out)
    }

    /// The hash of one field, if present.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, h)| *h)
    }
}

/// The part of a field's hash that is stored and compared.
fn stored_bits(hash: u64) -> u32 {
    hash as u32
}

/// Whether two hashes, either of them possibly read back from the store, are of the same value.
fn same_value(a: u64, b: u64) -> bool {
    stored_bits(a) == stored_bits(b)
}

/// The normalized fields whose JSON differs between two versions, in body order.
///
/// A field present on one side only (a field added to the schema after `prev` was stored)
/// counts as changed only if its value is not empty (`null`, `[]`, `""` or the empty set), so
/// an upgrade that adds a field does not mark every alert's next version as changed.
pub fn changed_fields(prev: &FieldHashes, next: &FieldHashes) -> Vec<&'static str> {
    let mut out = Vec::new();
    for &(name, h) in &next.0 {
        match prev.get(name) {
            Some(p) if same_value(p, h) => {}
            Some(_) => out.push(name),
            None if !is_empty_value(h) => out.push(name),
            None => {}
        }
    }
    for &(name, h) in &prev.0 {
        if next.get(name).is_none() && !is_empty_value(h) {
            out.push(name);
        }
    }
    out
}

/// The hash of a set given its elements' hashes: order-insensitive.
pub(crate) fn set_hash(element_hashes: &mut [u64]) -> u64 {
    element_hashes.sort_unstable();
    let mut bytes = Vec::with_capacity(element_hashes.len() * 8);
    for h in element_hashes.iter() {
        bytes.extend_from_slice(&h.to_le_bytes());
    }
    xxh3_64(&bytes)
}

fn is_empty_value(h: u64) -> bool {
    [
        xxh3_64(b"null"),
        xxh3_64(b"[]"),
        xxh3_64(b"\"\""),
        set_hash(&mut []),
    ]
    .into_iter()
    .any(|empty| same_value(h, empty))
}

fn code_of(name: &str) -> Option<u8> {
    CODES.iter().find(|(_, n)| *n == name).map(|(c, _)| *c)
}

fn name_of(code: u8) -> Option<&'static str> {
    CODES.iter().find(|(c, _)| *c == code).map(|(_, n)| *n)
}

/// The field names that are hashed, for tests elsewhere in the module.
#[cfg(test)]
pub(crate) fn hashed_field_names() -> impl Iterator<Item = &'static str> {
    CODES.iter().map(|(_, n)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashes(pairs: &[(&'static str, u64)]) -> FieldHashes {
        FieldHashes(pairs.to_vec())
    }

    #[test]
    fn encode_decode_round_trip() {
        let h = hashes(&[
            ("title", 1),
            ("status", u64::MAX),
            ("entities", 0x0102_0304),
        ]);
        let bytes = h.encode();
        assert_eq!(bytes.len(), 5 + 3 * 4);
        let stored = hashes(&[
            ("title", 1),
            ("status", 0xFFFF_FFFF),
            ("entities", 0x0102_0304),
        ]);
        assert_eq!(FieldHashes::decode(&bytes), stored);
        assert!(changed_fields(&FieldHashes::decode(&bytes), &h).is_empty());
    }

    #[test]
    fn the_encoding_is_pinned() {
        // Stored rows must stay readable: this is the exact v3 layout (status is code 7).
        let status = hashes(&[("status", 0x0807_0605_0403_0201)]);
        assert_eq!(status.encode(), [3, 0x40, 0, 0, 0, 1, 2, 3, 4]);
        // And v2, as written before it.
        let stored = hashes(&[("status", 0x0403_0201)]);
        assert_eq!(FieldHashes::decode(&[2, 7, 1, 2, 3, 4]), stored);
        assert_eq!(status.encode_v2(), [2, 7, 1, 2, 3, 4]);
    }

    #[test]
    fn format_1_rows_are_still_read_and_compared_by_their_stored_bits() {
        let v1 = [1, 7, 1, 2, 3, 4, 5, 6, 7, 8];
        let read = FieldHashes::decode(&v1);
        assert_eq!(read, hashes(&[("status", 0x0807_0605_0403_0201)]));
        // The same value hashed again (a full 64-bit hash) is unchanged; another value is not.
        let same = hashes(&[("status", 0x0807_0605_0403_0201)]);
        assert!(changed_fields(&read, &same).is_empty());
        let other = hashes(&[("status", 0x0807_0605_0403_0202)]);
        assert_eq!(changed_fields(&read, &other), ["status"]);
    }

    #[test]
    fn garbage_decodes_to_empty() {
        for bytes in [
            &[][..],
            &[0],
            &[3, 1, 0, 0, 0, 0],
            &[3, 1, 0],
            &[3, 3, 0, 0, 0, 1, 2, 3, 4],
            &[4, 1, 2, 3],
            &[1, 1, 2, 3],
            &[2, 1, 2, 3],
        ] {
            assert_eq!(FieldHashes::decode(bytes), FieldHashes::default());
        }
    }

    #[test]
    fn codes_from_a_newer_build_are_skipped() {
        let mut v2 = hashes(&[("title", 5)]).encode_v2();
        v2.push(200);
        v2.extend_from_slice(&9u32.to_le_bytes());
        assert_eq!(FieldHashes::decode(&v2), hashes(&[("title", 5)]));
        // Code 31, unknown here, beside title (code 1).
        let mut v3 = vec![3];
        v3.extend_from_slice(&(1u32 | 1 << 30).to_le_bytes());
        v3.extend_from_slice(&5u32.to_le_bytes());
        v3.extend_from_slice(&9u32.to_le_bytes());
        assert_eq!(FieldHashes::decode(&v3), hashes(&[("title", 5)]));
    }

    #[test]
    fn codes_are_unique() {
        for (i, (c, n)) in CODES.iter().enumerate() {
            for (c2, n2) in &CODES[i + 1..] {
                assert!(c != c2 && n != n2, "{c} {n}");
            }
        }
    }

    #[test]
    fn changed_fields_compares_hashes_and_ignores_new_empty_fields() {
        let prev = hashes(&[("title", 1), ("status", 2)]);
        let next = hashes(&[
            ("title", 1),
            ("status", 3),
            ("tags", set_hash(&mut [])),
            ("duplicate_of", xxh3_64(b"null")),
            ("related", 77),
        ]);
        assert_eq!(changed_fields(&prev, &next), ["status", "related"]);
        assert!(changed_fields(&next, &next).is_empty());
    }

    #[test]
    fn set_hash_ignores_order() {
        assert_eq!(set_hash(&mut [1, 2, 3]), set_hash(&mut [3, 1, 2]));
        assert_ne!(set_hash(&mut [1, 2]), set_hash(&mut [1, 2, 2]));
    }
}
