//! Connection errors say what to do: a certificate nobody vouches for,
//! TLS on one side only, an HTTP port given for the native one, and an
//! address without a port.

mod common;

use std::time::{Duration, Instant};

use common::Harness;
use parley_testkit::{Store, gen_cert};

/// Well under the client's 10 s connect timeout: the failure was
/// recognised, not waited out.
const QUICKLY: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_port_is_recognised_quickly() {
    let h = Harness::start(Store::Memory);
    drop(h.user("alice").await);
    let http = h.server.http_addr.clone().expect("an HTTP listener");
    let started = Instant::now();
    let out = h.run_at(&http, "alice", &["login"]).await.expect_code(7);
    assert!(started.elapsed() < QUICKLY, "took {:?}: {out:#?}", started.elapsed());
    assert!(
        out.stderr.contains("HTTP") && out.stderr.contains("native") && out.stderr.contains("7878"),
        "{out:#?}"
    );
    let out = h.run_at(&http, "alice", &["--json", "login"]).await.expect_code(7);
    assert_eq!(out.json()["error"]["code"], "NOT_A_NATIVE_PORT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_without_a_port_takes_the_native_default() {
    let h = Harness::start(Store::Memory);
    // Whatever listens on localhost:7878 (most likely nothing), the
    // address is accepted: no usage error.
    let out = h.run_at("localhost", "alice", &["login"]).await;
    assert_ne!(out.code, 2, "{out:#?}");
    assert!(!out.stderr.contains("is not HOST:PORT"), "{out:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_errors_say_which_setting_to_change() {
    let certs = tempfile::tempdir().expect("temp dir");
    let pair = gen_cert(&certs.path().join("pair"));
    let flags = pair.tls_flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let h = Harness::start_with(Store::Memory, &flags);
    let tls = format!("tls://{}", h.server.addr);
    let ca = pair.cert.display().to_string();
    h.run_at(&tls, "alice", &["--ca", &ca, "register"]).await.expect_code(0);

    // A self-signed certificate and no --ca: the two ways to trust it.
    let out = h.run_at(&tls, "alice", &["login"]).await.expect_code(9);
    assert!(out.stderr.contains("--ca") && out.stderr.contains("--tofu"), "{out:#?}");

    // Plaintext against the TLS port: say so, and at once.
    let started = Instant::now();
    let out = h.run("alice", &["login"]).await.expect_code(9);
    assert!(started.elapsed() < QUICKLY, "took {:?}: {out:#?}", started.elapsed());
    assert!(out.stderr.contains(&format!("write it as {tls}")), "{out:#?}");

    // TLS against a plaintext server.
    let plain = Harness::start(Store::Memory);
    let out = plain
        .run_at(
            &format!("tls://{}", plain.server.addr),
            "alice",
            &["--ca", &ca, "login"],
        )
        .await
        .expect_code(9);
    assert!(out.stderr.contains("does not speak TLS"), "{out:#?}");
}
