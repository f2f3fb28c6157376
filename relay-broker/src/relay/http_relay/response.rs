//! The sender's response: the listener's head with the header rules applied, its body
//! inline or streamed from the rendezvous with an idle bound.

use super::*;

/// The sender's response from the listener's answer.
pub(super) fn build_response(
    answer: ListenerResponse,
    req: &RequestHead,
    idle: Duration,
) -> Response<Body> {
    let ListenerResponse { head, body } = answer;
    let body = match body {
        ResponseBody::Empty => Body::empty(),
        ResponseBody::Full(bytes) => Body::from(bytes),
        ResponseBody::Stream(rx) => stream_body(rx, idle),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::from_u16(head.status_code).unwrap_or(StatusCode::BAD_GATEWAY);
    relayed_headers(&head.response_headers, &req.host, resp.headers_mut());
    let headers = resp.headers_mut();
    if req.method == http::Method::HEAD {
        // RFC 9110 §9.3.2: HEAD answers with the GET's fields, the length of the body it
        // does not send included.
        if let Some(length) = head_length(&head.response_headers) {
            headers.insert(http::header::CONTENT_LENGTH, length);
        }
    }
    if let Some(cookie) = req
        .refresh
        .as_deref()
        .and_then(|c| HeaderValue::try_from(c).ok())
    {
        headers.append(http::header::SET_COOKIE, cookie);
    }
    if let Some(phrase) = head
        .status_description
        .and_then(|d| hyper::ext::ReasonPhrase::try_from(d.into_bytes()).ok())
    {
        resp.extensions_mut().insert(phrase);
    }
    resp
}

/// The listener's response headers less the hop-by-hop ones, one line per value, with this
/// broker added to `Via`.
fn relayed_headers(from: &Headers, host: &str, headers: &mut http::HeaderMap) {
    let tokens: Vec<String> = from
        .get("connection")
        .map(|v| {
            v.split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .collect()
        })
        .unwrap_or_default();
    let mut previous_via = None;
    for (name, value) in &from.0 {
        if is_hop_by_hop(name, &tokens) {
            continue;
        }
        let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) else {
            continue;
        };
        if name == http::header::VIA {
            previous_via = value.to_str().ok().map(str::to_owned);
            continue;
        }
        headers.append(name, value);
    }
    if let Ok(v) = HeaderValue::try_from(via(previous_via.as_deref(), "1.1", host)) {
        headers.insert(http::header::VIA, v);
    }
}

/// The listener's `Content-Length` for a HEAD answer, when it is one number.
fn head_length(headers: &Headers) -> Option<HeaderValue> {
    let value = headers.get("content-length")?.trim();
    value.parse::<u64>().ok()?;
    HeaderValue::try_from(value).ok()
}

/// A response body fed by a rendezvous socket; a gap longer than `idle` ends it with an error.
fn stream_body(rx: mpsc::Receiver<Result<Bytes, std::io::Error>>, idle: Duration) -> Body {
    let stream = futures_util::stream::unfold(rx, move |mut rx| async move {
        match tokio::time::timeout(idle, rx.recv()).await {
            Ok(Some(item)) => Some((item, rx)),
            Ok(None) => None,
            Err(_) => Some((
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "response body idle",
                )),
                rx,
            )),
        }
    });
    Body::from_stream(stream)
}
