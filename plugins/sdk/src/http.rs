//! Outgoing HTTP through `wasi:http`, for webhooks. The host sends a request
//! only to an origin the sidecar grants (`[grants] http = ["https://host"]`);
//! any other is refused before a connection is made. Natively (`cargo test`)
//! requests go to the [`crate::testing::MockHost`].

use anyhow::Result;

/// A response: its status and whole body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// `POST url` with `body` as `content_type`.
pub fn post(url: &str, content_type: &str, body: &[u8]) -> Result<Response> {
    request("POST", url, &[("content-type", content_type)], body)
}

/// Send one request and wait for the whole response.
pub fn request(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Response> {
    wasi::request(method, url, headers, body).map_err(anyhow::Error::msg)
}

#[cfg(not(target_arch = "wasm32"))]
mod wasi {
    use super::Response;
    use crate::testing::{host, Request};

    pub fn request(
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, String> {
        let request = Request {
            method: method.to_owned(),
            url: url.to_owned(),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            body: body.to_vec(),
        };
        host::http(request).map(|(status, body)| Response { status, body })
    }
}

#[cfg(target_arch = "wasm32")]
mod wasi {
    use super::Response;
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{
        ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme,
    };
    use wasip2::io::streams::StreamError;

    pub fn request(
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("{url:?} is not an absolute URL"))?;
        let scheme = match scheme {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            other => return Err(format!("unsupported scheme {other:?} in {url:?}")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let mut fields: Vec<(String, Vec<u8>)> = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
            .collect();
        // Sent with its length rather than chunked: every receiver takes that.
        fields.push(("content-length".into(), body.len().to_string().into_bytes()));
        let headers = Fields::from_list(&fields).map_err(|e| format!("bad header: {e:?}"))?;
        let request = OutgoingRequest::new(headers);
        let method = match method {
            "GET" => Method::Get,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            other => Method::Other(other.to_owned()),
        };
        let invalid = |what: &str| format!("invalid {what} in {url:?}");
        request
            .set_method(&method)
            .map_err(|()| invalid("method"))?;
        request
            .set_scheme(Some(&scheme))
            .map_err(|()| invalid("scheme"))?;
        request
            .set_authority(Some(authority))
            .map_err(|()| invalid("host"))?;
        request
            .set_path_with_query(Some(path))
            .map_err(|()| invalid("path"))?;
        let outgoing = request
            .body()
            .map_err(|()| "request body taken".to_owned())?;
        let pending = outgoing_handler::handle(request, None).map_err(explain)?;
        // A refused request closes the body stream; its reason is in the response.
        let sent = send_body(outgoing, body);
        pending.subscribe().block();
        let response = pending
            .get()
            .ok_or_else(|| "no response".to_owned())?
            .map_err(|()| "response already taken".to_owned())?
            .map_err(explain)?;
        sent?;
        let status = response.status();
        let incoming = response
            .consume()
            .map_err(|()| "response body taken".to_owned())?;
        let mut body = Vec::new();
        {
            let stream = incoming
                .stream()
                .map_err(|()| "response body stream taken".to_owned())?;
            loop {
                match stream.blocking_read(64 * 1024) {
                    Ok(chunk) => body.extend_from_slice(&chunk),
                    Err(StreamError::Closed) => break,
                    Err(e) => return Err(format!("reading the response: {}", stream_error(e))),
                }
            }
        }
        let _trailers = IncomingBody::finish(incoming);
        Ok(Response { status, body })
    }

    fn send_body(outgoing: OutgoingBody, body: &[u8]) -> Result<(), String> {
        {
            let stream = outgoing
                .write()
                .map_err(|()| "request body stream taken".to_owned())?;
            // `blocking-write-and-flush` takes at most 4096 bytes per call.
            for chunk in body.chunks(4096) {
                stream
                    .blocking_write_and_flush(chunk)
                    .map_err(|e| format!("sending the body: {}", stream_error(e)))?;
            }
        }
        OutgoingBody::finish(outgoing, None).map_err(explain)
    }

    fn explain(e: ErrorCode) -> String {
        match e {
            ErrorCode::HttpRequestDenied => {
                "request denied: the origin is not in the sidecar's [grants] http".to_owned()
            }
            ErrorCode::HttpResponseBodySize(Some(max)) => {
                format!("response body is larger than the host's limit of {max} bytes")
            }
            other => format!("{other:?}"),
        }
    }

    fn stream_error(e: StreamError) -> String {
        match e {
            StreamError::Closed => "stream closed".to_owned(),
            StreamError::LastOperationFailed(e) => match wasip2::http::types::http_error_code(&e) {
                Some(code) => explain(code),
                None => e.to_debug_string(),
            },
        }
    }
}
