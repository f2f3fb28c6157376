//! Where a request's token comes from, and which credentials are stripped before the request
//! reaches a listener (protocol guide, "Authorization" and the HTTP stripping rules).
//!
//! 1. `sb-hc-token` in the query is always removed (see [`crate::address::RelayQuery`]).
//! 2. The `ServiceBusAuthorization` header is always removed.
//! 3. `Authorization` is used, and removed, only when authorization is required and neither
//!    of the first two carried a token. Otherwise it belongs to the application.

use http::HeaderMap;

/// The header Azure clients put their token in.
pub const SERVICE_BUS_AUTHORIZATION: &str = "servicebusauthorization";

/// Where the token was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenOrigin {
    /// The `ServiceBusAuthorization` header.
    ServiceBusHeader,
    /// The `sb-hc-token` query parameter.
    Query,
    /// The standard `Authorization` header.
    AuthorizationHeader,
}

/// The token a request presents, if any.
#[derive(Clone, PartialEq, Eq)]
pub struct Presented {
    /// The token text.
    pub token: Option<String>,
    /// Where it came from.
    pub origin: Option<TokenOrigin>,
}

impl std::fmt::Debug for Presented {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presented")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl Presented {
    /// Whether the `Authorization` header was consumed as the relay token and must be removed.
    #[must_use]
    pub fn consumed_authorization(&self) -> bool {
        self.origin == Some(TokenOrigin::AuthorizationHeader)
    }
}

/// Finds the token on a request. `query_token` is the decoded `sb-hc-token`, if any.
#[must_use]
pub fn presented_token(
    headers: &HeaderMap,
    query_token: Option<&str>,
    auth_required: bool,
) -> Presented {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if let Some(token) = header(SERVICE_BUS_AUTHORIZATION) {
        return Presented {
            token: Some(token),
            origin: Some(TokenOrigin::ServiceBusHeader),
        };
    }
    if let Some(token) = query_token {
        return Presented {
            token: Some(token.to_owned()),
            origin: Some(TokenOrigin::Query),
        };
    }
    if auth_required {
        if let Some(token) = header(http::header::AUTHORIZATION.as_str()) {
            return Presented {
                token: Some(token),
                origin: Some(TokenOrigin::AuthorizationHeader),
            };
        }
    }
    Presented {
        token: None,
        origin: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    http::HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn precedence_and_authorization_rules() {
        let both = headers(&[("servicebusauthorization", "sb"), ("authorization", "app")]);
        let p = presented_token(&both, Some("q"), true);
        assert_eq!(
            (p.token.as_deref(), p.consumed_authorization()),
            (Some("sb"), false)
        );

        let p = presented_token(&headers(&[("authorization", "app")]), Some("q"), true);
        assert_eq!(
            (p.token.as_deref(), p.consumed_authorization()),
            (Some("q"), false)
        );

        let p = presented_token(&headers(&[("authorization", "tok")]), None, true);
        assert_eq!(
            (p.token.as_deref(), p.consumed_authorization()),
            (Some("tok"), true)
        );

        // With authorization off, Authorization is the application's.
        let p = presented_token(&headers(&[("authorization", "tok")]), None, false);
        assert_eq!(
            (p.token.as_deref(), p.consumed_authorization()),
            (None, false)
        );
    }
}
