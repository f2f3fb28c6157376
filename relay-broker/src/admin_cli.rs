//! `relay-broker person ...` and `relay-broker audit`: thin clients of the running broker's
//! administration API, authenticated with a Manage rule.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use relay_core::connection_string::{http_base, ws_base};
use relay_io::client::{Target, dial};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Where the running broker is and how to prove the Manage right.
#[derive(Args, Debug)]
pub(crate) struct AdminConnection {
    /// The broker, e.g. http://127.0.0.1:9400 (ws/wss/https also accepted).
    #[arg(long, env = "RELAY_ENDPOINT")]
    endpoint: Option<String>,
    /// A rule with the Manage right.
    #[arg(long, env = "RELAY_SAS_KEY_NAME")]
    sas_key_name: Option<String>,
    /// Its key (prefer RELAY_SAS_KEY).
    #[arg(long, env = "RELAY_SAS_KEY", hide_env_values = true)]
    sas_key: Option<String>,
    /// Extra trusted root (PEM) for a broker with a private CA.
    #[arg(long)]
    ca_cert: Option<PathBuf>,
}

/// Administrative commands.
#[derive(Subcommand, Debug)]
pub(crate) enum AdminCommand {
    /// Manage persons who may register listeners.
    #[command(subcommand)]
    Person(PersonCommand),
    /// Print audit events.
    Audit {
        /// Only events at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        #[command(flatten)]
        connection: AdminConnection,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum PersonCommand {
    /// Add a person; the password comes from --password-env or standard input.
    Add {
        name: String,
        /// Environment variable holding the password.
        #[arg(long)]
        password_env: Option<String>,
        #[command(flatten)]
        connection: AdminConnection,
    },
    /// List persons and their rights.
    List {
        #[command(flatten)]
        connection: AdminConnection,
    },
    /// Disable a person.
    Disable {
        name: String,
        #[command(flatten)]
        connection: AdminConnection,
    },
    /// Grant a right (listener.register, listener.manage, audit.read) on a name pattern.
    Grant {
        name: String,
        right: String,
        pattern: String,
        #[command(flatten)]
        connection: AdminConnection,
    },
    /// Revoke a right.
    Revoke {
        name: String,
        right: String,
        pattern: String,
        #[command(flatten)]
        connection: AdminConnection,
    },
}

pub(crate) async fn run(command: AdminCommand) -> anyhow::Result<()> {
    match command {
        AdminCommand::Person(p) => person(p).await,
        AdminCommand::Audit { since, connection } => {
            let since_ms = match since {
                Some(s) => {
                    let t = time::OffsetDateTime::parse(
                        &s,
                        &time::format_description::well_known::Rfc3339,
                    )
                    .with_context(|| format!("--since '{s}' is not RFC 3339"))?;
                    (t.unix_timestamp_nanos() / 1_000_000).max(0) as u64
                }
                None => 0,
            };
            let rows = call(
                &connection,
                "GET",
                &format!("/audit?since_ms={since_ms}"),
                None,
            )
            .await?;
            for row in rows.as_array().into_iter().flatten() {
                let at = row["at_ms"].as_u64().unwrap_or(0);
                let at =
                    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(at) * 1_000_000)
                        .ok()
                        .and_then(|t| {
                            t.format(&time::format_description::well_known::Rfc3339)
                                .ok()
                        })
                        .unwrap_or_default();
                println!(
                    "{at}  {}  {}  {}",
                    text(&row["kind"]),
                    text(&row["subject"]),
                    text(&row["detail"])
                );
            }
            Ok(())
        }
    }
}

async fn person(command: PersonCommand) -> anyhow::Result<()> {
    let (connection, method, path, body) = match command {
        PersonCommand::Add {
            name,
            password_env,
            connection,
        } => {
            let password = match password_env {
                Some(var) => std::env::var(&var)
                    .with_context(|| format!("--password-env {var} is not set"))?,
                None => {
                    let mut line = String::new();
                    std::io::stdin()
                        .read_line(&mut line)
                        .context("reading the password from standard input")?;
                    line.trim_end_matches(['\r', '\n']).to_owned()
                }
            };
            (
                connection,
                "POST",
                "/persons".to_owned(),
                Some(serde_json::json!({ "name": name, "password": password })),
            )
        }
        PersonCommand::List { connection } => (connection, "GET", "/persons".to_owned(), None),
        PersonCommand::Disable { name, connection } => (
            connection,
            "POST",
            format!("/persons/{}/disable", segment(&name)),
            None,
        ),
        PersonCommand::Grant {
            name,
            right,
            pattern,
            connection,
        } => (
            connection,
            "POST",
            format!("/persons/{}/grants", segment(&name)),
            Some(serde_json::json!({ "right": right, "pattern": pattern })),
        ),
        PersonCommand::Revoke {
            name,
            right,
            pattern,
            connection,
        } => (
            connection,
            "DELETE",
            format!("/persons/{}/grants", segment(&name)),
            Some(serde_json::json!({ "right": right, "pattern": pattern })),
        ),
    };
    let reply = call(&connection, method, &path, body).await?;
    for person in reply.as_array().cloned().unwrap_or_else(|| vec![reply]) {
        let rights: Vec<String> = person["rights"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|g| format!("{}:{}", text(&g["right"]), text(&g["pattern"])))
            .collect();
        let state = if person["disabled"].as_bool() == Some(true) {
            "disabled"
        } else {
            "active"
        };
        println!("{}  {state}  {}", text(&person["name"]), rights.join(","));
    }
    Ok(())
}

fn text(v: &serde_json::Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

fn segment(name: &str) -> String {
    relay_core::address::encode_name(name).replace('/', "%2F")
}

/// One HTTP/1.1 call to `/$admin/v1{path}`; returns the JSON body or an error with the
/// broker's message and tracking id.
async fn call(
    c: &AdminConnection,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<serde_json::Value> {
    let endpoint = c
        .endpoint
        .as_deref()
        .context("--endpoint (or RELAY_ENDPOINT) is required")?;
    let (Some(key_name), Some(key)) = (&c.sas_key_name, &c.sas_key) else {
        bail!("--sas-key-name and --sas-key (or RELAY_SAS_KEY_NAME / RELAY_SAS_KEY) are required");
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let token = relay_core::sas::create_token(
        &format!("{}/", http_base(endpoint)),
        key_name,
        key,
        now + 300,
    );
    let target = Target::parse(&format!(
        "{}{}{path}",
        ws_base(endpoint),
        relay_broker::admin::PREFIX
    ))?;
    let tls = relay_io::tls::client_config(c.ca_cert.as_deref())?;
    let mut io = dial(&target, Some(&tls))
        .await
        .with_context(|| format!("connecting to {endpoint}"))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {} HTTP/1.1\r\nHost: {}\r\nServiceBusAuthorization: {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        target.path_and_query,
        target.authority,
        body.len()
    );
    io.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    io.read_to_end(&mut raw).await?;
    let (status, reply) = parse_response(&raw)?;
    let json: serde_json::Value = serde_json::from_slice(&reply).unwrap_or(serde_json::Value::Null);
    if !(200..300).contains(&status) {
        let message = json["error"]["message"].as_str().map_or_else(
            || String::from_utf8_lossy(&reply).into_owned(),
            str::to_owned,
        );
        let hint = match status {
            401 => " (check --sas-key-name and --sas-key)",
            403 => " (the rule needs the Manage right for the whole namespace)",
            _ => "",
        };
        bail!("{status} from broker: {message}{hint}");
    }
    Ok(json)
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
    let status = resp.code.unwrap_or(0);
    let body = &raw[len..];
    Ok((
        status,
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
