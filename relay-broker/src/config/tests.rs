use relay_core::sas::Rights;

use super::*;

const FULL: &str = r#"
[server]
bind = "127.0.0.1:0"
[limits]
accept_timeout_secs = 2
[[hybrid_connections]]
name = "a/b"
[[hybrid_connections]]
name = "open"
requires_client_authorization = false
[[authorization_rules]]
name = "root"
key = "k"
rights = ["Manage"]
[[authorization_rules]]
name = "l"
key = "k2"
rights = ["Listen"]
hybrid_connection = "a/b"
"#;

#[test]
fn parses_the_contract_example() {
    let c = BrokerConfig::parse(FULL, "t").unwrap();
    assert_eq!(c.limits.accept_timeout, Duration::from_secs(2));
    assert_eq!(c.limits.max_listeners_per_hc, 25);
    assert!(!c.hybrid_connections[1].requires_client_authorization);
    assert!(c.rules[0].rights.contains(Rights::LISTEN));
    assert_eq!(c.rules[1].hybrid_connection.as_deref(), Some("a/b"));
}

#[test]
fn errors_name_the_key() {
    let err = |text: &str| BrokerConfig::parse(text, "f.toml").unwrap_err().to_string();
    assert!(err("[limits]\nbogus = 1").contains("bogus"));
    assert!(err("[server]\nport = 1").contains("port"));
    let both = "[[authorization_rules]]\nname='r'\nkey='k'\nkey_env='X'\nrights=['Send']";
    assert!(err(both).contains("key or key_env, not both"));
    assert!(err("[limits]\naccept_timeout_secs = -1").contains("accept_timeout_secs"));
    assert!(err("[server]\ntls_cert = 'c.pem'").contains("tls_key"));
    let scoped =
        "[[authorization_rules]]\nname='r'\nkey='k'\nrights=['Send']\nhybrid_connection='nope'";
    assert!(err(scoped).contains("'nope' is not defined"));
    assert!(
        err("[[authorization_rules]]\nname='r'\nkey='k'\nrights=['Read']")
            .contains("unknown right")
    );
}

#[test]
fn store_and_ca_sections() {
    let c = BrokerConfig::parse(
        "[store]\npath = 'data/relay.db'\n[ca]\ndir = 'data/ca'\ncert_lifetime_hours = 24",
        "t",
    )
    .unwrap();
    assert!(matches!(&c.store, Some(StoreLocation::Sqlite(p)) if p == Path::new("data/relay.db")));
    let ca = c.ca.unwrap();
    assert_eq!(
        (ca.cert_lifetime, ca.trust_domain.as_str()),
        (Duration::from_secs(86_400), "relay")
    );
    let err = BrokerConfig::parse("[ca]\ndir = 'x'\ncert_lifetime_hours = 0.1", "t").unwrap_err();
    assert!(err.to_string().contains("cert_lifetime_hours"));
    assert!(
        BrokerConfig::parse("[store]\nfile = 'x'", "t")
            .unwrap_err()
            .to_string()
            .contains("file")
    );
}

#[test]
fn reserved_names_are_refused() {
    let err = BrokerConfig::parse("[[hybrid_connections]]\nname = 'metrics'", "t").unwrap_err();
    assert!(err.to_string().contains("reserved"), "{err}");
}

#[test]
fn host_mode_is_validated() {
    let c = BrokerConfig::parse(
        "[server]\nhost_base = '*.relay.example.com'\n[[server.hosts]]\nname = 'Site-7-UI'\nhybrid_connection = 'site-7/ui'",
        "t",
    )
    .unwrap();
    let hosts = c.hosts.unwrap();
    assert_eq!(hosts.hc_for("site-7-ui"), "site-7/ui");
    assert_eq!(hosts.hc_for("a--b"), "a/b");
    let err = |text: &str| BrokerConfig::parse(text, "f.toml").unwrap_err().to_string();
    assert!(err("[server]\nhost_base = 'relay.example.com'").contains("host_base"));
    assert!(err("[[server.hosts]]\nname = 'a'\nhybrid_connection = 'a'").contains("host_base"));
    let table = |name: &str| {
        format!(
            "[server]\nhost_base = '*.r.example'\n[[server.hosts]]\nname = '{name}'\nhybrid_connection = 'x'"
        )
    };
    assert!(err(&table("a.b")).contains("DNS label"));
    assert!(err(&table("-a")).contains("DNS label"));
    assert!(err("[limits]\nbrowser_session_secs = 0").contains("browser_session_secs"));
}

#[test]
fn empty_file_gives_defaults() {
    let c = BrokerConfig::parse("", "t").unwrap();
    assert_eq!(c.bind.to_string(), "127.0.0.1:9400");
    assert!(c.tls.is_none() && c.rules.is_empty());
}

#[test]
fn the_store_is_a_file_or_a_postgres_url() {
    let parse = |text: &str| BrokerConfig::parse(text, "t").map(|c| c.store);
    let err = |text: &str| parse(text).unwrap_err().to_string();
    let Some(StoreLocation::Postgres(url)) =
        parse("[store]\nurl = 'postgres://relay:s3cret@db.example.com:5433/relay'").unwrap()
    else {
        panic!("a PostgreSQL URL");
    };
    assert_eq!(url.get_dbname(), Some("relay"));
    assert_eq!(url.get_ports(), &[5433]);
    assert!(
        !format!("{url:?}").contains("s3cret"),
        "the password stays out of logs"
    );
    assert!(err("[store]\npath = 'a.db'\nurl = 'postgres://h/db'").contains("not both"));
    assert!(err("[store]\n").contains("path = \"relay.db\""));
    assert!(err("[store]\nurl = 'mysql://h/db'").contains("must start with postgres://"));
    assert!(err("[store]\nurl = 'postgres://h'").contains("names no database"));
    assert!(err("[store]\nurl = 'postgres://h/db?sslmode=require'").contains("sslmode=require"));
    assert!(
        err("[store]\nurl = 'postgres://h/db'\npassword_env = 'RELAY_TEST_UNSET_PG_PASSWORD'")
            .contains("RELAY_TEST_UNSET_PG_PASSWORD")
    );
    assert!(err("[store]\npath = 'a.db'\npassword_env = 'X'").contains("goes with url"));
}

#[test]
fn cluster_sections_are_validated_and_each_error_names_its_key_and_fix() {
    let store = "[store]\nurl = 'postgres://relay@db/relay'\n";
    let good = "[cluster]\nnode_id = 'b1'\nnats = ['nats://127.0.0.1:4222', 'nats://10.0.0.6:4222']\npeer_bind = '127.0.0.1:9410'\nsecret = '0123456789abcdef0123'\n";
    let c = BrokerConfig::parse(&format!("{good}{store}"), "t").unwrap();
    let cluster = c.cluster.unwrap();
    assert_eq!(cluster.node_id, "b1");
    assert_eq!(cluster.nats.len(), 2);
    assert_eq!(cluster.peer_address, cluster.peer_bind);
    assert!(cluster.advertise_url.is_none());
    assert!(
        !format!("{cluster:?}").contains("0123456789abcdef"),
        "Debug hides the secret"
    );
    let err = |text: &str| {
        BrokerConfig::parse(&format!("{text}{store}"), "f.toml")
            .unwrap_err()
            .to_string()
    };
    let cases: &[(&str, &str, &str)] = &[
        ("node_id = 'b1'", "node_id = 'B_1'", "[cluster].node_id"),
        (
            "nats = ['nats://127.0.0.1:4222', 'nats://10.0.0.6:4222']",
            "nats = []",
            "[cluster].nats needs",
        ),
        (
            "nats = ['nats://127.0.0.1:4222', 'nats://10.0.0.6:4222']",
            "nats = ['tls://x:1']",
            "must start with nats://",
        ),
        (
            "peer_bind = '127.0.0.1:9410'",
            "peer_bind = 'nowhere'",
            "[cluster].peer_bind",
        ),
        (
            "peer_bind = '127.0.0.1:9410'",
            "peer_bind = '0.0.0.0:9410'",
            "set peer_address",
        ),
        (
            "secret = '0123456789abcdef0123'",
            "secret = 'short'",
            "at least 16 bytes",
        ),
        (
            "secret = '0123456789abcdef0123'",
            "secret_env = 'RELAY_TEST_UNSET_SECRET_VAR'",
            "RELAY_TEST_UNSET_SECRET_VAR",
        ),
        ("secret = '0123456789abcdef0123'", "", "needs secret_env"),
        (
            "node_id = 'b1'",
            "node_id = 'b1'\nadvertise_url = 'http://b1:9400'",
            "[cluster].advertise_url",
        ),
        ("node_id = 'b1'", "node_id = 'b1'\nbogus = 1", "bogus"),
    ];
    for (from, to, expected) in cases {
        let text = good.replace(from, to);
        let message = err(&text);
        assert!(message.contains(expected), "{to}: {message}");
    }
    let unspecified = good.replace(
        "peer_bind = '127.0.0.1:9410'",
        "peer_bind = '0.0.0.0:9410'\npeer_address = '10.0.0.7:9410'",
    );
    let c = BrokerConfig::parse(&format!("{unspecified}{store}"), "t").unwrap();
    assert_eq!(c.cluster.unwrap().peer_address.to_string(), "10.0.0.7:9410");
    // A cluster without the shared store would split its state.
    let message = BrokerConfig::parse(good, "t").unwrap_err().to_string();
    assert!(message.contains("url = \"postgres://"), "{message}");
    let message = BrokerConfig::parse(&format!("{good}[store]\npath = 'x.db'"), "t")
        .unwrap_err()
        .to_string();
    assert!(message.contains("[cluster] needs the store"), "{message}");
}
