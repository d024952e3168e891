//! TLS to PostgreSQL: libpq's sslmodes, CA and name checks, client certificates, and
//! passwords kept out of errors.

use super::certs::{make_ca, make_leaf, write_file, write_in};
use crate::support::{settings, temp_dir};
use jetscale::config::StoreSettings;
use jetscale::dev::{PostgresCluster, PostgresOptions};
use std::time::{Duration, Instant};

fn store_settings(url: &str) -> StoreSettings {
    let mut s = settings("nats://127.0.0.1:1", url).store;
    s.url = url.to_owned();
    s
}

async fn pg_connect(
    url: &str,
) -> Result<tokio_postgres::Client, jetscale::exporters::postgres::StoreError> {
    tokio::time::timeout(
        Duration::from_secs(15),
        jetscale::exporters::postgres::connect(&store_settings(url)),
    )
    .await
    .expect("connect attempt finished in time")
}

async fn uses_tls(client: &tokio_postgres::Client) -> bool {
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("pg_stat_ssl")
        .get(0)
}

/// `require` with the right CA and `verify-full` succeed over TLS; a wrong CA, a name
/// mismatch, a missing or foreign client certificate and a world-readable key fail; errors
/// never carry the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tls_sslmodes_and_client_certificates() {
    let dir = temp_dir();
    let pg = PostgresCluster::start(PostgresOptions {
        dir: dir.path().join("pg"),
        port: None,
    })
    .await
    .expect("private PostgreSQL");
    let port = pg.port();
    let ca = make_ca("jetscale test CA");
    let other_ca = make_ca("someone else's CA");
    // The server's certificate names db.internal only: verify-full must be told that name
    // (host=db.internal hostaddr=127.0.0.1), and fails for 127.0.0.1.
    let (server_cert, server_key) = make_leaf(&ca, "db.internal", &["db.internal"], &[], false);
    let data = pg.data_dir().to_path_buf();
    let owner = {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&data).expect("data dir");
        (meta.uid(), meta.gid())
    };
    let ca_pem = ca.pem();
    for (name, contents, mode) in [
        ("server.crt", server_cert.as_str(), 0o644),
        ("server.key", server_key.as_str(), 0o600),
        ("root.crt", ca_pem.as_str(), 0o644),
    ] {
        let path = data.join(name);
        write_file(&path, contents, mode);
        std::os::unix::fs::chown(&path, Some(owner.0), Some(owner.1)).expect("chown");
    }
    let hba = data.join("pg_hba.conf");
    let original = std::fs::read_to_string(&hba).expect("pg_hba.conf");
    std::fs::write(
        &hba,
        format!("hostssl all certuser 127.0.0.1/32 cert\nhost all certuser 127.0.0.1/32 reject\n{original}"),
    )
    .expect("write pg_hba.conf");
    let admin = pg.connect("postgres").await.expect("superuser");
    for sql in [
        "CREATE ROLE certuser LOGIN",
        "ALTER SYSTEM SET ssl = on",
        "ALTER SYSTEM SET ssl_cert_file = 'server.crt'",
        "ALTER SYSTEM SET ssl_key_file = 'server.key'",
        "ALTER SYSTEM SET ssl_ca_file = 'root.crt'",
        "SELECT pg_reload_conf()",
    ] {
        admin.batch_execute(sql).await.expect(sql);
    }

    let files = temp_dir();
    let dir = files.path();
    let ca_s = write_in(dir, "ca.pem", &ca.pem(), 0o644);
    let wrong_s = write_in(dir, "other-ca.pem", &other_ca.pem(), 0o644);
    let (client_cert, client_key) = make_leaf(&ca, "certuser", &[], &[], true);
    let cert_s = write_in(dir, "client.crt", &client_cert, 0o644);
    let key_s = write_in(dir, "client.key", &client_key, 0o600);
    let (foreign_cert, foreign_key) = make_leaf(&other_ca, "certuser", &[], &[], true);
    let foreign_cert_s = write_in(dir, "foreign.crt", &foreign_cert, 0o644);
    let foreign_key_s = write_in(dir, "foreign.key", &foreign_key, 0o600);
    let open_key_s = write_in(dir, "open.key", &client_key, 0o644);

    // The reload is asynchronous: wait until the server offers TLS.
    let require = format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=require");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match pg_connect(&require).await {
            Ok(client) if uses_tls(&client).await => break,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Ok(_) => panic!("server never offered TLS"),
            Err(e) => panic!("sslmode=require never connected: {e}"),
        }
    }

    // disable: plain; prefer (the default): TLS when offered; require: TLS, unverified.
    let plain = pg_connect(&format!(
        "postgres://postgres@127.0.0.1:{port}/postgres?sslmode=disable"
    ))
    .await
    .expect("sslmode=disable");
    assert!(!uses_tls(&plain).await);
    let preferred = pg_connect(&format!("postgres://postgres@127.0.0.1:{port}/postgres"))
        .await
        .expect("default sslmode");
    assert!(
        uses_tls(&preferred).await,
        "prefer must use TLS when offered"
    );

    // verify-full with the right CA and the certificate's name.
    let full = format!(
        "host=db.internal hostaddr=127.0.0.1 port={port} user=postgres dbname=postgres sslmode=verify-full sslrootcert={ca_s}"
    );
    let verified = pg_connect(&full)
        .await
        .expect("verify-full with the right CA");
    assert!(uses_tls(&verified).await);

    // verify-full with a CA that did not sign the server's certificate.
    let err = pg_connect(&format!(
        "host=db.internal hostaddr=127.0.0.1 port={port} user=postgres password=hunter2 dbname=postgres sslmode=verify-full sslrootcert={wrong_s}"
    ))
    .await
    .expect_err("verify-full with a wrong CA must fail");
    let text = format!("{err} {err:?}");
    assert!(
        text.to_lowercase().contains("certificate") || text.contains("UnknownIssuer"),
        "{text}"
    );
    assert!(
        !err.to_string().contains("hunter2"),
        "password leaked: {err}"
    );
    // Same over a URL with a password in it.
    let err = pg_connect(&format!(
        "postgres://postgres:hunter2@127.0.0.1:{port}/postgres?sslmode=verify-ca&sslrootcert={wrong_s}"
    ))
    .await
    .expect_err("verify-ca with a wrong CA must fail");
    assert!(
        !err.to_string().contains("hunter2"),
        "password leaked: {err}"
    );

    // verify-full checks the name: 127.0.0.1 is not in the certificate; verify-ca does not.
    let by_ip = format!(
        "postgres://postgres@127.0.0.1:{port}/postgres?sslmode=verify-full&sslrootcert={ca_s}"
    );
    let err = pg_connect(&by_ip)
        .await
        .expect_err("name mismatch must fail");
    let text = format!("{err} {err:?}");
    assert!(
        text.contains("NotValidForName") || text.to_lowercase().contains("not valid for name"),
        "{text}"
    );
    let ca_only = pg_connect(&by_ip.replace("verify-full", "verify-ca"))
        .await
        .expect("verify-ca ignores the name");
    assert!(uses_tls(&ca_only).await);

    // Client certificates: certuser may only log in over TLS with a certificate of our CA.
    let with_cert = format!(
        "host=db.internal hostaddr=127.0.0.1 port={port} user=certuser dbname=postgres sslmode=verify-full sslrootcert={ca_s} sslcert={cert_s} sslkey={key_s}"
    );
    let as_certuser = pg_connect(&with_cert)
        .await
        .expect("client certificate login");
    let who: String = as_certuser
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("current_user")
        .get(0);
    assert_eq!(who, "certuser");
    let no_cert = format!(
        "host=db.internal hostaddr=127.0.0.1 port={port} user=certuser dbname=postgres sslmode=verify-full sslrootcert={ca_s}"
    );
    assert!(
        pg_connect(&no_cert).await.is_err(),
        "login without a client certificate"
    );
    let foreign = with_cert
        .replace(&cert_s, &foreign_cert_s)
        .replace(&key_s, &foreign_key_s);
    assert!(
        pg_connect(&foreign).await.is_err(),
        "a certificate of another CA"
    );
    assert!(
        pg_connect(&format!(
            "postgres://certuser@127.0.0.1:{port}/postgres?sslmode=disable"
        ))
        .await
        .is_err(),
        "certuser over plain TCP"
    );
    let err = pg_connect(&with_cert.replace(&key_s, &open_key_s))
        .await
        .expect_err("a world-readable key is refused");
    assert!(err.to_string().contains("chmod 600"), "{err}");
}
