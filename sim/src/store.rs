//! A per-tenant store of explicit JSON items ordered by one time key, newest first: what
//! incidents (`lastUpdateDateTime`), threat submissions (`createdDateTime`) and Cloud Apps alerts
//! (`timestamp`) are kept in. alerts_v2 has its own store (`alerts.rs`) because its 200,000-alert
//! backlogs are kept as seeds; these resources are small enough to keep as `serde_json::Value`s.
//!
//! The order is (time descending, id ascending), so a time-bounded `$filter` scans only its range
//! and offset paging is stable while nothing changes.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use serde_json::Value;

use crate::odata::{Expr, JsonFields, Schema};

/// The key of an item whose time is missing or unreadable: it sorts last and matches no time
/// comparison.
pub(crate) const NO_TIME: i64 = i64::MIN;

type Key = (Reverse<i64>, Arc<str>);

/// Items of one list of one tenant.
#[derive(Default)]
pub(crate) struct JsonStore {
    order: BTreeMap<Key, Arc<Value>>,
    index: HashMap<Arc<str>, i64>,
}

/// One item cloned out of a store: id, time key, body.
pub(crate) type Item = (Arc<str>, i64, Arc<Value>);

/// A page of a listing, cloned out so rendering happens without the lock.
pub(crate) struct Page {
    pub items: Vec<Item>,
    /// Matches in total (exact only when counting was asked for).
    pub total: usize,
    /// Whether matches follow the page.
    pub more: bool,
}

impl JsonStore {
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.index.contains_key(id)
    }

    /// Inserts or replaces an item.
    pub fn put(&mut self, id: &str, time: i64, body: Value) {
        let id: Arc<str> = match self.index.get_key_value(id) {
            Some((k, old)) => {
                let k = k.clone();
                self.order.remove(&(Reverse(*old), k.clone()));
                k
            }
            None => Arc::from(id),
        };
        self.index.insert(id.clone(), time);
        self.order.insert((Reverse(time), id), Arc::new(body));
    }

    pub fn get(&self, id: &str) -> Option<(i64, Arc<Value>)> {
        let (k, t) = self.index.get_key_value(id)?;
        self.order
            .get(&(Reverse(*t), k.clone()))
            .map(|b| (*t, b.clone()))
    }

    /// The newest ids, at most `n`.
    pub fn newest(&self, n: usize) -> Vec<String> {
        self.order
            .keys()
            .take(n)
            .map(|(_, id)| id.to_string())
            .collect()
    }

    /// Items whose time lies in `[lo, hi]`, newest first.
    pub fn range(&self, lo: i64, hi: i64) -> impl DoubleEndedIterator<Item = Item> + '_ {
        let start: Bound<Key> = Bound::Included((Reverse(hi.max(lo)), Arc::from("")));
        // Everything at `lo - 1` and older sorts after every key at `lo`, whatever its id.
        let end: Bound<Key> = if lo == i64::MIN {
            Bound::Unbounded
        } else {
            Bound::Excluded((Reverse(lo - 1), Arc::from("")))
        };
        let empty = lo > hi;
        self.order
            .range((start, end))
            .filter(move |_| !empty)
            .map(|((Reverse(t), id), v)| (id.clone(), *t, v.clone()))
    }

    /// Matches of an OData `filter` (on `schema`, whose `time_prop` is this store's key) in
    /// listing order, skipping `skip`, at most `top`; counts all matches only when `count` is set.
    pub fn page(
        &self,
        filter: Option<&Expr>,
        schema: &Schema,
        time_prop: &str,
        skip: usize,
        top: usize,
        count: bool,
    ) -> Page {
        let (lo, hi) = filter.map_or((i64::MIN, i64::MAX), |f| f.time_bounds(time_prop));
        let mut page = Page {
            items: Vec::new(),
            total: 0,
            more: false,
        };
        for item in self.range(lo, hi) {
            let matches = filter.is_none_or(|f| {
                f.matches(&JsonFields {
                    value: &item.2,
                    schema,
                })
            });
            if !matches {
                continue;
            }
            if page.total >= skip {
                if page.items.len() < top {
                    page.items.push(item);
                } else {
                    // `$top=0` asks for no items; a nextLink would repeat the same empty page.
                    page.more = top > 0;
                    if !count {
                        break;
                    }
                }
            }
            page.total += 1;
        }
        page
    }
}

/// Merges `patch`'s top-level members into a JSON object (non-objects are left alone).
pub(crate) fn merge(target: &mut Value, patch: &Value) {
    if let (Some(t), Some(p)) = (target.as_object_mut(), patch.as_object()) {
        for (k, v) in p {
            t.insert(k.clone(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn orders_newest_first_and_replaces_by_id() {
        let mut s = JsonStore::default();
        s.put("a", 10, json!({"n": 1}));
        s.put("b", 30, json!({"n": 2}));
        s.put("c", 20, json!({"n": 3}));
        s.put("a", 40, json!({"n": 4}));
        assert_eq!(s.len(), 3);
        assert_eq!(s.newest(10), ["a", "b", "c"]);
        let ids: Vec<String> = s.range(20, 30).map(|i| i.0.to_string()).collect();
        assert_eq!(ids, ["b", "c"]);
        assert_eq!(s.range(31, 30).count(), 0);
        assert_eq!(
            s.get("a").map(|(t, v)| (t, v["n"].clone())),
            Some((40, json!(4)))
        );
    }
}
