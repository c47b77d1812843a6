//! Value records in table `kv` and the put/get handlers of each layout version.
//!
//! - v0 (`KvFeature::Initial`): a JSON object `{"value": "..."}`.
//! - v3 (`KvFeature::CompactEncoding`): the byte [`COMPACT_TAG`] followed by the value's
//!   UTF-8 bytes. The tag can start neither JSON nor UTF-8 text, so both encodings can
//!   live side by side in one table and a reader tells them apart by the first byte.
//!
//! Which encoding a put writes and which a get accepts is chosen per request by a
//! [`LayoutVersionInstanceFactory`]: v0 until `CompactEncoding` is finalized, v3 after.
//! Old software (SLV < 3) registers only v0, and never meets a v3 record: v3 records are
//! written only after finalization, after which old software is refused start-up.

use std::sync::Arc;

use layout_core::factory::Slot;
use layout_core::{LayoutFeature, LayoutVersionInstanceFactory, LayoutVersionManager};
use serde::{Deserialize, Serialize};

use super::feature::KvFeature;

/// The first byte of a compact (v3) record.
pub const COMPACT_TAG: u8 = 0xC3;

/// Encodes and decodes value records; one implementation per layout version.
pub trait RecordCodec: Send + Sync {
    /// The encoding's name (`v0-json`, `v3-compact`).
    fn name(&self) -> &'static str;
    /// The record for `value`.
    fn encode(&self, value: &str) -> Vec<u8>;
    /// The value in `record`; `Err(reason)` when this codec cannot read it.
    fn decode(&self, record: &[u8]) -> Result<String, String>;
}

#[derive(Serialize, Deserialize)]
struct JsonRecord {
    value: String,
}

/// The v0 encoding: a JSON record. Reads only JSON records.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonCodec;

impl RecordCodec for JsonCodec {
    fn name(&self) -> &'static str {
        "v0-json"
    }
    fn encode(&self, value: &str) -> Vec<u8> {
        // Serializing a struct of one string cannot fail.
        serde_json::to_vec(&JsonRecord {
            value: value.to_owned(),
        })
        .unwrap_or_default()
    }
    fn decode(&self, record: &[u8]) -> Result<String, String> {
        if record.first() == Some(&COMPACT_TAG) {
            return Err("a compact (v3) record; this software reads only v0 JSON records".into());
        }
        serde_json::from_slice::<JsonRecord>(record)
            .map(|r| r.value)
            .map_err(|e| format!("not a v0 JSON record: {e}"))
    }
}

/// The v3 encoding: tag byte + UTF-8. Reads both v3 and v0 records.
#[derive(Debug, Default, Clone, Copy)]
pub struct CompactCodec;

impl RecordCodec for CompactCodec {
    fn name(&self) -> &'static str {
        "v3-compact"
    }
    fn encode(&self, value: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(value.len() + 1);
        out.push(COMPACT_TAG);
        out.extend_from_slice(value.as_bytes());
        out
    }
    fn decode(&self, record: &[u8]) -> Result<String, String> {
        match record.split_first() {
            Some((&COMPACT_TAG, rest)) => String::from_utf8(rest.to_vec())
                .map_err(|e| format!("a compact record that is not UTF-8: {e}")),
            _ => JsonCodec.decode(record),
        }
    }
}

/// Decodes a record in either encoding the software knows (for the index migration and
/// snapshots): v3 only when `software_layout_version` knows `CompactEncoding`.
pub(crate) fn decode_any(record: &[u8], software_layout_version: u32) -> Result<String, String> {
    if software_layout_version >= KvFeature::CompactEncoding.layout_version() {
        CompactCodec.decode(record)
    } else {
        JsonCodec.decode(record)
    }
}

/// The put and get handlers of every layout version the software knows, resolved once.
pub(crate) struct Codecs {
    factory: LayoutVersionInstanceFactory<KvFeature, &'static str, Arc<dyn RecordCodec>>,
    put: Slot,
    get: Slot,
}

impl Codecs {
    pub(crate) fn new(lvm: &LayoutVersionManager<KvFeature>) -> Result<Self, String> {
        let mut factory = LayoutVersionInstanceFactory::new(lvm);
        let v0: Arc<dyn RecordCodec> = Arc::new(JsonCodec);
        let v3: Arc<dyn RecordCodec> = Arc::new(CompactCodec);
        for key in ["put", "get"] {
            factory
                .register(key, KvFeature::Initial, Arc::clone(&v0))
                .map_err(|e| e.to_string())?;
            if lvm.software_layout_version() >= KvFeature::CompactEncoding.layout_version() {
                factory
                    .register(key, KvFeature::CompactEncoding, Arc::clone(&v3))
                    .map_err(|e| e.to_string())?;
            }
        }
        let put = factory.slot("put").ok_or("no put handler")?;
        let get = factory.slot("get").ok_or("no get handler")?;
        Ok(Self { factory, put, get })
    }

    /// The codec puts use now.
    pub(crate) fn for_put(&self, lvm: &LayoutVersionManager<KvFeature>) -> &dyn RecordCodec {
        match self.factory.get_slot(lvm, self.put) {
            Ok(codec) => codec.as_ref(),
            // Unreachable: the v0 handler serves every MLV.
            Err(_) => &JsonCodec,
        }
    }

    /// The codec gets use now.
    pub(crate) fn for_get(&self, lvm: &LayoutVersionManager<KvFeature>) -> &dyn RecordCodec {
        match self.factory.get_slot(lvm, self.get) {
            Ok(codec) => codec.as_ref(),
            Err(_) => &JsonCodec,
        }
    }
}
