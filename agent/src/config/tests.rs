use super::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn example_config_parses() {
    let text = include_str!("../../../config/example.toml");
    let config = Config::parse(text, "config/example.toml").expect("example is valid");
    assert_eq!(config.raw.sync, SyncConfig::default());
    assert_eq!(config.raw.network, NetworkConfig::default());
    assert_eq!(config.raw.api, ApiConfig::default());
    assert_eq!(config.raw.storage, StorageConfig::default());
}

#[test]
fn minimal_config_takes_defaults_and_round_trips() {
    let text = format!("[cluster]\nsecret = \"{SECRET}\"\n");
    let config = Config::parse(&text, "t").expect("valid");
    assert_eq!(config.raw.cluster.name, "default");
    let again = Config::parse(&config.raw.to_toml(), "t").expect("round trip");
    assert_eq!(again.raw, config.raw);
}

#[test]
fn tags_and_a_storage_limit_parse() {
    let text = format!(
        "[cluster]\nsecret = \"{SECRET}\"\ntags = {{ region = \"eu\", rack = \"b2\" }}\n\
         [ipfs]\nstorage_max = \"500 GB\"\n"
    );
    let config = Config::parse(&text, "t").expect("valid");
    assert_eq!(config.raw.cluster.tags["region"], "eu");
    assert_eq!(config.raw.cluster.tags["rack"], "b2");
    assert_eq!(
        config.raw.cluster.metrics_interval,
        DEFAULT_METRICS_INTERVAL
    );
    let max = config.raw.ipfs.storage_max.expect("storage_max");
    assert_eq!(max.as_u64(), 500_000_000_000);
    let again = Config::parse(&config.raw.to_toml(), "t").expect("round trip");
    assert_eq!(again.raw, config.raw);
}

#[test]
fn bad_configs_get_clear_errors() {
    let cases = [
        ("[cluster]\nsecret = \"abc\"\n", "64 hexadecimal digits"),
        (
            &format!("[cluster]\nsecret = \"{SECRET}\"\nsurprise = 1\n"),
            "unknown field",
        ),
        (
            &format!(
                "[cluster]\nsecret = \"{SECRET}\"\n[network]\nlisten = [\"/ip4/1.2.3.4/udp/1\"]\n"
            ),
            "must be /ip4",
        ),
        (
            &format!(
                "[cluster]\nsecret = \"{SECRET}\"\n[network]\nbootstrap = [\"/ip4/1.2.3.4/tcp/1\"]\n"
            ),
            "must end with /p2p/",
        ),
        (
            &format!("[cluster]\nsecret = \"{SECRET}\"\n[api]\nlisten = \"nowhere\"\n"),
            "api.listen",
        ),
        (
            &format!("[cluster]\nsecret = \"{SECRET}\"\n[sync]\nbeacon_interval = \"soon\"\n"),
            "beacon_interval",
        ),
        ("[cluster\n", "t"),
        (
            &format!("[cluster]\nsecret = \"{SECRET}\"\nmetrics_interval = \"10ms\"\n"),
            "cluster.metrics_interval must be at least 100ms",
        ),
        (
            &format!("[cluster]\nsecret = \"{SECRET}\"\ntags = {{ \"\" = \"eu\" }}\n"),
            "cluster.tags",
        ),
        (
            &format!("[cluster]\nsecret = \"{SECRET}\"\n[ipfs]\nstorage_max = \"lots\"\n"),
            "storage_max",
        ),
    ];
    for (text, needle) in cases {
        let err = Config::parse(text, "t").expect_err(text).to_string();
        assert!(err.contains(needle), "{text:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}
