//! What the stack itself refuses (before or around a handler), and how those refusals
//! are written on the wire.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// A request the stack refused on its own: no handler saw it, or its body could not be
/// read.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// 401: the bearer token is missing, malformed or wrong (the message says which).
    Unauthorized(String),
    /// 503: the endpoint is serving its maximum number of requests at once.
    Busy,
    /// 413: the body is larger than the limit.
    BodyTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// 408: the body did not arrive in time.
    BodyTimeout,
    /// 400: the body could not be read (the connection broke inside it) or decoded.
    BadRequest(String),
    /// 404: no route for the path.
    NotFound {
        /// The path asked for.
        path: String,
    },
    /// 405: the route does not take the method.
    MethodNotAllowed {
        /// The method used.
        method: String,
        /// The path.
        path: String,
        /// The methods it takes (from the `Allow` header).
        allow: String,
    },
    /// 500: the handler panicked or failed unexpectedly.
    Internal(String),
}

impl Refusal {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Busy => StatusCode::SERVICE_UNAVAILABLE,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Its code on the wire: `unauthorized`, `busy`, `payload-too-large`,
    /// `request-timeout`, `bad-request`, `not-found`, `method-not-allowed`, `internal`
    /// (the same words as the admin API's error codes).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized(_) => "unauthorized",
            Self::Busy => "busy",
            Self::BodyTooLarge { .. } => "payload-too-large",
            Self::BodyTimeout => "request-timeout",
            Self::BadRequest(_) => "bad-request",
            Self::NotFound { .. } => "not-found",
            Self::MethodNotAllowed { .. } => "method-not-allowed",
            Self::Internal(_) => "internal",
        }
    }

    /// A message for an operator.
    pub fn message(&self) -> String {
        match self {
            Self::Unauthorized(m) | Self::BadRequest(m) | Self::Internal(m) => m.clone(),
            Self::Busy => {
                "the endpoint is serving its maximum number of requests at once; retry".to_owned()
            }
            Self::BodyTooLarge { limit } => {
                format!("the request body is too large; at most {limit} bytes are accepted")
            }
            Self::BodyTimeout => "the request body did not arrive in time".to_owned(),
            Self::NotFound { path } => {
                format!("no endpoint at {path:?}; see the API reference (paths start with /v1/)")
            }
            Self::MethodNotAllowed {
                method,
                path,
                allow,
            } => format!("{path} does not take {method}; it takes {allow}"),
        }
    }

    /// Written in the endpoint's error format.
    pub fn render(&self, format: ErrorFormat) -> Response {
        let mut response = format(self);
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        match self {
            Self::Unauthorized(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"layout\""),
                );
            }
            Self::MethodNotAllowed { allow, .. } => {
                if let Ok(value) = HeaderValue::from_str(allow) {
                    headers.insert(header::ALLOW, value);
                }
            }
            _ => {}
        }
        response
    }
}

/// How an endpoint writes a [`Refusal`]: the status is set by the stack afterwards, so a
/// format only chooses the body (and may add headers). The default is
/// [`plain_error_format`]; the admin endpoint writes admin API error bodies
/// (`admin::http::admin_error_format`).
pub type ErrorFormat = fn(&Refusal) -> Response;

/// The stack's own error body: `{"code":"unauthorized","message":"..."}`.
pub fn plain_error_format(refusal: &Refusal) -> Response {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        code: &'a str,
        message: String,
    }
    json_response(
        refusal.status(),
        &Body {
            code: refusal.code(),
            message: refusal.message(),
        },
    )
}

/// A JSON response with `status`, not to be cached. A value that cannot be encoded
/// becomes a 500 whose body says so (in the admin API's error shape).
pub fn json_response<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (
            status,
            [
                (header::CONTENT_TYPE, HeaderValue::from_static("application/json")),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
            body,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            format!(
                r#"{{"api_version":1,"error":{{"code":"internal","message":"cannot encode the response: {}"}}}}"#,
                e.to_string().replace(['"', '\\'], "'")
            ),
        )
            .into_response(),
    }
}
