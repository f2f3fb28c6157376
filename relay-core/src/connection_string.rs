//! Azure-style connection strings:
//! `Endpoint=sb://host[:port]/;SharedAccessKeyName=..;SharedAccessKey=..;EntityPath=..`,
//! optionally `SharedAccessSignature=..` instead of the key pair.

/// A parsed connection string.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionString {
    /// `Endpoint`, as given (`sb://`, `ws(s)://` or `http(s)://`).
    pub endpoint: String,
    /// `SharedAccessKeyName`.
    pub key_name: Option<String>,
    /// `SharedAccessKey`.
    pub key: Option<String>,
    /// `SharedAccessSignature`: a ready token.
    pub signature: Option<String>,
    /// `EntityPath`: the hybrid connection.
    pub entity_path: Option<String>,
}

impl std::fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionString")
            .field("endpoint", &self.endpoint)
            .field("key_name", &self.key_name)
            .field("entity_path", &self.entity_path)
            .finish_non_exhaustive()
    }
}

/// What is wrong with a connection string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("connection string: {0}")]
pub struct ConnectionStringError(String);

impl ConnectionString {
    /// Parses `Key=Value;...`; keys are case-insensitive, values may contain `=`.
    pub fn parse(text: &str) -> Result<Self, ConnectionStringError> {
        let mut out = Self {
            endpoint: String::new(),
            key_name: None,
            key: None,
            signature: None,
            entity_path: None,
        };
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| ConnectionStringError(format!("'{part}' is not Key=Value")))?;
            let value = value.trim().to_owned();
            match key.trim().to_ascii_lowercase().as_str() {
                "endpoint" => out.endpoint = value,
                "sharedaccesskeyname" => out.key_name = Some(value),
                "sharedaccesskey" => out.key = Some(value),
                "sharedaccesssignature" => out.signature = Some(value),
                "entitypath" => out.entity_path = Some(value),
                _ => {} // OperationTimeout, Authentication, ...: not used here
            }
        }
        if out.endpoint.is_empty() {
            return Err(ConnectionStringError("Endpoint is required".into()));
        }
        if out.signature.is_none() && (out.key_name.is_none() || out.key.is_none()) {
            return Err(ConnectionStringError(
                "SharedAccessKeyName and SharedAccessKey (or SharedAccessSignature) are required"
                    .into(),
            ));
        }
        Ok(out)
    }

    /// The endpoint as a WebSocket base URL, no trailing slash (see [`ws_base`]: `sb://` is
    /// kept).
    #[must_use]
    pub fn ws_endpoint(&self) -> String {
        ws_base(&self.endpoint)
    }
}

/// Normalizes an endpoint to a WebSocket base without a trailing slash. `https` becomes
/// `wss` and `http` becomes `ws`; `sb://` is kept: it means TLS, and the client may fall back
/// to plain ws for a broker on a loopback address (a local broker on its embedded default).
#[must_use]
pub fn ws_base(endpoint: &str) -> String {
    let trimmed = endpoint.trim().trim_end_matches('/');
    for (from, to) in [("https://", "wss://"), ("http://", "ws://")] {
        if let Some(rest) = trimmed.strip_prefix(from) {
            return format!("{to}{rest}");
        }
    }
    trimmed.to_owned()
}

/// The HTTP form of an endpoint (`ws` → `http`, `wss`/`sb` → `https`).
#[must_use]
pub fn http_base(endpoint: &str) -> String {
    let ws = ws_base(endpoint);
    if let Some(rest) = ws
        .strip_prefix("wss://")
        .or_else(|| ws.strip_prefix("sb://"))
    {
        format!("https://{rest}")
    } else if let Some(rest) = ws.strip_prefix("ws://") {
        format!("http://{rest}")
    } else {
        ws
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_azure_form() {
        let c = ConnectionString::parse("Endpoint=sb://127.0.0.1:9400/;SharedAccessKeyName=root;SharedAccessKey=a=b;EntityPath=orders").unwrap();
        assert_eq!(c.ws_endpoint(), "sb://127.0.0.1:9400");
        assert_eq!(
            (c.key.as_deref(), c.entity_path.as_deref()),
            (Some("a=b"), Some("orders"))
        );
        assert!(!format!("{c:?}").contains("a=b"));
        assert!(ConnectionString::parse("SharedAccessKeyName=x").is_err());
        assert!(ConnectionString::parse("Endpoint=sb://x/;SharedAccessKeyName=x").is_err());
        assert_eq!(http_base("ws://h:1/"), "http://h:1");
    }
}

/// Where a command-line tool reaches the broker, resolved from flags or a connection string.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    /// `ws://` or `wss://` base.
    pub endpoint: String,
    /// Hybrid connection.
    pub hc: String,
    /// How to authenticate.
    pub credential: Credential,
}

/// A SAS credential.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// A rule name and key, for minting tokens.
    Key {
        /// Rule name.
        name: String,
        /// Key string.
        key: String,
    },
    /// A ready token.
    Token(String),
    /// No credential (anonymous senders).
    None,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Key { .. } => "Credential::Key(<redacted>)",
            Self::Token(_) => "Credential::Token(<redacted>)",
            Self::None => "Credential::None",
        })
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("endpoint", &self.endpoint)
            .field("hc", &self.hc)
            .finish_non_exhaustive()
    }
}

/// The command-line inputs a tool resolves into a [`Target`].
#[derive(Clone, Debug, Default)]
pub struct TargetArgs<'a> {
    /// `--endpoint`.
    pub endpoint: Option<&'a str>,
    /// `--hc`.
    pub hc: Option<&'a str>,
    /// `--sas-key-name`.
    pub key_name: Option<&'a str>,
    /// `--sas-key` or `RELAY_SAS_KEY`.
    pub key: Option<&'a str>,
    /// `--connection-string`.
    pub connection_string: Option<&'a str>,
}

impl Target {
    /// Explicit flags win over the connection string's parts.
    pub fn resolve(args: &TargetArgs<'_>) -> Result<Self, ConnectionStringError> {
        let parsed = args
            .connection_string
            .map(ConnectionString::parse)
            .transpose()?;
        let endpoint = args
            .endpoint
            .map(ws_base)
            .or_else(|| parsed.as_ref().map(ConnectionString::ws_endpoint))
            .ok_or_else(|| {
                ConnectionStringError("--endpoint or --connection-string is required".into())
            })?;
        let hc = args
            .hc
            .map(str::to_owned)
            .or_else(|| parsed.as_ref().and_then(|c| c.entity_path.clone()))
            .ok_or_else(|| {
                ConnectionStringError(
                    "--hc (or EntityPath in the connection string) is required".into(),
                )
            })?;
        let name = args
            .key_name
            .map(str::to_owned)
            .or_else(|| parsed.as_ref().and_then(|c| c.key_name.clone()));
        let key = args
            .key
            .map(str::to_owned)
            .or_else(|| parsed.as_ref().and_then(|c| c.key.clone()));
        let credential = match (name, key, parsed.and_then(|c| c.signature)) {
            (Some(name), Some(key), _) => Credential::Key { name, key },
            (_, _, Some(token)) => Credential::Token(token),
            (None, None, None) => Credential::None,
            (Some(_), None, None) => {
                return Err(ConnectionStringError(
                    "--sas-key (or RELAY_SAS_KEY) is missing".into(),
                ));
            }
            (None, Some(_), None) => {
                return Err(ConnectionStringError("--sas-key-name is missing".into()));
            }
        };
        Ok(Self {
            endpoint,
            hc: hc.trim_matches('/').to_owned(),
            credential,
        })
    }
}

#[cfg(test)]
mod target_tests {
    use super::*;

    #[test]
    fn flags_override_connection_string() {
        let cs = "Endpoint=sb://h:1/;SharedAccessKeyName=n;SharedAccessKey=k;EntityPath=e";
        let t = Target::resolve(&TargetArgs {
            connection_string: Some(cs),
            hc: Some("x"),
            ..Default::default()
        })
        .unwrap();
        assert_eq!((t.endpoint.as_str(), t.hc.as_str()), ("sb://h:1", "x"));
        assert_eq!(
            t.credential,
            Credential::Key {
                name: "n".into(),
                key: "k".into()
            }
        );
        let err = Target::resolve(&TargetArgs {
            endpoint: Some("ws://h"),
            hc: Some("x"),
            key_name: Some("n"),
            ..Default::default()
        });
        assert!(err.unwrap_err().to_string().contains("RELAY_SAS_KEY"));
        let anon = Target::resolve(&TargetArgs {
            endpoint: Some("ws://h"),
            hc: Some("x"),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(anon.credential, Credential::None);
    }
}
