//! The JSON control messages of the Hybrid Connections protocol.
//!
//! Broker → listener: [`Accept`] and [`Request`]. Listener → broker: [`Response`] and
//! [`RenewToken`]. Each travels as one WebSocket text message of the form `{"<name>":{...}}`.
//! Unknown fields are ignored, as the real clients add some; unknown commands are errors.

/// Request header with which one of our listener agents names itself across restarts
/// (an extension standard clients never send). A new control channel with the same name and
/// the same credential replaces the old one at once, so a restarted agent is not blocked by
/// its own half-open channel. At most [`MAX_INSTANCE_LEN`] bytes.
pub const INSTANCE_HEADER: &str = "relay-listener-instance";
/// Longest accepted [`INSTANCE_HEADER`].
pub const MAX_INSTANCE_LEN: usize = 128;
/// Close code for a control channel replaced by a newer one of the same listener instance.
pub const CLOSE_REPLACED: u16 = 4409;
/// Request header with which our listener says, on `listen`, that it reads a repeated
/// request header as a JSON array (an extension). Standard listeners get repeated request
/// headers folded into one value instead ([`Headers::folded`]): hyco-https would hand an
/// array to the app as the header's value.
pub const HEADER_ARRAYS_HEADER: &str = "relay-header-arrays";

use serde::de::{self, Deserializer};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

/// One control message, in either direction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ListenerCommand {
    /// A sender wants a WebSocket; the listener should open `address` (or reject it).
    Accept(Accept),
    /// A sender made an HTTP request.
    Request(Request),
    /// The listener's answer to a [`Request`].
    Response(Response),
    /// The listener presents a fresh token for its control channel.
    RenewToken(RenewToken),
}

/// Where the sender connected from, as the broker saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteEndpoint {
    /// IP address, as text.
    pub address: String,
    /// TCP port.
    pub port: u16,
}

/// `accept`: the broker hands a listener a single-use rendezvous address for a sender.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Accept {
    /// Rendezvous URL, carrying the path suffix and the sender's application query.
    pub address: String,
    /// Tracking id: the sender's `sb-hc-id` or one minted by the broker.
    pub id: String,
    /// Every header the sender sent, `Sec-WebSocket-*` included (hyco-ws requires the key).
    #[serde(default)]
    pub connect_headers: Headers,
    /// The sender's address, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_endpoint: Option<RemoteEndpoint>,
}

/// `request`: an HTTP request for the listener, in the full or the address-only form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    /// Rendezvous URL (`sb-hc-action=request`) valid for this request only.
    pub address: String,
    /// Request id; the response echoes it as `requestId`.
    pub id: String,
    /// `/{hc}[/suffix][?query]` with every `sb-hc-*` parameter removed. Absent in the
    /// address-only form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_target: Option<String>,
    /// HTTP method; its absence marks the address-only form (as hyco-https checks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Request headers without hop-by-hop and relay auth headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<Headers>,
    /// Whether exactly one binary message with the body follows (.NET checks its presence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<bool>,
    /// The sender's address, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_endpoint: Option<RemoteEndpoint>,
}

impl Request {
    /// The address-only form: the request itself follows on the rendezvous.
    #[must_use]
    pub fn address_only(address: String, id: String) -> Self {
        Self {
            address,
            id,
            request_target: None,
            method: None,
            request_headers: None,
            body: None,
            remote_endpoint: None,
        }
    }

    /// Whether this is the address-only form: the request itself follows on the rendezvous.
    #[must_use]
    pub fn is_address_only(&self) -> bool {
        self.method.is_none()
    }
}

/// `response`: the listener's answer, followed by one binary body message when `body` is true.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    /// The `id` of the request being answered.
    pub request_id: String,
    /// HTTP status; the protocol guide's sample sends it as a string, so both are accepted.
    #[serde(deserialize_with = "status_code")]
    pub status_code: u16,
    /// Reason phrase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_description: Option<String>,
    /// Response headers.
    #[serde(default)]
    pub response_headers: Headers,
    /// Whether one binary body message follows.
    #[serde(default)]
    pub body: bool,
}

/// `renewToken`: a new SAS token for the control channel.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewToken {
    /// The token, `SharedAccessSignature sr=...`.
    pub token: String,
}

impl std::fmt::Debug for RenewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RenewToken { token: <redacted> }")
    }
}

/// Errors decoding a control message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The message exceeded the control-message limit.
    #[error("control message of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// Not one of the known commands, or malformed JSON.
    #[error("malformed control message: {0}")]
    Malformed(#[from] serde_json::Error),
}

impl ListenerCommand {
    /// Decodes a control message, refusing anything over `limit` bytes before parsing.
    pub fn decode(text: &[u8], limit: usize) -> Result<Self, ControlError> {
        if text.len() > limit {
            return Err(ControlError::TooLarge(text.len()));
        }
        Ok(serde_json::from_slice(text)?)
    }

    /// Encodes the message as JSON text.
    #[must_use]
    pub fn encode(&self) -> String {
        // Serializing these plain structs cannot fail: every key is a string.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// An ordered header list that travels as a JSON object. Order is kept, and a repeated name
/// travels as an array of its values (and is read back from one), so that every field line
/// survives (`Set-Cookie`). Standard clients differ on arrays: see ARCHITECTURE.md.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    /// The first value of a header, by case-insensitive name.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Headers {
    /// One value per name, for a listener that cannot read arrays: repeated values joined as
    /// RFC 9110 §5.3 allows (`Cookie` with `"; "`, RFC 6265 §5.4). `Set-Cookie` is never
    /// folded; it does not occur in requests.
    #[must_use]
    pub fn folded(&self) -> Self {
        let mut out: Vec<(String, String)> = Vec::with_capacity(self.0.len());
        for (name, value) in &self.0 {
            let existing = out
                .iter_mut()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .filter(|_| !name.eq_ignore_ascii_case("set-cookie"));
            match existing {
                Some((_, joined)) => {
                    joined.push_str(if name.eq_ignore_ascii_case("cookie") {
                        "; "
                    } else {
                        ", "
                    });
                    joined.push_str(value);
                }
                None => out.push((name.clone(), value.clone())),
            }
        }
        Self(out)
    }
}

impl Serialize for Headers {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // JSON objects cannot repeat a key: a repeated header travels as an array, one
        // element per field line, because some headers (`Set-Cookie` above all) must never be
        // folded into one line (RFC 6265 §3, RFC 9110 §5.3). A single value stays a string.
        let mut map = serializer.serialize_map(None)?;
        let mut seen: Vec<&str> = Vec::new();
        for (name, _) in &self.0 {
            if seen.iter().any(|s| s.eq_ignore_ascii_case(name)) {
                continue;
            }
            seen.push(name);
            let values: Vec<&str> = self
                .0
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
                .collect();
            match values.as_slice() {
                [one] => map.serialize_entry(name, one)?,
                many => map.serialize_entry(name, many)?,
            }
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Headers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = serde_json::Map::<String, serde_json::Value>::deserialize(deserializer)?;
        let mut out = Vec::with_capacity(map.len());
        for (name, value) in map {
            match value {
                serde_json::Value::Array(items) => {
                    out.extend(
                        items
                            .into_iter()
                            .filter_map(scalar)
                            .map(|v| (name.clone(), v)),
                    );
                }
                other => out.extend(scalar(other).map(|v| (name, v))),
            }
        }
        Ok(Self(out))
    }
}

fn scalar(value: serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn status_code<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u16, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrText {
        Num(u64),
        Text(String),
    }
    let raw = match NumOrText::deserialize(deserializer)? {
        NumOrText::Num(n) => n,
        NumOrText::Text(t) => t.trim().parse().map_err(de::Error::custom)?,
    };
    match u16::try_from(raw) {
        Ok(code @ 100..=999) => Ok(code),
        _ => Err(de::Error::custom(format!("status code {raw} out of range"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = crate::limits::MAX_CONTROL_MESSAGE_BYTES;

    #[test]
    fn names_differing_in_case_travel_as_one_repeated_header() {
        // Found by the control_message fuzz target: the names are one header to HTTP, so
        // they go out as one array, in order, under the first spelling.
        let headers = Headers(vec![
            ("X-Trace".into(), "0".into()),
            ("x-trace".into(), "1".into()),
        ]);
        let json = serde_json::to_string(&headers).unwrap();
        assert_eq!(json, r#"{"X-Trace":["0","1"]}"#);
        let back: Headers = serde_json::from_str(&json).unwrap();
        assert_eq!(
            back.0,
            [
                ("X-Trace".into(), "0".into()),
                ("X-Trace".into(), "1".into())
            ]
        );
        assert_eq!(serde_json::to_string(&back).unwrap(), json, "a fixed point");
    }

    #[test]
    fn accept_roundtrip_with_remote_endpoint() {
        let msg = ListenerCommand::Accept(Accept {
            address: "wss://h/$hc/a?sb-hc-action=accept&sb-hc-id=1".into(),
            id: "1".into(),
            connect_headers: Headers(vec![("Sec-WebSocket-Key".into(), "k".into())]),
            remote_endpoint: Some(RemoteEndpoint {
                address: "127.0.0.1".into(),
                port: 5,
            }),
        });
        let text = msg.encode();
        assert!(text.starts_with(r#"{"accept":{"address""#));
        assert!(text.contains(r#""connectHeaders":{"Sec-WebSocket-Key":"k"}"#));
        assert!(text.contains(r#""remoteEndpoint":{"address":"127.0.0.1","port":5}"#));
        assert_eq!(
            ListenerCommand::decode(text.as_bytes(), LIMIT).unwrap(),
            msg
        );
    }

    #[test]
    fn request_forms() {
        let full = r#"{"request":{"address":"a","id":"r","requestTarget":"/hc/x?q=1","method":"POST",
            "requestHeaders":{"X-A":"1"},"body":true,"remoteEndpoint":{"address":"::1","port":9}}}"#;
        let ListenerCommand::Request(r) = ListenerCommand::decode(full.as_bytes(), LIMIT).unwrap()
        else {
            panic!("not a request")
        };
        assert!(!r.is_address_only());
        assert_eq!(r.body, Some(true));
        assert_eq!(r.request_headers.unwrap().get("x-a"), Some("1"));
        let short = ListenerCommand::Request(Request {
            address: "a".into(),
            id: "r".into(),
            request_target: None,
            method: None,
            request_headers: None,
            body: None,
            remote_endpoint: None,
        });
        assert_eq!(short.encode(), r#"{"request":{"address":"a","id":"r"}}"#);
    }

    #[test]
    fn response_status_as_number_or_string() {
        for text in [
            r#"{"response":{"requestId":"r","statusCode":204,"body":false}}"#,
            r#"{"response":{"requestId":"r","statusCode":"204","statusDescription":"No","body":false}}"#,
        ] {
            let ListenerCommand::Response(r) =
                ListenerCommand::decode(text.as_bytes(), LIMIT).unwrap()
            else {
                panic!("not a response")
            };
            assert_eq!(r.status_code, 204);
        }
        for bad in [r#""abc""#, "99", "70000", "-1", "null"] {
            let text =
                format!(r#"{{"response":{{"requestId":"r","statusCode":{bad},"body":false}}}}"#);
            assert!(
                ListenerCommand::decode(text.as_bytes(), LIMIT).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn array_headers_keep_every_value() {
        let text = r#"{"response":{"requestId":"r","statusCode":200,"responseHeaders":{"set-cookie":["a=1","b=2"],"x-n":5},"body":true}}"#;
        let ListenerCommand::Response(r) = ListenerCommand::decode(text.as_bytes(), LIMIT).unwrap()
        else {
            panic!("not a response")
        };
        assert_eq!(r.response_headers.0.len(), 3);
        assert_eq!(r.response_headers.get("x-n"), Some("5"));
    }

    #[test]
    fn repeated_headers_travel_as_arrays_and_come_back_as_lines() {
        let headers = Headers(vec![
            ("Set-Cookie".into(), "a=1; Path=/".into()),
            ("Content-Type".into(), "text/html".into()),
            ("set-cookie".into(), "b=2; Path=/x; HttpOnly".into()),
        ]);
        let json = serde_json::to_string(&headers).unwrap();
        assert_eq!(
            json,
            r#"{"Set-Cookie":["a=1; Path=/","b=2; Path=/x; HttpOnly"],"Content-Type":"text/html"}"#
        );
        let back: Headers = serde_json::from_str(&json).unwrap();
        let cookies: Vec<&str> = back
            .0
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(cookies, ["a=1; Path=/", "b=2; Path=/x; HttpOnly"]);
    }

    #[test]
    fn folding_joins_repeats_for_standard_listeners() {
        let headers = Headers(vec![
            ("Accept".into(), "text/html".into()),
            ("Cookie".into(), "a=1".into()),
            ("accept".into(), "image/png".into()),
            ("cookie".into(), "b=2".into()),
        ]);
        assert_eq!(
            headers.folded().0,
            [
                ("Accept".to_owned(), "text/html, image/png".to_owned()),
                ("Cookie".to_owned(), "a=1; b=2".to_owned()),
            ]
        );
    }

    #[test]
    fn renew_token_and_garbage() {
        let text = r#"{"renewToken":{"token":"SharedAccessSignature sr=x"}}"#;
        assert!(matches!(
            ListenerCommand::decode(text.as_bytes(), LIMIT).unwrap(),
            ListenerCommand::RenewToken(_)
        ));
        assert!(
            !format!(
                "{:?}",
                ListenerCommand::decode(text.as_bytes(), LIMIT).unwrap()
            )
            .contains("sr=x")
        );
        for bad in ["", "{}", "[]", r#"{"ping":{}}"#, "{\"accept\":", "\u{0}"] {
            assert!(
                ListenerCommand::decode(bad.as_bytes(), LIMIT).is_err(),
                "{bad:?}"
            );
        }
        let big = format!(r#"{{"renewToken":{{"token":"{}"}}}}"#, "x".repeat(LIMIT));
        assert!(matches!(
            ListenerCommand::decode(big.as_bytes(), LIMIT),
            Err(ControlError::TooLarge(_))
        ));
    }
}
