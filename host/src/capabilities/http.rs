//! The `http` capability: `wasi:http` requests, let through only to the
//! origins the sidecar grants, with a timeout and a response size cap.

use super::CapabilityError;
use super::CapabilityLimits;
use crate::dispatch::CallCancel;
use http_body_util::{BodyExt, Limited};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

/// `scheme://host:port`, the unit an `http` grant allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub https: bool,
    pub host: String,
    pub port: u16,
}

impl Origin {
    /// Parse `http://host[:port]` or `https://host[:port]`; a trailing `/` is
    /// allowed, any other path is refused so nobody thinks it narrows the grant.
    pub fn parse(text: &str) -> Result<Self, CapabilityError> {
        let bad = CapabilityError::BadGrant;
        let uri: ::http::Uri = text
            .parse()
            .map_err(|e| bad(format!("{text:?} is not a URL: {e}")))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad(format!("{text:?} must start with http:// or https://"))),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| bad(format!("{text:?} has no host")))?;
        if authority.as_str().contains('@') {
            return Err(bad(format!("{text:?} must not hold credentials")));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad(format!(
                "{text:?} has a path; a grant is a whole origin (scheme://host:port)"
            )));
        }
        Ok(Self::new(https, authority.host(), authority.port_u16()))
    }

    fn new(https: bool, host: &str, port: Option<u16>) -> Self {
        Self {
            https,
            host: host.to_ascii_lowercase(),
            port: port.unwrap_or(if https { 443 } else { 80 }),
        }
    }

    /// The origin a request goes to, if its URI names one.
    fn of(uri: &::http::Uri) -> Option<Self> {
        let https = match uri.scheme_str()? {
            "https" => true,
            "http" => false,
            _ => return None,
        };
        let authority = uri.authority()?;
        Some(Self::new(https, authority.host(), authority.port_u16()))
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

/// One plugin's `wasi:http` hooks: the allow-list and the limits.
pub(crate) struct HttpGate {
    id: Arc<str>,
    allowed: Vec<Origin>,
    timeout: Duration,
    max_response_bytes: usize,
    /// Refuse even granted origins (`pgnotifier call` without `--allow-http`).
    refuse_all: bool,
    /// No request starts once the call is cut short.
    cancel: Arc<CallCancel>,
}

type ResponseFuture = Box<
    dyn Future<
            Output = Result<
                (
                    ::http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                ),
                HttpError,
            >,
        > + Send,
>;

impl HttpGate {
    pub(crate) fn new(
        id: Arc<str>,
        allowed: Vec<Origin>,
        limits: CapabilityLimits,
        refuse_all: bool,
        cancel: Arc<CallCancel>,
    ) -> Self {
        crate::pg::tls::ring_as_process_default();
        Self {
            id,
            allowed,
            timeout: limits.http_timeout,
            max_response_bytes: limits.http_max_response_bytes,
            refuse_all,
            cancel,
        }
    }

    pub(crate) fn set_cancel(&mut self, cancel: Arc<CallCancel>) {
        self.cancel = cancel;
    }

    fn allows(&self, uri: &::http::Uri) -> bool {
        Origin::of(uri).is_some_and(|origin| self.allowed.contains(&origin))
    }
}

impl WasiHttpHooks for HttpGate {
    fn send_request(
        &mut self,
        request: ::http::Request<WasiBody>,
        options: Option<RequestOptions>,
        io_result: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> ResponseFuture {
        drop(io_result);
        if self.cancel.is_cancelled() {
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        if self.refuse_all && self.allows(request.uri()) {
            tracing::info!(target: "pgnotifier::plugin", subscriber = %self.id, uri = %request.uri(), "HTTP refused: pgnotifier call sends none unless --allow-http is given");
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        if !self.allows(request.uri()) {
            // Refused before any connection: the guest gets `HTTP-request-denied`.
            tracing::debug!(subscriber = %self.id, uri = %request.uri(), "http request refused: origin not granted");
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        let cap =
            |guest: Option<Duration>| Some(guest.map_or(self.timeout, |t| t.min(self.timeout)));
        let options = options.unwrap_or_default();
        let options = RequestOptions {
            connect_timeout: cap(options.connect_timeout),
            first_byte_timeout: cap(options.first_byte_timeout),
            between_bytes_timeout: cap(options.between_bytes_timeout),
        };
        let max = self.max_response_bytes;
        Box::new(async move {
            let (response, io) =
                wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
            let response = response.map(|body| {
                Limited::new(body, max)
                    .map_err(move |e| match e.downcast::<HttpError>() {
                        Ok(inner) => *inner,
                        Err(_) => HttpError::HttpResponseBodySize(Some(max as u64)),
                    })
                    .boxed_unsync()
            });
            let io: Box<dyn Future<Output = Result<(), HttpError>> + Send> = Box::new(io);
            Ok((response, io))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_parse_with_default_ports_and_refuse_paths() {
        let o = Origin::parse("https://Hooks.Example.com").unwrap();
        assert_eq!(o.to_string(), "https://hooks.example.com:443");
        let o = Origin::parse("http://127.0.0.1:8080/").unwrap();
        assert_eq!(o.to_string(), "http://127.0.0.1:8080");
        for bad in [
            "ftp://x",
            "hooks.example.com",
            "https://x/path",
            "https://u:p@x",
        ] {
            assert!(Origin::parse(bad).is_err(), "{bad} should be refused");
        }
        let gate = HttpGate::new(
            "p".into(),
            vec![Origin::parse("http://127.0.0.1:8080").unwrap()],
            CapabilityLimits::default(),
            false,
            Default::default(),
        );
        assert!(gate.allows(&"http://127.0.0.1:8080/hook?x=1".parse().unwrap()));
        assert!(!gate.allows(&"http://127.0.0.1:8081/hook".parse().unwrap()));
        assert!(!gate.allows(&"https://127.0.0.1:8080/hook".parse().unwrap()));
    }
}
