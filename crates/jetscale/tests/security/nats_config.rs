//! `jetscale nats-config` and what it replaces: the IoT pipeline design's `authorization`
//! block as a regression, password references, and a CLI that prints no secret.

use super::peer::{spec, Peer};
use super::temperature;
use crate::support::{self, jetscale, nats_with, now_ns, run_collector, settings, succeeds};
use async_nats::jetstream;
use jetscale::pipeline::RunOptions;
use jetscale::receivers::nats::authz::{self, AuthzSpec, PasswordMode};
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Regression: the IoT pipeline design's `authorization` block as written. Its quoted
/// `"$VAR"` passwords are literal strings; its collector cannot pull from a JetStream consumer
/// (`permissions violation for subscription to "_INBOX…"`) so the real pipeline fails;
/// its device can read every other device's data; and its collector can even delete the
/// stream blind. `jetscale nats-config` exists because of this.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_authorization_block_breaks_the_collector() {
    const DESIGN_BLOCK: &str = r#"
authorization {
  users = [
    { user: "device", password: "$DEVICE_PASSWORD",
      permissions: { publish: "telemetry.>" } },
    { user: "collector", password: "$COLLECTOR_PASSWORD",
      permissions: { subscribe: "telemetry.>" } }
  ]
}
"#;
    let nats = nats_with(DESIGN_BLOCK).await;
    let port = nats.server.port();
    // The passwords are the literal strings `$DEVICE_PASSWORD` / `$COLLECTOR_PASSWORD`.
    let collector = Peer::connect(&nats, "collector", "$COLLECTOR_PASSWORD").await;
    // The collector may publish anything: creating the stream blind works.
    let config = json!({"name": "TELEMETRY", "subjects": ["telemetry.>"], "retention": "limits",
        "storage": "file", "num_replicas": 1, "discard": "old", "max_age": 0, "max_bytes": -1,
        "max_msgs": -1, "max_consumers": -1, "max_msg_size": -1, "max_msgs_per_subject": -1});
    collector
        .nc
        .publish("$JS.API.STREAM.CREATE.TELEMETRY", config.to_string().into())
        .await
        .expect("publish");
    collector.nc.flush().await.expect("flush");

    let device = Peer::connect(&nats, "device", "$DEVICE_PASSWORD").await;
    let device_js = jetstream::new(device.nc.clone());
    // Flaw 1: any device reads every device's data (only publish was restricted).
    let mut snoop = device.nc.subscribe("telemetry.>").await.expect("subscribe");
    let mut attempts = 0;
    let ack = loop {
        match device_js
            .publish(
                "telemetry.metrics.sensor-002",
                temperature("sensor-002", now_ns()).into(),
            )
            .await
            .expect("publish")
            .await
        {
            Ok(ack) => break ack,
            Err(_) if attempts < 20 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the stream was never created: {e}"),
        }
    };
    assert_eq!(ack.stream, "TELEMETRY");
    let stolen = tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut snoop))
        .await
        .expect("the block lets a device read another device's message")
        .expect("message");
    assert_eq!(stolen.subject.as_str(), "telemetry.metrics.sensor-002");

    // Flaw 2: the collector cannot consume: the real pipeline fails.
    let database = support::fresh_database("seed_authz").await;
    let mut s = settings(
        &format!("nats://collector:$COLLECTOR_PASSWORD@127.0.0.1:{port}"),
        &database,
    );
    s.consumer.name = "otel-collector".into();
    let options = RunOptions {
        exit_when_idle: Some(Duration::from_secs(1)),
        ..Default::default()
    };
    let err = run_collector(&s, &options, Duration::from_secs(60))
        .await
        .expect_err("the block's collector must not be able to consume");
    assert!(err.to_string().contains("JetStream"), "{err}");
    // ... because every JetStream reply goes to an inbox it may not subscribe to.
    let probe = Peer::connect(&nats, "collector", "$COLLECTOR_PASSWORD").await;
    assert!(probe.js().get_stream("TELEMETRY").await.is_err());
    probe.expect_violation("subscription", "_INBOX.").await;
    // The table may not even exist: nothing was stored either way.
    let rows: i64 = support::db(&database)
        .await
        .query_one("SELECT count(*) FROM iot_metrics", &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or(0);
    assert_eq!(rows, 0);

    // Flaw 3: the collector deletes the stream without reading any reply.
    collector
        .nc
        .publish("$JS.API.STREAM.DELETE.TELEMETRY", "".into())
        .await
        .expect("publish");
    collector.nc.flush().await.expect("flush");
    let mut short = jetstream::new(device.nc.clone());
    short.set_timeout(Duration::from_secs(1));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let published = match short
            .publish("telemetry.metrics.sensor-001", "{}".into())
            .await
        {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        };
        if !published {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stream survived the block's collector"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// nats-server resolves an *unquoted* `$VAR` password from its environment (the form
/// `jetscale nats-config` writes) and takes a quoted `"$VAR"` (the IoT pipeline design's form)
/// literally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_password_references_resolve_and_quoted_ones_are_literal() {
    let generated = authz::generate(
        &AuthzSpec {
            passwords: PasswordMode::EnvRefs,
            ..spec(None, "jetscale")
        },
        &|_| None,
    )
    .expect("generate");
    let dir = support::temp_dir();
    let port = jetscale::dev::free_port();
    let conf = dir.path().join("nats.conf");
    std::fs::write(
        &conf,
        format!("listen: 127.0.0.1:{port}\n{}", generated.config),
    )
    .expect("write config");
    let binary = [
        "nats-server",
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| {
        std::process::Command::new(p)
            .arg("--version")
            .output()
            .is_ok()
    })
    .expect("nats-server installed");
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let log = std::fs::File::create(dir.path().join("nats.log")).expect("log");
    let _server = Killed(
        std::process::Command::new(binary)
            .arg("-c")
            .arg(&conf)
            .env("DEVICE_PASSWORD", "from-the-environment")
            .env("COLLECTOR_PASSWORD", "collector-env")
            .env("ADMIN_PASSWORD", "admin-env")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start nats-server"),
    );
    let url = format!("nats://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let client = loop {
        match async_nats::ConnectOptions::with_user_and_password(
            "device".into(),
            "from-the-environment".into(),
        )
        .connect(&url)
        .await
        {
            Ok(c) => break c,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "device login with the env password: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    client.flush().await.expect("flush");
    let literal = async_nats::ConnectOptions::with_user_and_password(
        "device".into(),
        "$DEVICE_PASSWORD".into(),
    )
    .connect(&url)
    .await;
    assert!(literal.is_err(), "the variable name is not the password");
}

/// The CLI never prints a secret it was not asked to: `env` mode writes references only,
/// `bcrypt` writes hashes, and `--help` shows no environment values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_config_cli_prints_no_secret() {
    let run = |args: &[&str]| {
        let mut cmd = jetscale(args);
        cmd.env("DEVICE_PASSWORD", "s3cret-device")
            .env("COLLECTOR_PASSWORD", "s3cret-collector")
            .env("ADMIN_PASSWORD", "s3cret-admin")
            .env(
                "JETSCALE_NATS_URL",
                "nats://collector:s3cret-url@127.0.0.1:4999",
            );
        cmd
    };
    let text = succeeds(&mut run(&["nats-config"])).await;
    assert!(text.contains("password: $DEVICE_PASSWORD,"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
    let bcrypt = ["nats-config", "--passwords", "bcrypt", "--bcrypt-cost", "4"];
    let text = succeeds(&mut run(&bcrypt)).await;
    assert!(text.contains("\"$2a$04$"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
    for args in [
        &["--help"][..],
        &["nats-config", "--help"],
        &["collect", "--help"],
    ] {
        let out = run(args).output().await.expect("run jetscale");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!all.contains("s3cret"), "{args:?}: {all}");
    }
    let out = run(&["nats-config", "--per-device", "--device", "bad.id"])
        .output()
        .await
        .expect("run jetscale");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.id"));
}
