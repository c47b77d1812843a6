//! What reads return ([`KvItem`], [`KvPage`], [`KvKeysPage`], [`KvEntry`]), and the checks
//! of a key and of a page request.

use serde::{Deserialize, Serialize};

use super::{MAX_KEY_BYTES, MAX_LIST_LIMIT};
use crate::error::KvError;

/// A key and its value, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvItem {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
}

/// One page of a list (`GET /kv?prefix=P&after=K&limit=N`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvPage {
    /// The live items of the page, in key order.
    pub items: Vec<KvItem>,
    /// When more keys with the prefix follow: the last key this page read, to pass as
    /// `after` for the next page. `None` (`null`): the list is complete. A page may
    /// hold fewer items than its limit (expired values are skipped but counted;
    /// the byte budget) and still have a `next`.
    #[serde(default)]
    pub next: Option<String>,
}

/// One page of the keys holding a value (`GET /by-value?value=V&after=K&limit=N`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvKeysPage {
    /// The keys of the page holding the value, in key order.
    pub keys: Vec<String>,
    /// As [`KvPage::next`].
    #[serde(default)]
    pub next: Option<String>,
}

/// A value read, with its expiry if it has one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEntry {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
    /// When it expires (ms since the epoch, on the store's clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
}

/// Checks a page request's cursor (a key) and limit.
pub(super) fn check_page(after: Option<&str>, limit: usize) -> Result<(), KvError> {
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return Err(KvError::BadRequest(format!(
            "limit={limit}: a page holds from 1 to {MAX_LIST_LIMIT} items"
        )));
    }
    match after {
        Some("") => Err(KvError::BadRequest(
            "the cursor `after` is empty; omit it for the first page".into(),
        )),
        Some(after) if after.len() > MAX_KEY_BYTES => Err(KvError::BadRequest(format!(
            "the cursor `after` is {} bytes long; a key has at most {MAX_KEY_BYTES}",
            after.len()
        ))),
        _ => Ok(()),
    }
}

/// Checks a key from a request.
pub(super) fn check_key(key: &str) -> Result<(), KvError> {
    if key.is_empty() {
        return Err(KvError::BadRequest("the key is empty".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(KvError::BadRequest(format!(
            "the key is {} bytes long; at most {MAX_KEY_BYTES} are allowed",
            key.len()
        )));
    }
    Ok(())
}
