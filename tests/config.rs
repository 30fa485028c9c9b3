//! Layered configuration of the example server: each layer overrides the one
//! below, and errors name the key and the layer it came from.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::process::server_binary;

/// Runs `server --print-config` in `dir` with `args` and `env`; returns
/// (success, stdout, stderr).
fn print_config(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = Command::new(server_binary());
    command.current_dir(dir).arg("--print-config").args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("DS_") {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    let output = command.output().expect("run server");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn port(stdout: &str) -> u16 {
    let table: toml::Table = stdout.parse().expect("printed TOML");
    table["server"]["port"].as_integer().expect("port") as u16
}

#[test]
fn each_layer_overrides_the_one_below() {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("config");
    fs::create_dir(&config).expect("config dir");
    let (ok, out, _) = print_config(dir.path(), &[], &[]);
    assert!(ok);
    assert_eq!(port(&out), 4437, "built-in default");

    fs::write(config.join("default.toml"), "[server]\nport = 1001\n").expect("write");
    assert_eq!(
        port(&print_config(dir.path(), &[], &[]).1),
        1001,
        "config/default.toml"
    );

    fs::write(config.join("staging.toml"), "[server]\nport = 1002\n").expect("write");
    assert_eq!(
        port(&print_config(dir.path(), &["--profile", "staging"], &[]).1),
        1002,
        "profile"
    );

    fs::write(config.join("local.toml"), "[server]\nport = 1003\n").expect("write");
    assert_eq!(
        port(&print_config(dir.path(), &["--profile", "staging"], &[]).1),
        1003,
        "local.toml"
    );

    let extra = dir.path().join("extra.toml");
    fs::write(&extra, "[server]\nport = 1004\n").expect("write");
    let extra_arg = extra.to_str().expect("utf-8 path");
    assert_eq!(
        port(
            &print_config(
                dir.path(),
                &["--profile", "staging", "--config", extra_arg],
                &[]
            )
            .1
        ),
        1004,
        "--config"
    );

    let (_, out, _) = print_config(
        dir.path(),
        &["--profile", "staging", "--config", extra_arg],
        &[("DS_SERVER__PORT", "1005")],
    );
    assert_eq!(port(&out), 1005, "environment");

    // Untouched keys keep their defaults.
    let table: toml::Table = out.parse().expect("toml");
    assert_eq!(table["storage"]["mode"].as_str(), Some("memory"));
}

#[test]
fn errors_name_the_key_and_its_source() {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("config");
    fs::create_dir(&config).expect("config dir");

    let (ok, _, err) = print_config(dir.path(), &[], &[("DS_SERVER__PORT", "abc")]);
    assert!(!ok);
    assert!(
        err.contains("server.port") && err.contains("DS_SERVER__PORT"),
        "{err}"
    );

    fs::write(config.join("local.toml"), "[storage]\nmodee = \"memory\"\n").expect("write");
    let (ok, _, err) = print_config(dir.path(), &[], &[]);
    assert!(!ok);
    assert!(
        err.contains("storage.modee") && err.contains("config/local.toml"),
        "{err}"
    );

    fs::write(config.join("local.toml"), "[storage]\nmode = \"tape\"\n").expect("write");
    let (_, _, err) = print_config(dir.path(), &[], &[]);
    assert!(
        err.contains("storage.mode") && err.contains("local.toml"),
        "{err}"
    );
    fs::remove_file(config.join("local.toml")).expect("rm");

    let (ok, _, err) = print_config(dir.path(), &[], &[("DS_STORAGE__ACID_SHARD_COUNT", "12")]);
    assert!(!ok);
    assert!(
        err.contains("storage.acid_shard_count") && err.contains("DS_STORAGE__ACID_SHARD_COUNT"),
        "{err}"
    );

    for (variable, key) in [
        ("DS_SERVER__SEND_BUFFER_BYTES", "server.send_buffer_bytes"),
        ("DS_LIMITS__MAX_RESPONSE_BYTES", "limits.max_response_bytes"),
        ("DS_LIMITS__MAX_READ_BYTES", "limits.max_read_bytes"),
    ] {
        let value = if key.starts_with("server") {
            "4294967295"
        } else {
            "0"
        };
        let (ok, _, err) = print_config(dir.path(), &[], &[(variable, value)]);
        assert!(!ok, "{variable}={value} was accepted");
        assert!(err.contains(key), "{err}");
    }

    let (ok, _, err) = print_config(dir.path(), &[], &[("DS_TLS__CERT_PATH", "/tmp/cert.pem")]);
    assert!(!ok);
    assert!(
        err.contains("tls.cert_path") && err.contains("tls.key_path"),
        "{err}"
    );

    let (ok, _, err) = print_config(dir.path(), &["--profile", "nope"], &[]);
    assert!(!ok);
    assert!(err.contains("--profile nope"), "{err}");
}

#[test]
fn the_log_filter_is_a_setting_that_rust_log_overrides() {
    let dir = tempfile::tempdir().expect("dir");
    let (ok, out, err) = print_config(
        dir.path(),
        &[],
        &[("DS_LOG__RUST_LOG", "warn,tower_durable_streams=debug")],
    );
    assert!(ok, "DS_LOG__RUST_LOG is a known setting: {err}");
    let table: toml::Table = out.parse().expect("printed TOML");
    assert_eq!(
        table["log"]["rust_log"].as_str(),
        Some("warn,tower_durable_streams=debug")
    );
    let (ok, _, err) = print_config(dir.path(), &[], &[("DS_LOG__RUST_LOG", "[=broken")]);
    assert!(!ok, "a broken filter stops the start");
    assert!(err.contains("log.rust_log"), "{err}");
    // RUST_LOG, when set, wins: the broken setting is never parsed.
    let mut command = Command::new(server_binary());
    command
        .current_dir(dir.path())
        .arg("--print-config")
        .env("DS_LOG__RUST_LOG", "[=broken")
        .env("RUST_LOG", "info");
    let output = command.output().expect("run server");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
