//! TLS and mutual TLS on the admin endpoint, through `AdminClient` and the real
//! `layoutctl`: the right client certificate is served; no certificate, one from another
//! CA, an expired one, and plain HTTP to the TLS port are each refused with a clear
//! error and exit code, and change nothing.

use std::path::{Path, PathBuf};

use layout_core::admin::http::{AdminClient, AdminClientError};
use layout_core::admin::FinalizeParams;
use layout_core::http::{ClientConfig, ClientTls, ServerTls};
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::support::{assert_exit, stderr, Fixture, Start, TOKEN};

/// A CA and what it signed, as PEM.
struct Ca {
    cert: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap().pem();
        Self {
            cert,
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `names` (DNS names or IP addresses): (certificate PEM, key PEM).
    fn leaf(&self, names: &[&str], expired: bool) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        if expired {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap().pem();
        (cert, key.serialize_pem())
    }
}

/// A PKI on disk: the operators' CA (which also signs the server), another CA, and
/// client certificates.
struct Pki {
    dir: tempfile::TempDir,
    server_tls_plain: ServerTls,
    server_tls_mutual: ServerTls,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("ops CA");
        let other = Ca::new("someone else's CA");
        let (server_cert, server_key) = ca.leaf(&["127.0.0.1", "localhost"], false);
        let (alice_cert, alice_key) = ca.leaf(&["alice"], false);
        let (mallory_cert, mallory_key) = other.leaf(&["mallory"], false);
        let (old_cert, old_key) = ca.leaf(&["old-alice"], true);
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write("ca.pem", &ca.cert);
        write("other-ca.pem", &other.cert);
        write("alice.pem", &alice_cert);
        write("alice.key", &alice_key);
        write("mallory.pem", &mallory_cert);
        write("mallory.key", &mallory_key);
        write("old.pem", &old_cert);
        write("old.key", &old_key);
        let server_tls_plain =
            ServerTls::from_pem(server_cert.as_bytes(), server_key.as_bytes()).unwrap();
        let server_tls_mutual = server_tls_plain
            .clone()
            .with_client_ca_pem(ca.cert.as_bytes())
            .unwrap();
        Self {
            dir,
            server_tls_plain,
            server_tls_mutual,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn client(&self, fx: &Fixture, ca: &str, identity: Option<&str>) -> AdminClient {
        let mut tls = ClientTls::with_ca_file(&self.path(ca)).unwrap();
        if let Some(who) = identity {
            tls = tls
                .with_identity_files(
                    &self.path(&format!("{who}.pem")),
                    &self.path(&format!("{who}.key")),
                )
                .unwrap();
        }
        let config = ClientConfig::new(std::time::Duration::from_secs(20)).with_tls(tls);
        AdminClient::with_config(&fx.url(), TOKEN, config).unwrap()
    }

    /// `layoutctl` against the fixture with `--ca ca.pem` and the identity `who`.
    fn layoutctl(&self, fx: &Fixture, who: Option<&str>, args: &[&str]) -> std::process::Output {
        let mut all: Vec<String> = vec!["--ca".into(), path(&self.path("ca.pem"))];
        if let Some(who) = who {
            all.extend([
                "--cert".into(),
                path(&self.path(&format!("{who}.pem"))),
                "--key".into(),
                path(&self.path(&format!("{who}.key"))),
            ]);
        }
        all.extend(args.iter().map(|a| (*a).to_owned()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        fx.layoutctl(&refs)
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

fn is_transport(err: &AdminClientError) -> bool {
    matches!(err, AdminClientError::Transport { .. })
}

#[test]
fn a_tls_endpoint_serves_clients_that_trust_its_ca_and_refuses_the_others() {
    let pki = Pki::new();
    let fx = Fixture::start_with(&Start {
        tls: Some(pki.server_tls_plain.clone()),
        ..Start::default()
    });
    assert!(fx.url().starts_with("https://"), "{}", fx.url());
    let client = pki.client(&fx, "ca.pem", None);
    assert_eq!(client.status().unwrap().metadata_layout_version, 1);

    // A client that trusts another CA does not accept the endpoint's certificate.
    let wrong_ca = pki.client(&fx, "other-ca.pem", None);
    let err = wrong_ca.status().unwrap_err();
    assert!(is_transport(&err), "{err:?}");

    // Plain HTTP to the TLS port: no answer the client can read.
    let plain = AdminClient::new(&format!("http://{}", fx.addr), TOKEN).unwrap();
    assert!(is_transport(&plain.status().unwrap_err()));

    // layoutctl: with --ca it works; plain http gets exit 3 and a hint; https without
    // --ca is a usage error.
    let ok = pki.layoutctl(&fx, None, &["status", "--json"]);
    assert_exit(&ok, 0);
    let http = crate::support::layoutctl(
        &[
            "--endpoint",
            &format!("http://{}", fx.addr),
            "--token-file",
            &path(&fx.token_file()),
            "status",
        ],
        &[],
    );
    assert_exit(&http, 3);
    assert!(stderr(&http).contains("https://"), "{}", stderr(&http));
    let no_ca = crate::support::layoutctl(
        &[
            "--endpoint",
            &fx.url(),
            "--token-file",
            &path(&fx.token_file()),
            "status",
        ],
        &[],
    );
    assert_exit(&no_ca, 2);
    assert!(stderr(&no_ca).contains("--ca"), "{}", stderr(&no_ca));
}

#[test]
fn an_mtls_endpoint_serves_only_clients_with_a_valid_certificate_from_its_ca() {
    let pki = Pki::new();
    let fx = Fixture::start_with(&Start {
        tls: Some(pki.server_tls_mutual.clone()),
        ..Start::default()
    });
    let before = fx.version_bytes();

    // Alice's certificate, issued by the operators' CA: served.
    let alice = pki.client(&fx, "ca.pem", Some("alice"));
    assert_eq!(alice.status().unwrap().metadata_layout_version, 1);
    let out = pki.layoutctl(&fx, Some("alice"), &["status", "--json"]);
    assert_exit(&out, 0);

    // No certificate, one from another CA, an expired one: refused in the handshake,
    // so the finalize they send never arrives.
    for who in [None, Some("mallory"), Some("old")] {
        let client = pki.client(&fx, "ca.pem", who);
        let err = client.finalize(&FinalizeParams::new("ops")).unwrap_err();
        assert!(is_transport(&err), "{who:?}: {err:?}");
        let out = pki.layoutctl(&fx, who, &["finalize"]);
        assert_exit(&out, 3);
        let text = stderr(&out);
        assert!(
            text.contains("cannot reach the admin endpoint"),
            "{who:?}: {text}"
        );
        if who.is_none() {
            assert!(
                text.contains("--cert"),
                "a hint to pass a certificate: {text}"
            );
        }
    }
    // Plain HTTP to the mTLS port.
    let plain = AdminClient::new(&format!("http://{}", fx.addr), TOKEN).unwrap();
    assert!(is_transport(
        &plain.finalize(&FinalizeParams::new("ops")).unwrap_err()
    ));

    assert_eq!(fx.version_bytes(), before, "VERSION changed");
    assert_eq!(alice.status().unwrap().metadata_layout_version, 1);
}

#[test]
fn unusable_tls_files_are_clear_usage_errors() {
    let pki = Pki::new();
    let fx = Fixture::start_with(&Start {
        tls: Some(pki.server_tls_plain.clone()),
        ..Start::default()
    });
    let missing = crate::support::layoutctl(
        &[
            "--endpoint",
            &fx.url(),
            "--token-file",
            &path(&fx.token_file()),
            "--ca",
            "/nonexistent/ca.pem",
            "status",
        ],
        &[],
    );
    assert_exit(&missing, 2);
    assert!(
        stderr(&missing).contains("/nonexistent/ca.pem"),
        "{}",
        stderr(&missing)
    );
    // A key file that holds a certificate.
    let err = ServerTls::from_pem_files(&pki.path("alice.pem"), &pki.path("alice.pem"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("private key") && err.contains("alice.pem"),
        "{err}"
    );
    // A certificate whose key does not fit.
    let err = ServerTls::from_pem_files(&pki.path("alice.pem"), &pki.path("mallory.key"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("do not fit"), "{err}");
}

mod member_link {
    //! The coordinator's member link over mutual TLS: a member with a certificate from
    //! the cluster's CA registers; without one, with another CA's, or over plain HTTP it
    //! never reaches the coordinator and never appears in the cluster state.

    use std::sync::Arc;
    use std::time::Duration;

    use layout_core::cluster::{
        CoordinatorLink, CoordinatorServer, HeartbeatError, HttpLink, MemberReport,
    };
    use layout_core::http::{BearerToken, ClientConfig, ClientTls, EndpointConfig};

    use super::Pki;

    const CLUSTER_TOKEN: &str = "cluster-token-0123456789";

    fn link(pki: &Pki, url: &str, identity: Option<&str>) -> HttpLink {
        let mut config = ClientConfig::new(Duration::from_secs(10));
        if url.starts_with("https://") {
            let mut tls = ClientTls::with_ca_file(&pki.path("ca.pem")).unwrap();
            if let Some(who) = identity {
                tls = tls
                    .with_identity_files(
                        &pki.path(&format!("{who}.pem")),
                        &pki.path(&format!("{who}.key")),
                    )
                    .unwrap();
            }
            config = config.with_tls(tls);
        }
        HttpLink::new(url, BearerToken::new(CLUSTER_TOKEN).unwrap(), config).unwrap()
    }

    #[test]
    fn the_member_link_over_mtls_admits_only_members_with_the_clusters_certificates() {
        let pki = Pki::new();
        let coordinator = crate::support::coordinator();
        let server = CoordinatorServer::start(
            Arc::clone(&coordinator),
            BearerToken::new(CLUSTER_TOKEN).unwrap(),
            EndpointConfig::loopback(0).with_tls(pki.server_tls_mutual.clone()),
        )
        .unwrap();
        assert!(server.url().starts_with("https://"));

        let good = link(&pki, &server.url(), Some("alice"));
        let answer = good
            .register(&MemberReport::new("datanode", "dn1", 2, 1))
            .unwrap();
        assert_eq!(answer.cluster_layout_version, 1);

        let plain_url = format!("http://{}", server.local_addr());
        for (name, link) in [
            ("no certificate", link(&pki, &server.url(), None)),
            ("another CA", link(&pki, &server.url(), Some("mallory"))),
            ("expired", link(&pki, &server.url(), Some("old"))),
            ("plain HTTP", link(&pki, &plain_url, None)),
        ] {
            let err = link
                .register(&MemberReport::new("datanode", "intruder", 2, 1))
                .unwrap_err();
            assert!(
                matches!(err, HeartbeatError::Unavailable { .. }),
                "{name}: {err:?}"
            );
        }
        let status = coordinator.status("datanode").unwrap();
        let members: Vec<&str> = status
            .members
            .iter()
            .map(|m| m.member_id.as_str())
            .collect();
        assert_eq!(members, ["dn1"], "only the member with a valid certificate");
    }

    #[test]
    fn the_member_link_leaves_loopback_only_with_tls() {
        let pki = Pki::new();
        let coordinator = crate::support::coordinator();
        let token = BearerToken::new(CLUSTER_TOKEN).unwrap();
        let everywhere = "0.0.0.0:0".parse().unwrap();
        let err = CoordinatorServer::start(
            Arc::clone(&coordinator),
            token.clone(),
            EndpointConfig::new(everywhere),
        )
        .unwrap_err();
        assert!(err.to_string().contains("only with TLS"), "{err}");
        let server = CoordinatorServer::start(
            coordinator,
            token,
            EndpointConfig::new(everywhere).with_tls(pki.server_tls_plain.clone()),
        )
        .unwrap();
        assert!(server.url().starts_with("https://"));
    }
}
