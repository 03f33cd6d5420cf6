//! stub
use serde_json::value::RawValue;
use super::{Prepared, Unusable};
pub(crate) fn prepare(list: Option<&str>, raw: &RawValue) -> Result<Prepared, Unusable> { let _ = (list, raw); Err(Unusable { reason: "todo".into(), native_id: None }) }
