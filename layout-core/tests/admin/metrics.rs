//! `GET /metrics`, scraped before, during and after a finalization (with a failed run
//! and a migration that reports progress), parsed as Prometheus text: the values move as
//! the component's state does.

// Every value compared is a small integer, which f64 represents exactly.
#![allow(clippy::float_cmp)]

use std::collections::HashMap;
use std::time::Duration;

use layout_core::admin::FinalizeParams;

use crate::support::{raw, Fixture, OmFeature, TOKEN};

/// One scrape: `(name, labels) -> value`, with the labels as `k=v` pairs, sorted.
struct Scrape(HashMap<(String, Vec<String>), f64>);

impl Scrape {
    fn of(fx: &Fixture) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut answer = agent
            .get(&format!("{}/metrics", fx.url()))
            .header("Authorization", &format!("Bearer {TOKEN}"))
            .call()
            .unwrap();
        assert_eq!(answer.status(), 200);
        let content_type = answer
            .headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        assert!(content_type.contains("openmetrics-text"), "{content_type}");
        let text = answer.body_mut().read_to_string().unwrap();
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
        let mut values = HashMap::new();
        for sample in scrape.samples {
            let value = match sample.value {
                prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Untyped(v) => v,
                other => panic!("unexpected sample {other:?}"),
            };
            let mut labels: Vec<String> = sample
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            labels.sort();
            values.insert((sample.metric, labels), value);
        }
        Self(values)
    }

    fn get(&self, name: &str, extra: &[&str]) -> f64 {
        let mut labels: Vec<String> = vec!["component=OmFeature".to_owned()];
        labels.extend(extra.iter().map(|l| (*l).to_owned()));
        labels.sort();
        *self
            .0
            .get(&(name.to_owned(), labels.clone()))
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in {:?}", self.0.keys()))
    }

    fn status(&self, status: &str) -> f64 {
        self.get("layout_finalization_status", &[&format!("status={status}")])
    }
}

#[test]
fn metrics_follow_the_layout_through_a_failed_run_a_migration_and_the_end() {
    let fx = Fixture::start();
    let client = fx.client();

    let before = Scrape::of(&fx);
    assert_eq!(before.get("layout_metadata_layout_version", &[]), 1.0);
    assert_eq!(before.get("layout_software_layout_version", &[]), 3.0);
    assert_eq!(before.get("layout_pre_finalized", &[]), 1.0);
    assert_eq!(before.get("layout_features_finalized", &[]), 2.0);
    assert_eq!(before.get("layout_features", &[]), 4.0);
    assert_eq!(before.status("FINALIZATION_REQUIRED"), 1.0);
    assert_eq!(before.status("FINALIZATION_DONE"), 0.0);
    assert_eq!(before.get("layout_finalization_running", &[]), 0.0);
    assert_eq!(before.get("layout_finalization_failures_total", &[]), 0.0);
    assert_eq!(
        before.get("layout_prepare_state", &["state=NOT_PREPARED"]),
        1.0
    );

    // A run that fails at MultiTenancy: the failure counter moves, the MLV does not.
    *fx.node.fail_feature.lock() = Some(OmFeature::MultiTenancy);
    assert!(fx.finalize(&FinalizeParams::new("ops")).is_err());
    *fx.node.fail_feature.lock() = None;
    let failed = Scrape::of(&fx);
    assert_eq!(failed.get("layout_finalization_failures_total", &[]), 1.0);
    assert_eq!(failed.get("layout_metadata_layout_version", &[]), 1.0);

    // A run held inside its migration after the first batch.
    fx.node.hold.arm();
    client.finalize(&FinalizeParams::new("ops")).unwrap();
    let mut reached = false;
    for _ in 0..2_000 {
        let status = client.finalization_status().unwrap();
        if status.progress.as_ref().is_some_and(|p| p.done == 3) {
            reached = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(reached, "the migration never reported its first batch");
    let during = Scrape::of(&fx);
    assert_eq!(during.get("layout_finalization_running", &[]), 1.0);
    assert_eq!(during.status("FINALIZATION_IN_PROGRESS"), 1.0);
    assert_eq!(during.status("FINALIZATION_REQUIRED"), 0.0);
    assert_eq!(during.get("layout_finalization_action_done", &[]), 3.0);
    assert_eq!(during.get("layout_finalization_action_total", &[]), 10.0);
    assert_eq!(during.get("layout_finalization_feature_index", &[]), 1.0);
    assert_eq!(during.get("layout_finalization_feature_count", &[]), 2.0);
    assert!(during.get("layout_finalization_action_rate", &[]) >= 0.0);

    fx.node.hold.release();
    fx.service.join_finalization().unwrap().unwrap();
    let after = Scrape::of(&fx);
    assert_eq!(after.get("layout_metadata_layout_version", &[]), 3.0);
    assert_eq!(after.get("layout_pre_finalized", &[]), 0.0);
    assert_eq!(after.get("layout_features_finalized", &[]), 4.0);
    assert_eq!(after.get("layout_finalization_running", &[]), 0.0);
    assert_eq!(after.status("FINALIZATION_DONE"), 1.0);
    assert_eq!(after.get("layout_finalization_action_done", &[]), 0.0);
    assert_eq!(after.get("layout_finalization_failures_total", &[]), 1.0);
}

#[test]
fn metrics_need_the_token_unless_opened() {
    let anonymous = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let status_anonymous = b"GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let fx = Fixture::start();
    assert_eq!(raw(fx.addr, anonymous).0, 401);

    // Opened: a scraper needs no token; the admin routes still do.
    let open = Fixture::start_with(&crate::support::Start {
        open_metrics: true,
        ..crate::support::Start::default()
    });
    let (status, text) = raw(open.addr, anonymous);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("layout_metadata_layout_version"), "{text}");
    assert_eq!(raw(open.addr, status_anonymous).0, 401);
}
