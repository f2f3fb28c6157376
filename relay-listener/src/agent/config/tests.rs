use super::*;

fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
    AgentConfig::parse(text, "agent.toml", Path::new("/etc/relay"), |v| {
        (v == "KEY").then(|| "secret".to_owned())
    })
}

const BROKER: &str =
    "[broker]\nendpoint = \"wss://r\"\nsas_key_name = \"n\"\nsas_key_env = \"KEY\"\n";

#[test]
fn a_full_file() {
    let c = parse(&format!(
        "{BROKER}ca_cert = \"ca.pem\"\nproxy = \"http://p:3128\"\n[agent]\nstatus_bind = \"127.0.0.1:9401\"\n\
         [[endpoints]]\nhc = \"db\"\ntcp = \"127.0.0.1:5432\"\nmax_connections = 4\nbandwidth_bytes_per_sec = 1000\n\
         [[endpoints]]\nhc = \"ui\"\nhttp = \"http://127.0.0.1:8080/\"\n\
         [[endpoints]]\nhc = \"edge\"\nports = {{ plc = \"10.0.0.5:502\" }}\n"
    ))
    .unwrap();
    assert!(matches!(&c.credentials, Credentials::Sas { key, .. } if key == "secret"));
    assert_eq!(c.ca_cert.as_deref(), Some(Path::new("/etc/relay/ca.pem")));
    assert_eq!(c.endpoints.len(), 3);
    assert_eq!(
        (c.endpoints[0].max_connections, c.endpoints[0].bandwidth),
        (4, Some(1000))
    );
    assert_eq!(c.endpoints[1].max_connections, DEFAULT_MAX_CONNECTIONS);
    assert!(matches!(&c.endpoints[2].target, Target::Ports(p) if p["plc"] == "10.0.0.5:502"));
    assert_eq!(c.shutdown_drain, Duration::from_secs(10));
}

#[test]
fn errors_name_the_key_and_the_fix() {
    let one = "[[endpoints]]\nhc = \"db\"\ntcp = \"127.0.0.1:1\"\n";
    for (text, needle) in [
        (format!("{BROKER}{one}{one}"), "appears twice"),
        (
            format!("{BROKER}[[endpoints]]\nhc = \"db\"\ntcp = \"x:1\"\nhttp = \"http://x\"\n"),
            "exactly one of",
        ),
        (
            format!("{BROKER}[[endpoints]]\nhc = \"db\"\ntcp = \"nohost\"\n"),
            "use host:port",
        ),
        (
            format!("{BROKER}[[endpoints]]\nhc = \"db\"\nhttp = \"ftp://x\"\n"),
            "http:// or https://",
        ),
        (
            format!("{BROKER}[[endpoints]]\nhc = \"db\"\ntcp = \"x:1\"\nmax_connections = 0\n"),
            "max_connections",
        ),
        (
            format!("{BROKER}[[endpoints]]\nhc = \"db\"\ntcp = \"x:1\"\nstandby = 9\n"),
            "standby",
        ),
        (
            format!("{BROKER}[[endpoints]]\nhc = \"db\"\ntcp = \"x:1\"\ncolour = 1\n"),
            "unknown field `colour`",
        ),
        (BROKER.to_owned(), "no [[endpoints]]"),
        (
            format!("[broker]\nendpoint = \"wss://r\"\n{one}"),
            "give identity",
        ),
        (
            format!(
                "[broker]\nendpoint = \"wss://r\"\nsas_key_name = \"n\"\nsas_key_env = \"NOPE\"\n{one}"
            ),
            "NOPE\": that variable is not set",
        ),
        (
            format!(
                "[broker]\nendpoint = \"wss://r\"\nidentity = \"i\"\nsas_key_name = \"n\"\n{one}"
            ),
            "one or the other",
        ),
        (
            format!("{BROKER}proof_of_possession = true\n{one}"),
            "needs identity",
        ),
        (
            format!("{BROKER}proxy = \"ftp://p\"\n{one}"),
            "[broker].proxy",
        ),
        (
            format!("{BROKER}[agent]\nstatus_bind = \"localhost\"\n{one}"),
            "status_bind",
        ),
    ] {
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.starts_with("agent.toml: ") && err.contains(needle),
            "{needle}: {err}"
        );
    }
}

#[test]
fn the_shipped_example_is_valid() {
    let example = include_str!("../../../../dist/systemd/agent.toml.example");
    let c = AgentConfig::parse(
        example,
        "agent.toml.example",
        Path::new("/etc/relay-agent"),
        |_| None,
    )
    .unwrap();
    assert_eq!(c.endpoints.len(), 2);
    assert!(matches!(
        &c.credentials,
        Credentials::Certificate {
            enrollment_token_file: Some(_),
            ..
        }
    ));
}

#[test]
fn identity_paths_are_relative_to_the_file() {
    let c = parse("[broker]\nendpoint = \"wss://r\"\nidentity = \"id\"\nproof_of_possession = true\n[[endpoints]]\nhc = \"a\"\ntcp = \"h:1\"\n").unwrap();
    assert!(matches!(
        &c.credentials,
        Credentials::Certificate { identity, proof_of_possession: true, .. } if identity == Path::new("/etc/relay/id")
    ));
}
