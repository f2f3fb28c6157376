//! `relay-broker person ...` and `relay-broker audit`: thin clients of the running broker's
//! administration API, authenticated with a Manage rule.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use relay_core::connection_string::{http_base, ws_base};

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
    /// Act as a person with their personal API token instead (their rights only).
    #[arg(long, env = "RELAY_PERSON_TOKEN", hide_env_values = true, conflicts_with_all = ["sas_key_name", "sas_key"])]
    person_token: Option<String>,
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
    /// Mint single-use enrollment tokens for unattended listener installs.
    #[command(subcommand, name = "enrollment-token")]
    EnrollmentToken(EnrollmentTokenCommand),
    /// Registered listeners.
    #[command(subcommand)]
    Listener(ListenerCommand),
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
pub(crate) enum EnrollmentTokenCommand {
    /// Mint a token on a person's behalf; it is printed once.
    Create {
        /// The person the listener is registered for.
        #[arg(long)]
        person: String,
        /// Hybrid connections, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        hc: Vec<String>,
        /// Listener name.
        #[arg(long)]
        name: Option<String>,
        /// Lifetime in seconds (default 600).
        #[arg(long)]
        ttl: Option<u64>,
        #[command(flatten)]
        connection: AdminConnection,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum ListenerCommand {
    /// List registered listeners: id, name, person, hybrid connections, state.
    List {
        #[command(flatten)]
        connection: AdminConnection,
    },
    /// Revoke a listener: its certificates are refused and its connections close at once.
    Revoke {
        /// The listener id (see `listener list`).
        id: String,
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
    /// Mint a personal API token for a person; it is printed once.
    Token {
        name: String,
        #[command(flatten)]
        connection: AdminConnection,
    },
    /// Disable a person; the listeners they registered are disconnected and refused.
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
        AdminCommand::EnrollmentToken(EnrollmentTokenCommand::Create {
            person,
            hc,
            name,
            ttl,
            connection,
        }) => {
            let body = serde_json::json!({ "person": person, "hybrid_connections": hc, "name": name, "ttl_secs": ttl });
            let reply = call(&connection, "POST", "/enrollment-tokens", Some(body)).await?;
            println!("{}", text(&reply["token"]));
            Ok(())
        }
        AdminCommand::Listener(ListenerCommand::Revoke { id, connection }) => {
            let path = format!("/listeners/{}/revoke", segment(&id));
            call(&connection, "POST", &path, None).await?;
            println!("revoked listener {id}");
            Ok(())
        }
        AdminCommand::Listener(ListenerCommand::List { connection }) => {
            list_listeners(&connection).await
        }
        AdminCommand::Audit { since, connection } => audit(&connection, since.as_deref()).await,
    }
}

/// One line per listener: id, name, person, hybrid connections, state.
async fn list_listeners(connection: &AdminConnection) -> anyhow::Result<()> {
    let rows = call(connection, "GET", "/listeners", None).await?;
    for l in rows.as_array().into_iter().flatten() {
        let hcs: Vec<String> = l["hybrid_connections"]
            .as_array()
            .into_iter()
            .flatten()
            .map(text)
            .collect();
        let state = if l["revoked_at_ms"].is_null() {
            "active"
        } else {
            "revoked"
        };
        println!(
            "{}  {}  {}  {}  {state}",
            text(&l["id"]),
            text(&l["name"]),
            text(&l["person"]),
            hcs.join(",")
        );
    }
    Ok(())
}

/// The audit trail since an RFC 3339 time, one event a line.
async fn audit(connection: &AdminConnection, since: Option<&str>) -> anyhow::Result<()> {
    let rfc3339 = &time::format_description::well_known::Rfc3339;
    let since_ms = match since {
        Some(s) => {
            let t = time::OffsetDateTime::parse(s, rfc3339)
                .with_context(|| format!("--since '{s}' is not RFC 3339"))?;
            (t.unix_timestamp_nanos() / 1_000_000).max(0) as u64
        }
        None => 0,
    };
    let path = format!("/audit?since_ms={since_ms}");
    let rows = call(connection, "GET", &path, None).await?;
    for row in rows.as_array().into_iter().flatten() {
        let at = row["at_ms"].as_u64().unwrap_or(0);
        let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(at) * 1_000_000)
            .ok()
            .and_then(|t| t.format(rfc3339).ok())
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

async fn person(command: PersonCommand) -> anyhow::Result<()> {
    let (connection, method, path, body) = match command {
        PersonCommand::Token { name, connection } => {
            let path = format!("/persons/{}/tokens", segment(&name));
            let reply = call(&connection, "POST", &path, None).await?;
            println!("{}", text(&reply["token"]));
            return Ok(());
        }
        PersonCommand::Add {
            name,
            password_env,
            connection,
        } => {
            let password = password(password_env.as_deref())?;
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
    print_persons(reply);
    Ok(())
}

/// A new person's password: from the named variable, or the first line of standard input
/// (never an argument, which other users could read).
fn password(env: Option<&str>) -> anyhow::Result<String> {
    match env {
        Some(var) => std::env::var(var).with_context(|| format!("--password-env {var} is not set")),
        None => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("reading the password from standard input")?;
            Ok(line.trim_end_matches(['\r', '\n']).to_owned())
        }
    }
}

/// One line per person: name, state, rights.
fn print_persons(reply: serde_json::Value) {
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
}

fn text(v: &serde_json::Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

fn segment(name: &str) -> String {
    relay_core::address::encode_name(name).replace('/', "%2F")
}

/// One call to `/$admin/v1{path}`; returns the JSON body or an error with the broker's
/// message and tracking id, and a hint.
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
    let header = match (&c.person_token, &c.sas_key_name, &c.sas_key) {
        (Some(token), _, _) => ("Authorization", format!("Bearer {token}")),
        (None, Some(key_name), Some(key)) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs();
            let audience = format!("{}/", http_base(endpoint));
            let token = relay_core::sas::create_token(&audience, key_name, key, now + 300);
            ("ServiceBusAuthorization", token)
        }
        _ => bail!(
            "--sas-key-name and --sas-key (or RELAY_SAS_KEY_NAME / RELAY_SAS_KEY), or --person-token, are required"
        ),
    };
    let url = format!("{}{}{path}", ws_base(endpoint), relay_broker::admin::PREFIX);
    let reply = relay_cli::http::call(
        &url,
        method,
        &[(header.0, &header.1)],
        body.as_ref(),
        c.ca_cert.as_deref(),
    )
    .await?;
    if !(200..300).contains(&reply.status) {
        let hint = match (reply.status, c.person_token.is_some()) {
            (401, false) => " (check --sas-key-name and --sas-key)",
            (401, true) => " (the personal API token is wrong, or its person is disabled)",
            (403, false) => " (the rule needs the Manage right for the whole namespace)",
            (403, true) => " (the person lacks the right this needs)",
            _ => "",
        };
        bail!("{} from broker: {}{hint}", reply.status, reply.message());
    }
    Ok(reply.json)
}
