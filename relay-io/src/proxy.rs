//! Outbound through a corporate proxy: an HTTP `CONNECT` tunnel (with Basic authentication)
//! or SOCKS5 (with username and password), chosen by configuration or by the usual
//! environment: `HTTPS_PROXY` for `wss`/`https`, `HTTP_PROXY` for `ws`/`http`, `ALL_PROXY`
//! for both, and `NO_PROXY` for the hosts that go direct. TLS to the broker runs inside the
//! tunnel, so the proxy sees only the broker's name and port.

use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::WsError;

/// Largest proxy reply head read.
const MAX_REPLY_HEAD: usize = 8 * 1024;
/// Bound on the proxy's answer to `CONNECT` or the SOCKS5 exchange.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// How to talk to the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyKind {
    /// `http://`: an HTTP/1.1 `CONNECT` tunnel.
    HttpConnect,
    /// `socks5://` or `socks5h://`: the proxy resolves the broker's name.
    Socks5,
}

/// One proxy server.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    /// The protocol.
    pub kind: ProxyKind,
    /// Proxy host.
    pub host: String,
    /// Proxy port.
    pub port: u16,
    /// User name and password, from the URL's user info.
    credentials: Option<(String, String)>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password never reaches a log.
        f.debug_struct("Proxy")
            .field("kind", &self.kind)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.credentials.as_ref().map(|(u, _)| u))
            .finish()
    }
}

impl Proxy {
    /// Parses `http://[user:password@]host:port` or `socks5[h]://[user:password@]host:port`.
    /// User and password may be percent-encoded.
    pub fn parse(url: &str) -> Result<Self, WsError> {
        let bad = |why: &str| WsError::Url(format!("proxy {}: {why}", redact(url)));
        let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
        let kind = match scheme.to_ascii_lowercase().as_str() {
            "http" => ProxyKind::HttpConnect,
            "socks5" | "socks5h" => ProxyKind::Socks5,
            _ => return Err(bad("use http://, socks5:// or socks5h://")),
        };
        let rest = rest.trim_end_matches('/');
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let credentials = userinfo.map(|u| {
            let (user, pass) = u.split_once(':').unwrap_or((u, ""));
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (decode(user), decode(pass))
        });
        let default_port = if kind == ProxyKind::Socks5 {
            1080
        } else {
            3128
        };
        let bare_v6 = hostport.starts_with('[') && hostport.ends_with(']');
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !bare_v6 && (!h.contains(':') || h.ends_with(']')) => {
                (h, p.parse().map_err(|_| bad("the port is not a number"))?)
            }
            _ => (hostport, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains('/') {
            return Err(bad("no host"));
        }
        Ok(Self {
            kind,
            host: host.to_owned(),
            port,
            credentials,
        })
    }

    /// Opens a TCP connection to `host:port` through this proxy.
    pub async fn tunnel(&self, host: &str, port: u16) -> Result<TcpStream, WsError> {
        let mut tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| {
                WsError::Proxy(format!(
                    "cannot reach proxy {}:{}: {e}",
                    self.host, self.port
                ))
            })?;
        tcp.set_nodelay(true)?;
        let handshake = async {
            match self.kind {
                ProxyKind::HttpConnect => self.http_connect(&mut tcp, host, port).await,
                ProxyKind::Socks5 => self.socks5(&mut tcp, host, port).await,
            }
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| {
                WsError::Proxy(format!("proxy {}:{} did not answer", self.host, self.port))
            })??;
        Ok(tcp)
    }

    async fn http_connect(
        &self,
        tcp: &mut TcpStream,
        host: &str,
        port: u16,
    ) -> Result<(), WsError> {
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let mut req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
        if let Some((user, pass)) = &self.credentials {
            let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
            req.push_str(&format!("Proxy-Authorization: Basic {basic}\r\n"));
        }
        req.push_str("\r\n");
        tcp.write_all(req.as_bytes()).await?;
        // Read byte by byte up to the blank line: nothing of the tunnel may be consumed.
        let mut head = Vec::with_capacity(256);
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() >= MAX_REPLY_HEAD {
                return Err(WsError::Proxy("proxy reply head too large".into()));
            }
            let byte = tcp.read_u8().await.map_err(|e| {
                WsError::Proxy(format!("proxy closed the connection during CONNECT: {e}"))
            })?;
            head.push(byte);
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        resp.parse(&head)
            .map_err(|e| WsError::Proxy(format!("bad proxy reply: {e}")))?;
        match resp.code {
            Some(200..=299) => Ok(()),
            // 407 is the standard answer; tinyproxy, among others, sends 401.
            Some(code @ (401 | 407)) => Err(WsError::Proxy(format!(
                "{code} from proxy: it refused the credentials; put the right user:password in the proxy URL"
            ))),
            Some(code) => Err(WsError::Proxy(format!(
                "{code} {} from proxy for CONNECT {authority}",
                resp.reason.unwrap_or_default()
            ))),
            None => Err(WsError::Proxy("bad proxy reply".into())),
        }
    }

    async fn socks5(&self, tcp: &mut TcpStream, host: &str, port: u16) -> Result<(), WsError> {
        let fail = |why: String| WsError::Proxy(format!("SOCKS5 proxy: {why}"));
        let methods: &[u8] = if self.credentials.is_some() {
            &[0, 2]
        } else {
            &[0]
        };
        let mut hello = vec![5, methods.len() as u8];
        hello.extend_from_slice(methods);
        tcp.write_all(&hello).await?;
        let mut choice = [0u8; 2];
        tcp.read_exact(&mut choice).await?;
        match (choice, &self.credentials) {
            ([5, 0], _) => {}
            ([5, 2], Some((user, pass))) => {
                let (u, p) = (user.as_bytes(), pass.as_bytes());
                if u.len() > 255 || p.len() > 255 {
                    return Err(fail("user or password longer than 255 bytes".into()));
                }
                let mut auth = vec![1, u.len() as u8];
                auth.extend_from_slice(u);
                auth.push(p.len() as u8);
                auth.extend_from_slice(p);
                tcp.write_all(&auth).await?;
                let mut status = [0u8; 2];
                tcp.read_exact(&mut status).await?;
                if status[1] != 0 {
                    return Err(fail("the user or password was refused".into()));
                }
            }
            ([5, 0xff], _) => return Err(fail("no acceptable authentication method".into())),
            (other, _) => return Err(fail(format!("unexpected method reply {other:?}"))),
        }
        let mut req = vec![5, 1, 0];
        match host.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(ip)) => {
                req.push(1);
                req.extend_from_slice(&ip.octets());
            }
            Ok(std::net::IpAddr::V6(ip)) => {
                req.push(4);
                req.extend_from_slice(&ip.octets());
            }
            Err(_) if host.len() <= 255 => {
                req.extend_from_slice(&[3, host.len() as u8]);
                req.extend_from_slice(host.as_bytes());
            }
            Err(_) => return Err(fail("host name longer than 255 bytes".into())),
        }
        req.extend_from_slice(&port.to_be_bytes());
        tcp.write_all(&req).await?;
        let mut reply = [0u8; 4];
        tcp.read_exact(&mut reply).await?;
        if reply[1] != 0 {
            return Err(fail(format!(
                "CONNECT to {host}:{port} refused ({})",
                socks_reply(reply[1])
            )));
        }
        // The bound address, which we do not need.
        let skip = match reply[3] {
            1 => 4,
            4 => 16,
            3 => usize::from(tcp.read_u8().await?),
            other => return Err(fail(format!("unknown address type {other}"))),
        };
        let mut rest = vec![0u8; skip + 2];
        tcp.read_exact(&mut rest).await?;
        Ok(())
    }
}

fn socks_reply(code: u8) -> &'static str {
    match code {
        1 => "general failure",
        2 => "not allowed by the proxy's rules",
        3 => "network unreachable",
        4 => "host unreachable",
        5 => "connection refused",
        6 => "TTL expired",
        7 => "command not supported",
        8 => "address type not supported",
        _ => "unknown error",
    }
}

/// `user:password@` shown as `***@`.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        (None, Some(at)) => format!("***{}", &url[at..]),
        _ => url.to_owned(),
    }
}

/// Which proxy, if any, each broker connection goes through.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyRules {
    /// For `wss://` and `https://`.
    pub secure: Option<Proxy>,
    /// For `ws://` and `http://`.
    pub plain: Option<Proxy>,
    /// Hosts (and their subdomains) that go direct; `*` for all.
    pub no_proxy: Vec<String>,
}

impl ProxyRules {
    /// One proxy for every connection, except the `no_proxy` list (comma-separated).
    pub fn new(proxy: &str, no_proxy: &str) -> Result<Self, WsError> {
        let proxy = Proxy::parse(proxy)?;
        Ok(Self {
            secure: Some(proxy.clone()),
            plain: Some(proxy),
            no_proxy: split_list(no_proxy),
        })
    }

    /// From `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` (either case; the
    /// lower-case spelling wins, as in curl).
    pub fn from_env() -> Result<Self, WsError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`ProxyRules::from_env`], reading variables through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, WsError> {
        let var = |name: &str| {
            lookup(&name.to_ascii_lowercase())
                .or_else(|| lookup(name))
                .filter(|v| !v.trim().is_empty())
        };
        let all = var("ALL_PROXY");
        let parse = |v: Option<String>| v.as_deref().map(Proxy::parse).transpose();
        Ok(Self {
            secure: parse(var("HTTPS_PROXY").or_else(|| all.clone()))?,
            plain: parse(var("HTTP_PROXY").or(all))?,
            no_proxy: split_list(&var("NO_PROXY").unwrap_or_default()),
        })
    }

    /// The proxy for a connection to `host` (TLS or not), or `None` to go direct.
    #[must_use]
    pub fn for_target(&self, host: &str, tls: bool) -> Option<&Proxy> {
        let proxy = if tls { &self.secure } else { &self.plain };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let bypass = self.no_proxy.iter().any(|entry| {
            entry == "*"
                || host.eq_ignore_ascii_case(entry)
                || host.len().checked_sub(entry.len()).is_some_and(|cut| {
                    cut > 0 && {
                        let (head, tail) = host.split_at(cut);
                        tail.eq_ignore_ascii_case(entry)
                            && (entry.starts_with('.') || head.ends_with('.'))
                    }
                })
        });
        proxy.as_ref().filter(|_| !bypass)
    }
}

fn split_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(|e| {
            let e = e.trim();
            // `host:port` entries name the host; `*.example.com` is `.example.com`.
            let e = e
                .strip_prefix('*')
                .filter(|r| r.starts_with('.'))
                .unwrap_or(e);
            match e.rsplit_once(':') {
                Some((h, p)) if p.parse::<u16>().is_ok() && !h.contains(':') => h.to_owned(),
                _ => e.to_owned(),
            }
        })
        .filter(|e| !e.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proxy_urls_and_redacts() {
        let p = Proxy::parse("http://bob:s%40cret@proxy.corp:8080/").unwrap();
        assert_eq!(
            (p.kind, p.host.as_str(), p.port),
            (ProxyKind::HttpConnect, "proxy.corp", 8080)
        );
        assert_eq!(p.credentials, Some(("bob".into(), "s@cret".into())));
        assert!(!format!("{p:?}").contains("cret"));
        let p = Proxy::parse("socks5h://[::1]:1081").unwrap();
        assert_eq!(
            (p.kind, p.host.as_str(), p.port),
            (ProxyKind::Socks5, "::1", 1081)
        );
        assert_eq!(Proxy::parse("proxy.corp").unwrap().port, 3128);
        let bare = Proxy::parse("socks5://[fd00::1]").unwrap();
        assert_eq!((bare.host.as_str(), bare.port), ("fd00::1", 1080));
        let err = Proxy::parse("ftp://bob:secret@x:1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("***@x:1") && !err.contains("secret"), "{err}");
        assert!(Proxy::parse("http://x:port").is_err());
    }

    #[test]
    fn environment_and_no_proxy() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let rules = ProxyRules::from_lookup(env(&[
            ("HTTPS_PROXY", "http://upper:1"),
            ("https_proxy", "http://lower:2"),
            ("ALL_PROXY", "socks5://all:3"),
            ("NO_PROXY", "localhost, .internal.corp, 10.0.0.7:443, *.svc"),
        ]))
        .unwrap();
        assert_eq!(
            rules.for_target("relay.example.com", true).unwrap().host,
            "lower"
        );
        assert_eq!(
            rules.for_target("relay.example.com", false).unwrap().host,
            "all"
        );
        for direct in [
            "localhost",
            "a.internal.corp",
            "10.0.0.7",
            "x.svc",
            "LOCALHOST",
        ] {
            assert!(rules.for_target(direct, true).is_none(), "{direct}");
        }
        for proxied in ["internal.corp.evil", "notlocalhost", "10.0.0.70"] {
            assert!(rules.for_target(proxied, true).is_some(), "{proxied}");
        }
        let all = ProxyRules::from_lookup(env(&[("ALL_PROXY", "http://p:1"), ("no_proxy", "*")]))
            .unwrap();
        assert!(all.for_target("anything", true).is_none());
        assert_eq!(
            ProxyRules::from_lookup(env(&[])).unwrap(),
            ProxyRules::default()
        );
    }
}
