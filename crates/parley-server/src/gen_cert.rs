//! `parleyd gen-cert`: a self-signed certificate and key for development,
//! so that TLS can be tried without a certificate authority.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Names the certificate is valid for unless `--name` is given.
pub const DEFAULT_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];
/// Days the certificate is valid unless `--days` is given.
pub const DEFAULT_DAYS: u32 = 365;
/// File name of the certificate written.
pub const CERT_FILE: &str = "cert.pem";
/// File name of the private key written (mode 0600).
pub const KEY_FILE: &str = "key.pem";

/// Flags of `parleyd gen-cert`.
#[derive(Clone, Debug, clap::Args)]
pub struct GenCertArgs {
    /// Directory to write cert.pem and key.pem into (created if missing)
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub out: PathBuf,
    /// A DNS name or IP address the certificate is valid for; repeat for
    /// several [default: localhost, 127.0.0.1, ::1]
    #[arg(long = "name", value_name = "NAME")]
    pub names: Vec<String>,
    /// Days the certificate stays valid, from today
    #[arg(long, value_name = "N", default_value_t = DEFAULT_DAYS, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub days: u32,
    /// Replace cert.pem and key.pem if they exist
    #[arg(long)]
    pub force: bool,
}

/// What was written.
#[derive(Debug)]
pub struct Generated {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// SHA-256 of the certificate, `AB:CD:...`.
    pub fingerprint: String,
    pub names: Vec<String>,
    /// Last day of validity, `YYYY-MM-DD`.
    pub not_after: String,
}

/// Makes a key pair (ECDSA P-256) and a self-signed certificate for
/// `args.names`, and writes both as PEM.
pub fn generate(args: &GenCertArgs) -> anyhow::Result<Generated> {
    let names: Vec<String> = if args.names.is_empty() {
        DEFAULT_NAMES.iter().map(|n| n.to_string()).collect()
    } else {
        args.names.clone()
    };
    let mut params = rcgen::CertificateParams::new(names.clone()).context("certificate names")?;
    let mut subject = rcgen::DistinguishedName::new();
    subject.push(rcgen::DnType::CommonName, names[0].as_str());
    subject.push(rcgen::DnType::OrganizationName, "Parley development certificate");
    params.distinguished_name = subject;
    // A day of slack for clocks that run behind.
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(i64::from(args.days));
    let key = rcgen::KeyPair::generate().context("generating the key")?;
    let cert = params.self_signed(&key).context("signing the certificate")?;

    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let dir = std::fs::canonicalize(&args.out).with_context(|| format!("finding {}", args.out.display()))?;
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    if !args.force {
        for path in [&cert_path, &key_path] {
            if path.exists() {
                anyhow::bail!("{} exists; pass --force to replace it", path.display());
            }
        }
    }
    write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(Generated {
        cert_path,
        key_path,
        fingerprint: crate::tls::fingerprint(cert.der().as_ref()),
        names,
        not_after: params.not_after.date().to_string(),
    })
}

/// Writes `bytes` to `path` with `mode` (on Unix), replacing the file. The
/// mode is set on the open file, so a key is never readable by others, not
/// even for a moment.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    options
        .open(path)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .with_context(|| format!("writing {}", path.display()))
}

/// Runs `parleyd gen-cert`: writes the pair and prints what to do with it.
pub fn run(args: &GenCertArgs) -> anyhow::Result<()> {
    let made = generate(args)?;
    let cert = made.cert_path.display();
    let key = made.key_path.display();
    println!("wrote {cert}");
    println!("wrote {key} (mode 0600)");
    println!("self-signed, for development; valid until {}", made.not_after);
    println!("names: {}", made.names.join(", "));
    println!("SHA-256 fingerprint: {}", made.fingerprint);
    println!();
    println!("In parleyd.toml:");
    println!("  tls_cert = {:?}", made.cert_path.display().to_string());
    println!("  tls_key = {:?}", made.key_path.display().to_string());
    println!("  native_tls = true");
    println!("  http_tls = true");
    println!("or as flags: --tls-cert {cert} --tls-key {key} --native-tls true --http-tls true");
    println!();
    let host = made.names.first().map(String::as_str).unwrap_or("localhost");
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    println!("Clients:");
    println!("  parley --server tls://{host}:7878 --ca {cert}");
    println!(
        "  parley --server tls://{host}:7878 --fingerprint SHA256:{}",
        made.fingerprint
    );
    println!("  curl --cacert {cert} https://{host}:7880/healthz");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_pair_that_loads_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let args = GenCertArgs {
            out: dir.path().join("tls"),
            names: Vec::new(),
            days: 30,
            force: false,
        };
        let made = generate(&args).unwrap();
        let identity = crate::tls::load_identity(&made.cert_path, &made.key_path).unwrap();
        assert_eq!(identity.fingerprint, made.fingerprint);
        assert_eq!(made.names, DEFAULT_NAMES);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&made.key_path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = generate(&args).unwrap_err().to_string();
        assert!(again.contains("--force"), "{again}");
        let replaced = generate(&GenCertArgs { force: true, ..args }).unwrap();
        assert_ne!(replaced.fingerprint, made.fingerprint);
    }
}
