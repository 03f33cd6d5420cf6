//! Trains and measures the zstd dictionary of stored bodies (issue 12, docs/benchmarks.md).
//!
//! Measure the shipped codec (size and µs per body, by level, against LZ4), on held-out
//! simulator alerts and on Microsoft's example alerts:
//!     cargo run --release --example body_dict
//!     cargo run --release --example body_dict -- measure --dict some.zdict
//! Train a new dictionary (never overwrite a shipped one: bodies name their dictionary by id;
//! a new one gets the next id in `store::body_codec`):
//!     cargo run --release --example body_dict -- train src/store/dict/alerts-v2.zdict [size]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use m365_ingest::store::body_codec;

#[path = "../tests/common/bodies.rs"]
mod bodies;

/// Samples: the first `TRAIN_ALERTS` Graph and `TRAIN_CLOUD` Cloud Apps alerts of a fresh
/// simulator; measurement uses the ones generated after them, which training never saw.
const TRAIN_ALERTS: usize = 20_000;
const TRAIN_CLOUD: usize = 2_000;
const HELD_ALERTS: usize = 5_000;
const HELD_CLOUD: usize = 500;
/// 40 KiB: measured against 32 and 48 (docs/benchmarks.md, issue 12).
const DEFAULT_SIZE: usize = 40 * 1024;

fn from() -> SystemTime {
    // Fixed, so training is reproducible (the simulator's generator is seeded).
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("train") => {
            let out = PathBuf::from(args.get(1).expect("train OUTPUT.zdict [size]"));
            let size = args
                .get(2)
                .map(|s| s.parse().expect("a size in bytes"))
                .unwrap_or(DEFAULT_SIZE);
            train(&out, size);
        }
        Some("measure") | None => {
            let dict = args
                .iter()
                .position(|a| a == "--dict")
                .map(|i| std::fs::read(&args[i + 1]).expect("the dictionary reads"));
            measure(dict);
        }
        Some(other) => panic!("unknown command {other}: train or measure"),
    }
}

fn train(out: &Path, size: usize) {
    assert!(
        !out.exists(),
        "{} exists: a shipped dictionary never changes, train a new id",
        out.display()
    );
    let (alerts, cloud) = bodies::simulator_bodies(0..TRAIN_ALERTS, 0..TRAIN_CLOUD, from());
    // What the store compresses: each event's envelope and its body's members, as two frames.
    let parts: Vec<(Vec<u8>, Vec<u8>)> = alerts
        .iter()
        .chain(&cloud)
        .map(|e| bodies::stored_parts(e))
        .collect();
    let samples: Vec<&Vec<u8>> = parts.iter().flat_map(|(h, m)| [h, m]).collect();
    let total: usize = samples.iter().map(|s| s.len()).sum();
    let started = Instant::now();
    let dict = zstd::dict::from_samples(&samples, size).expect("training succeeds");
    println!(
        "trained {} bytes on {} samples, envelopes and members ({:.1} MB) in {:.1} s",
        dict.len(),
        samples.len(),
        total as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    std::fs::write(out, &dict).expect("the dictionary is written");
    println!("wrote {}", out.display());
}

fn measure(dict: Option<Vec<u8>>) {
    // Held out: generated after the training set. Generating a Graph alert draws from the
    // simulator's generator, so Cloud Apps alerts after 25,000 Graph alerts are new as well.
    let (alerts, cloud) = bodies::simulator_bodies(
        TRAIN_ALERTS..TRAIN_ALERTS + HELD_ALERTS,
        TRAIN_CLOUD..TRAIN_CLOUD + HELD_CLOUD,
        from(),
    );
    let held: Vec<Vec<u8>> = alerts.into_iter().chain(cloud).collect();
    let (trained, _) = bodies::simulator_bodies(0..1_000, 0..0, from());
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/reference/microsoft");
    let microsoft = bodies::microsoft_bodies(&reference);
    let shipped = body_codec::dictionary(body_codec::CURRENT_DICTIONARY).unwrap();
    let dict = dict.as_deref().unwrap_or(shipped);
    println!(
        "dictionary: {} bytes; level {} in the daemon",
        dict.len(),
        body_codec::LEVEL
    );
    for (name, set) in [
        ("simulator, held out", &held),
        ("simulator, in training", &trained),
        ("Microsoft examples", &microsoft),
    ] {
        let json: usize = set.iter().map(Vec::len).sum();
        println!(
            "\n{name}: {} bodies, {:.0} bytes of JSON each",
            set.len(),
            json as f64 / set.len().max(1) as f64
        );
        println!(
            "{:<28} {:>9} {:>7} {:>10} {:>10}",
            "codec", "bytes", "ratio", "enc µs", "dec µs"
        );
        let row = |label: &str, stored: usize, enc: f64, dec: f64| {
            println!(
                "{label:<28} {:>9.0} {:>7.2} {:>10.1} {:>10.1}",
                stored as f64 / set.len().max(1) as f64,
                json as f64 / stored.max(1) as f64,
                enc,
                dec
            )
        };
        // The daemon's own path: the envelope and the sealed members, joined (two frames).
        let as_stored = |event: &[u8]| {
            let (head, members) = bodies::stored_parts(event);
            let sealed = body_codec::seal(&members).unwrap();
            body_codec::encode_with_sealed(&head, &sealed).unwrap()
        };
        let (stored, enc, dec) = timed(set, as_stored, |s| body_codec::decode(s).unwrap());
        row("stored (shipped)", stored, enc, dec);
        // One frame of the whole event: body_codec::encode_event / decode.
        let (stored, enc, dec) = timed(set, body_codec::encode_event, |s| {
            body_codec::decode(s).unwrap()
        });
        row("one frame (encode_event)", stored, enc, dec);
        let (stored, enc, dec) = timed(set, body_codec::encode_lz4, |s| {
            body_codec::decode(s).unwrap()
        });
        row("LZ4 (before issue 12)", stored, enc, dec);
        for level in [-1, 1, 3] {
            let mut c = zstd::bulk::Compressor::new(level).unwrap();
            let mut d = zstd::bulk::Decompressor::new().unwrap();
            let (stored, enc, dec) = timed(
                set,
                |j| c.compress(j).unwrap(),
                |s| d.decompress(s, 1 << 30).unwrap(),
            );
            row(&format!("zstd {level}, no dictionary"), stored, enc, dec);
        }
        for level in [-5, -3, -1, 1, 2, 3, 4, 5, 6, 7, 9, 12, 15, 19] {
            let mut c = zstd::bulk::Compressor::with_dictionary(level, dict).unwrap();
            c.set_parameter(zstd::zstd_safe::CParameter::DictIdFlag(false))
                .unwrap();
            let mut d = zstd::bulk::Decompressor::with_dictionary(dict).unwrap();
            let (stored, enc, dec) = timed(
                set,
                |j| c.compress(j).unwrap(),
                |s| d.decompress(s, 1 << 30).unwrap(),
            );
            row(
                &format!("zstd {level}, dictionary"),
                stored + 2 * set.len(),
                enc,
                dec,
            );
        }
    }
}

/// Total stored bytes, then µs per body to encode and to decode (the best of 3 passes).
fn timed(
    set: &[Vec<u8>],
    mut encode: impl FnMut(&[u8]) -> Vec<u8>,
    mut decode: impl FnMut(&[u8]) -> Vec<u8>,
) -> (usize, f64, f64) {
    let n = set.len().max(1) as f64;
    let mut stored = Vec::new();
    let mut enc = f64::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        stored = set.iter().map(|j| encode(j)).collect::<Vec<_>>();
        enc = enc.min(started.elapsed().as_secs_f64() * 1e6 / n);
    }
    let mut dec = f64::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        for (s, j) in stored.iter().zip(set) {
            let back = decode(s);
            assert_eq!(back.len(), j.len());
        }
        dec = dec.min(started.elapsed().as_secs_f64() * 1e6 / n);
    }
    (stored.iter().map(Vec::len).sum(), enc, dec)
}
