//! What every client of an endpoint shares: the endpoint address check, a `ureq` agent
//! with a timeout and, with the `tls` feature, the CA and client certificate.

use std::time::Duration;

/// How a client reaches an endpoint: a timeout per call and, with the `tls` feature,
/// TLS settings.
///
/// ```
/// use std::time::Duration;
/// use layout_core::http::ClientConfig;
///
/// let config = ClientConfig::new(Duration::from_secs(10));
/// assert_eq!(config.timeout(), Duration::from_secs(10));
/// assert_eq!(config.base_url("127.0.0.1:9868").unwrap(), "http://127.0.0.1:9868");
/// assert!(config.base_url("http://").is_err());
/// assert!(config.base_url("127.0.0.1:99999").is_err());
/// ```
#[derive(Clone, Debug)]
pub struct ClientConfig {
    timeout: Duration,
    #[cfg(feature = "tls")]
    tls: Option<super::tls::ClientTls>,
}

impl ClientConfig {
    /// Plain HTTP, `timeout` per call.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Speak TLS, trusting the given CA (and presenting a client certificate if the
    /// settings carry one).
    #[cfg(feature = "tls")]
    #[must_use]
    pub fn with_tls(mut self, tls: super::tls::ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets the timeout per call.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The timeout per call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether TLS settings are present.
    pub fn tls_enabled(&self) -> bool {
        #[cfg(feature = "tls")]
        {
            self.tls.is_some()
        }
        #[cfg(not(feature = "tls"))]
        {
            false
        }
    }

    /// The base URL of `endpoint`: `host:port`, `http://host:port` or
    /// `https://host:port` (a trailing `/` is dropped). Without a scheme, `https` when
    /// TLS settings are present, `http` otherwise. `https` needs TLS settings (a CA to
    /// trust); `http` with TLS settings is refused, so a certificate is never configured
    /// and then silently not used. The port must be 1 to 65535.
    pub fn base_url(&self, endpoint: &str) -> Result<String, String> {
        let trimmed = endpoint.trim().trim_end_matches('/');
        let (scheme, authority) = match trimmed.split_once("://") {
            Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
            None if self.tls_enabled() => ("https".to_owned(), trimmed),
            None => ("http".to_owned(), trimmed),
        };
        match (scheme.as_str(), self.tls_enabled()) {
            ("http", false) | ("https", true) => {}
            ("https", false) => {
                return Err(if cfg!(feature = "tls") {
                    "https needs the CA certificate that signed the endpoint's certificate (--ca)"
                        .to_owned()
                } else {
                    "https is not supported by this build (feature `tls`)".to_owned()
                })
            }
            ("http", true) => {
                return Err(
                    "TLS settings were given but the endpoint is http://; use https://".to_owned(),
                )
            }
            (other, _) => {
                return Err(format!(
                    "scheme {other:?} is not supported; use http:// or https://"
                ))
            }
        }
        if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
            return Err(format!("expected {scheme}://host:port"));
        }
        let Some((host, port)) = authority.rsplit_once(':') else {
            return Err(format!(
                "no port in {authority:?}; expected {scheme}://host:port"
            ));
        };
        let host_ok = !host.is_empty()
            && (host.starts_with('[') && host.ends_with(']') || !host.contains([':', '[', ']']));
        if !host_ok {
            return Err(format!("malformed host {host:?}"));
        }
        match port.parse::<u16>() {
            Ok(p) if p > 0 => {}
            _ => return Err(format!("the port {port:?} is not a number from 1 to 65535")),
        }
        Ok(format!("{scheme}://{authority}"))
    }

    /// A `ureq` agent: statuses are not errors, no proxy, no redirects, the timeout per
    /// call, short-lived keep-alive (below the endpoints' header timeout, so a pooled
    /// connection is not reused after the endpoint closed it), TLS if configured.
    pub fn agent(&self) -> ureq::Agent {
        let builder = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .max_redirects(0)
            .max_idle_age(Duration::from_secs(2))
            .timeout_global(Some(self.timeout));
        #[cfg(feature = "tls")]
        let builder = match &self.tls {
            Some(tls) => builder.tls_config(tls.ureq_config()),
            None => builder,
        };
        builder.build().into()
    }
}
