//! The URL grammar: `/$hc/{hc}[/suffix]?...sb-hc-action=...` for WebSockets and
//! `/{hc}[/suffix][?query]` for HTTP, plus the reserved `sb-hc-*` query parameters.
//!
//! Hybrid connection names may contain `/`, so a path is matched against the known names by
//! longest prefix at a segment boundary; whatever follows is the suffix, passed on verbatim.

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

/// Path prefix of every WebSocket action.
pub const WS_PREFIX: &str = "/$hc/";

/// Prefix of the reserved query parameters; all of them are stripped before a listener sees
/// the query.
pub const RESERVED_PREFIX: &str = "sb-hc-";

/// The query parameter carrying a rendezvous capability (the broker's own, in the
/// reserved `sb-hc-` space, so listeners pass it back untouched).
pub const RENDEZVOUS_PARAM: &str = "sb-hc-rendezvous";

/// Longest hybrid connection name accepted (Azure allows 260).
pub const MAX_NAME_LEN: usize = 260;

/// The `sb-hc-action` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// A listener opens its control channel.
    Listen,
    /// A sender opens a WebSocket to a listener.
    Connect,
    /// A listener accepts (or rejects) a sender on a rendezvous address.
    Accept,
    /// A listener opens the rendezvous for one HTTP request.
    Request,
    /// One of our listeners parks a pre-opened rendezvous socket (an extension; see
    /// [`crate::standby`]).
    Standby,
}

impl Action {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "listen" => Self::Listen,
            "connect" => Self::Connect,
            "accept" => Self::Accept,
            "request" => Self::Request,
            "standby" => Self::Standby,
            _ => return None,
        })
    }

    /// The wire spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Listen => "listen",
            Self::Connect => "connect",
            Self::Accept => "accept",
            Self::Request => "request",
            Self::Standby => "standby",
        }
    }
}

/// A path split into a known hybrid connection name and the rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HcPath<'a> {
    /// The hybrid connection name, percent-decoded, as registered.
    pub name: String,
    /// Whatever followed the name, raw: empty or starting with `/`.
    pub suffix: &'a str,
}

impl<'a> HcPath<'a> {
    /// Splits a WebSocket path (`/$hc/...`). `None` when the prefix is missing.
    pub fn strip_ws_prefix(path: &str) -> Option<&str> {
        path.strip_prefix(WS_PREFIX)
    }

    /// Matches `rest` (a path without its leading `/` or `/$hc/`) against the known names,
    /// longest first, at `/` boundaries. `lookup` gets each decoded candidate and returns the
    /// registered spelling when it exists.
    pub fn resolve(rest: &'a str, mut lookup: impl FnMut(&str) -> Option<String>) -> Option<Self> {
        let mut end = rest.len();
        loop {
            let candidate = &rest[..end];
            if !candidate.is_empty() && candidate.len() <= MAX_NAME_LEN * 3 {
                let decoded = decode(candidate);
                let trimmed = decoded.trim_end_matches('/');
                if !trimmed.is_empty() {
                    if let Some(name) = lookup(trimmed) {
                        return Some(Self {
                            name,
                            suffix: &rest[end..],
                        });
                    }
                }
            }
            end = rest[..end].rfind('/')?;
        }
    }
}

/// The parsed query of a relay URL.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelayQuery {
    /// `sb-hc-action`, when present and known.
    pub action: Option<Action>,
    /// `sb-hc-action` was present but not one of the known values.
    pub unknown_action: bool,
    /// `sb-hc-id`.
    pub id: Option<String>,
    /// `sb-hc-token` (decoded).
    pub token: Option<String>,
    /// `sb-hc-statusCode` on a reject, raw text.
    pub status_code: Option<String>,
    /// `sb-hc-statusDescription` on a reject (decoded).
    pub status_description: Option<String>,
    /// The query without any `sb-hc-*` parameter, in its original encoding.
    pub app_query: String,
}

impl RelayQuery {
    /// Parses a raw query string (without `?`).
    #[must_use]
    pub fn parse(query: &str) -> Self {
        let mut out = Self::default();
        let mut kept: Vec<&str> = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = decode_form(raw_key);
            let Some(param) = reserved(&key) else {
                kept.push(pair);
                continue;
            };
            let value = decode_form(raw_value).into_owned();
            match param.as_str() {
                "action" if out.action.is_none() && !out.unknown_action => {
                    out.action = Action::parse(&value);
                    out.unknown_action = out.action.is_none();
                }
                "id" => _ = out.id.get_or_insert(value),
                "token" => _ = out.token.get_or_insert(value),
                "statuscode" => _ = out.status_code.get_or_insert(value),
                "statusdescription" => _ = out.status_description.get_or_insert(value),
                _ => {}
            }
        }
        out.app_query = kept.join("&");
        out
    }
}

/// The lower-cased parameter name after a reserved prefix. The docs' `sbc-hc-` typo is
/// treated as reserved too, so a token sent that way is never leaked to a listener.
fn reserved(key: &str) -> Option<String> {
    let lower = key.to_ascii_lowercase();
    lower
        .strip_prefix(RESERVED_PREFIX)
        .or_else(|| lower.strip_prefix("sbc-hc-"))
        .map(str::to_owned)
}

/// Removes every `sb-hc-*` parameter from a raw query.
#[must_use]
pub fn strip_reserved(query: &str) -> String {
    RelayQuery::parse(query).app_query
}

fn decode(text: &str) -> Cow<'_, str> {
    percent_decode_str(text).decode_utf8_lossy()
}

fn decode_form(text: &str) -> Cow<'_, str> {
    if text.contains('+') {
        Cow::Owned(decode(&text.replace('+', " ")).into_owned())
    } else {
        decode(text)
    }
}

/// Characters escaped in a hybrid connection name inside a URL path; `/` is kept.
const NAME_ESCAPES: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

/// Encodes a hybrid connection name for a URL path.
#[must_use]
pub fn encode_name(name: &str) -> String {
    percent_encoding::utf8_percent_encode(name, NAME_ESCAPES).to_string()
}

/// Appends `key=value` (value percent-encoded) to a URL that may already have a query.
#[must_use]
pub fn append_query(url: &str, key: &str, value: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    let value: String = form_urlencoded::byte_serialize(value.as_bytes()).collect();
    format!("{url}{sep}{key}={value}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(known: &'static [&'static str]) -> impl FnMut(&str) -> Option<String> {
        move |n| {
            known
                .iter()
                .find(|k| k.eq_ignore_ascii_case(n))
                .map(|k| (*k).to_owned())
        }
    }

    #[test]
    fn longest_prefix_wins_at_segment_boundaries() {
        let known = &["a", "a/b", "orders"];
        let hit = HcPath::resolve("a/b/c/d", names(known)).unwrap();
        assert_eq!((hit.name.as_str(), hit.suffix), ("a/b", "/c/d"));
        let hit = HcPath::resolve("a/bc", names(known)).unwrap();
        assert_eq!((hit.name.as_str(), hit.suffix), ("a", "/bc"));
        let hit = HcPath::resolve("ORDERS", names(known)).unwrap();
        assert_eq!((hit.name.as_str(), hit.suffix), ("orders", ""));
        let hit = HcPath::resolve("orders/", names(known)).unwrap();
        assert_eq!((hit.name.as_str(), hit.suffix), ("orders", ""));
        assert!(HcPath::resolve("ordersx", names(known)).is_none());
        assert!(HcPath::resolve("", names(known)).is_none());
        assert!(HcPath::resolve("/", names(known)).is_none());
    }

    #[test]
    fn encoded_names_match() {
        let hit = HcPath::resolve("a%2Fb/x%20y", names(&["a/b"])).unwrap();
        assert_eq!((hit.name.as_str(), hit.suffix), ("a/b", "/x%20y"));
    }

    #[test]
    fn query_splits_reserved_from_app_params() {
        let q = RelayQuery::parse(
            "x=1&sb-hc-action=connect&SB-HC-ID=t-1&sb-hc-token=SharedAccessSignature%20sr%3Dx&y=%2B&sb-hc-other=1",
        );
        assert_eq!(q.action, Some(Action::Connect));
        assert_eq!(q.id.as_deref(), Some("t-1"));
        assert_eq!(q.token.as_deref(), Some("SharedAccessSignature sr=x"));
        assert_eq!(q.app_query, "x=1&y=%2B");
    }

    #[test]
    fn reject_parameters_and_unknown_action() {
        let q = RelayQuery::parse(
            "sb-hc-action=accept&sb-hc-id=i&sb-hc-statusCode=403&sb-hc-statusDescription=no+way",
        );
        assert_eq!(q.status_code.as_deref(), Some("403"));
        assert_eq!(q.status_description.as_deref(), Some("no way"));
        let q = RelayQuery::parse("sb-hc-action=dance");
        assert!(q.unknown_action && q.action.is_none());
        assert_eq!(RelayQuery::parse("").app_query, "");
        assert_eq!(strip_reserved("&&a&sbc-hc-token=x&b=="), "a&b==");
    }

    #[test]
    fn names_encode_per_segment() {
        assert_eq!(encode_name("a/b c"), "a/b%20c");
    }

    #[test]
    fn append_query_encodes() {
        assert_eq!(append_query("u", "k", "a b&"), "u?k=a+b%26");
        assert_eq!(append_query("u?x=1", "k", "v"), "u?x=1&k=v");
    }
}
