//! A one-shot HTTP/1.1 JSON call over plain TCP or TLS, for the administration and
//! registration commands (which talk to the broker's own endpoints, not to relayed services).

use std::path::Path;

use anyhow::{Context as _, bail};
use relay_io::client::{Target, dial};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A broker reply: status and JSON body (`Null` when the body is not JSON).
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Parsed body.
    pub json: serde_json::Value,
}

impl Reply {
    /// The broker's error message (with its tracking id), or the body as text.
    #[must_use]
    pub fn message(&self) -> String {
        self.json["error"]["message"]
            .as_str()
            .map_or_else(|| self.json.to_string(), str::to_owned)
    }
}

/// Sends `method url` with `headers` and an optional JSON body; `Connection: close`.
pub async fn call(
    url: &str,
    method: &str,
    headers: &[(&str, &str)],
    body: Option<&serde_json::Value>,
    ca_cert: Option<&Path>,
) -> anyhow::Result<Reply> {
    let target = Target::parse(url)?;
    let tls = relay_io::tls::client_config(ca_cert)?;
    let mut io = dial(&target, Some(&tls))
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let body = body.map(ToString::to_string).unwrap_or_default();
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
    request.push_str(&body);
    io.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    io.read_to_end(&mut raw).await?;
    let (status, reply) = parse_response(&raw)?;
    Ok(Reply {
        status,
        json: serde_json::from_slice(&reply).unwrap_or(serde_json::Value::Null),
    })
}

fn parse_response(raw: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(len) = resp.parse(raw)? else {
        bail!("truncated response from the broker")
    };
    let chunked = resp.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding") && h.value.eq_ignore_ascii_case(b"chunked")
    });
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

fn dechunk(mut body: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("bad chunked body")?;
        let size = usize::from_str_radix(
            std::str::from_utf8(&body[..line_end])?
                .split(';')
                .next()
                .unwrap_or("")
                .trim(),
            16,
        )?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(body.get(..size).context("bad chunked body")?);
        body = body.get(size + 2..).context("bad chunked body")?;
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
