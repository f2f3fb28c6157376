//! A one-shot HTTP/1.1 call over plain TCP or TLS with `Connection: close`, for the small
//! JSON calls to the broker's own endpoints (administration, registration, renewal). Not a
//! general HTTP client: the reply is read whole, so it is only for bounded replies.

use std::sync::Arc;

use rustls::ClientConfig;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::WsError;
use crate::client::{Target, dial};

/// Largest reply read.
const MAX_REPLY: u64 = 1 << 20;

/// Sends `method url` with `headers` and a JSON `body`; returns the status and body.
pub async fn call(
    url: &str,
    method: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    tls: Option<&Arc<ClientConfig>>,
) -> Result<(u16, Vec<u8>), WsError> {
    call_via(url, method, headers, body, tls, None).await
}

/// Like [`call`], through the proxy `proxy` picks for the broker.
pub async fn call_via(
    url: &str,
    method: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    tls: Option<&Arc<ClientConfig>>,
    proxy: Option<&crate::proxy::ProxyRules>,
) -> Result<(u16, Vec<u8>), WsError> {
    let target = Target::parse(url)?;
    let mut io = dial(&target, tls, proxy).await?;
    let mut request = format!(
        "{method} {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        target.path_and_query,
        target.authority,
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    io.write_all(request.as_bytes()).await?;
    io.write_all(body).await?;
    let mut raw = Vec::new();
    io.take(MAX_REPLY).read_to_end(&mut raw).await?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), WsError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let bad = |why: &str| WsError::Handshake(format!("HTTP reply: {why}"));
    let httparse::Status::Complete(len) = resp.parse(raw).map_err(|e| bad(&e.to_string()))? else {
        return Err(bad("truncated"));
    };
    let chunked = resp.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding") && h.value.eq_ignore_ascii_case(b"chunked")
    });
    if let Some(date) = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("date"))
    {
        warn_on_clock_skew(std::str::from_utf8(date.value).unwrap_or_default());
    }
    let body = &raw[len..];
    Ok((
        resp.code.unwrap_or(0),
        if chunked {
            dechunk(body)?
        } else {
            body.to_vec()
        },
    ))
}

/// The broker decides validity by its own clock; a skewed agent clock shows up later as
/// certificates that look not yet valid or expired to the agent's own checks, so say so now.
fn warn_on_clock_skew(date: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if let Some(skew_secs) = relay_core::http_rules::clock_skew(date, now) {
        tracing::warn!(
            skew_secs,
            "this machine's clock differs from the broker's by more than 5 minutes; fix the time (NTP)"
        );
    }
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, WsError> {
    let bad = || WsError::Handshake("HTTP reply: bad chunked body".into());
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n").ok_or_else(bad)?;
        let line = std::str::from_utf8(&body[..line_end]).map_err(|_| bad())?;
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad())?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(body.get(..size).ok_or_else(bad)?);
        body = body.get(size + 2..).ok_or_else(bad)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_bodies() {
        let (status, body) =
            parse_response(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}").unwrap();
        assert_eq!((status, body.as_slice()), (201, &b"{}"[..]));
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n[1,\r\n2\r\n2]\r\n0\r\n\r\n";
        assert_eq!(parse_response(raw).unwrap().1, b"[1,2]");
        assert!(parse_response(b"HTTP/1.1 200").is_err());
    }
}
