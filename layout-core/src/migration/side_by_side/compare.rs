//! The cut-over check: both sides paged in id order and compared, with a digest of each.

use std::fmt;

use sha2::{Digest as _, Sha256};

use super::{
    CutOverReport, Entity, IdPage, SideBySideError, SideBySideMigration, SideBySideReport,
    MAX_FAILURES_KEPT,
};

impl SideBySideMigration {
    /// The cut-over check: pages the source and the destination in id order, side by
    /// side (two pages in memory at a time), and compares the destination with the
    /// transform of the source. Replicas and entities the filter leaves out are not
    /// counted on the source side.
    pub fn compare(&self) -> Result<CutOverReport, SideBySideError> {
        let o = &self.options;
        let mut report = CutOverReport::default();
        let (mut src_digest, mut dst_digest) = (Sha256::new(), Sha256::new());
        let mut src = IdCursor::new(|after| o.source.scan(after, o.page_size));
        let mut dst = IdCursor::new(|after| o.destination.scan(after, o.page_size));
        let example = |report: &mut CutOverReport, what: String| {
            if report.examples.len() < MAX_FAILURES_KEPT {
                report.examples.push(what);
            }
        };
        loop {
            let s = loop {
                match src.peek()? {
                    Some(e)
                        if !e.authoritative
                            || e.deleted
                            || o.filter.as_ref().is_some_and(|f| !f(e)) =>
                    {
                        src.advance();
                    }
                    other => break other.cloned(),
                }
            };
            let d = dst.peek()?.cloned();
            let take_source = match (&s, &d) {
                (None, None) => break,
                (Some(s), Some(d)) => s.id <= d.id,
                (Some(_), None) => true,
                (None, Some(_)) => false,
            };
            if let (true, Some(s)) = (take_source, s) {
                src.advance();
                report.source_count += 1;
                let want = self
                    .transformed(s.clone(), &mut SideBySideReport::default())
                    .ok();
                match &want {
                    Some(w) => digest(&mut src_digest, w),
                    None => report.transform_failed += 1,
                }
                match d.filter(|d| d.id == s.id) {
                    None => {
                        report.missing += 1;
                        example(
                            &mut report,
                            format!("{:?}: missing in the destination", s.id),
                        );
                    }
                    Some(d) => {
                        dst.advance();
                        report.destination_count += 1;
                        digest(&mut dst_digest, &d);
                        if want.is_some_and(|w| w.data != d.data) {
                            report.differing += 1;
                            example(&mut report, format!("{:?}: differs", d.id));
                        }
                    }
                }
            } else if let Some(d) = d {
                dst.advance();
                report.destination_count += 1;
                digest(&mut dst_digest, &d);
                report.extra += 1;
                example(&mut report, format!("{:?}: not in the source", d.id));
            }
        }
        report.source_digest = hex(&src_digest.finalize());
        report.destination_digest = hex(&dst_digest.finalize());
        report.agree = report.missing == 0
            && report.extra == 0
            && report.differing == 0
            && report.transform_failed == 0
            && report.source_count == report.destination_count
            && report.source_digest == report.destination_digest;
        Ok(report)
    }
}

/// Feeds one entity (id and data, length-prefixed) to a digest.
fn digest(hasher: &mut Sha256, entity: &Entity) {
    let data = serde_json::to_vec(&entity.data).unwrap_or_default();
    hasher.update((entity.id.len() as u64).to_be_bytes());
    hasher.update(entity.id.as_bytes());
    hasher.update((data.len() as u64).to_be_bytes());
    hasher.update(&data);
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Walks an id-ordered listing page by page.
struct IdCursor<F> {
    fetch: F,
    page: std::vec::IntoIter<Entity>,
    head: Option<Entity>,
    /// Where the next page starts (`None`: the first page).
    after: Option<String>,
    /// Whether the last page was read.
    done: bool,
}

impl<F: FnMut(Option<&str>) -> Result<IdPage, SideBySideError>> IdCursor<F> {
    fn new(fetch: F) -> Self {
        Self {
            fetch,
            page: Vec::new().into_iter(),
            head: None,
            after: None,
            done: false,
        }
    }

    fn peek(&mut self) -> Result<Option<&Entity>, SideBySideError> {
        while self.head.is_none() {
            if let Some(e) = self.page.next() {
                self.head = Some(e);
                break;
            }
            if self.done {
                break;
            }
            let page = (self.fetch)(self.after.as_deref())?;
            self.done = page.next.is_none();
            self.after = page.next;
            self.page = page.entities.into_iter();
        }
        Ok(self.head.as_ref())
    }

    fn advance(&mut self) {
        self.head = None;
    }
}
