//! Upgrading and downgrading a document along the chain, and converting it to and from
//! typed values.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::{DocumentError, DocumentMigration, DocumentMigrator, CRASH_STEP_APPLIED};

/// One applied step, as reported by [`Migrated`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedStep {
    /// The step's name.
    pub name: String,
    /// The version before.
    pub from: u32,
    /// The version after.
    pub to: u32,
}

/// A document after [`DocumentMigrator::upgrade`] or [`DocumentMigrator::downgrade`].
#[derive(Debug, Clone, PartialEq)]
pub struct Migrated {
    /// The document, with its version field set.
    pub document: Value,
    /// Its version before.
    pub from: u32,
    /// Its version now.
    pub to: u32,
    /// The steps applied, in order (empty when it was already at the version).
    pub steps: Vec<AppliedStep>,
}

impl Migrated {
    /// Whether any step was applied.
    pub fn changed(&self) -> bool {
        !self.steps.is_empty()
    }
}

impl DocumentMigrator {
    /// The version `document` carries (the base version when it has no version field).
    pub fn version_of(&self, document: &Value) -> Result<u32, DocumentError> {
        let object = document
            .as_object()
            .ok_or_else(|| DocumentError::NotAnObject {
                document: self.document.clone(),
                found: json_type(document),
            })?;
        match object.get(&self.version_field) {
            None => Ok(self.base_version),
            Some(v) => v
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| DocumentError::BadVersion {
                    document: self.document.clone(),
                    field: self.version_field.clone(),
                    found: v.to_string(),
                }),
        }
    }

    /// Upgrades `document` to the current version, applying every step above its
    /// version in order and logging each. A current document is returned unchanged; a
    /// newer one is refused with [`DocumentError::NewerThanSoftware`].
    pub fn upgrade(&self, document: Value) -> Result<Migrated, DocumentError> {
        let from = self.version_of(&document)?;
        if from > self.current_version {
            return Err(DocumentError::NewerThanSoftware {
                document: self.document.clone(),
                found: from,
                supported: self.current_version,
            });
        }
        if from < self.base_version {
            return Err(DocumentError::BelowBase {
                document: self.document.clone(),
                found: from,
                base: self.base_version,
            });
        }
        let mut document = document;
        let mut version = from;
        let mut applied = Vec::new();
        for step in self.steps.iter().filter(|s| s.from >= from) {
            document = (step.forward)(document).map_err(|source| DocumentError::StepFailed {
                document: self.document.clone(),
                step: step.name.clone(),
                from: step.from,
                to: step.to,
                source,
            })?;
            self.set_version(&mut document, step.to, &step.name)?;
            tracing::info!(
                target: "layout_core::migration",
                document = %self.document,
                step = %step.name,
                from = step.from,
                to = step.to,
                "applied document migration step"
            );
            crate::crash_point::hit(CRASH_STEP_APPLIED);
            version = step.to;
            applied.push(AppliedStep {
                name: step.name.clone(),
                from: step.from,
                to: step.to,
            });
        }
        if applied.is_empty() {
            // A document without a version field gets one, so what is stored says it.
            self.set_version(&mut document, version, "stamp")?;
        }
        Ok(Migrated {
            document,
            from,
            to: version,
            steps: applied,
        })
    }

    /// Rewrites `document` for older software: from its version down to `target`,
    /// applying the way back of each step crossed, newest first. Every step crossed must
    /// define one; otherwise nothing is applied and the error names the step
    /// ([`DocumentError::NoWayBack`]).
    pub fn downgrade(&self, document: Value, target: u32) -> Result<Migrated, DocumentError> {
        let from = self.version_of(&document)?;
        if from > self.current_version {
            return Err(DocumentError::NewerThanSoftware {
                document: self.document.clone(),
                found: from,
                supported: self.current_version,
            });
        }
        if target > from || target < self.base_version {
            return Err(DocumentError::BadDowngradeTarget {
                document: self.document.clone(),
                current: from,
                target,
                base: self.base_version,
            });
        }
        let crossed: Vec<&DocumentMigration> = self
            .steps
            .iter()
            .rev()
            .filter(|s| s.from >= target && s.to <= from)
            .collect();
        if let Some(step) = crossed.iter().find(|s| s.backward.is_none()) {
            return Err(DocumentError::NoWayBack {
                document: self.document.clone(),
                step: step.name.clone(),
                from: step.from,
                to: step.to,
                current: from,
            });
        }
        let mut document = document;
        let mut applied = Vec::new();
        for step in crossed {
            let Some(backward) = step.backward.as_ref() else {
                continue;
            };
            document = backward(document).map_err(|source| DocumentError::StepFailed {
                document: self.document.clone(),
                step: format!("{} (way back)", step.name),
                from: step.to,
                to: step.from,
                source,
            })?;
            self.set_version(&mut document, step.from, &step.name)?;
            tracing::info!(
                target: "layout_core::migration",
                document = %self.document,
                step = %step.name,
                from = step.to,
                to = step.from,
                "applied document migration step backwards"
            );
            applied.push(AppliedStep {
                name: step.name.clone(),
                from: step.to,
                to: step.from,
            });
        }
        Ok(Migrated {
            document,
            from,
            to: target,
            steps: applied,
        })
    }

    /// A typed value as a document of the current version.
    pub fn encode<T: Serialize>(&self, value: &T) -> Result<Value, DocumentError> {
        let mut document = serde_json::to_value(value).map_err(|source| DocumentError::Serde {
            document: self.document.clone(),
            operation: "encode",
            source,
        })?;
        self.set_version(&mut document, self.current_version, "encode")?;
        Ok(document)
    }

    /// Upgrades `document` and reads it as a `T`.
    pub fn decode<T: DeserializeOwned>(&self, document: Value) -> Result<T, DocumentError> {
        let migrated = self.upgrade(document)?;
        serde_json::from_value(migrated.document).map_err(|source| DocumentError::Serde {
            document: self.document.clone(),
            operation: "decode",
            source,
        })
    }

    pub(super) fn set_version(
        &self,
        document: &mut Value,
        version: u32,
        step: &str,
    ) -> Result<(), DocumentError> {
        let found = json_type(document);
        match document.as_object_mut() {
            Some(object) => {
                object.insert(self.version_field.clone(), Value::from(version));
                Ok(())
            }
            None => Err(DocumentError::StepReturnedNonObject {
                document: self.document.clone(),
                step: step.to_owned(),
                found,
            }),
        }
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_document_without_a_version_is_the_base_version() {
        let m = DocumentMigrator::builder("d")
            .base_version(3)
            .build()
            .unwrap();
        assert_eq!(m.version_of(&json!({})).unwrap(), 3);
        assert!(matches!(
            m.version_of(&json!({"version": "x"})),
            Err(DocumentError::BadVersion { .. })
        ));
        assert!(matches!(
            m.version_of(&json!([1])),
            Err(DocumentError::NotAnObject { found: "array", .. })
        ));
    }
}
