// The `config` fuzz target's checks, shared with
// daemon/tests/fuzz_regressions.rs (included, not a module of its own).

/// The daemon's TOML config: parse, then every derived setting, and an
/// instant plus every timeout it gives (an operator's absurd number is
/// bounded, never a panic).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(loaded) = ringstar_daemon::config::Config::parse(text) else {
        return;
    };
    let c = loaded.config;
    let now = std::time::Instant::now();
    let mut timeouts = vec![c.prefetch_timeout(), c.unused_layer_ttl()];
    timeouts.extend(c.request_timeout());
    for mirrors in c.resolver_config().mirrors.values() {
        timeouts.extend(mirrors.iter().filter_map(|m| m.request_timeout));
    }
    for t in timeouts {
        assert!(now.checked_add(t).is_some(), "{t:?}");
    }
    let _ = (c.passthrough(), c.allow_invalid_mounts_on_restart());
}
