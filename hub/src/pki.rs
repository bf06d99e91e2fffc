//! The hub's development PKI: a CA that agents pin and a server certificate it signs.
//!
//! `edge-hub init` writes, into the hub's directory: `ca.pem` (give this to agents), `ca.key`,
//! `server.pem` and `server.key`. Private keys are ECDSA P-256, written 0600 with `O_EXCL` so an
//! existing key is never overwritten. The CA exists only to be pinned by development agents.

use std::path::{Path, PathBuf};

use edge_identity::durable;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Names a fresh hub answers to when `init` is given none.
pub const DEFAULT_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The files `init` writes.
#[derive(Debug, Clone)]
pub struct PkiFiles {
    /// The CA certificate (public: agents pin it).
    pub ca_cert: PathBuf,
    /// The CA key.
    pub ca_key: PathBuf,
    /// The server certificate for the `init` names, signed by the CA; mode 0644.
    pub server_cert: PathBuf,
    /// The server key, mode 0600; `init` refuses to overwrite it.
    pub server_key: PathBuf,
}

impl PkiFiles {
    /// The files in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
        }
    }
}

/// Errors making the PKI.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused.
    #[error("making certificates: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be written (or already exists).
    #[error(transparent)]
    Write(#[from] edge_identity::durable::FileError),
}

/// Makes the CA and a server certificate for `names` (DNS names or IP addresses).
pub fn init(files: &PkiFiles, names: &[String]) -> Result<(), PkiError> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "edge-hub development CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let server_key = KeyPair::generate()?;
    let mut server = CertificateParams::new(names.to_vec())?;
    server
        .distinguished_name
        .push(DnType::CommonName, "edge-hub");
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server.signed_by(&server_key, &issuer)?;

    // Keys first, exclusively: a second `init` fails before touching anything.
    durable::create(&files.ca_key, issuer_key_pem(&issuer).as_bytes(), 0o600)?;
    durable::create(
        &files.server_key,
        server_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    durable::create(&files.ca_cert, ca_cert.pem().as_bytes(), 0o644)?;
    durable::create(&files.server_cert, server_cert.pem().as_bytes(), 0o644)?;
    Ok(())
}

fn issuer_key_pem(issuer: &Issuer<'_, KeyPair>) -> String {
    issuer.key().serialize_pem()
}
