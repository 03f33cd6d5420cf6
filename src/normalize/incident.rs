//! stub
use serde_json::value::RawValue;
use super::{Prepared, Unusable};
pub(crate) fn prepare(raw: &RawValue) -> Result<Prepared, Unusable> { let _ = raw; Err(Unusable { reason: "todo".into(), native_id: None }) }
