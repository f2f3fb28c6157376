//! A one-shot HTTP/1.1 JSON call for the administration and registration commands.

use std::path::Path;

use anyhow::Context as _;

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
    let tls = relay_io::tls::client_config(ca_cert)?;
    let body = body.map(ToString::to_string).unwrap_or_default();
    let (status, reply) = relay_io::http1::call(url, method, headers, body.as_bytes(), Some(&tls))
        .await
        .with_context(|| format!("calling {url}"))?;
    Ok(Reply {
        status,
        json: serde_json::from_slice(&reply).unwrap_or(serde_json::Value::Null),
    })
}
