//! The Bloom filters of the dedup archive (`levels.rs`), their bits kept in files of this
//! process's instead of its heap. In memory they cost ~6 bytes an archived alert, the one part
//! of the daemon's memory that followed the size of the store (issue 12, docs/benchmarks.md,
//! session 21). A file is made beside the store and unlinked at once: the kernel's page cache
//! keeps the blocks read often, a crash leaves nothing behind, and `levels.rs` rebuilds the
//! filters from the archive at every open, so a file never has to agree with a store it
//! outlived. A check reads the blocks it needs with positioned reads, the probes that fall close
//! together in one read.
//!
//! The reads are made on the async task that runs the page's store work, not handed to a
//! blocking thread: a block in the page cache costs under a microsecond (~0.7 ms for a page of
//! 1,000 new alerts, under 1% of that page's CPU; the drain bench measured no change), and a
//! merge rewrites the whole-archive filter once per 15,000 alerts (a few ms at a million). A
//! block the kernel has dropped costs one disk read.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Seven probes of a hash, all in one 64-byte block: a check reads one block.
const PROBES: u32 = 7;
const BITS_PER_ENTRY: usize = 10;
const BLOCK_BYTES: usize = 64;
const BITS_PER_BLOCK: usize = BLOCK_BYTES * 8;
/// The smallest archive filter (20 KB): an empty or new store pays next to nothing.
const MIN_CAPACITY: usize = 16_384;
/// Probes whose blocks are at most this far apart share a read (a page of the cache): one read
/// of 4 KiB costs about what one of 64 bytes does.
const SHARED_READ_GAP: usize = 4096 / BLOCK_BYTES;
/// The most one read takes, so a check's buffer stays small whatever the filter's size.
const READ_BLOCKS_MAX: usize = 65_536 / BLOCK_BYTES;

/// Where a store's filters are written: the store's own folder, which is writable and on the
/// store's disk.
#[derive(Debug, Clone)]
pub struct FilterDir(PathBuf);

impl FilterDir {
    /// The folder of the SQLite file `db`.
    pub fn beside(db: &Path) -> FilterDir {
        match db.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => FilterDir(parent.to_path_buf()),
            _ if db.as_os_str() == ":memory:" => FilterDir(std::env::temp_dir()),
            _ => FilterDir(PathBuf::from(".")),
        }
    }

    /// A new, empty file there that no other process can open: unlinked as soon as it is made,
    /// it lives as long as a handle to it.
    fn new_file(&self) -> io::Result<File> {
        static MADE: AtomicU64 = AtomicU64::new(0);
        loop {
            let path = self.0.join(format!(
                ".m365-ingest-filters.{}.{}",
                std::process::id(),
                MADE.fetch_add(1, Ordering::Relaxed)
            ));
            let made = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path);
            match made {
                Ok(file) => {
                    std::fs::remove_file(&path)?;
                    return Ok(file);
                }
                // Left by an earlier process of the same id that died between the two steps:
                // the next name is free.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// What an I/O error on the filters means, and what to do.
    pub fn explain(&self, e: &io::Error) -> String {
        format!(
            "cannot read or write the dedup filters (unlinked files in {}): {e}. The store's \
             folder must be writable and have free space; the filters need about 6 bytes per \
             stored alert",
            self.0.display()
        )
    }

    /// An empty filter with room for `entries` and half as many again, in a file of its own:
    /// a filter of the whole archive, read again larger when it is full.
    pub fn archive_filter(&self, entries: usize) -> io::Result<StoredFilter> {
        let capacity = entries.saturating_add(entries / 2).max(MIN_CAPACITY);
        StoredFilter::zeroed(Arc::new(self.new_file()?), 0, capacity)
    }

    /// A file for filters that never change once written (the runs'), appended to.
    pub fn run_space(&self) -> io::Result<RunSpace> {
        Ok(RunSpace {
            file: Arc::new(self.new_file()?),
            end: 0,
        })
    }
}

/// An append-only file of run filters.
pub struct RunSpace {
    file: Arc<File>,
    end: u64,
}

impl RunSpace {
    /// A new filter holding exactly `hashes`, appended.
    pub fn add(&mut self, hashes: &[i64]) -> io::Result<StoredFilter> {
        let mut filter = StoredFilter::zeroed(self.file.clone(), self.end, hashes.len().max(1))?;
        filter.insert_all(hashes)?;
        self.end += filter.bytes();
        Ok(filter)
    }
}

/// A blocked Bloom filter over hashes that are already well mixed, at `offset` of its file:
/// ten bits an entry, about 1% false positives at its capacity.
pub struct StoredFilter {
    file: Arc<File>,
    offset: u64,
    blocks: usize,
    entries: usize,
    capacity: usize,
}

impl StoredFilter {
    fn zeroed(file: Arc<File>, offset: u64, capacity: usize) -> io::Result<StoredFilter> {
        let blocks = capacity
            .saturating_mul(BITS_PER_ENTRY)
            .div_ceil(BITS_PER_BLOCK)
            .max(1);
        let filter = StoredFilter {
            file,
            offset,
            blocks,
            entries: 0,
            capacity,
        };
        // Extending a file writes nothing: its new blocks read as zeros.
        let end = offset + filter.bytes();
        if filter.file.metadata()?.len() < end {
            filter.file.set_len(end)?;
        }
        Ok(filter)
    }

    fn bytes(&self) -> u64 {
        (self.blocks * BLOCK_BYTES) as u64
    }

    /// The entries it was made for.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Past its capacity the false positives climb: time to rebuild it larger.
    pub fn is_full(&self) -> bool {
        self.entries > self.capacity
    }

    /// The block of `hash`: its high bits, a multiply-shift onto the block count.
    fn block_of(&self, hash: i64) -> usize {
        ((u128::from(hash as u64) * self.blocks as u128) >> 64) as usize
    }

    /// For each of `hashes`, whether the filter may hold it.
    pub fn may_contain_each(&self, hashes: &[i64]) -> io::Result<Vec<bool>> {
        let mut found = vec![false; hashes.len()];
        self.visit(hashes, false, |at, block, hash| {
            found[at] = probes(hash).all(|(byte, mask)| block[byte] & mask != 0);
        })?;
        Ok(found)
    }

    /// Adds `hashes`.
    pub fn insert_all(&mut self, hashes: &[i64]) -> io::Result<()> {
        self.visit(hashes, true, |_, block, hash| {
            for (byte, mask) in probes(hash) {
                block[byte] |= mask;
            }
        })?;
        self.entries += hashes.len();
        Ok(())
    }

    /// Calls `each(index in hashes, its block, hash)` for every hash, its block read from the
    /// file (and written back after, when `write_back`). The hashes are taken in block order so
    /// that those close together share a read.
    fn visit(
        &self,
        hashes: &[i64],
        write_back: bool,
        mut each: impl FnMut(usize, &mut [u8], i64),
    ) -> io::Result<()> {
        let mut order: Vec<(usize, usize)> = hashes
            .iter()
            .enumerate()
            .map(|(at, h)| (self.block_of(*h), at))
            .collect();
        order.sort_unstable();
        let mut buf = Vec::new();
        let mut rest = &order[..];
        while let Some(&(first, _)) = rest.first() {
            // The span from `first` to the last block close enough to its predecessor.
            let mut last = first;
            let mut taken = 0;
            for &(block, _) in rest {
                if block > last + SHARED_READ_GAP || block + 1 - first > READ_BLOCKS_MAX {
                    break;
                }
                last = block;
                taken += 1;
            }
            let (here, next) = rest.split_at(taken);
            rest = next;
            buf.resize((last + 1 - first) * BLOCK_BYTES, 0);
            let at = self.offset + (first * BLOCK_BYTES) as u64;
            self.file.read_exact_at(&mut buf, at)?;
            for &(block, index) in here {
                let start = (block - first) * BLOCK_BYTES;
                each(index, &mut buf[start..start + BLOCK_BYTES], hashes[index]);
            }
            if write_back {
                self.file.write_all_at(&buf, at)?;
            }
        }
        Ok(())
    }
}

/// The (byte, bit mask) of each probe of `hash` within its block: nine bits each of the hash
/// remixed, so they do not repeat the choice of block.
fn probes(hash: i64) -> impl Iterator<Item = (usize, u8)> {
    let bits = (hash as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .rotate_left(29);
    (0..PROBES).map(move |i| {
        let bit = ((bits >> (9 * i)) & 511) as usize;
        (bit / 8, 1u8 << (bit % 8))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::levels::alert_hash;

    fn dir() -> (tempfile::TempDir, FilterDir) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = FilterDir::beside(&tmp.path().join("store.db"));
        (tmp, dir)
    }

    fn hashes(range: std::ops::Range<u32>) -> Vec<i64> {
        range
            .map(|i| alert_hash("t", "alerts", &i.to_string()))
            .collect()
    }

    #[test]
    fn a_filter_never_forgets_and_rarely_imagines() {
        let (_tmp, dir) = dir();
        let mut runs = dir.run_space().unwrap();
        // A run before it, so this one is at an offset of its file.
        let before = runs.add(&hashes(500_000..500_100)).unwrap();
        let inserted = hashes(0..20_000);
        let f = runs.add(&inserted).unwrap();
        assert!(f.may_contain_each(&inserted).unwrap().iter().all(|m| *m));
        assert!(!f.is_full());
        let imagined = f
            .may_contain_each(&hashes(20_000..120_000))
            .unwrap()
            .iter()
            .filter(|m| **m)
            .count();
        // ~1% expected at capacity; 2% leaves room for chance.
        assert!(imagined < 2_000, "{imagined} false positives in 100,000");
        // The run written first is intact, and holds none of the second's.
        assert!(before
            .may_contain_each(&hashes(500_000..500_100))
            .unwrap()
            .iter()
            .all(|m| *m));
        let crossed = before.may_contain_each(&inserted).unwrap();
        assert!(crossed.iter().filter(|m| **m).count() < 20_000);
    }

    #[test]
    fn an_archive_filter_grows_by_inserts_and_says_when_it_is_full() {
        let (_tmp, dir) = dir();
        let mut f = dir.archive_filter(0).unwrap();
        assert_eq!(f.capacity, MIN_CAPACITY);
        assert_eq!(dir.archive_filter(100_000).unwrap().capacity, 150_000);
        // Inserted in several calls, the later ones rewriting blocks the earlier set.
        for chunk in hashes(0..MIN_CAPACITY as u32).chunks(3_000) {
            f.insert_all(chunk).unwrap();
        }
        assert!(!f.is_full());
        let all = hashes(0..MIN_CAPACITY as u32);
        assert!(f.may_contain_each(&all).unwrap().iter().all(|m| *m));
        f.insert_all(&[1]).unwrap();
        assert!(f.is_full());
        // One hash asked alone, and the same hash twice in one check.
        assert_eq!(
            f.may_contain_each(&[all[7], all[7], 1]).unwrap(),
            vec![true; 3]
        );
    }

    #[test]
    fn a_filter_file_is_gone_from_the_folder_once_made() {
        let (tmp, dir) = dir();
        let mut runs = dir.run_space().unwrap();
        runs.add(&hashes(0..10)).unwrap();
        let _archive = dir.archive_filter(10).unwrap();
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
