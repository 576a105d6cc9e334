//! TLS end to end: `parleyd gen-cert` makes a pair, the real `parleyd`
//! serves both listeners with it, and the real `parley` trusts it through
//! a CA file, a fingerprint, or trust on first use.

mod common;

use common::Harness;
use parley_testkit::{GeneratedCert, Store, gen_cert};

/// A harness whose server speaks TLS on both listeners with a fresh pair,
/// kept in the harness's home so that it lives as long as the test.
fn tls_harness(store: Store) -> (Harness, GeneratedCert, tempfile::TempDir) {
    let certs = tempfile::tempdir().expect("temp dir");
    let pair = gen_cert(&certs.path().join("first"));
    let flags = pair.tls_flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    (Harness::start_with(store, &flags), pair, certs)
}

fn tls_url(h: &Harness) -> String {
    format!("tls://{}", h.server.addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_send_and_read_over_tls_with_the_generated_certificate_as_ca() {
    let (h, pair, _certs) = tls_harness(Store::Sqlite);
    let server = tls_url(&h);
    let ca = pair.cert.display().to_string();
    for user in ["alice", "bob"] {
        let out = h.run_at(&server, user, &["--ca", &ca, "register"]).await.expect_code(0);
        assert!(out.stdout.contains(&format!("registered {user}")), "{out:#?}");
    }
    h.run_at(&server, "bob", &["--ca", &ca, "send", "alice", "over", "TLS"])
        .await
        .expect_code(0);
    let out = h.run_at(&server, "alice", &["--ca", &ca, "read"]).await.expect_code(0);
    assert!(
        out.stdout.contains("bob") && out.stdout.contains("over TLS"),
        "{out:#?}"
    );

    // The same through the environment, with the fingerprint gen-cert printed.
    let mut cmd = h.command();
    cmd.args(["login"])
        .env("PARLEY_SERVER", &server)
        .env("PARLEY_USER", "alice")
        .env("PARLEY_PASSWORD", "pw-alice")
        .env("PARLEY_FINGERPRINT", format!("SHA256:{}", pair.fingerprint));
    let out = common::finish(cmd, None).await.expect_code(0);
    assert!(out.stdout.contains("logged in as alice"), "{out:#?}");

    // Without a CA, the system roots do not know a self-signed certificate.
    let out = h.run_at(&server, "alice", &["login"]).await.expect_code(9);
    assert!(out.stderr.contains("TLS"), "{out:#?}");
    // A wrong fingerprint is refused before anything is sent.
    let wrong = format!("SHA256:{}", "00:".repeat(31) + "00");
    let out = h
        .run_at(&server, "alice", &["--fingerprint", &wrong, "--json", "login"])
        .await
        .expect_code(8);
    assert_eq!(out.json()["error"]["code"], "CERTIFICATE_CHANGED");
    // TLS on one side only: connect.rs.
    let plain = Harness::start(Store::Memory);
    // TLS options for a plaintext address are a usage error.
    plain.run("alice", &["--tofu", "login"]).await.expect_code(2);

    // The server kept serving through all of that.
    h.run_at(&server, "bob", &["--ca", &ca, "login"]).await.expect_code(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_on_first_use_pins_and_then_refuses_a_changed_certificate() {
    let (mut h, first, certs) = tls_harness(Store::Sqlite);
    let server = tls_url(&h);
    let known = h.config_dir().join("parley").join("known_servers");

    let out = h.run_at(&server, "carol", &["--tofu", "register"]).await.expect_code(0);
    assert!(
        out.stderr.contains("first contact") && out.stderr.contains(&first.fingerprint),
        "{out:#?}"
    );
    let pinned = std::fs::read_to_string(&known).expect("known_servers written");
    assert!(
        pinned.contains(&format!("{} SHA256:{}", h.server.addr, first.fingerprint)),
        "{pinned}"
    );
    // The second time, the pin is simply used.
    let out = h.run_at(&server, "carol", &["--tofu", "login"]).await.expect_code(0);
    assert!(!out.stderr.contains("first contact"), "{out:#?}");

    // The same server, data and port, with another certificate.
    let second = gen_cert(&certs.path().join("second"));
    assert_ne!(second.fingerprint, first.fingerprint);
    h.server.stop();
    let flags = second.tls_flags();
    h.server
        .restart_with(&flags.iter().map(String::as_str).collect::<Vec<_>>());
    let out = h.run_at(&server, "carol", &["--tofu", "login"]).await.expect_code(8);
    for expected in [
        "WARNING: THE SERVER'S CERTIFICATE HAS CHANGED!",
        "man-in-the-middle",
        &first.fingerprint,
        &second.fingerprint,
        &known.display().to_string(),
        "remove",
    ] {
        assert!(out.stderr.contains(expected), "{expected:?} missing: {out:#?}");
    }
    assert!(out.stderr.lines().count() > 5, "a loud warning: {out:#?}");
    assert!(!out.stdout.contains("logged in"), "{out:#?}");
    assert_eq!(std::fs::read_to_string(&known).unwrap(), pinned, "the pin is kept");

    // Accepting the new certificate: delete the line, connect again.
    let header: String = pinned
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&known, header).unwrap();
    let out = h.run_at(&server, "carol", &["--tofu", "login"]).await.expect_code(0);
    assert!(out.stderr.contains(&second.fingerprint), "{out:#?}");
    assert!(
        std::fs::read_to_string(&known).unwrap().contains(&second.fingerprint),
        "the new certificate is pinned"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_speaks_quic_with_the_same_trust_choices() {
    let certs = tempfile::tempdir().expect("temp dir");
    let pair = gen_cert(&certs.path().join("quic"));
    let mut flags = pair.tls_flags();
    flags.extend(["--quic-listen".to_owned(), "127.0.0.1:0".to_owned()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let h = Harness::start_with(Store::Sqlite, &flags);
    let quic = format!("quic://{}", h.server.quic_addr.as_deref().expect("QUIC is on"));
    let ca = pair.cert.display().to_string();
    for user in ["alice", "bob"] {
        h.run_at(&quic, user, &["--ca", &ca, "register"]).await.expect_code(0);
    }
    h.run_at(&quic, "bob", &["--ca", &ca, "send", "alice", "over", "QUIC"])
        .await
        .expect_code(0);
    // What was sent over QUIC reads the same over TLS.
    let out = h
        .run_at(&tls_url(&h), "alice", &["--ca", &ca, "read"])
        .await
        .expect_code(0);
    assert!(
        out.stdout.contains("bob") && out.stdout.contains("over QUIC"),
        "{out:#?}"
    );
    // Trust on first use pins the certificate seen over QUIC.
    let out = h.run_at(&quic, "alice", &["--tofu", "login"]).await.expect_code(0);
    assert!(out.stderr.contains(&pair.fingerprint), "{out:#?}");
    // A wrong fingerprint is refused over QUIC as over TLS.
    let wrong = format!("SHA256:{}", "00:".repeat(31) + "00");
    let out = h
        .run_at(&quic, "alice", &["--fingerprint", &wrong, "--json", "login"])
        .await
        .expect_code(8);
    assert_eq!(out.json()["error"]["code"], "CERTIFICATE_CHANGED");
}
