//! The part that stores: the `Store` contract shared by the SQLite and Postgres backends, and the
//! backend-independent decisions of an ingest (new, updated, unchanged or stale; forwarded or
//! filtered; revision and changed fields). A backend only reads and writes rows: `sql` does it
//! once for both, on the `Dialect` of each (`sqlite`, `postgres`).

/// Builds a `$ty` from a row's columns taken in order: both backends decode these columns to the
/// same Rust types, so one mapping serves both.
macro_rules! from_row {
    ($ty:ident, $row:expr, $($field:ident),+ $(,)?) => {{
        let mut column = 0usize;
        let built = $ty {
            $($field: {
                let value = $row.try_get(column)?;
                column += 1;
                value
            }),+
        };
        debug_assert!(column > 0);
        built
    }};
}

mod filters;
pub mod levels;
pub mod postgres;
pub mod sql;
pub mod sqlite;

use std::collections::HashMap;
use std::future::Future;

use crate::config::Filters;
use crate::normalize::envelope::{self, Change, Envelope};
use crate::normalize::{
    FieldHashes, FilterFields, Prepared, PreparedBody, SourceKind, VersionInput,
};

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// A store failure; `connectivity` ones are retried by callers, the rest are bugs or full disks.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Invalid(String),
    /// This replica does not hold the lease the write needs (another replica took over).
    #[error("lease {0} is not held by this replica: the write was refused")]
    Fenced(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Which tenant an item belongs to: the config name keys rows, the directory id goes in event ids.
#[derive(Debug, Clone)]
pub struct TenantRef {
    pub name: String,
    pub id: String,
}

/// The stored versions a reconciliation pass asks about: alerts changed at or after `since_ms`
/// (this host's clock) whose latest version (ticks) is in [`from_ticks`, `to_ticks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionWindow {
    pub since_ms: i64,
    pub from_ticks: i64,
    pub to_ticks: i64,
}

/// A coverage point's key: one per (tenant, source, list).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CursorKey {
    pub tenant: String,
    pub source: SourceKind,
    /// The list within a source (submissions: emailThreats …); empty for single-list sources.
    pub list: String,
}

/// A coverage point C and the first run's T0, both whole Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub coverage: i64,
    pub t0: i64,
}

/// An item that could not be stored: kept with its raw text for `quarantine list | retry`.
#[derive(Debug, Clone)]
pub struct QuarantineItem {
    pub native_id: Option<String>,
    pub reason: String,
    pub raw: String,
    /// The submission list it came from (it picks the parser on retry); empty otherwise.
    pub list: String,
}

/// A quarantined item the operator asked to retry (`quarantine retry`), for its poller.
#[derive(Debug, Clone)]
pub struct QuarantineRetry {
    pub id: i64,
    pub list: String,
    pub raw: String,
}

/// What a retry of a quarantined item came to, settled in the ingest transaction that stores
/// the items that now parse.
#[derive(Debug, Clone)]
pub struct RetriedQuarantine {
    pub id: i64,
    /// `None`: it parsed and is in the batch's items, so the row goes; `Some`: still unusable,
    /// the row stays (unmarked) with this reason.
    pub still_unusable: Option<String>,
}

impl QuarantineItem {
    /// Identifies the same bad item when the overlap reads it again.
    pub fn raw_hash(&self) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(self.raw.as_bytes());
        digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
    }
}

/// One page's worth of items to commit together, with the coverage move it completes.
pub struct IngestBatch<'a> {
    pub tenant: &'a TenantRef,
    pub source: SourceKind,
    pub items: Vec<Prepared>,
    pub quarantine: Vec<QuarantineItem>,
    /// Quarantined items retried in this batch.
    pub retried: Vec<RetriedQuarantine>,
    pub historical: bool,
    pub observed_at: &'a str,
    pub filters: &'a Filters,
    /// `Some((key, b))`: C := max(C, b) in the same transaction.
    pub advance: Option<(&'a CursorKey, i64)>,
    /// With `advance`: the source's own coverage state, stored in the same transaction (the
    /// reporting mailbox's delta or next link).
    pub source_state: Option<&'a str>,
    /// `Some(d)`: the tenant has campaign context on; the first forwarded version of an alert
    /// about an email waits up to `d` for it (design §6 `context`), and the alert is listed as
    /// wanting context, both in this transaction.
    pub context_hold: Option<std::time::Duration>,
}

/// What an ingest did, for logs, `/status` and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IngestCounts {
    pub new: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub stale: u64,
    /// Items newly quarantined (one re-read by the overlap is not counted again).
    pub quarantined: u64,
    /// Versions queued for delivery.
    pub queued: u64,
}

impl IngestCounts {
    pub fn add(&mut self, o: IngestCounts) {
        self.new += o.new;
        self.updated += o.updated;
        self.unchanged += o.unchanged;
        self.stale += o.stale;
        self.quarantined += o.quarantined;
        self.queued += o.queued;
    }
}

/// Per-alert dedup state (the `alerts` table).
#[derive(Debug, Clone)]
pub struct AlertState {
    pub native_id: String,
    /// Ticks for Graph sources, the state number for the others.
    pub latest: i64,
    pub state_hash: Option<Vec<u8>>,
    pub revision: i64,
    pub forwarded: bool,
    pub field_hashes: Vec<u8>,
    /// The campaign context attached to the alert, in the body codec's form: later versions
    /// carry it too. Read with the state; written only when context is attached.
    pub context: Option<Vec<u8>>,
}

/// A version to append to the outbox.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    /// The source of the alert this version belongs to (a `linked` revision may be another
    /// source's than the page being committed).
    pub source: SourceKind,
    pub native_id: String,
    pub version: String,
    pub historical: bool,
    /// The body as stored (`body_codec::encode_event` or `encode_with_sealed`).
    pub stored: Vec<u8>,
    /// The JSON body's length: batches are cut by what goes on the wire.
    pub json_len: usize,
}

/// Stored bodies: one format byte, then the payload. The store's cost is its bytes (WAL,
/// checkpoint, disk), so bodies are kept compressed and handed out as the exact JSON bytes that
/// were rendered. Formats, each readable forever (a store keeps what older versions wrote):
/// - `{`: plain JSON, stored as it is (the first stores);
/// - `1`: LZ4 block with its length prepended (issue 2);
/// - `2`, then a dictionary id, then one zstd frame compressed with that dictionary (issue 12).
///   Dictionary 1 is `dict/alerts-v1.zdict` (32 KiB), trained on the simulator's alerts as whole
///   events; dictionary 2, `dict/alerts-v2.zdict` (40 KiB), on what the store compresses since
///   issue 12, envelopes and members as separate frames (`examples/body_dict.rs`). A
///   dictionary, once shipped, never changes: a better one is added under the next id and new
///   bodies use it, while the old ones stay readable with theirs;
/// - `3`: as `2`, of an event whose `event_id` was left out because it derives from the event's
///   own members (`envelope::without_event_id`); decoding writes it back (issue 12).
pub mod body_codec {
    use std::cell::RefCell;
    use std::sync::OnceLock;

    use zstd::bulk::{Compressor, Decompressor};
    use zstd::dict::{DecoderDictionary, EncoderDictionary};
    use zstd::zstd_safe::CParameter;

    use crate::normalize::envelope;

    const LZ4: u8 = 1;
    const ZSTD: u8 = 2;
    const ZSTD_DERIVED_ID: u8 = 3;

    /// The dictionary new bodies are compressed with.
    pub const CURRENT_DICTIONARY: u8 = 2;
    /// zstd's level for new bodies, chosen by measurement (docs/benchmarks.md, issue 12): with
    /// the dictionary, higher levels gain little size for much more time.
    pub const LEVEL: i32 = 3;
    /// No body is larger: a corrupt frame header cannot make the decoder allocate more.
    const MAX_JSON: usize = 1 << 30;

    /// The shipped dictionaries by id. Never edit or remove one: bodies name it.
    pub fn dictionary(id: u8) -> Option<&'static [u8]> {
        match id {
            1 => Some(include_bytes!("dict/alerts-v1.zdict")),
            2 => Some(include_bytes!("dict/alerts-v2.zdict")),
            _ => None,
        }
    }

    fn encoder_dictionary() -> Option<&'static EncoderDictionary<'static>> {
        static PREPARED: OnceLock<Option<EncoderDictionary<'static>>> = OnceLock::new();
        PREPARED
            .get_or_init(|| {
                EncoderDictionary::try_copy(dictionary(CURRENT_DICTIONARY)?, LEVEL).ok()
            })
            .as_ref()
    }

    fn decoder_dictionary(id: u8) -> Option<&'static DecoderDictionary<'static>> {
        // Prepared on first use: a store written by one dictionary never loads another. The
        // current dictionary is the newest, so shipping the next one grows this by itself.
        const SHIPPED: usize = CURRENT_DICTIONARY as usize;
        static PREPARED: [OnceLock<Option<DecoderDictionary<'static>>>; SHIPPED] =
            [const { OnceLock::new() }; SHIPPED];
        let slot = PREPARED.get(usize::from(id).checked_sub(1)?)?;
        slot.get_or_init(|| DecoderDictionary::try_copy(dictionary(id)?).ok())
            .as_ref()
    }

    thread_local! {
        // One context per thread, reused: a fresh one costs more than compressing a body.
        static COMPRESSOR: RefCell<Option<Compressor<'static>>> = const { RefCell::new(None) };
        static DECOMPRESSOR: RefCell<Option<(u8, Decompressor<'static>)>> = const { RefCell::new(None) };
        static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }

    /// The scratch buffer a thread keeps between bodies (bodies are ~10 KB before compression).
    const SCRATCH_KEEP: usize = 256 * 1024;

    fn new_compressor() -> Option<Compressor<'static>> {
        let mut c = Compressor::with_prepared_dictionary(encoder_dictionary()?).ok()?;
        // The id travels in our own header byte; zstd's 4-byte copy of it would be redundant.
        c.set_parameter(CParameter::DictIdFlag(false)).ok()?;
        c.set_parameter(CParameter::ContentSizeFlag(true)).ok()?;
        Some(c)
    }

    /// Appends one zstd frame of `json` (current dictionary) to `out`. The frame is made in a
    /// per-thread scratch buffer of zstd's worst-case size and copied out at its real size: a
    /// page's sealed bodies held at the worst case took eight times their size (issue 12).
    fn zstd_append(json: &[u8], mut out: Vec<u8>) -> Option<Vec<u8>> {
        COMPRESSOR
            .try_with(|cell| {
                let mut slot = cell.try_borrow_mut().ok()?;
                if slot.is_none() {
                    *slot = new_compressor();
                }
                let c = slot.as_mut()?;
                let written = SCRATCH.with_borrow_mut(|scratch| {
                    scratch.clear();
                    scratch.reserve(zstd::zstd_safe::compress_bound(json.len()));
                    let written = c.compress_to_buffer(json, scratch);
                    if written.is_ok() {
                        out.reserve_exact(scratch.len());
                        out.extend_from_slice(scratch);
                    }
                    // One huge body must not pin its buffer to the thread for good.
                    if scratch.capacity() > SCRATCH_KEEP {
                        *scratch = Vec::new();
                    }
                    written
                });
                match written {
                    Ok(_) => Some(std::mem::take(&mut out)),
                    Err(_) => {
                        // A context in doubt is not reused.
                        *slot = None;
                        None
                    }
                }
            })
            .ok()
            .flatten()
    }

    fn zstd_encode(json: &[u8]) -> Option<Vec<u8>> {
        zstd_append(json, vec![ZSTD, CURRENT_DICTIONARY])
    }

    /// A body's members compressed ahead of its envelope (when its page is parsed, off the
    /// store's write path): one zstd frame with the current dictionary, without header bytes.
    /// `None` when zstd cannot allocate its context; the caller keeps the JSON then.
    pub fn seal(members: &[u8]) -> Option<Vec<u8>> {
        if members.len() > MAX_JSON {
            return None;
        }
        zstd_append(members, Vec::new())
    }

    /// The stored form of `head` followed by the members sealed by [`seal`]: format 2 with two
    /// frames, which zstd decodes as one concatenated body, so every version that reads format
    /// 2 reads it. `None` when zstd cannot compress the head.
    pub fn encode_with_sealed(head: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let mut out = match zstd_without_event_id(head) {
            Some(out) => out,
            None => zstd_encode(head)?,
        };
        out.extend_from_slice(sealed);
        Some(out)
    }

    /// The stored form of a rendered event: as [`encode`], without the event id when it derives
    /// from the event's own members (format 3).
    pub fn encode_event(event: &[u8]) -> Vec<u8> {
        zstd_without_event_id(event).unwrap_or_else(|| encode(event))
    }

    /// Format 3 of an event or of its head; `None` when its event id is not the derived one (or
    /// zstd cannot compress it), for the caller to store it whole.
    fn zstd_without_event_id(event: &[u8]) -> Option<Vec<u8>> {
        if event.len() > MAX_JSON {
            return None;
        }
        let without = envelope::without_event_id(event)?;
        zstd_append(&without, vec![ZSTD_DERIVED_ID, CURRENT_DICTIONARY])
    }

    /// The members a [`seal`] compressed.
    pub fn unseal(sealed: &[u8]) -> Result<Vec<u8>, String> {
        zstd_decode(CURRENT_DICTIONARY, sealed)
    }

    /// The stored form of a JSON body: zstd with the current dictionary, or LZ4 should zstd
    /// be unavailable (it cannot allocate its context), which every version reads as well.
    pub fn encode(json: &[u8]) -> Vec<u8> {
        if json.len() <= MAX_JSON {
            if let Some(out) = zstd_encode(json) {
                return out;
            }
        }
        encode_lz4(json)
    }

    /// The LZ4 format (1), as bodies were stored before issue 12.
    pub fn encode_lz4(json: &[u8]) -> Vec<u8> {
        let compressed = lz4_flex::block::compress_prepend_size(json);
        let mut out = Vec::with_capacity(compressed.len() + 1);
        out.push(LZ4);
        out.extend_from_slice(&compressed);
        out
    }

    fn zstd_decode(dict_id: u8, frame: &[u8]) -> Result<Vec<u8>, String> {
        let Some(dict) = decoder_dictionary(dict_id) else {
            return Err(format!(
                "stored body names zstd dictionary {dict_id}, which this version does not have"
            ));
        };
        let decode = |d: &mut Decompressor<'static>| {
            d.decompress(frame, MAX_JSON)
                .map_err(|e| format!("stored body is corrupt: {e}"))
        };
        DECOMPRESSOR
            .try_with(|cell| {
                let Ok(mut slot) = cell.try_borrow_mut() else {
                    return None;
                };
                if slot.as_ref().is_none_or(|(id, _)| *id != dict_id) {
                    *slot = Decompressor::with_prepared_dictionary(dict)
                        .ok()
                        .map(|d| (dict_id, d));
                }
                let (_, d) = slot.as_mut()?;
                let result = decode(d);
                if result.is_err() {
                    *slot = None;
                }
                Some(result)
            })
            .ok()
            .flatten()
            .unwrap_or_else(|| {
                let mut d = Decompressor::with_prepared_dictionary(dict)
                    .map_err(|e| format!("cannot read a stored body: {e}"))?;
                decode(&mut d)
            })
    }

    /// The JSON bytes; a body stored uncompressed (it starts with `{`) is returned as it is.
    pub fn decode(stored: &[u8]) -> Result<Vec<u8>, String> {
        match stored.split_first() {
            Some((&ZSTD, rest)) => match rest.split_first() {
                Some((&dict_id, frame)) => zstd_decode(dict_id, frame),
                None => Err("stored body is corrupt: cut after its format byte".into()),
            },
            Some((&ZSTD_DERIVED_ID, rest)) => match rest.split_first() {
                Some((&dict_id, frame)) => envelope::with_event_id(&zstd_decode(dict_id, frame)?),
                None => Err("stored body is corrupt: cut after its format byte".into()),
            },
            Some((&LZ4, rest)) => lz4_flex::block::decompress_size_prepended(rest)
                .map_err(|e| format!("stored body is corrupt: {e}")),
            Some((b'{', _)) => Ok(stored.to_vec()),
            _ => Err("stored body has an unknown format".into()),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        const JSON: &[u8] = br#"{"a":"\u0000 and some text that repeats, repeats, repeats"}"#;

        #[test]
        fn round_trip_in_the_current_format() {
            let stored = encode(JSON);
            assert_eq!(stored[..2], [ZSTD, CURRENT_DICTIONARY]);
            assert!(stored.len() < JSON.len());
            assert_eq!(decode(&stored).unwrap(), JSON.to_vec());
            assert_eq!(decode(&encode(b"{}")).unwrap(), b"{}".to_vec());
            assert_eq!(decode(&encode(b"")).unwrap(), b"".to_vec());
            // A large body, and a context reused across bodies.
            let big: Vec<u8> = (0..200_000u32)
                .flat_map(|i| format!("{{\"n\":{i}}},").into_bytes())
                .collect();
            for _ in 0..3 {
                assert_eq!(decode(&encode(&big)).unwrap(), big);
            }
        }

        #[test]
        fn a_head_joined_to_sealed_members_decodes_as_one_body() {
            let (head, members) = JSON.split_at(6);
            let sealed = seal(members).unwrap();
            assert_eq!(unseal(&sealed).unwrap(), members.to_vec());
            let stored = encode_with_sealed(head, &sealed).unwrap();
            assert_eq!(&stored[..2], &[ZSTD, CURRENT_DICTIONARY]);
            assert_eq!(decode(&stored).unwrap(), JSON.to_vec());
            // The frames are whole: cutting the second one is an error, not half a body.
            assert!(decode(&stored[..stored.len() - 3]).is_err());
        }

        #[test]
        fn older_formats_still_decode() {
            // LZ4 as written before issue 12, byte for byte (format 1, length prepended).
            let lz4 = encode_lz4(JSON);
            assert_eq!(lz4[0], LZ4);
            assert_eq!(decode(&lz4).unwrap(), JSON.to_vec());
            let mut frozen = vec![1u8];
            frozen.extend_from_slice(&lz4_flex::block::compress_prepend_size(JSON));
            assert_eq!(decode(&frozen).unwrap(), JSON.to_vec());
            // Plain JSON passes through.
            assert_eq!(decode(JSON).unwrap(), JSON.to_vec());
            // zstd with dictionary 1, as written before dictionary 2 (format 2).
            let mut c = Compressor::with_dictionary(LEVEL, dictionary(1).unwrap()).unwrap();
            c.set_parameter(CParameter::DictIdFlag(false)).unwrap();
            let mut v1 = vec![ZSTD, 1];
            v1.extend_from_slice(&c.compress(JSON).unwrap());
            assert_eq!(decode(&v1).unwrap(), JSON.to_vec());
        }

        #[test]
        fn unknown_and_corrupt_bodies_are_errors() {
            let stored = encode(JSON);
            assert!(decode(&[]).is_err());
            assert!(decode(&[9, 1, 2]).is_err());
            assert!(decode(&[ZSTD]).is_err());
            let mut other_dict = stored.clone();
            other_dict[1] = 200;
            let err = decode(&other_dict).unwrap_err();
            assert!(err.contains("dictionary 200"), "{err}");
            assert!(decode(&stored[..stored.len() / 2]).is_err(), "a cut body");
            let lz4 = encode_lz4(JSON);
            assert!(decode(&lz4[..lz4.len() / 2]).is_err(), "a cut LZ4 body");
            let mut garbage = stored.clone();
            for b in &mut garbage[2..] {
                *b = b.wrapping_mul(31).wrapping_add(7);
            }
            assert!(decode(&garbage).is_err());
            // The decoder is still good after errors.
            assert_eq!(decode(&stored).unwrap(), JSON.to_vec());
        }

        /// Shipped dictionaries are named by stored bodies: they must never change.
        #[test]
        fn shipped_dictionaries_are_frozen() {
            use sha2::Digest;
            for (id, len, pinned) in [
                (
                    1,
                    32_768,
                    "a3f8fc26d0a363868b73b5ab53d3aef4b437608b32e89eb44fc51a38307a8117",
                ),
                (
                    2,
                    40_960,
                    "8063093b8bb52250dfb38dd86865ea1ecbcbb3ab3a7fb85d8afae4643e4e9429",
                ),
            ] {
                let dict = dictionary(id).unwrap();
                let sha256: String = sha2::Sha256::digest(dict)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                assert_eq!(
                    (dict.len(), sha256.as_str()),
                    (len, pinned),
                    "dictionary {id} changed: add a new dictionary id instead"
                );
            }
            assert_eq!(dictionary(3), None);
        }
    }
}

/// The rows an ingest writes, decided without the database.
#[derive(Debug, Default)]
pub struct IngestPlan {
    pub upserts: Vec<AlertState>,
    pub outbox: Vec<OutboxRow>,
    pub counts: IngestCounts,
}

/// Does an item pass "which alert types to sync"? Unreadable fields let the item through (rule 7).
pub fn passes(filters: &Filters, f: &FilterFields) -> bool {
    fn any_of(allowed: &[String], value: Option<&str>) -> bool {
        allowed.is_empty()
            || value.is_none_or(|v| allowed.iter().any(|a| a.eq_ignore_ascii_case(v)))
    }
    any_of(&filters.service_sources, f.service_source.as_deref())
        && any_of(&filters.detection_sources, f.detection_source.as_deref())
        && any_of(&filters.categories, f.category.as_deref())
        && any_of(&filters.severities, f.severity)
        && any_of(&filters.statuses, f.status)
}

/// Decides, for one page and the stored state of its alerts, what to write (design §4, §6).
pub fn plan_ingest(
    batch: &mut IngestBatch<'_>,
    states: &HashMap<String, AlertState>,
    related: &HashMap<String, Vec<LinkRef>>,
) -> IngestPlan {
    let mut plan = IngestPlan {
        counts: IngestCounts {
            quarantined: batch.quarantine.len() as u64,
            ..Default::default()
        },
        ..Default::default()
    };
    let items = dedup_newest(std::mem::take(&mut batch.items));
    let source = batch.source.as_str();
    for item in items {
        let prev = states.get(&item.native_id);
        let (number, state_hash, version) = match (&item.version, prev) {
            (VersionInput::Ticks(t), None) => (*t, None, crate::time::format_ticks(*t)),
            (VersionInput::Ticks(t), Some(p)) => {
                if *t == p.latest {
                    plan.counts.unchanged += 1;
                    continue;
                }
                if *t < p.latest {
                    plan.counts.stale += 1;
                    continue;
                }
                (*t, None, crate::time::format_ticks(*t))
            }
            (VersionInput::Once, Some(_)) => {
                plan.counts.unchanged += 1;
                continue;
            }
            (VersionInput::Once, None) => (1, None, envelope::ONCE_VERSION.to_string()),
            (VersionInput::State { hash }, p) => {
                if p.is_some_and(|p| p.state_hash.as_deref() == Some(&hash[..])) {
                    plan.counts.unchanged += 1;
                    continue;
                }
                let n = p.map_or(1, |p| p.latest + 1);
                (n, Some(hash.to_vec()), envelope::state_version(n, hash))
            }
        };
        if prev.is_some() {
            plan.counts.updated += 1;
        } else {
            plan.counts.new += 1;
        }
        let was_forwarded = prev.is_some_and(|p| p.forwarded);
        let refs = related
            .get(&item.native_id)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        // The twin rule: a Cloud Apps alert already forwarded through alerts_v2 is held, unless
        // forward_twins; one already forwarded keeps being forwarded (rule 7). A twin that was
        // stored but never forwarded (the alerts source's own filters dropped it) holds nothing:
        // holding behind it would keep the detection from Dropzone for good, and nothing
        // re-decides a held alert until its own next version.
        let twin = duplicate_of(batch.source, refs).filter(|t| t.forwarded);
        let held = twin.is_some() && !batch.filters.forward_twins;
        let forward = was_forwarded || (!held && passes(batch.filters, &item.filter));
        let mut state = AlertState {
            native_id: item.native_id.clone(),
            latest: number,
            state_hash,
            revision: prev.map_or(0, |p| p.revision),
            forwarded: was_forwarded,
            field_hashes: prev.map_or_else(Vec::new, |p| p.field_hashes.clone()),
            context: None,
        };
        if forward {
            let changed: Vec<&'static str> = if was_forwarded {
                crate::normalize::changed_fields(
                    &FieldHashes::decode(&state.field_hashes),
                    &item.field_hashes,
                )
            } else {
                Vec::new()
            };
            state.revision += 1;
            state.forwarded = true;
            state.field_hashes = item.field_hashes.encode();
            let event_id = envelope::event_id(&batch.tenant.id, source, &item.native_id, &version);
            let alert_id = envelope::alert_id(&batch.tenant.id, source, &item.native_id);
            let (stored, json_len) = stored_event(
                &Envelope {
                    event_id: &event_id,
                    alert_id: &alert_id,
                    kind: batch.source.kind(),
                    revision: state.revision,
                    change: if was_forwarded {
                        Change::Updated
                    } else {
                        Change::Created
                    },
                    changed_fields: &changed,
                    observed_at: batch.observed_at,
                    historical: batch.historical,
                    tenant_id: &batch.tenant.id,
                    tenant_name: &batch.tenant.name,
                    source,
                    native_id: &item.native_id,
                    version: &version,
                },
                &item.body,
                refs,
                twin,
                prev.and_then(|p| p.context.as_deref()),
            );
            plan.outbox.push(OutboxRow {
                source: batch.source,
                native_id: item.native_id,
                version,
                historical: batch.historical,
                stored,
                json_len,
            });
            plan.counts.queued += 1;
        }
        plan.upserts.push(state);
    }
    plan
}

/// The stored form of one event and the length of its JSON. A sealed body that needs nothing
/// written into it (the common case) is joined to its compressed envelope as it is; otherwise
/// (links, or the alert's campaign context, in its stored form) the event is rendered whole and
/// compressed.
fn stored_event(
    env: &Envelope,
    body: &PreparedBody,
    refs: &[LinkRef],
    twin: Option<&LinkRef>,
    context: Option<&[u8]>,
) -> (Vec<u8>, usize) {
    if let PreparedBody::Sealed {
        members,
        members_len,
    } = body
    {
        if refs.is_empty() && twin.is_none() && context.is_none() {
            let head = envelope::render_head(env);
            if let Some(stored) = body_codec::encode_with_sealed(&head, members) {
                return (stored, head.len() + members_len);
            }
        }
    }
    let json = match body.json() {
        Ok(json) => json,
        // Sealed by this process moments ago: only a bug gets here, and the guard around
        // `plan_ingest` turns it into a failed page (C stays put) rather than a lost item.
        Err(e) => panic!("a prepared body cannot be read back: {e}"),
    };
    let mut event = envelope::render(env, &with_links(&json, refs, twin));
    // Context kept from an earlier version; one that cannot be read (written by a newer codec)
    // is left out rather than holding the version back.
    let context = context.and_then(|c| body_codec::decode(c).ok());
    if let Some(with) = context.and_then(|c| with_context(&event, &c)) {
        event = with;
    }
    (body_codec::encode_event(&event), event.len())
}

/// `plan_ingest`, with a bug in normalization or rendering turned into an error for this page
/// (the poll fails and C stays put) instead of killing the poller task.
pub fn plan_ingest_guarded(
    batch: &mut IngestBatch<'_>,
    states: &HashMap<String, AlertState>,
    related: &HashMap<String, Vec<LinkRef>>,
) -> Result<IngestPlan> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        plan_ingest(batch, states, related)
    }))
    .map_err(
        |_| StoreError::Invalid("internal error while preparing a page for the store (a bug: please report it with the logs)".into()),
    )
}

/// `body` with the first occurrence of `from` replaced by `to`; `None` when `from` is absent.
/// Callers rely on the envelope writing its members before `raw`, and on a quote inside a
/// string being escaped, so the first match of a `"key":` pattern is that member.
fn replace_first(body: &[u8], from: &[u8], to: &[u8]) -> Option<Vec<u8>> {
    let at = memchr::memmem::find(body, from)?;
    let mut out = Vec::with_capacity(body.len() + to.len());
    out.extend_from_slice(&body[..at]);
    out.extend_from_slice(to);
    out.extend_from_slice(&body[at + from.len()..]);
    Some(out)
}

/// A delivered version to send again as new (`replay --as-new`, design §7): version
/// `{version}#replay{n}` (n: the replay run) and so a new event id; the rest of the body as it was sent. `None` when
/// the stored body cannot be read.
pub fn replay_row(
    source: SourceKind,
    native_id: &str,
    version: &str,
    n: i64,
    stored: &[u8],
) -> Option<OutboxRow> {
    let json = body_codec::decode(stored).ok()?;
    let parsed: serde_json::Value = serde_json::from_slice(&json).ok()?;
    let tenant_id = parsed["tenant"]["id"].as_str()?;
    let old_event = parsed["event_id"].as_str()?;
    let new_version = format!("{version}#replay{n}");
    let event_id = envelope::event_id(tenant_id, source.as_str(), native_id, &new_version);
    let quoted = |s: &str| serde_json::Value::from(s).to_string();
    // The envelope writes `event_id` and `version` once, before `raw`: the first match is theirs.
    let body = replace_first(
        &json,
        format!(r#""event_id":{}"#, quoted(old_event)).as_bytes(),
        format!(r#""event_id":{}"#, quoted(&event_id)).as_bytes(),
    )?;
    let body = replace_first(
        &body,
        format!(r#""version":{}"#, quoted(version)).as_bytes(),
        format!(r#""version":{}"#, quoted(&new_version)).as_bytes(),
    )?;
    Some(OutboxRow {
        source,
        native_id: native_id.to_string(),
        version: new_version,
        historical: false,
        stored: body_codec::encode_event(&body),
        json_len: body.len(),
    })
}

/// The version a replay is numbered from: a replayed version counts from its original.
pub fn replay_base(version: &str) -> &str {
    version.split("#replay").next().unwrap_or(version)
}

/// The generation of each coverage point as this process last read it (`load_cursor`,
/// `init_cursor`). `cursor set` bumps the row's generation; a page's advance applies only while
/// the row still has the generation its poll read, so a poll that started before the command
/// stores its pages but cannot move C past the operator's value (`GREATEST` would undo a move
/// back). The poll after it reads the new C and generation. Kept in the store, not in the
/// pollers, because every poll reads C through `load_cursor` before it commits a page.
#[derive(Default)]
pub(crate) struct CursorGenerations(std::sync::Mutex<HashMap<CursorKey, i64>>);

impl CursorGenerations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CursorKey, i64>> {
        match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    pub(crate) fn read(&self, key: &CursorKey, generation: i64) {
        self.lock().insert(key.clone(), generation);
    }

    /// The generation an advance must find; `None` (C never read by this process) lets it pass.
    pub(crate) fn expected(&self, key: &CursorKey) -> Option<i64> {
        self.lock().get(key).copied()
    }
}

/// Says that a page's advance was dropped because `cursor set` moved C after its poll read it.
pub(crate) fn skipped_advance(key: &CursorKey) {
    tracing::info!(
        tenant = %key.tenant,
        source = key.source.as_str(),
        list = %key.list,
        "coverage point was set by an operator after this poll read it: the poll's pages are stored, C stays where it was set, the next poll starts from there"
    );
}

/// An item another item is linked to (design §6 `related`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LinkRef {
    pub source: SourceKind,
    pub native_id: String,
    /// Whether that item was ever forwarded (its `alerts` row), as the page's transaction saw
    /// it: the twin rule holds a Cloud Apps alert only behind a twin Dropzone actually got.
    pub forwarded: bool,
}

/// The keys that link an item to the same thing seen through another source: a Cloud Apps
/// alert and its alerts_v2 twin share `mda:{provider alert id}`; an email submission and the
/// alerts about that message share `msg:{message id}`.
pub fn link_keys(source: SourceKind, item: &Prepared) -> Vec<String> {
    let mut keys = Vec::new();
    let from_cloud_apps = match source {
        SourceKind::CloudApps => true,
        SourceKind::Alerts => {
            item.filter.service_source.as_deref() == Some("microsoftDefenderForCloudApps")
        }
        _ => false,
    };
    if from_cloud_apps {
        if let Some(id) = &item.links.provider_alert_id {
            // Graph may show the Cloud Apps id with a `ca` prefix.
            let id = id
                .strip_prefix("ca")
                .filter(|_| source == SourceKind::Alerts && id.len() == 26)
                .unwrap_or(id);
            keys.push(format!("mda:{id}"));
        }
    }
    if matches!(
        source,
        SourceKind::Alerts | SourceKind::Submissions | SourceKind::PhishingReports
    ) {
        for m in &item.links.message_ids {
            keys.push(format!(
                "msg:{}",
                m.trim_matches(|c| c == '<' || c == '>')
                    .to_ascii_lowercase()
            ));
        }
    }
    keys
}

/// The twin a Cloud Apps alert duplicates: the same detection seen through alerts_v2.
pub fn duplicate_of(source: SourceKind, refs: &[LinkRef]) -> Option<&LinkRef> {
    if source != SourceKind::CloudApps {
        return None;
    }
    refs.iter().find(|r| r.source == SourceKind::Alerts)
}

/// `body` with its links: `refs` in `related`, and `duplicate_of` when it has a twin.
pub fn with_links(body: &[u8], refs: &[LinkRef], twin: Option<&LinkRef>) -> Vec<u8> {
    let body = if refs.is_empty() {
        body.to_vec()
    } else {
        with_related(body, refs)
    };
    let Some(t) = twin else { return body };
    let value = serde_json::json!({"kind": t.source.kind(), "source": t.source.as_str(), "native_id": t.native_id});
    let twin = format!(r#""duplicate_of":{value}"#);
    replace_first(&body, br#""duplicate_of":null"#, twin.as_bytes()).unwrap_or(body)
}

/// `body` with `refs` added to its `related` array. The normalizer writes `"related":[` once, as
/// a key, before `raw`: inside strings every `"` is escaped, so the first match is that member.
pub fn with_related(body: &[u8], refs: &[LinkRef]) -> Vec<u8> {
    const KEY: &[u8] = br#""related":["#;
    let Some(at) = memchr::memmem::find(body, KEY) else {
        return body.to_vec();
    };
    let insert_at = at + KEY.len();
    let mut added = Vec::new();
    for r in refs {
        let entry = serde_json::json!({"kind": r.source.kind(), "source": r.source.as_str(), "native_id": r.native_id});
        if !added.is_empty() {
            added.push(b',');
        }
        added.extend_from_slice(entry.to_string().as_bytes());
    }
    if added.is_empty() {
        return body.to_vec();
    }
    if body.get(insert_at) != Some(&b']') {
        added.push(b',');
    }
    let mut out = Vec::with_capacity(body.len() + added.len());
    out.extend_from_slice(&body[..insert_at]);
    out.extend_from_slice(&added);
    out.extend_from_slice(&body[insert_at..]);
    out
}

/// A `linked` revision of an already forwarded item (design §6): re-prepared from the `raw` of
/// its latest stored body, with its links, under version `{version}#l{k}`.
#[allow(clippy::too_many_arguments)]
pub fn linked_revision(
    tenant: &TenantRef,
    source: SourceKind,
    state: &AlertState,
    link_count: i64,
    stored_json: &[u8],
    refs: &[LinkRef],
    observed_at: &str,
) -> Option<(OutboxRow, AlertState)> {
    #[derive(serde::Deserialize)]
    struct RawOnly<'a> {
        #[serde(borrow)]
        raw: &'a serde_json::value::RawValue,
    }
    let (version, body) = if source == SourceKind::PhishingReports {
        // A report's body comes from its attached original, which is not kept: the stored
        // event is the body, minus its envelope and with the links found so far.
        (VersionInput::Once, envelope::body_of_event(stored_json)?)
    } else {
        let raw = serde_json::from_slice::<RawOnly<'_>>(stored_json).ok()?.raw;
        let prepared = match source {
            SourceKind::Submissions => {
                let list = state.native_id.split('/').next().unwrap_or("");
                crate::normalize::prepare_submission(list, raw).ok()?
            }
            _ => crate::normalize::prepare(source, raw).ok()?,
        };
        (prepared.version, prepared.body.json().ok()?.into_owned())
    };
    let base = match (&version, &state.state_hash) {
        (VersionInput::Once, _) => envelope::ONCE_VERSION.to_string(),
        (VersionInput::Ticks(_), _) => crate::time::format_ticks(state.latest),
        (VersionInput::State { .. }, Some(h)) => {
            let mut hash = [0u8; 32];
            if h.len() != 32 {
                return None;
            }
            hash.copy_from_slice(h);
            envelope::state_version(state.latest, &hash)
        }
        (VersionInput::State { .. }, None) => return None,
    };
    let k = link_count + 1;
    let version = format!("{base}#l{k}");
    // As in `plan_ingest`: `duplicate_of` names only a twin Dropzone got.
    let twin = duplicate_of(source, refs).filter(|t| t.forwarded);
    let body = with_links(&body, refs, twin);
    let mut next = state.clone();
    next.revision += 1;
    let row = revision_row(
        tenant,
        source,
        &state.native_id,
        (next.revision, Change::Linked, version),
        &body,
        observed_at,
    );
    Some((row, next))
}

/// The outbox row of a revision made after forwarding (`linked`, `context`): `body` under a
/// new envelope with `(revision, change, version)`.
fn revision_row(
    tenant: &TenantRef,
    source: SourceKind,
    native_id: &str,
    (revision, change, version): (i64, Change, String),
    body: &[u8],
    observed_at: &str,
) -> OutboxRow {
    let event_id = envelope::event_id(&tenant.id, source.as_str(), native_id, &version);
    let alert_id = envelope::alert_id(&tenant.id, source.as_str(), native_id);
    let rendered = envelope::render(
        &Envelope {
            event_id: &event_id,
            alert_id: &alert_id,
            kind: source.kind(),
            revision,
            change,
            changed_fields: &[],
            observed_at,
            historical: false,
            tenant_id: &tenant.id,
            tenant_name: &tenant.name,
            source: source.as_str(),
            native_id,
            version: &version,
        },
        body,
    );
    OutboxRow {
        source,
        native_id: native_id.to_string(),
        version,
        historical: false,
        stored: body_codec::encode_event(&rendered),
        json_len: rendered.len(),
    }
}

/// An alert that still wants its campaign context: its (first) message id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextWanted {
    pub source: SourceKind,
    pub native_id: String,
    pub message_id: String,
    /// When it was listed (ms).
    pub created_at: i64,
}

/// What `attach_context` did with an alert's context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextOutcome {
    /// Written into its version still waiting in the outbox: it goes out with it.
    Attached,
    /// Its version had already gone (or stopped waiting): a `context` revision was queued.
    Revision,
    /// Nothing to enrich (the alert or its stored body is gone); it no longer wants context.
    Dropped,
}

/// Whether an item of `source` is about an email and may wait for campaign context: alerts_v2
/// items with email evidence, email threat submissions and phishing reports, by their first
/// message id advanced hunting can be asked about.
pub fn context_message_id(source: SourceKind, item: &Prepared) -> Option<&str> {
    if !matches!(
        source,
        SourceKind::Alerts | SourceKind::Submissions | SourceKind::PhishingReports
    ) {
        return None;
    }
    item.links
        .message_ids
        .iter()
        .map(String::as_str)
        .find(|m| crate::hunting::is_queryable(m))
}

/// `event` (a JSON object: a stored event or a body) with a `context` member holding `context`
/// (a JSON object), added last. `None` when `event` is not an object or already has context.
pub fn with_context(event: &[u8], context: &[u8]) -> Option<Vec<u8>> {
    let end = event.iter().rposition(|b| !b.is_ascii_whitespace())?;
    if event.get(end) != Some(&b'}') || event.first() != Some(&b'{') {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct Probe<'a> {
        #[serde(borrow, default)]
        context: Option<&'a serde_json::value::RawValue>,
    }
    if serde_json::from_slice::<Probe<'_>>(event)
        .ok()?
        .context
        .is_some()
    {
        return None;
    }
    let empty = event[1..end].iter().all(u8::is_ascii_whitespace);
    let mut out = Vec::with_capacity(event.len() + context.len() + 12);
    out.extend_from_slice(&event[..end]);
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(br#""context":"#);
    out.extend_from_slice(context);
    out.push(b'}');
    Some(out)
}

/// A `context` revision of an already forwarded item (design §6): its latest stored event
/// (links included) with `context`, under version `{version}#c{k}` where `{version}` is the
/// Microsoft version that event was made from, as for `linked` revisions. Returns the row and
/// the alert's new revision number.
#[allow(clippy::too_many_arguments)]
pub fn context_revision(
    tenant: &TenantRef,
    source: SourceKind,
    native_id: &str,
    revision: i64,
    context_count: i64,
    stored_json: &[u8],
    context: &[u8],
    observed_at: &str,
) -> Option<(OutboxRow, i64)> {
    #[derive(serde::Deserialize)]
    struct VersionOnly {
        version: String,
    }
    let stored_version = serde_json::from_slice::<VersionOnly>(stored_json)
        .ok()?
        .version;
    // `linked`, `context` and replay suffixes all start with `#`; the base is Microsoft's.
    let base = stored_version.split('#').next().unwrap_or(&stored_version);
    let version = format!("{base}#c{}", context_count + 1);
    let body = with_context(&envelope::body_of_event(stored_json)?, context)?;
    let revision = revision + 1;
    let row = revision_row(
        tenant,
        source,
        native_id,
        (revision, Change::Context, version),
        &body,
        observed_at,
    );
    Some((row, revision))
}

/// An outbox row just inserted: (source, native id, seq).
pub type QueuedRow = (SourceKind, String, i64);

/// A page's dedup row to write: the alert's new state, where its latest body now is (None: no
/// new version queued, the stored one stays), and whether the store already has a row for it
/// (read under the page's lock, so a dialect may insert and update separately).
pub struct AlertWrite {
    pub state: AlertState,
    pub last_seq: Option<i64>,
    pub stored: bool,
}

/// Where each alert's latest stored body now is: `seq` per upsert of the page (None: no new
/// version queued, the stored one stays), and the queued rows of other sources (`linked`
/// revisions) whose alerts must point at them too.
pub fn last_seqs(
    source: SourceKind,
    upserts: &[AlertState],
    inserted: &[QueuedRow],
) -> (Vec<Option<i64>>, Vec<QueuedRow>) {
    let mut own: HashMap<&str, i64> = HashMap::with_capacity(inserted.len());
    let mut others = Vec::new();
    for (s, native_id, seq) in inserted {
        if *s == source {
            own.insert(native_id.as_str(), *seq);
        } else {
            others.push((*s, native_id.clone(), *seq));
        }
    }
    let seqs = upserts
        .iter()
        .map(|u| own.get(u.native_id.as_str()).copied())
        .collect();
    (seqs, others)
}

/// Rule 8: one version per id per page, the newest.
fn dedup_newest(items: Vec<Prepared>) -> Vec<Prepared> {
    let mut index: HashMap<String, usize> = HashMap::with_capacity(items.len());
    let mut out: Vec<Prepared> = Vec::with_capacity(items.len());
    for item in items {
        match index.get(&item.native_id) {
            Some(&i) => {
                let newer = match (&item.version, &out[i].version) {
                    (VersionInput::Ticks(a), VersionInput::Ticks(b)) => a > b,
                    // Without a time, the later position in the answer is the fresher read.
                    _ => true,
                };
                if newer {
                    out[i] = item;
                }
            }
            None => {
                index.insert(item.native_id.clone(), out.len());
                out.push(item);
            }
        }
    }
    out
}

/// Outbox row states.
pub mod row_state {
    pub const PENDING: i64 = 0;
    pub const BATCHED: i64 = 1;
    pub const DELIVERED: i64 = 2;
    pub const DEAD: i64 = 3;
}

/// A committed batch (the `batches` table).
#[derive(Debug, Clone)]
pub struct Batch {
    pub id: i64,
    pub tenant: String,
    pub destination: String,
    /// The `Idempotency-Key`: the same across restarts, new for children and retries of dead letters.
    pub key: String,
    pub root_id: i64,
    pub attempts: i64,
    /// Unix ms before which the batch must not be sent.
    pub next_attempt_at: i64,
    pub rows: i64,
    /// A single alert the destination refused, parked until `next_attempt_at`: while it waits,
    /// later batches of its tenant may pass it (a refused alert must not stall its tenant).
    pub deferred: bool,
}

/// One outbox body of a batch.
#[derive(Debug, Clone)]
pub struct BatchItem {
    pub seq: i64,
    pub body: Vec<u8>,
}

/// How large a new batch may be.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_rows: usize,
    pub max_bytes: usize,
}

/// What `/status` shows of a tenant's queue.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct QueueStatus {
    pub pending: u64,
    pub oldest_pending_age_s: Option<i64>,
    pub dead_letters: u64,
    pub quarantined: u64,
    pub delivered: u64,
}

/// What the metrics show of a tenant's queue: [`QueueStatus`]'s first two members, read
/// without touching delivered or dead rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    pub pending: u64,
    pub oldest_pending_age_s: Option<i64>,
}

/// A dead-lettered version, for `dead-letters list`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetter {
    pub seq: i64,
    pub tenant: String,
    pub source: String,
    pub native_id: String,
    pub version: String,
    pub event_id: String,
    pub reason: String,
}

/// Which delivered versions `replay` sends again.
#[derive(Debug, Clone, Default)]
pub struct ReplayFilter {
    pub tenant: Option<String>,
    pub source: Option<SourceKind>,
    pub native_id: Option<String>,
    /// Stored at or after this Unix ms.
    pub since_ms: Option<i64>,
    /// Stored before this Unix ms.
    pub until_ms: Option<i64>,
}

/// A quarantined item, for `quarantine list`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Quarantined {
    pub id: i64,
    pub tenant: String,
    pub source: String,
    pub native_id: Option<String>,
    pub reason: String,
    /// Unix ms.
    pub created_at: i64,
    /// Marked by `quarantine retry`, not yet re-read by its poller.
    pub retry_requested: bool,
    /// How many retries it has failed.
    pub attempts: i64,
}

/// A coverage point from a `tenant, source, list, coverage, t0` row; `None` for a source this
/// version does not know.
pub fn stored_cursor(
    tenant: String,
    source: &str,
    list: String,
    coverage: i64,
    t0: i64,
) -> Option<StoredCursor> {
    Some(StoredCursor {
        key: CursorKey {
            tenant,
            source: SourceKind::parse(source)?,
            list,
        },
        cursor: Cursor { coverage, t0 },
    })
}

/// A coverage point as stored, for `cursor show`.
#[derive(Debug, Clone)]
pub struct StoredCursor {
    pub key: CursorKey,
    pub cursor: Cursor,
}

/// Per-root-batch facts used to tell a poisoned alert from a broken endpoint.
#[derive(Debug, Clone, Copy, Default)]
pub struct RootFacts {
    pub accepted: bool,
    pub probes: i64,
}

/// The lease that fences a tenant's pollers (all its sources: they share one Microsoft quota).
pub fn tenant_lease(tenant: &str) -> String {
    format!("tenant:{tenant}")
}

/// The lease that fences a destination's forwarder.
pub fn destination_lease(destination: &str) -> String {
    format!("forward:{destination}")
}

/// The storage contract, implemented by `SqliteStore` and `PgStore`. Writes of a tenant's
/// pollers (`ingest`, `init_cursor`) are fenced by its `tenant_lease`; a forwarder's writes by
/// its `destination_lease`. A backend without replicas (SQLite) grants every lease.
pub trait Store: Send + Sync {
    fn ping(&self) -> impl Future<Output = Result<()>> + Send;
    /// Takes or renews a lease for `ttl` (database clock); `true` while this replica holds it.
    fn lease(
        &self,
        name: &str,
        ttl: std::time::Duration,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Lets every lease of this replica go, so a standby takes over at once (graceful stop).
    fn release_leases(&self) -> impl Future<Output = Result<()>> + Send;
    fn load_cursor(&self, key: &CursorKey) -> impl Future<Output = Result<Option<Cursor>>> + Send;
    /// Stores the first run's cursor unless one exists; returns the one in force.
    fn init_cursor(
        &self,
        key: &CursorKey,
        c: Cursor,
    ) -> impl Future<Output = Result<Cursor>> + Send;
    /// Moves C backwards or forwards (`cursor set`); it clears the source's own state, so a
    /// reporting mailbox resyncs from the new point.
    fn set_cursor(&self, key: &CursorKey, c: Cursor) -> impl Future<Output = Result<()>> + Send;
    /// The source's own coverage state stored with `IngestBatch::source_state`.
    fn load_cursor_state(
        &self,
        key: &CursorKey,
    ) -> impl Future<Output = Result<Option<String>>> + Send;
    /// Which of `ids` the store already holds for (tenant, source): a report read again is not
    /// fetched again.
    fn known_ids(
        &self,
        tenant: &str,
        source: SourceKind,
        ids: &[String],
    ) -> impl Future<Output = Result<std::collections::HashSet<String>>> + Send;
    /// The latest stored version (ticks) of each alert of (tenant, source) in `window`; `None`
    /// when more than `max` match. A reconciliation pass re-lists a day of items it mostly holds
    /// already; with these it skips preparing them (issue 12).
    fn stored_versions(
        &self,
        tenant: &str,
        source: SourceKind,
        window: VersionWindow,
        max: usize,
    ) -> impl Future<Output = Result<Option<crate::normalize::KnownVersions>>> + Send;
    /// How many alerts of (tenant, source) in `window` have their latest version in each
    /// `bucket_ticks` from the window's start: `(bucket, count)`, buckets with none left out.
    /// A pass over more alerts than it may hold versions of at once cuts its window by these.
    fn stored_version_counts(
        &self,
        tenant: &str,
        source: SourceKind,
        window: VersionWindow,
        bucket_ticks: i64,
    ) -> impl Future<Output = Result<Vec<(i64, u64)>>> + Send;
    fn ingest(&self, batch: IngestBatch<'_>) -> impl Future<Output = Result<IngestCounts>> + Send;
    /// Undelivered versions of a tenant (pending or batched).
    fn undelivered(&self, tenant: &str) -> impl Future<Output = Result<u64>> + Send;
    /// The next open batch of a tenant for a destination, claimed earlier (restart, retry, split):
    /// root order, then a root's parked singles behind its other children; a parked single that
    /// is not due yet comes after every other open batch, and is returned only when none is left.
    fn next_open_batch(
        &self,
        destination: &str,
        tenant: &str,
    ) -> impl Future<Output = Result<Option<Batch>>> + Send;
    /// Commits a new batch of the tenant's pending rows, live before historical, in seq order.
    fn claim_batch(
        &self,
        destination: &str,
        tenant: &str,
        limits: BatchLimits,
    ) -> impl Future<Output = Result<Option<Batch>>> + Send;
    /// As `claim_batch`, with the batch's items read by the claim's own statement (issue 12:
    /// the forwarder claims a tenant's next batch while the current one is sent, and this is
    /// on the path between two sends). The items are `Err` as `batch_items` would be; the
    /// claim stands either way.
    fn claim_batch_read(
        &self,
        destination: &str,
        tenant: &str,
        limits: BatchLimits,
    ) -> impl Future<Output = Result<Option<(Batch, Result<Vec<BatchItem>>)>>> + Send;
    fn batch_items(&self, batch_id: i64) -> impl Future<Output = Result<Vec<BatchItem>>> + Send;
    fn mark_delivered(&self, batch: &Batch) -> impl Future<Output = Result<()>> + Send;
    /// Marks `batch` delivered and, in the same transaction, claims the tenant's next batch
    /// (as `claim_batch`) unless another of its batches is open for the destination: one
    /// commit per forwarded batch instead of two. None: nothing claimed.
    fn deliver_and_claim(
        &self,
        batch: &Batch,
        limits: BatchLimits,
    ) -> impl Future<Output = Result<Option<Batch>>> + Send;
    fn mark_retry(
        &self,
        batch: &Batch,
        next_attempt_at: i64,
        error: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Replaces a batch by two children with new keys, in its place.
    fn split_batch(&self, batch: &Batch) -> impl Future<Output = Result<()>> + Send;
    /// A single-alert batch whose alert is rejected: parked behind its siblings until
    /// `next_attempt_at`, probe counted.
    fn defer_single(
        &self,
        batch: &Batch,
        next_attempt_at: i64,
        error: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Moves the tenant's open batches of any other destination to this one (the tenant's
    /// destination changed in the configuration): they keep their rows and keys and are sent
    /// through the new one instead of staying claimed forever. Returns how many moved.
    fn adopt_open_batches(
        &self,
        destination: &str,
        tenant: &str,
    ) -> impl Future<Output = Result<u64>> + Send;
    fn dead_letter(&self, batch: &Batch, reason: &str) -> impl Future<Output = Result<()>> + Send;
    fn root_facts(&self, root_id: i64) -> impl Future<Output = Result<RootFacts>> + Send;
    fn queue_depth(&self, tenant: &str) -> impl Future<Output = Result<QueueDepth>> + Send;
    fn queue_status(&self, tenant: &str) -> impl Future<Output = Result<QueueStatus>> + Send;
    fn dead_letters(
        &self,
        tenant: Option<&str>,
    ) -> impl Future<Output = Result<Vec<DeadLetter>>> + Send;
    /// Queues dead letters again (all of `tenant`, or only `seqs`); they go out in new batches
    /// with new keys. Returns how many.
    fn retry_dead_letters(
        &self,
        tenant: Option<&str>,
        seqs: &[i64],
    ) -> impl Future<Output = Result<u64>> + Send;
    /// Queues delivered versions again as new versions (`replay --as-new`): new event ids.
    fn replay_as_new(&self, filter: &ReplayFilter) -> impl Future<Output = Result<u64>> + Send;
    /// Queues delivered versions again, with their original event ids (`replay`).
    fn requeue_delivered(&self, filter: &ReplayFilter) -> impl Future<Output = Result<u64>> + Send;
    fn quarantined(
        &self,
        tenant: Option<&str>,
    ) -> impl Future<Output = Result<Vec<Quarantined>>> + Send;
    /// Marks quarantined items for a retry by their poller (all of `tenant`, or the given ids).
    /// Not fenced: it only sets a flag, which the lease holder acts on. Returns how many.
    fn request_quarantine_retry(
        &self,
        tenant: Option<&str>,
        ids: &[i64],
    ) -> impl Future<Output = Result<u64>> + Send;
    /// Up to `limit` items of (tenant, source) marked for retry, oldest first.
    fn quarantine_retries(
        &self,
        tenant: &str,
        source: SourceKind,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<QuarantineRetry>>> + Send;
    /// Up to `limit` alerts of `tenant` still wanting campaign context, oldest first, listed
    /// after `after` (the last one of the page before).
    fn context_wanted(
        &self,
        tenant: &str,
        after: Option<&ContextWanted>,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<ContextWanted>>> + Send;
    /// Gives an alert its campaign context (`context`: the JSON of the `context` member): into
    /// its version still waiting in the outbox, else as a `context` revision; either way it no
    /// longer wants context. Under the tenant's lease.
    fn attach_context(
        &self,
        tenant: &TenantRef,
        source: SourceKind,
        native_id: &str,
        context: &[u8],
        observed_at: &str,
    ) -> impl Future<Output = Result<ContextOutcome>> + Send;
    /// Stops wanting context for `tenant`'s alerts listed before `before` (ms). Returns how many.
    fn expire_context_wanted(
        &self,
        tenant: &str,
        before: i64,
    ) -> impl Future<Output = Result<u64>> + Send;
    fn cursors(
        &self,
        tenant: Option<&str>,
    ) -> impl Future<Output = Result<Vec<StoredCursor>>> + Send;
    /// Deletes delivered bodies older than `bodies_before` and dedup state older than `state_before` (Unix ms).
    fn prune(
        &self,
        bodies_before: i64,
        state_before: i64,
    ) -> impl Future<Output = Result<u64>> + Send;
}

/// The backend chosen by the `store.url` scheme.
pub enum AnyStore {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

/// Calls the same method on whichever backend is in use.
macro_rules! dispatch {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            AnyStore::Sqlite($s) => $call.await,
            AnyStore::Postgres($s) => $call.await,
        }
    };
}

impl AnyStore {
    pub fn backend(&self) -> &'static str {
        match self {
            AnyStore::Sqlite(_) => "sqlite",
            AnyStore::Postgres(_) => "postgres",
        }
    }

    /// Whether two write transactions run side by side (Postgres) rather than one after the
    /// other (SQLite's single writer): only then can a claim run beside a record of delivery.
    pub fn writes_side_by_side(&self) -> bool {
        matches!(self, AnyStore::Postgres(_))
    }
}

impl Store for AnyStore {
    async fn ping(&self) -> Result<()> {
        dispatch!(self, s => s.ping())
    }
    async fn lease(&self, name: &str, ttl: std::time::Duration) -> Result<bool> {
        dispatch!(self, s => s.lease(name, ttl))
    }
    async fn release_leases(&self) -> Result<()> {
        dispatch!(self, s => s.release_leases())
    }
    async fn load_cursor(&self, key: &CursorKey) -> Result<Option<Cursor>> {
        dispatch!(self, s => s.load_cursor(key))
    }
    async fn init_cursor(&self, key: &CursorKey, c: Cursor) -> Result<Cursor> {
        dispatch!(self, s => s.init_cursor(key, c))
    }
    async fn set_cursor(&self, key: &CursorKey, c: Cursor) -> Result<()> {
        dispatch!(self, s => s.set_cursor(key, c))
    }
    async fn load_cursor_state(&self, key: &CursorKey) -> Result<Option<String>> {
        dispatch!(self, s => s.load_cursor_state(key))
    }
    async fn known_ids(
        &self,
        tenant: &str,
        source: SourceKind,
        ids: &[String],
    ) -> Result<std::collections::HashSet<String>> {
        dispatch!(self, s => s.known_ids(tenant, source, ids))
    }
    async fn stored_versions(
        &self,
        tenant: &str,
        source: SourceKind,
        window: VersionWindow,
        max: usize,
    ) -> Result<Option<crate::normalize::KnownVersions>> {
        dispatch!(self, s => s.stored_versions(tenant, source, window, max))
    }
    async fn stored_version_counts(
        &self,
        tenant: &str,
        source: SourceKind,
        window: VersionWindow,
        bucket_ticks: i64,
    ) -> Result<Vec<(i64, u64)>> {
        dispatch!(self, s => s.stored_version_counts(tenant, source, window, bucket_ticks))
    }
    async fn ingest(&self, batch: IngestBatch<'_>) -> Result<IngestCounts> {
        dispatch!(self, s => s.ingest(batch))
    }
    async fn undelivered(&self, tenant: &str) -> Result<u64> {
        dispatch!(self, s => s.undelivered(tenant))
    }
    async fn next_open_batch(&self, destination: &str, tenant: &str) -> Result<Option<Batch>> {
        dispatch!(self, s => s.next_open_batch(destination, tenant))
    }
    async fn claim_batch(
        &self,
        destination: &str,
        tenant: &str,
        limits: BatchLimits,
    ) -> Result<Option<Batch>> {
        dispatch!(self, s => s.claim_batch(destination, tenant, limits))
    }
    async fn claim_batch_read(
        &self,
        destination: &str,
        tenant: &str,
        limits: BatchLimits,
    ) -> Result<Option<(Batch, Result<Vec<BatchItem>>)>> {
        dispatch!(self, s => s.claim_batch_read(destination, tenant, limits))
    }
    async fn batch_items(&self, batch_id: i64) -> Result<Vec<BatchItem>> {
        dispatch!(self, s => s.batch_items(batch_id))
    }
    async fn mark_delivered(&self, batch: &Batch) -> Result<()> {
        dispatch!(self, s => s.mark_delivered(batch))
    }
    async fn deliver_and_claim(&self, batch: &Batch, limits: BatchLimits) -> Result<Option<Batch>> {
        dispatch!(self, s => s.deliver_and_claim(batch, limits))
    }
    async fn mark_retry(&self, batch: &Batch, next_attempt_at: i64, error: &str) -> Result<()> {
        dispatch!(self, s => s.mark_retry(batch, next_attempt_at, error))
    }
    async fn split_batch(&self, batch: &Batch) -> Result<()> {
        dispatch!(self, s => s.split_batch(batch))
    }
    async fn defer_single(&self, batch: &Batch, next_attempt_at: i64, error: &str) -> Result<()> {
        dispatch!(self, s => s.defer_single(batch, next_attempt_at, error))
    }
    async fn adopt_open_batches(&self, destination: &str, tenant: &str) -> Result<u64> {
        dispatch!(self, s => s.adopt_open_batches(destination, tenant))
    }
    async fn dead_letter(&self, batch: &Batch, reason: &str) -> Result<()> {
        dispatch!(self, s => s.dead_letter(batch, reason))
    }
    async fn root_facts(&self, root_id: i64) -> Result<RootFacts> {
        dispatch!(self, s => s.root_facts(root_id))
    }
    async fn queue_depth(&self, tenant: &str) -> Result<QueueDepth> {
        dispatch!(self, s => s.queue_depth(tenant))
    }
    async fn queue_status(&self, tenant: &str) -> Result<QueueStatus> {
        dispatch!(self, s => s.queue_status(tenant))
    }
    async fn dead_letters(&self, tenant: Option<&str>) -> Result<Vec<DeadLetter>> {
        dispatch!(self, s => s.dead_letters(tenant))
    }
    async fn prune(&self, bodies_before: i64, state_before: i64) -> Result<u64> {
        dispatch!(self, s => s.prune(bodies_before, state_before))
    }
    async fn retry_dead_letters(&self, tenant: Option<&str>, seqs: &[i64]) -> Result<u64> {
        dispatch!(self, s => s.retry_dead_letters(tenant, seqs))
    }
    async fn requeue_delivered(&self, filter: &ReplayFilter) -> Result<u64> {
        dispatch!(self, s => s.requeue_delivered(filter))
    }
    async fn replay_as_new(&self, filter: &ReplayFilter) -> Result<u64> {
        dispatch!(self, s => s.replay_as_new(filter))
    }
    async fn quarantined(&self, tenant: Option<&str>) -> Result<Vec<Quarantined>> {
        dispatch!(self, s => s.quarantined(tenant))
    }
    async fn request_quarantine_retry(&self, tenant: Option<&str>, ids: &[i64]) -> Result<u64> {
        dispatch!(self, s => s.request_quarantine_retry(tenant, ids))
    }
    async fn quarantine_retries(
        &self,
        tenant: &str,
        source: SourceKind,
        limit: i64,
    ) -> Result<Vec<QuarantineRetry>> {
        dispatch!(self, s => s.quarantine_retries(tenant, source, limit))
    }
    async fn cursors(&self, tenant: Option<&str>) -> Result<Vec<StoredCursor>> {
        dispatch!(self, s => s.cursors(tenant))
    }
    async fn context_wanted(
        &self,
        tenant: &str,
        after: Option<&ContextWanted>,
        limit: i64,
    ) -> Result<Vec<ContextWanted>> {
        dispatch!(self, s => s.context_wanted(tenant, after, limit))
    }
    async fn attach_context(
        &self,
        tenant: &TenantRef,
        source: SourceKind,
        native_id: &str,
        context: &[u8],
        observed_at: &str,
    ) -> Result<ContextOutcome> {
        dispatch!(self, s => s.attach_context(tenant, source, native_id, context, observed_at))
    }
    async fn expire_context_wanted(&self, tenant: &str, before: i64) -> Result<u64> {
        dispatch!(self, s => s.expire_context_wanted(tenant, before))
    }
}

/// Opens the store named by `store.url` (`sqlite://…` or `postgres://…`) and applies its
/// migrations.
pub async fn open(cfg: &crate::config::StoreConfig) -> Result<AnyStore> {
    use secrecy::ExposeSecret;
    let url = cfg.resolved_url();
    let url = url.expose_secret();
    if url.starts_with("sqlite:") {
        return Ok(AnyStore::Sqlite(SqliteStore::open(url).await?));
    }
    if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        return Ok(AnyStore::Postgres(
            PgStore::open(url, cfg.pool_size, cfg.connect_timeout).await?,
        ));
    }
    let scheme = url.split(':').next().unwrap_or("");
    Err(StoreError::Invalid(format!(
        "store.url scheme `{scheme}` is not supported: use sqlite://PATH or postgres://USER@HOST:5432/DB"
    )))
}

/// A URL fit for messages: its password, if any, replaced by `***`.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod stored_event_tests {
    use super::*;

    const BODY: &[u8] = br#"{"title":"t","related":[],"duplicate_of":null,"raw":{"id":"x"}}"#;

    fn env<'a>() -> Envelope<'a> {
        Envelope {
            event_id: "e",
            alert_id: "a",
            kind: "alert",
            revision: 2,
            change: Change::Updated,
            changed_fields: &["status", "title"],
            observed_at: "2026-11-27T00:00:00Z",
            historical: false,
            tenant_id: "t",
            tenant_name: "contoso",
            source: "cloud_apps",
            native_id: "x",
            version: "v",
        }
    }

    fn sealed() -> PreparedBody {
        let members = envelope::body_members(BODY).unwrap();
        PreparedBody::Sealed {
            members: body_codec::seal(members).unwrap(),
            members_len: members.len(),
        }
    }

    #[test]
    fn a_sealed_body_is_stored_as_the_event_its_json_would_make() {
        let json = PreparedBody::Json(BODY.to_vec());
        let (from_json, json_len) = stored_event(&env(), &json, &[], None, None);
        let (from_sealed, sealed_len) = stored_event(&env(), &sealed(), &[], None, None);
        let event = body_codec::decode(&from_sealed).unwrap();
        assert_eq!(event, body_codec::decode(&from_json).unwrap());
        assert_eq!(event, envelope::render(&env(), BODY));
        assert_eq!((json_len, sealed_len), (event.len(), event.len()));
        serde_json::from_slice::<serde_json::Value>(&event).unwrap();
    }

    #[test]
    fn links_are_written_into_a_sealed_body() {
        let twin = LinkRef {
            source: SourceKind::Alerts,
            native_id: "ca123".into(),
            forwarded: true,
        };
        let refs = [twin.clone()];
        let (stored, len) = stored_event(&env(), &sealed(), &refs, Some(&twin), None);
        let event: serde_json::Value =
            serde_json::from_slice(&body_codec::decode(&stored).unwrap()).unwrap();
        assert_eq!(event["related"][0]["native_id"], "ca123");
        assert_eq!(event["duplicate_of"]["native_id"], "ca123");
        assert_eq!(event["revision"], 2);
        assert_eq!(len, body_codec::decode(&stored).unwrap().len());
    }

    #[test]
    fn a_kept_context_is_written_into_a_later_version() {
        let context = br#"{"campaign":{"recipients":{"count":40}}}"#;
        let kept = body_codec::encode(context);
        let (stored, len) = stored_event(&env(), &sealed(), &[], None, Some(&kept));
        let json = body_codec::decode(&stored).unwrap();
        assert_eq!(len, json.len());
        let event: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(event["context"]["campaign"]["recipients"]["count"], 40);
        assert_eq!(
            (event["title"].as_str(), event["revision"].as_i64()),
            (Some("t"), Some(2))
        );
        // Unreadable kept context: the version still goes, without it.
        let (stored, _) = stored_event(&env(), &sealed(), &[], None, Some(b"\x09junk"));
        let event: serde_json::Value =
            serde_json::from_slice(&body_codec::decode(&stored).unwrap()).unwrap();
        assert!(event.get("context").is_none());
    }

    #[test]
    fn a_derived_event_id_is_not_stored_and_reads_back() {
        let id = envelope::event_id("t", "cloud_apps", "x", "v");
        let env = Envelope {
            event_id: &id,
            ..env()
        };
        let twin = LinkRef {
            source: SourceKind::Alerts,
            native_id: "ca123".into(),
            forwarded: true,
        };
        let refs = [twin.clone()];
        for (body, refs) in [
            (sealed(), &refs[..0]),
            (PreparedBody::Json(BODY.to_vec()), &refs[..0]),
            (sealed(), &refs[..]),
        ] {
            let (stored, len) = stored_event(&env, &body, refs, None, None);
            assert_eq!(stored[0], 3, "the derived-id format");
            let event = body_codec::decode(&stored).unwrap();
            assert_eq!(len, event.len());
            if refs.is_empty() {
                assert_eq!(event, envelope::render(&env, BODY));
            }
            let v: serde_json::Value = serde_json::from_slice(&event).unwrap();
            assert_eq!(v["event_id"], id.as_str());
            assert_eq!(envelope::event_id_of(&event).as_deref(), Some(id.as_str()));
            // The same event with its id kept, as format 2 wrote it, reads the same.
            assert_eq!(
                body_codec::decode(&body_codec::encode(&event)).unwrap(),
                event
            );
        }
    }
}
