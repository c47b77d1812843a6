//! TLS: a node with a certificate (signed by a CA `rcgen` makes per test) serves its
//! HTTP API and admin endpoint only over TLS, to clients that trust the CA and, when it
//! has a client CA, present a certificate that CA signed. Through the Rust API and
//! through the `kvstore` binary's flags.

use std::io::{BufRead as _, BufReader, Read as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kvstore::{ClientError, KvClient, KvNode, KvNodeConfig};
use layout_core::admin::http::AdminClient;
use layout_core::http::{ClientConfig, ClientTls, ServerTls};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::support::TOKEN;

const TIMEOUT: Duration = Duration::from_secs(30);

/// A CA, a server certificate it signed for 127.0.0.1, and a client certificate it
/// signed; all PEM.
struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

impl Pki {
    fn new() -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "kvstore test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(names).expect("params");
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &ca).expect("certificate");
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(
            vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) = leaf(
            vec!["kvstore-client".to_owned()],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        Pki {
            ca: ca.pem(),
            server_cert,
            server_key,
            client_cert,
            client_key,
        }
    }

    fn server(&self) -> ServerTls {
        ServerTls::from_pem(self.server_cert.as_bytes(), self.server_key.as_bytes())
            .expect("server TLS")
    }

    /// Trusts the CA, presents no certificate.
    fn client(&self) -> ClientConfig {
        ClientConfig::new(TIMEOUT)
            .with_tls(ClientTls::with_ca_pem(self.ca.as_bytes()).expect("client TLS"))
    }

    /// Trusts the CA and presents the client certificate.
    fn client_with_certificate(&self) -> ClientConfig {
        let tls = ClientTls::with_ca_pem(self.ca.as_bytes())
            .expect("client TLS")
            .with_identity_pem(self.client_cert.as_bytes(), self.client_key.as_bytes())
            .expect("client identity");
        ClientConfig::new(TIMEOUT).with_tls(tls)
    }
}

fn tls_node(dir: &Path, tls: ServerTls) -> KvNode {
    KvNode::start(
        KvNodeConfig::new(dir)
            .with_admin("127.0.0.1:0".parse().expect("addr"), TOKEN)
            .with_tls(tls),
    )
    .expect("node starts")
}

/// Whether a call failed without an answer from the server (the TLS handshake failed or
/// the server dropped the connection): a refusal at the transport.
fn refused_at_transport<T>(result: &Result<T, ClientError>) -> bool {
    matches!(result, Err(ClientError::Transport(_)))
}

#[test]
fn a_tls_node_serves_clients_that_trust_its_ca_and_refuses_plain_http() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let node = tls_node(dir.path(), pki.server());
    let addr = node.http_addr();

    let client = KvClient::with_config(addr, &pki.client()).with_token(TOKEN);
    client.put("k", "over TLS").expect("put over TLS");
    assert_eq!(client.get("k").expect("get").as_deref(), Some("over TLS"));
    let (status, metrics) = client.raw("GET", "/metrics", None).expect("metrics");
    assert_eq!(status, 200, "{metrics}");
    assert!(
        metrics.contains("layout_metadata_layout_version"),
        "{metrics}"
    );

    let plain = KvClient::with_timeout(addr, TIMEOUT);
    let refused = plain.get("k");
    assert!(refused_at_transport(&refused), "plain HTTP: {refused:?}");
    let other_ca = Pki::new();
    let untrusting = KvClient::with_config(addr, &other_ca.client()).get("k");
    assert!(
        refused_at_transport(&untrusting),
        "a client that does not trust the node's CA: {untrusting:?}"
    );

    let admin = node.admin_addr().expect("admin endpoint");
    let admin_client = AdminClient::with_config(&format!("https://{admin}"), TOKEN, pki.client())
        .expect("admin client");
    assert_eq!(
        admin_client
            .status()
            .expect("admin status over TLS")
            .metadata_layout_version,
        node.manager().metadata_layout_version()
    );
    let plain_admin = AdminClient::with_config(
        &format!("http://{admin}"),
        TOKEN,
        ClientConfig::new(TIMEOUT),
    )
    .expect("admin client");
    assert!(
        plain_admin.status().is_err(),
        "the admin endpoint refuses plain HTTP"
    );
    node.shutdown().expect("shutdown");
}

#[test]
fn with_a_client_ca_only_clients_presenting_a_certificate_it_signed_are_served() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = pki
        .server()
        .with_client_ca_pem(pki.ca.as_bytes())
        .expect("client CA");
    let node = tls_node(dir.path(), tls);
    let addr = node.http_addr();

    let with_certificate = KvClient::with_config(addr, &pki.client_with_certificate());
    with_certificate
        .put("k", "v")
        .expect("put with a client certificate");
    assert_eq!(
        with_certificate.get("k").expect("get").as_deref(),
        Some("v")
    );
    let without = KvClient::with_config(addr, &pki.client()).get("k");
    assert!(
        refused_at_transport(&without),
        "no client certificate: {without:?}"
    );
    let stranger = Pki::new();
    let foreign = {
        // Trusts the node's CA but presents a certificate another CA signed.
        let tls = ClientTls::with_ca_pem(pki.ca.as_bytes())
            .expect("client TLS")
            .with_identity_pem(
                stranger.client_cert.as_bytes(),
                stranger.client_key.as_bytes(),
            )
            .expect("identity");
        KvClient::with_config(addr, &ClientConfig::new(TIMEOUT).with_tls(tls)).get("k")
    };
    assert!(
        refused_at_transport(&foreign),
        "a certificate the client CA did not sign: {foreign:?}"
    );

    let admin = format!("https://{}", node.admin_addr().expect("admin endpoint"));
    AdminClient::with_config(&admin, TOKEN, pki.client_with_certificate())
        .expect("admin client")
        .status()
        .expect("admin status with a client certificate");
    assert!(
        AdminClient::with_config(&admin, TOKEN, pki.client())
            .expect("admin client")
            .status()
            .is_err(),
        "the admin endpoint refuses a client without a certificate"
    );
    node.shutdown().expect("shutdown");
}

// ---------------------------------------------------------------------------------------
// The binary's flags.

/// A `kvstore` child process, killed when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write PEM");
    path
}

#[test]
fn the_binary_serves_tls_with_its_flags_and_logs_to_stderr() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = write(dir.path(), "server.pem", &pki.server_cert);
    let key = write(dir.path(), "server-key.pem", &pki.server_key);
    let ca = write(dir.path(), "ca.pem", &pki.ca);
    let data = dir.path().join("node");
    let path = |p: &Path| p.to_str().expect("UTF-8 path").to_owned();
    let mut child = KillOnDrop(
        Command::new(crate::support::kvstore_bin())
            .args(["--dir", &path(&data), "--admin-listen", "127.0.0.1:0"])
            .args(["--admin-token", TOKEN])
            .args(["--tls-cert", &path(&cert), "--tls-key", &path(&key)])
            .args(["--tls-client-ca", &path(&ca)])
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kvstore"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let mut http: Option<SocketAddr> = None;
    let mut admin: Option<SocketAddr> = None;
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        let mut words = line.split(' ');
        match (words.next(), words.next()) {
            (Some("http"), Some(a)) => http = a.parse().ok(),
            (Some("admin"), Some(a)) => admin = a.parse().ok(),
            (Some("slv"), _) => break,
            _ => {}
        }
    }
    let http = http.expect("kvstore printed `http ADDR`");
    let admin = admin.expect("kvstore printed `admin ADDR`");

    let client = KvClient::with_config(http, &pki.client_with_certificate());
    client.put("k", "v").expect("put over mTLS");
    assert_eq!(client.get("k").expect("get").as_deref(), Some("v"));
    let without = KvClient::with_config(http, &pki.client()).get("k");
    assert!(refused_at_transport(&without), "{without:?}");
    let plain = KvClient::with_timeout(http, TIMEOUT).get("k");
    assert!(refused_at_transport(&plain), "{plain:?}");
    AdminClient::with_config(
        &format!("https://{admin}"),
        TOKEN,
        pki.client_with_certificate(),
    )
    .expect("admin client")
    .status()
    .expect("admin status over mTLS");

    // Closing stdin stops it cleanly; its log went to stderr at `info`.
    drop(child.0.stdin.take());
    let status = child.0.wait().expect("kvstore exits");
    let mut log = String::new();
    child
        .0
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut log)
        .expect("read stderr");
    assert!(status.success(), "{status}: {log}");
    assert!(log.contains("INFO"), "logs at info by default: {log}");
    assert!(log.contains("kvstore node started"), "{log}");
}

/// A cluster whose coordinator node serves the member link over mutual TLS, beyond
/// loopback: a member with the CA and a certificate it signed joins; a member without a
/// certificate, and one speaking plain HTTP, cannot reach it: they start (a member does
/// not need its coordinator to serve) but never appear in the cluster state.
#[test]
fn a_cluster_over_mtls_admits_only_members_with_a_certificate_of_its_ca() {
    use kvstore::{ClusterConfig, ClusterStoreConfig};
    use layout_core::http::ClientTls;

    let pki = Pki::new();
    let token = crate::cluster::cluster_token();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = pki
        .server()
        .with_client_ca_pem(pki.ca.as_bytes())
        .expect("client CA");
    let coordinator = KvNode::start(
        KvNodeConfig::new(dir.path().join("kv0"))
            .with_admin("127.0.0.1:0".parse().expect("addr"), TOKEN)
            .with_tls(server)
            .with_cluster(
                ClusterConfig::coordinator(
                    "kv0",
                    ClusterStoreConfig::Embedded {
                        dir: dir.path().join("cluster"),
                    },
                )
                .with_cluster_token(token.clone())
                // Beyond loopback: allowed because the node serves TLS.
                .with_link_host("0.0.0.0".parse().expect("any address")),
            ),
    )
    .expect("the coordinator node starts");
    let port = coordinator.coordinator_addr().expect("link address").port();
    let members_at: SocketAddr = ([127, 0, 0, 1], port).into();
    let member = |id: &str, tls: Option<ClientTls>| {
        let mut cluster = ClusterConfig::member(id, members_at).with_cluster_token(token.clone());
        if let Some(tls) = tls {
            cluster = cluster.with_link_tls(tls);
        }
        KvNode::start(KvNodeConfig::new(dir.path().join(id)).with_cluster(cluster))
    };
    let ca_only = || ClientTls::with_ca_pem(pki.ca.as_bytes()).expect("CA");
    let with_certificate = ca_only()
        .with_identity_pem(pki.client_cert.as_bytes(), pki.client_key.as_bytes())
        .expect("identity");

    let kv1 = member("kv1", Some(with_certificate)).expect("a member with a certificate joins");
    // Without a certificate, or speaking plain HTTP, a member cannot reach the
    // coordinator: it starts (an unreachable coordinator does not stop a member) but
    // never becomes a member.
    let no_certificate = member("kv2", Some(ca_only())).expect("it starts, unregistered");
    let plain = member("kv3", None).expect("it starts, unregistered");
    for node in [&no_certificate, &plain] {
        assert!(node.cluster_heartbeat().is_err(), "the link does not work");
    }

    let status = coordinator.cluster_status().expect("cluster status");
    let members: Vec<&str> = status
        .members
        .iter()
        .map(|m| m.member_id.as_str())
        .collect();
    assert!(members.contains(&"kv1"), "{members:?}");
    assert!(
        !members.contains(&"kv2") && !members.contains(&"kv3"),
        "{members:?}"
    );
    for node in [kv1, no_certificate, plain] {
        node.shutdown().expect("member shutdown");
    }
    coordinator.shutdown().expect("coordinator shutdown");
}
