//! How members reach the coordinator.

use std::sync::Arc;

use super::coordinator::Coordinator;
use super::protocol::{CoordinatorAnswer, HeartbeatError, MemberReport};

#[cfg(feature = "http")]
pub use self::http_link::{
    link_error_format, member_link_routes, CoordinatorServer, HttpLink, LinkError, HEARTBEAT_PATH,
    LEAVE_PATH, REGISTER_PATH,
};

/// A member's way to the coordinator. Synchronous: the member's thread waits for the
/// answer.
///
/// # Overview
///
/// How members reach the coordinator.
///
/// The protocol is transport-free: [`Coordinator::register`] and
/// [`Coordinator::heartbeat`] are plain method calls taking and returning serde types.
/// [`CoordinatorLink`] is what a [`Member`](crate::cluster::Member) talks to; two wirings
/// are provided:
///
/// - **in process**: a [`Coordinator`] (or an `Arc` of one) *is* a link; members in the
///   same process (an in-process mini cluster, the example service's threads) call it
///   directly, with no serialization and no channel to drain;
/// - **between processes** (feature `http`): the coordinator serves the member link on
///   the shared HTTP stack (`layout_core::http`) and `HttpLink` is the member's end.
///   `CoordinatorServer` is an endpoint of its own serving it; `member_link_routes` are
///   the same routes, for a node that merges them into another endpoint.
///
/// ## The member link on the wire
///
/// | request | answer |
/// |---|---|
/// | `POST /v1/cluster/register`, a JSON [`MemberReport`] | 200 and a JSON [`CoordinatorAnswer`], or a JSON [`HeartbeatError`] |
/// | `POST /v1/cluster/heartbeat`, a JSON [`MemberReport`] | the same |
/// | `GET /metrics` (`CoordinatorServer` only) | Prometheus text: `ClusterMetrics` |
///
/// Every request needs `Authorization: Bearer <cluster token>`: a `BearerToken` of the
/// cluster, distinct from any admin token, compared in constant time before any handler
/// runs. The statuses of a [`HeartbeatError`]:
///
/// | status | error |
/// |---|---|
/// | 401 | [`HeartbeatError::Unauthorized`]: no cluster token, or the wrong one |
/// | 409 | [`HeartbeatError::Refused`]: the coordinator refused the member ([`Refusal`](crate::cluster::Refusal)) |
/// | 400, 404, 405, 413 | [`HeartbeatError::BadRequest`]: a body that is not a member report, too large, an unknown path; nothing changed |
/// | 503, 408, 500 | [`HeartbeatError::Unavailable`]: the coordinator could not decide (its store failed, it is busy); retry |
///
/// The link leaves loopback only with TLS: `CoordinatorServer::start` refuses a
/// non-loopback address without a certificate
/// (`EndpointError::PlaintextBeyondLoopback`).
///
/// ```
/// # #[cfg(feature = "http")] {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use layout_core::cluster::{
///     Coordinator, CoordinatorLink, CoordinatorOptions, CoordinatorServer, EmbeddedStore,
///     HeartbeatError, HttpLink, MemberReport,
/// };
/// use layout_core::http::{BearerToken, ClientConfig};
///
/// let coordinator = Arc::new(Coordinator::open(
///     Arc::new(EmbeddedStore::in_memory()),
///     CoordinatorOptions::default(),
/// )?);
/// let token = BearerToken::new("cluster-token-0123456789")?;
/// let server = CoordinatorServer::bind_loopback(Arc::clone(&coordinator), 0, token.clone())?;
///
/// let link = HttpLink::new(&server.url(), token, ClientConfig::new(Duration::from_secs(10)))?;
/// let answer = link.register(&MemberReport::new("datanode", "dn1", 2, 1))?;
/// assert_eq!(answer.cluster_layout_version, 1);
///
/// // Another token is refused before the coordinator sees the report.
/// let intruder = HttpLink::new(
///     &server.url(),
///     BearerToken::new("not-the-cluster-token")?,
///     ClientConfig::new(Duration::from_secs(10)),
/// )?;
/// let refused = intruder.register(&MemberReport::new("datanode", "evil", 2, 1)).unwrap_err();
/// assert!(matches!(refused, HeartbeatError::Unauthorized { .. }));
/// assert!(coordinator.status("datanode")?.member("evil").is_none());
/// # }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait CoordinatorLink: Send + Sync {
    /// Registers the member (at start-up).
    fn register(&self, report: &MemberReport) -> Result<CoordinatorAnswer, HeartbeatError>;
    /// Sends a heartbeat.
    fn heartbeat(&self, report: &MemberReport) -> Result<CoordinatorAnswer, HeartbeatError>;
    /// Says the member's process is stopping (a clean shutdown): its incarnation is no
    /// longer live, so the next process under its id is accepted at once.
    fn leave(&self, report: &MemberReport) -> Result<CoordinatorAnswer, HeartbeatError>;
}

impl CoordinatorLink for Coordinator {
    fn register(&self, report: &MemberReport) -> Result<CoordinatorAnswer, HeartbeatError> {
        Coordinator::register(self, report)
    }
    fn heartbeat(&self, report: &MemberReport) -> Result<CoordinatorAnswer, HeartbeatError> {
        Coordinator::heartbeat(self, report)
    }
    fn leave(&self, report: &MemberReport) -> Result<CoordinatorAnswer, HeartbeatError> {
        Coordinator::leave(self, report)
    }
}

impl<L: CoordinatorLink + ?Sized> CoordinatorLink for Arc<L> {
    fn register(&self, report: &MemberReport) -> Result<CoordinatorAnswer, HeartbeatError> {
        (**self).register(report)
    }
    fn heartbeat(&self, report: &MemberReport) -> Result<CoordinatorAnswer, HeartbeatError> {
        (**self).heartbeat(report)
    }
    fn leave(&self, report: &MemberReport) -> Result<CoordinatorAnswer, HeartbeatError> {
        (**self).leave(report)
    }
}

#[cfg(feature = "http")]
mod http_link {
    use std::fmt;
    use std::net::SocketAddr;
    use std::sync::Arc;

    use axum::extract::Request;
    use axum::http::StatusCode;
    use axum::response::Response;
    use axum::routing::post;
    use axum::Router;

    use super::CoordinatorLink;
    use crate::cluster::coordinator::Coordinator;
    use crate::cluster::metrics::ClusterMetrics;
    use crate::cluster::protocol::{CoordinatorAnswer, HeartbeatError, MemberReport};
    use crate::http::{
        blocking, json_response, metrics_router, read_body, require_bearer, BearerToken,
        ClientConfig, Endpoint, EndpointConfig, EndpointError, Refusal as HttpRefusal, Registry,
    };

    /// The path of a member's registration.
    pub const REGISTER_PATH: &str = "/v1/cluster/register";

    /// The path of a member's heartbeat.
    pub const HEARTBEAT_PATH: &str = "/v1/cluster/heartbeat";

    /// The path of a member's leaving (a clean shutdown).
    pub const LEAVE_PATH: &str = "/v1/cluster/leave";

    /// The largest answer a member reads from the coordinator.
    const MAX_ANSWER_BYTES: u64 = 1024 * 1024;

    /// What a member asks.
    #[derive(Clone, Copy)]
    enum Call {
        Register,
        Heartbeat,
        Leave,
    }

    impl Call {
        fn name(self) -> &'static str {
            match self {
                Self::Register => "registration",
                Self::Heartbeat => "heartbeat",
                Self::Leave => "leave",
            }
        }

        fn path(self) -> &'static str {
            match self {
                Self::Register => REGISTER_PATH,
                Self::Heartbeat => HEARTBEAT_PATH,
                Self::Leave => LEAVE_PATH,
            }
        }
    }

    /// The HTTP status of a [`HeartbeatError`] on the member link.
    fn status_of(error: &HeartbeatError) -> StatusCode {
        match error {
            HeartbeatError::Refused(_) => StatusCode::CONFLICT,
            HeartbeatError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            HeartbeatError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            HeartbeatError::BadRequest { .. } => StatusCode::BAD_REQUEST,
        }
    }

    fn error_response(error: &HeartbeatError) -> Response {
        json_response(status_of(error), error)
    }

    /// The member link's [`ErrorFormat`](crate::http::ErrorFormat): what the stack
    /// refuses on its own (a missing or wrong token, a body too large, a busy endpoint)
    /// is written as a JSON [`HeartbeatError`], as the routes' own answers are, so a
    /// member reads every answer of the link the same way.
    pub fn link_error_format(refusal: &HttpRefusal) -> Response {
        let error = match refusal {
            HttpRefusal::Unauthorized(message) => HeartbeatError::Unauthorized {
                reason: message.clone(),
            },
            HttpRefusal::Busy | HttpRefusal::BodyTimeout | HttpRefusal::Internal(_) => {
                HeartbeatError::Unavailable {
                    reason: refusal.message(),
                }
            }
            _ => HeartbeatError::BadRequest {
                reason: refusal.message(),
            },
        };
        json_response(refusal.status(), &error)
    }

    /// The member link's routes, `POST` [`REGISTER_PATH`], [`HEARTBEAT_PATH`] and
    /// [`LEAVE_PATH`], serving
    /// `coordinator` behind the cluster `token` ([`require_bearer`]: 401 before any
    /// handler runs). A body that is not a JSON [`MemberReport`] is 400
    /// ([`HeartbeatError::BadRequest`]) and changes nothing. The coordinator runs on the
    /// endpoint's blocking pool.
    ///
    /// [`CoordinatorServer`] serves them on an endpoint of their own; a node that serves
    /// them on another endpoint merges this router into its own (the endpoint should then
    /// [`require_tls_beyond_loopback`](EndpointConfig::require_tls_beyond_loopback), as
    /// the cluster token crosses the network).
    pub fn member_link_routes(coordinator: &Arc<Coordinator>, token: BearerToken) -> Router {
        let route = |call: Call| {
            let coordinator = Arc::clone(coordinator);
            post(move |request: Request| serve(Arc::clone(&coordinator), request, call))
        };
        let router = Router::new()
            .route(REGISTER_PATH, route(Call::Register))
            .route(HEARTBEAT_PATH, route(Call::Heartbeat))
            .route(LEAVE_PATH, route(Call::Leave))
            // An explicit fallback, so an unknown path is behind the token too.
            .fallback(|| async { StatusCode::NOT_FOUND });
        require_bearer(router, token, link_error_format)
    }

    async fn serve(coordinator: Arc<Coordinator>, request: Request, call: Call) -> Response {
        let body = match read_body(request).await {
            Ok(body) => body,
            Err(refusal) => return refusal.render(link_error_format),
        };
        let report = match decode_report(&body) {
            Ok(report) => report,
            Err(e) => {
                tracing::debug!(call = call.name(), error = %e, "malformed member request");
                return error_response(&HeartbeatError::BadRequest {
                    reason: format!("the {} body is not a member report: {e}", call.name()),
                });
            }
        };
        let answered = blocking(move || match call {
            Call::Register => coordinator.register(&report),
            Call::Heartbeat => coordinator.heartbeat(&report),
            Call::Leave => coordinator.leave(&report),
        })
        .await;
        match answered {
            Ok(Ok(answer)) => json_response(StatusCode::OK, &answer),
            Ok(Err(error)) => {
                tracing::debug!(call = call.name(), %error, "member request not answered");
                error_response(&error)
            }
            Err(refusal) => refusal.render(link_error_format),
        }
    }

    /// A member report: a JSON object with its fields (not the array form serde would
    /// also take).
    fn decode_report(body: &[u8]) -> Result<MemberReport, String> {
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            return Err("expected a JSON object".to_owned());
        }
        serde_json::from_slice(body).map_err(|e| e.to_string())
    }

    /// The coordinator's member link: an [`Endpoint`] serving [`member_link_routes`] and
    /// `GET /metrics` ([`ClusterMetrics`] of every kind in the store), all behind the
    /// cluster token.
    ///
    /// Bound when started (the address is known and connectable at once). It refuses to
    /// listen beyond loopback without TLS. Dropping it (or
    /// [`shutdown`](Self::shutdown)) stops accepting, lets the requests in flight finish
    /// within the endpoint's grace period, and releases the coordinator.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use layout_core::cluster::{Coordinator, CoordinatorOptions, CoordinatorServer, EmbeddedStore};
    /// use layout_core::http::{BearerToken, EndpointConfig, EndpointError};
    ///
    /// let coordinator = Arc::new(Coordinator::open(
    ///     Arc::new(EmbeddedStore::in_memory()),
    ///     CoordinatorOptions::default(),
    /// )?);
    /// let token = BearerToken::new("cluster-token-0123456789")?;
    /// let everywhere = EndpointConfig::new("0.0.0.0:0".parse()?);
    /// let refused = CoordinatorServer::start(coordinator, token, everywhere).unwrap_err();
    /// assert!(matches!(refused, EndpointError::PlaintextBeyondLoopback { .. }));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub struct CoordinatorServer {
        endpoint: Endpoint,
    }

    impl CoordinatorServer {
        /// Serves `coordinator`'s member link behind the cluster `token` on `config`'s
        /// address. The endpoint is named `cluster link`, writes its refusals as
        /// [`HeartbeatError`]s ([`link_error_format`]) and requires TLS beyond loopback
        /// ([`EndpointError::PlaintextBeyondLoopback`] otherwise); the rest of `config`
        /// (limits, timeouts, TLS) applies as given.
        // Owned, as the server keeps it (its routes hold clones) until it is dropped.
        #[allow(clippy::needless_pass_by_value)]
        pub fn start(
            coordinator: Arc<Coordinator>,
            token: BearerToken,
            config: EndpointConfig,
        ) -> Result<Self, EndpointError> {
            let config = config
                .with_name("cluster link")
                .with_error_format(link_error_format)
                .require_tls_beyond_loopback();
            let mut registry = Registry::default();
            ClusterMetrics::register_all_kinds(&coordinator, &mut registry);
            let metrics = require_bearer(
                metrics_router(Arc::new(registry)),
                token.clone(),
                link_error_format,
            );
            let router = member_link_routes(&coordinator, token).merge(metrics);
            let endpoint = Endpoint::start(router, config)?;
            tracing::info!(addr = %endpoint.local_addr(), coordinator = coordinator.coordinator_id(), "coordinator serving the member link");
            Ok(Self { endpoint })
        }

        /// Serves `coordinator` on 127.0.0.1:`port` (0: any free port; see
        /// [`local_addr`](Self::local_addr)), plain HTTP, behind the cluster `token`.
        pub fn bind_loopback(
            coordinator: Arc<Coordinator>,
            port: u16,
            token: BearerToken,
        ) -> Result<Self, EndpointError> {
            Self::start(coordinator, token, EndpointConfig::loopback(port))
        }

        /// The address members connect to.
        pub fn local_addr(&self) -> SocketAddr {
            self.endpoint.local_addr()
        }

        /// `http://<address>` (`https://` with TLS), for [`HttpLink::new`].
        pub fn url(&self) -> String {
            self.endpoint.url()
        }

        /// Stops accepting, lets the requests in flight finish and releases the
        /// coordinator (as dropping it does).
        pub fn shutdown(self) {
            self.endpoint.shutdown();
        }
    }

    impl fmt::Debug for CoordinatorServer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("CoordinatorServer")
                .field("endpoint", &self.endpoint)
                .finish()
        }
    }

    /// A member link that cannot be set up.
    #[derive(Debug, thiserror::Error)]
    #[non_exhaustive]
    pub enum LinkError {
        /// The coordinator's endpoint is malformed, or does not fit the TLS settings.
        #[error("invalid coordinator endpoint {endpoint:?}: {reason}")]
        InvalidEndpoint {
            /// The endpoint given.
            endpoint: String,
            /// What is wrong with it.
            reason: String,
        },
    }

    /// The member's end of the member link: registrations and heartbeats as HTTP requests
    /// to the coordinator's endpoint ([`CoordinatorServer`], or routes merged into another
    /// endpoint), with the cluster token.
    ///
    /// - the coordinator cannot be reached (refused, reset, timed out):
    ///   [`HeartbeatError::Unavailable`], naming the coordinator; retry later;
    /// - 401: [`HeartbeatError::Unauthorized`], naming the coordinator (the cluster token
    ///   is missing or wrong: retrying does not help);
    /// - the coordinator's own answers ([`HeartbeatError::Refused`], `Unavailable`)
    ///   come back as it sent them.
    ///
    /// Connections are kept alive between calls (briefly, see [`ClientConfig::agent`]).
    /// A connection the coordinator closed (it restarted, on the same port) is not
    /// reused: a call that fails on one is sent once more on a new connection
    /// (registrations and heartbeats are idempotent), so a restarted coordinator is found
    /// again by the next call.
    pub struct HttpLink {
        agent: ureq::Agent,
        config: ClientConfig,
        base: String,
        token: BearerToken,
    }

    impl HttpLink {
        /// A link to the coordinator at `endpoint` (`host:port`, `http://host:port`, or
        /// `https://host:port` with TLS settings in `config`), presenting the cluster
        /// `token`. Nothing is sent until the first call.
        pub fn new(
            endpoint: &str,
            token: BearerToken,
            config: ClientConfig,
        ) -> Result<Self, LinkError> {
            let base = config
                .base_url(endpoint)
                .map_err(|reason| LinkError::InvalidEndpoint {
                    endpoint: endpoint.to_owned(),
                    reason,
                })?;
            Ok(Self {
                agent: config.agent(),
                config,
                base,
                token,
            })
        }

        /// The coordinator's base URL (`http://host:port`).
        pub fn endpoint(&self) -> &str {
            &self.base
        }

        fn send(
            &self,
            url: &str,
            body: &[u8],
        ) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
            self.agent
                .post(url)
                .header("Authorization", &format!("Bearer {}", self.token.expose()))
                .header("Content-Type", "application/json")
                .send(body)
        }

        fn call(
            &self,
            call: Call,
            report: &MemberReport,
        ) -> Result<CoordinatorAnswer, HeartbeatError> {
            let at = &self.base;
            let body = serde_json::to_vec(report).map_err(|e| HeartbeatError::BadRequest {
                reason: format!("cannot encode the member report: {e}"),
            })?;
            let url = format!("{at}{}", call.path());
            let mut sent = self.send(&url, &body);
            if matches!(&sent, Err(ureq::Error::Io(_) | ureq::Error::Protocol(_))) {
                // Most likely a kept-alive connection the coordinator closed (it
                // restarted): once more, on a new connection.
                tracing::debug!(coordinator = %at, call = call.name(), "retrying on a new connection");
                sent = self.send(&url, &body);
            }
            let mut response = sent.map_err(|e| HeartbeatError::Unavailable {
                reason: format!("cannot reach the coordinator at {at}: {e}"),
            })?;
            let status = response.status().as_u16();
            let answer = response
                .body_mut()
                .with_config()
                .limit(MAX_ANSWER_BYTES)
                .read_to_vec()
                .map_err(|e| HeartbeatError::Unavailable {
                    reason: format!(
                        "the coordinator at {at} answered HTTP {status}, but the answer could not be read: {e}"
                    ),
                })?;
            if status == 200 {
                return serde_json::from_slice(&answer).map_err(|e| {
                    HeartbeatError::Unavailable {
                        reason: format!(
                            "the coordinator at {at} sent an answer that is not a coordinator answer: {e}"
                        ),
                    }
                });
            }
            Err(self.error(status, &answer))
        }

        /// The error an answer other than 200 stands for.
        fn error(&self, status: u16, body: &[u8]) -> HeartbeatError {
            let at = &self.base;
            match serde_json::from_slice::<HeartbeatError>(body) {
                Ok(HeartbeatError::Refused(refusal)) => HeartbeatError::Refused(refusal),
                Ok(HeartbeatError::Unauthorized { reason }) => HeartbeatError::Unauthorized {
                    reason: format!("the coordinator at {at}: {reason}"),
                },
                Ok(HeartbeatError::Unavailable { reason }) => HeartbeatError::Unavailable {
                    reason: format!("the coordinator at {at}: {reason}"),
                },
                Ok(HeartbeatError::BadRequest { reason }) => HeartbeatError::BadRequest {
                    reason: format!("the coordinator at {at} answered HTTP {status}: {reason}"),
                },
                Err(_) => {
                    let said = excerpt(body);
                    if status == 401 {
                        HeartbeatError::Unauthorized {
                            reason: format!("{at} answered HTTP 401: {said}"),
                        }
                    } else if status >= 500 || status == 408 || status == 429 {
                        HeartbeatError::Unavailable {
                            reason: format!(
                                "the coordinator at {at} answered HTTP {status}: {said}"
                            ),
                        }
                    } else {
                        HeartbeatError::BadRequest {
                            reason: format!(
                                "{at} answered HTTP {status}, not as a coordinator's member link does: {said}"
                            ),
                        }
                    }
                }
            }
        }
    }

    /// The start of an answer that is not the member link's, for an error message.
    fn excerpt(body: &[u8]) -> String {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        if text.is_empty() {
            return "(no body)".to_owned();
        }
        let mut cut: String = text.chars().take(200).collect();
        if cut.len() < text.len() {
            cut.push_str("...");
        }
        cut
    }

    impl CoordinatorLink for HttpLink {
        fn register(&self, report: &MemberReport) -> Result<CoordinatorAnswer, HeartbeatError> {
            self.call(Call::Register, report)
        }
        fn heartbeat(&self, report: &MemberReport) -> Result<CoordinatorAnswer, HeartbeatError> {
            self.call(Call::Heartbeat, report)
        }
        fn leave(&self, report: &MemberReport) -> Result<CoordinatorAnswer, HeartbeatError> {
            self.call(Call::Leave, report)
        }
    }

    impl fmt::Debug for HttpLink {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("HttpLink")
                .field("endpoint", &self.base)
                .field("timeout", &self.config.timeout())
                .field("tls", &self.config.tls_enabled())
                .finish_non_exhaustive()
        }
    }
}

#[cfg(all(test, feature = "tls"))]
mod tls_tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;
    use std::time::Duration;

    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

    use super::*;
    use crate::cluster::{CoordinatorOptions, EmbeddedStore};
    use crate::http::{BearerToken, ClientConfig, ClientTls, EndpointConfig, ServerTls};

    /// A CA, and a leaf it signed for `names`: (CA PEM, leaf PEM, leaf key PEM).
    fn pki(names: &[&str]) -> (String, String, String) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name.push(DnType::CommonName, "cluster CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let leaf =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap()
                .signed_by(&key, &issuer)
                .unwrap()
                .pem();
        (ca_pem, leaf, key.serialize_pem())
    }

    #[test]
    fn with_tls_the_member_link_listens_beyond_loopback_and_members_reach_it_over_https() {
        let (ca, cert, key) = pki(&["127.0.0.1", "localhost"]);
        let coordinator = Arc::new(
            Coordinator::open(
                Arc::new(EmbeddedStore::in_memory()),
                CoordinatorOptions::default(),
            )
            .unwrap(),
        );
        let token = BearerToken::new("cluster-token-0123456789").unwrap();
        let config = EndpointConfig::new("0.0.0.0:0".parse().unwrap())
            .with_tls(ServerTls::from_pem(cert.as_bytes(), key.as_bytes()).unwrap());
        let server =
            CoordinatorServer::start(Arc::clone(&coordinator), token.clone(), config).unwrap();
        assert!(server.url().starts_with("https://"));
        let endpoint = format!("https://127.0.0.1:{}", server.local_addr().port());

        let tls = ClientTls::with_ca_pem(ca.as_bytes()).unwrap();
        let client = ClientConfig::new(Duration::from_secs(10)).with_tls(tls);
        let link = HttpLink::new(&endpoint, token.clone(), client).unwrap();
        let answer = link
            .register(&MemberReport::new("datanode", "dn1", 2, 1))
            .unwrap();
        assert_eq!(answer.cluster_layout_version, 1);

        // A member trusting another CA does not reach it (and changes nothing).
        let (other_ca, _, _) = pki(&["127.0.0.1"]);
        let stranger = ClientConfig::new(Duration::from_secs(10))
            .with_tls(ClientTls::with_ca_pem(other_ca.as_bytes()).unwrap());
        let link = HttpLink::new(&endpoint, token, stranger).unwrap();
        assert!(matches!(
            link.register(&MemberReport::new("datanode", "dn2", 2, 1)),
            Err(HeartbeatError::Unavailable { .. })
        ));
        assert!(coordinator
            .status("datanode")
            .unwrap()
            .member("dn2")
            .is_none());
    }
}
