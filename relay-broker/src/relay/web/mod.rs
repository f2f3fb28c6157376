//! Browser access to a web UI behind a listener: what the browser sees (origin and path
//! prefix, passed on as `X-Forwarded-*`), the session cookie that one login with a token
//! opens, the cross-origin rules that guard it, and host names per hybrid connection.
//!
//! The rules, in the order they are applied to a request for a hybrid connection that
//! requires authorization (ARCHITECTURE.md, "Browser access", says why):
//! 1. A token in `ServiceBusAuthorization` or `sb-hc-token` wins. When it came in the query of
//!    a browser's top-level navigation (a GET with `Sec-Fetch-Mode: navigate`, or without
//!    `Sec-Fetch-*` and with `Upgrade-Insecure-Requests: 1`), the answer is a login page: the
//!    session cookie, then a same-origin step to the address without the token.
//! 2. Else a session cookie for this hybrid connection, accepted only from the same origin:
//!    `Sec-Fetch-Site` absent, `same-origin` or `none`, and `Origin` absent or this origin.
//! 3. Else the `Authorization` header as a relay token, as before.
//!
//! The cookie never reaches the listener, and neither does the token.

use axum::body::Body;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use relay_core::auth::{TokenOrigin, presented_token};
use relay_core::control::Headers;
use relay_core::sas::{Rights, SasError};
use relay_core::web::{self, HOST_SESSION_COOKIE, SESSION_COOKIE};

use crate::RelayError;
use crate::relay::Relay;
use crate::relay::auth::{Authorized, authorize, unix_now};
use crate::relay::resolve::Resolved;

/// Headers a sender may not set itself: the broker says what the browser saw.
const FORWARDED: [&str; 3] = [
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-prefix",
];

/// How a request was let in.
#[derive(Debug)]
pub(crate) enum Access {
    /// By a token, or no authorization was needed.
    Token(Authorized),
    /// A navigation with a token in its query: it gets the login page, not the listener.
    Login(Response<Body>),
    /// By a session cookie; `refresh` is a renewed cookie once half its life is gone.
    Session {
        /// A `Set-Cookie` value to add to the listener's response.
        refresh: Option<String>,
    },
}

impl Access {
    /// Whether the `Authorization` header was the relay token (and must not be relayed).
    pub(crate) fn consumed_authorization(&self) -> bool {
        matches!(self, Self::Token(a) if a.presented.consumed_authorization())
    }
}

/// What the browser sees of this request.
#[derive(Clone, Debug)]
pub(crate) struct View {
    /// `http` or `https`.
    pub(crate) scheme: &'static str,
    /// The `Host` it sent.
    pub(crate) host: String,
    /// The path under which the hybrid connection appears: `/site/ui` in path mode, empty
    /// in host mode, `None` for the protocol's own `/$hc/` addresses.
    pub(crate) prefix: Option<String>,
    /// Whether the hybrid connection was reached by its own host name.
    pub(crate) host_mode: bool,
}

impl View {
    pub(crate) fn of(headers: &HeaderMap, r: &Resolved) -> Self {
        let tls = behind_tls(headers, r.transport);
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
            .or_else(|| r.transport.map(|t| t.peer.to_string()))
            .unwrap_or_else(|| "relay".into());
        Self {
            scheme: if tls { "https" } else { "http" },
            host,
            prefix: r.prefix.clone(),
            host_mode: r.host_mode,
        }
    }

    /// `X-Forwarded-Host`, `-Proto` and, for browser paths, `-Prefix` (`/` in host mode).
    pub(crate) fn forwarded(&self) -> Vec<(String, String)> {
        let mut out = vec![
            ("X-Forwarded-Host".to_owned(), self.host.clone()),
            ("X-Forwarded-Proto".to_owned(), self.scheme.to_owned()),
        ];
        if let Some(prefix) = &self.prefix {
            let prefix = if prefix.is_empty() { "/" } else { prefix };
            out.push(("X-Forwarded-Prefix".to_owned(), prefix.to_owned()));
        }
        out
    }

    fn secure(&self) -> bool {
        self.scheme == "https"
    }

    fn cookie_name(&self) -> &'static str {
        if self.host_mode && self.secure() {
            HOST_SESSION_COOKIE
        } else {
            SESSION_COOKIE
        }
    }

    /// Whether a fetch comes from a page of this very origin (or from the person, typing or
    /// following a bookmark). A sibling host under the same base is same-site but not
    /// same-origin, and is refused.
    fn same_origin_fetch(&self, headers: &HeaderMap) -> bool {
        let site_ok = headers
            .get("sec-fetch-site")
            .is_none_or(|v| v == "same-origin" || v == "none");
        let origin_ok = headers
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|o| web::same_origin(o, self.scheme, &self.host));
        site_ok && origin_ok
    }
}

/// Whether the client reached us over TLS: our own, or a front proxy's that says so in
/// `X-Forwarded-Proto`.
pub(crate) fn behind_tls(headers: &HeaderMap, transport: Option<crate::seams::Transport>) -> bool {
    transport.is_some_and(|t| t.tls)
        || headers
            .get("x-forwarded-proto")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

/// Authorizes a relayed request or WebSocket upgrade on a browser path by the rules above.
pub(crate) async fn authorize_browser(
    shared: &Relay,
    headers: &HeaderMap,
    method: &Method,
    r: &Resolved,
    view: &View,
) -> Result<Access, RelayError> {
    let audience = r.audience_path();
    let required = r.hc.requires_client_authorization;
    let explicit = presented_token(headers, r.query.token.as_deref(), false);
    let mut cookie_error = None;
    if required && explicit.token.is_none() {
        match session(shared, headers, r, view) {
            Some(Ok(access)) => return Ok(access),
            Some(Err(e)) => cookie_error = Some(e),
            None => {}
        }
    }
    let authorized = authorize(shared, r.claim(headers, &audience, Rights::SEND, required))
        .await
        .map_err(|e| match (e, cookie_error) {
            (RelayError::Unauthorized(SasError::Missing), Some(cookie)) => cookie,
            (e, _) => e,
        })?;
    if required
        && *method == Method::GET
        && is_navigation(headers)
        && authorized.presented.origin == Some(TokenOrigin::Query)
    {
        crate::metrics::count(&shared.counters.browser_logins);
        return login(shared, r, view, &authorized).map(Access::Login);
    }
    Ok(Access::Token(authorized))
}

/// Whether a request is a browser's top-level navigation: `Sec-Fetch-Mode: navigate`, or,
/// where browsers send no `Sec-Fetch-*` (plain http to a name that is not loopback), the
/// `Upgrade-Insecure-Requests: 1` that every browser sends on navigations only.
fn is_navigation(headers: &HeaderMap) -> bool {
    match headers.get("sec-fetch-mode") {
        Some(mode) => mode == "navigate",
        None => headers
            .get("upgrade-insecure-requests")
            .is_some_and(|v| v == "1"),
    }
}

/// The session cookie's verdict; `None` when the request carries none.
fn session(
    shared: &Relay,
    headers: &HeaderMap,
    r: &Resolved,
    view: &View,
) -> Option<Result<Access, RelayError>> {
    let cookies = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok());
    let name = view.cookie_name();
    let rules = shared.store.rules();
    let now = unix_now();
    let mut last = None;
    for value in web::cookie_values(cookies, name) {
        match web::verify(value, &rules, &r.hc.name, now) {
            Ok(session) if view.same_origin_fetch(headers) => {
                crate::metrics::count(&shared.counters.browser_session_requests);
                let refresh = refreshed(shared, r, view, &session, now);
                return Some(Ok(Access::Session { refresh }));
            }
            Ok(_) => {
                crate::metrics::count(&shared.counters.browser_cross_origin);
                return Some(Err(RelayError::CrossOrigin));
            }
            Err(e) => last = Some(e),
        }
    }
    last.map(|e| {
        crate::metrics::count(&shared.counters.auth_failures);
        Err(RelayError::Session(e))
    })
}

/// A renewed cookie once less than half of the session's life is left, up to its cap.
fn refreshed(
    shared: &Relay,
    r: &Resolved,
    view: &View,
    session: &web::Session,
    now: u64,
) -> Option<String> {
    let expires_at = web::renewal(session, now, shared.limits.browser_session.as_secs())?;
    let rules = shared.store.rules();
    let rule = rules.iter().find(|k| k.name == session.rule)?;
    let value = web::issue(rule, &r.hc.name, expires_at, session.cap);
    set_cookie(view, &value, expires_at - now, shared)
}

/// The `Set-Cookie` value; `None` when the path cannot scope a cookie (a `;`, `,` or a
/// control character in the hybrid connection's name as sent).
fn set_cookie(view: &View, value: &str, max_age: u64, shared: &Relay) -> Option<String> {
    let path = match &view.prefix {
        Some(prefix) if !view.host_mode && !prefix.is_empty() => {
            format!("{}{prefix}", shared.mount)
        }
        _ => "/".to_owned(),
    };
    let safe = path
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b';' && b != b',');
    safe.then(|| web::set_cookie(view.cookie_name(), value, &path, max_age, view.secure()))
}

/// The login page: the session cookie, and a same-origin step to the address without the
/// token. A redirect would not do: after a chain that began on another site the browser
/// withholds a `SameSite=Strict` cookie, while a step taken by this page is same-origin.
fn login(
    shared: &Relay,
    r: &Resolved,
    view: &View,
    authorized: &Authorized,
) -> Result<Response<Body>, RelayError> {
    let rules = shared.store.rules();
    let rule = authorized
        .rule
        .as_deref()
        .and_then(|name| rules.iter().find(|k| k.name == name))
        .ok_or_else(|| RelayError::Internal("the token's rule is gone".into()))?;
    let now = unix_now();
    let cap = authorized.left.map_or(now, |left| now + left.as_secs());
    let expires_at = (now + shared.limits.browser_session.as_secs()).min(cap);
    if expires_at <= now {
        return Err(RelayError::Unauthorized(SasError::Expired(
            now - expires_at,
        )));
    }
    let clean = address_without_token(shared, r, view);
    let cookie = set_cookie(
        view,
        &web::issue(rule, &r.hc.name, expires_at, cap),
        expires_at - now,
        shared,
    )
    .ok_or_else(|| {
        RelayError::BadRequest(
            "this hybrid connection's path cannot scope a browser cookie; use its host name".into(),
        )
    })?;
    let mut resp = Response::new(Body::from(login_page(&clean, &r.hc.name)));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    let cookie = HeaderValue::try_from(cookie).map_err(|e| RelayError::Internal(e.to_string()))?;
    h.insert(header::SET_COOKIE, cookie);
    *resp.status_mut() = StatusCode::OK;
    Ok(resp)
}

/// The address the login page steps to: the one asked for, without the token.
fn address_without_token(shared: &Relay, r: &Resolved, view: &View) -> String {
    let path = match view.host_mode {
        true => r.suffix.clone(),
        false => format!("{}{}", shared.mount, r.raw_path),
    };
    // One leading slash: `//evil.example` (or `/\evil.example`) would leave the origin.
    let mut clean = format!("/{}", path.trim_start_matches(['/', '\\']));
    if !r.query.app_query.is_empty() {
        clean.push('?');
        clean.push_str(&r.query.app_query);
    }
    clean
}

fn login_page(next: &str, hc: &str) -> String {
    let href = html_escape(next);
    format!(
        "<!doctype html><meta charset=\"utf-8\"><meta name=\"referrer\" content=\"no-referrer\">\
         <meta http-equiv=\"refresh\" content=\"0;url={href}\"><title>Signed in</title>\
         <p>Signed in to {}. <a href=\"{href}\">Continue</a></p>",
        html_escape(hc)
    )
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Headers for the listener: the sender's, with the broker's own `X-Forwarded-*` in place of
/// any the sender set, and without the session cookie.
pub(crate) fn for_listener(headers: Headers, view: &View) -> Headers {
    let mut out: Vec<(String, String)> = headers
        .0
        .into_iter()
        .filter(|(k, _)| !FORWARDED.iter().any(|f| f.eq_ignore_ascii_case(k)))
        .filter_map(|(k, v)| {
            if !k.eq_ignore_ascii_case("cookie") {
                return Some((k, v));
            }
            let v = web::without_cookie(&v, SESSION_COOKIE)?;
            web::without_cookie(&v, HOST_SESSION_COOKIE).map(|v| (k, v))
        })
        .collect();
    out.extend(view.forwarded());
    Headers(out)
}

/// The hybrid connection a `Host` names in host mode; `None` for any other host.
pub(crate) fn host_target(shared: &Relay, headers: &HeaderMap) -> Option<String> {
    let hosts = shared.hosts.as_ref()?;
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let label = hosts.base.label(host)?;
    Some(hosts.hc_for(label))
}

/// Base of rendezvous addresses for a listener: `public_url`, else its own scheme and Host.
/// Where the listener of `target` opens its rendezvous to this node: this node's own
/// address when the cluster gives it one (`advertise_url`), else the listener's own base when
/// its channel is here, else this node as the sender reached it. A socket that the load
/// balancer takes to another node is spliced back here by that node.
pub(crate) fn rendezvous_base(
    shared: &Relay,
    target: &crate::relay::local::Target,
    headers: &HeaderMap,
    transport: Option<crate::seams::Transport>,
) -> String {
    if let Some(url) = &shared.advertise_url {
        return url.clone();
    }
    match &target.local {
        Some(_) => target.listener.base_url.to_string(),
        None => base_url(shared, headers, transport),
    }
}

pub(crate) fn base_url(
    shared: &Relay,
    headers: &HeaderMap,
    transport: Option<crate::seams::Transport>,
) -> String {
    if let Some(url) = &shared.public_url {
        return url
            .replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1);
    }
    let scheme = if behind_tls(headers, transport) {
        "wss"
    } else {
        "ws"
    };
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && !h.contains(['/', '?', '#', '@', ' ', '\\']));
    let host = match (host, transport) {
        (Some(h), _) => h.to_owned(),
        (None, Some(t)) => t.peer.to_string(),
        (None, None) => "localhost".into(),
    };
    format!("{scheme}://{host}")
}

#[cfg(test)]
mod tests;
