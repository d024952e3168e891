//! TLS to NATS with a custom CA and client certificates.

use super::certs::{make_ca, make_leaf, write_in};
use crate::support::{nats_with, settings, temp_dir};
use jetscale::config::TlsFiles;
use std::time::Duration;

/// A nats-server with `tls { verify: true }`: jetscale's connect succeeds with the CA and
/// a client certificate, and fails without TLS, with a wrong CA, or without / with a foreign
/// client certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_tls_with_custom_ca_and_client_certificates() {
    let files = temp_dir();
    let ca = make_ca("jetscale NATS CA");
    let other_ca = make_ca("another NATS CA");
    let (server_cert, server_key) = make_leaf(&ca, "nats", &["localhost"], &["127.0.0.1"], false);
    let (client_cert, client_key) = make_leaf(&ca, "collector", &[], &[], true);
    let (foreign_cert, foreign_key) = make_leaf(&other_ca, "collector", &[], &[], true);
    let file = |name: &str, contents: &str, mode: u32| write_in(files.path(), name, contents, mode);
    let ca_file = file("ca.pem", &ca.pem(), 0o644);
    let other_ca_file = file("other-ca.pem", &other_ca.pem(), 0o644);
    let server_cert_file = file("server.crt", &server_cert, 0o644);
    let server_key_file = file("server.key", &server_key, 0o600);
    let client_cert_file = file("client.crt", &client_cert, 0o644);
    let client_key_file = file("client.key", &client_key, 0o600);
    let foreign_cert_file = file("foreign.crt", &foreign_cert, 0o644);
    let foreign_key_file = file("foreign.key", &foreign_key, 0o600);
    let nats = nats_with(&format!(
        "tls {{\n  cert_file: \"{server_cert_file}\"\n  key_file: \"{server_key_file}\"\n  ca_file: \"{ca_file}\"\n  verify: true\n  timeout: 2\n}}\n"
    ))
    .await;
    let base = settings(&nats.server.url(), "postgres://unused@127.0.0.1:1/x").nats;
    let with_tls = |ca: &str, cert: Option<(&str, &str)>| {
        let mut s = base.clone();
        s.tls = Some(TlsFiles {
            ca_file: Some(ca.to_owned()),
            cert_file: cert.map(|c| c.0.to_owned()),
            key_file: cert.map(|c| c.1.to_owned()),
        });
        s
    };

    let good = with_tls(&ca_file, Some((&client_cert_file, &client_key_file)));
    let client = jetscale::receivers::nats::connect(&good, "tls-test")
        .await
        .expect("TLS with our CA and a client certificate");
    let mut sub = client.subscribe("tls.check").await.expect("subscribe");
    client
        .publish("tls.check", "over tls".into())
        .await
        .expect("publish");
    let msg = tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut sub))
        .await
        .expect("message in time")
        .expect("message");
    assert_eq!(&msg.payload[..], b"over tls");

    let refused = [
        ("no TLS at all", base.clone()),
        (
            "a CA that did not sign the server",
            with_tls(&other_ca_file, Some((&client_cert_file, &client_key_file))),
        ),
        ("no client certificate", with_tls(&ca_file, None)),
        (
            "a client certificate of another CA",
            with_tls(&ca_file, Some((&foreign_cert_file, &foreign_key_file))),
        ),
    ];
    for (what, s) in refused {
        let outcome = tokio::time::timeout(
            Duration::from_secs(20),
            jetscale::receivers::nats::connect(&s, "tls-test"),
        )
        .await
        .expect("connect attempt finished in time");
        assert!(outcome.is_err(), "{what}: connection accepted");
    }
}
