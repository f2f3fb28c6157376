//! Header rules for relayed HTTP.
//!
//! RFC 7230 connection-level headers never cross the relay in either direction, relay
//! credentials never reach a listener, and the broker adds itself to `Via`.

use http::HeaderName;

/// Connection-level headers removed from relayed requests and responses.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "content-length",
    "host",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "close",
];

/// Whether a header is connection-level and must not be relayed. `connection_tokens` are the
/// names listed in the message's own `Connection` header.
#[must_use]
pub fn is_hop_by_hop(name: &str, connection_tokens: &[String]) -> bool {
    HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
        || connection_tokens
            .iter()
            .any(|t| t.eq_ignore_ascii_case(name))
}

/// The header names listed in `Connection`, lower-cased.
#[must_use]
pub fn connection_tokens(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Whether a header carries a relay credential that a listener must never see.
#[must_use]
pub fn is_relay_credential(name: &HeaderName) -> bool {
    let name = name.as_str();
    name.eq_ignore_ascii_case(crate::auth::SERVICE_BUS_AUTHORIZATION)
        || name.eq_ignore_ascii_case(crate::pop::SESSION_HEADER)
}

/// The `Via` value after this broker (`host`) handled a message: appended to any existing one.
#[must_use]
pub fn via(existing: Option<&str>, protocol: &str, host: &str) -> String {
    let hop = format!("{protocol} {host}");
    match existing {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {hop}"),
        _ => hop,
    }
}

/// Clock difference beyond which an agent warns: certificates are backdated this much, so a
/// larger skew makes a fresh certificate look not yet valid (or an old one still valid).
pub const MAX_CLOCK_SKEW_SECS: u64 = 5 * 60;

/// Seconds by which a peer's `Date` header (IMF-fixdate, `Tue, 01 Dec 2026 06:55:17 GMT`)
/// is ahead of `now` (negative: behind), when it differs by more than
/// [`MAX_CLOCK_SKEW_SECS`]. `None` when the clocks agree or the header does not parse.
#[must_use]
pub fn clock_skew(date_header: &str, now: u64) -> Option<i64> {
    let theirs = i64::try_from(parse_http_date(date_header)?).ok()?;
    let skew = theirs - i64::try_from(now).ok()?;
    (skew.unsigned_abs() > MAX_CLOCK_SKEW_SECS).then_some(skew)
}

/// Unix seconds of an IMF-fixdate (RFC 9110 §5.6.7), the form every current server sends.
#[must_use]
pub fn parse_http_date(text: &str) -> Option<u64> {
    let mut parts = text.split_ascii_whitespace();
    let (_weekday, day, month, year, clock, zone) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    if zone != "GMT" || parts.next().is_some() {
        return None;
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == month)? as i64 + 1;
    // The grammar fixes every width (2DIGIT day, 4DIGIT year, 2DIGIT h/m/s); holding to it
    // also bounds the arithmetic below, which a 19-digit year would overflow.
    let digits = |text: &str, width: usize| -> Option<i64> {
        (text.len() == width && text.bytes().all(|b| b.is_ascii_digit()))
            .then(|| text.parse().ok())?
    };
    let (day, year) = (digits(day, 2)?, digits(year, 4)?);
    let mut hms = clock.split(':').map(|p| digits(p, 2));
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    if !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 || hms.next().is_some() {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + h * 3600 + m * 60 + s).ok()
}

/// `sec-websocket-key` → `Sec-WebSocket-Key`, `x-custom` → `X-Custom`.
#[must_use]
pub fn canonical_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, part) in name.split('-').enumerate() {
        if i > 0 {
            out.push('-');
        }
        if part.eq_ignore_ascii_case("websocket") {
            out.push_str("WebSocket");
            continue;
        }
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            out.push(first.to_ascii_uppercase());
            out.push_str(chars.as_str());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn http_dates_and_skew() {
        use super::{clock_skew, parse_http_date};
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_http_date("Tue, 01 Dec 2026 06:55:17 GMT"),
            Some(1_796_108_117)
        );
        assert_eq!(
            parse_http_date("Tue, 29 Feb 2028 23:59:59 GMT"),
            Some(1_835_481_599)
        );
        for bad in [
            "",
            "Tue, 01 Dec 2026 06:55:17 UTC",
            "Tue, 01 Foo 2026 06:55:17 GMT",
            "Tue, 32 Dec 2026 06:55:17 GMT",
            "Tue, 01 Dec 2026 24:00:00 GMT",
            "Tue, 01 Dec 2026 06:55 GMT",
            "Tuesday, 01-Dec-26 06:55:17 GMT",
            "Tue, 1 Dec 2026 06:55:17 GMT",
            "Tue, 01 Dec +2026 06:55:17 GMT",
            "Tue, 01 Dec 2026 6:55:17 GMT",
            // Found by the http_rules fuzz target: a 19-digit year overflowed the day count.
            ",Teu0 1 Dec \x0c 07777777777777777771  6:55:17 GMT",
            "Tue, 01 Dec 7777777777777777771 06:55:17 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
        let now = 1_796_108_117;
        let date = "Tue, 01 Dec 2026 06:55:17 GMT";
        assert_eq!(clock_skew(date, now), None);
        assert_eq!(
            clock_skew(date, now + 300),
            None,
            "five minutes is tolerated"
        );
        assert_eq!(clock_skew(date, now + 600), Some(-600), "agent ahead");
        assert_eq!(clock_skew(date, now - 601), Some(601), "agent behind");
        assert_eq!(clock_skew("garbage", now), None);
    }

    use super::*;

    #[test]
    fn canonical_header_case() {
        assert_eq!(canonical_case("sec-websocket-key"), "Sec-WebSocket-Key");
        assert_eq!(canonical_case("x-custom"), "X-Custom");
        assert_eq!(canonical_case("host"), "Host");
    }

    #[test]
    fn hop_by_hop_and_via() {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("keep-alive, X-Secret"),
        );
        let tokens = connection_tokens(&h);
        assert!(is_hop_by_hop("x-secret", &tokens));
        assert!(is_hop_by_hop("Transfer-Encoding", &[]));
        assert!(!is_hop_by_hop("via", &[]));
        assert!(!is_hop_by_hop("content-type", &tokens));
        assert_eq!(via(None, "1.1", "relay"), "1.1 relay");
        assert_eq!(via(Some("1.0 a"), "1.1", "relay"), "1.0 a, 1.1 relay");
    }
}
