//! The device identity: an Ed25519 key addressed by URI, and the device id derived from it.
//!
//! Only `file:///absolute/path` URIs exist today; the URI leaves room for a hardware key store
//! (`pkcs11:`, a TEE) later. The file holds the PKCS#8 v2 document that `ring` makes. It is created
//! on first use with mode 0600 and linked into place atomically, so two processes starting at once
//! end with one key. An existing file that others can read, that is truncated or that is not a key
//! is refused, never replaced: replacing it would silently change the device's identity.
//!
//! The secret bytes read from or written to disk live in [`Zeroizing`] buffers and are wiped when
//! dropped. `ring`'s parsed key pair does not wipe itself (a known limit of ring's API): it is kept
//! for the identity's lifetime, which is the process's, because every GPU job's receipt and every
//! report is signed and parsing the document again per signature doubled the cost of a signature
//! (93 us -> see docs/benchmarks.md). A freshly generated PKCS#8 document is copied out of at once.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Serialize, Serializer};
use zeroize::Zeroizing;

/// Largest key file read; a PKCS#8 Ed25519 document is under 100 bytes.
const MAX_KEY_FILE: u64 = 4096;

/// Errors opening or creating an identity key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The URI is not one this build can open.
    #[error("key URI {uri:?}: {reason}")]
    Uri {
        /// The URI as given.
        uri: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The key file can be read by group or others.
    #[error(
        "key file {path} has mode {mode:04o}: group/others may read it; refusing to use it (it may be compromised: `chmod 600` only if you know it was not)"
    )]
    Insecure {
        /// The key file as its URI names it (not canonicalised).
        path: PathBuf,
        /// Its permission bits (`st_mode & 0o7777`); at least one of `0o077` is set.
        mode: u32,
    },
    /// The key file belongs to another user.
    #[error(
        "key file {path} is owned by uid {uid}, not by this process (uid {euid}); refusing to use it"
    )]
    Owner {
        /// The key file as its URI names it (not canonicalised).
        path: PathBuf,
        /// The file's owner (`st_uid`).
        uid: u32,
        /// This process's effective uid.
        euid: u32,
    },
    /// The path is not a regular file (a directory, a device, a FIFO).
    #[error("key file {path} is not a regular file")]
    NotRegular {
        /// The key path as its URI names it.
        path: PathBuf,
    },
    /// The file is shorter than the key it starts to encode.
    #[error("key file {path} is truncated: {len} of {expected} bytes")]
    Truncated {
        /// The path given to [`Identity::from_pkcs8`]: the key file, or `(fake)` from the fake
        /// store.
        path: PathBuf,
        /// Bytes read (at most 4096).
        len: usize,
        /// Bytes the DER header announces: its one-byte length plus the 2 header bytes.
        expected: usize,
    },
    /// The file is not an Ed25519 PKCS#8 key.
    #[error("key file {path} is not an Ed25519 PKCS#8 key ({len} bytes): {reason}")]
    Corrupt {
        /// The path given to [`Identity::from_pkcs8`]: the key file, or `(fake)` from the fake
        /// store.
        path: PathBuf,
        /// Bytes read (at most 4096).
        len: usize,
        /// ring's `KeyRejected` reason, e.g. `InvalidEncoding` or `WrongAlgorithm`.
        reason: String,
    },
    /// An I/O operation on the key or its directory failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// The step that failed, e.g. `read key file`, `create key directory`, `link key file into
        /// place`.
        op: &'static str,
        /// What the step worked on: the key file, its directory, or the temporary file beside it.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The random number generator failed (no entropy).
    #[error("cannot generate a key for {path}: the system random source failed")]
    Random {
        /// The key file that was to be made.
        path: PathBuf,
    },
}

/// Where a key lives: `file:///absolute/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyUri {
    /// A PKCS#8 file on disk.
    File(PathBuf),
}

impl KeyUri {
    /// Parses a key URI; the path must be absolute and free of `%`-escapes, `?` and `#`.
    pub fn parse(uri: &str) -> Result<Self, KeyError> {
        let err = |reason| KeyError::Uri {
            uri: uri.to_owned(),
            reason,
        };
        let path = uri
            .strip_prefix("file://")
            .ok_or_else(|| err("only file:// URIs are supported"))?;
        if !path.starts_with('/') {
            return Err(err("expected file:///absolute/path (three slashes)"));
        }
        if path.contains(['%', '?', '#']) {
            return Err(err(
                "percent-escapes, queries and fragments are not supported",
            ));
        }
        if path.ends_with('/') {
            return Err(err("the path names a directory, not a key file"));
        }
        Ok(Self::File(PathBuf::from(path)))
    }

    /// The URI for a key file.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self::File(path.into())
    }
}

impl fmt::Display for KeyUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "file://{}", path.display()),
        }
    }
}

/// A device id: the first 16 bytes of SHA-256 of the identity public key, in lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId([u8; 16]);

impl DeviceId {
    /// The id of the device holding this Ed25519 public key.
    pub fn from_public_key(public_key: &[u8; 32]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, public_key);
        let mut id = [0; 16];
        id.copy_from_slice(&digest.as_ref()[..16]);
        Self(id)
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({self})")
    }
}

impl Serialize for DeviceId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The device's identity key pair.
pub struct Identity {
    uri: KeyUri,
    /// The document, kept only where the fakes hand keys around.
    #[cfg(feature = "fake")]
    pkcs8: Zeroizing<Vec<u8>>,
    pair: Ed25519KeyPair,
    public_key: [u8; 32],
    device_id: DeviceId,
}

impl Identity {
    /// The identity in a PKCS#8 document; `path` names it in errors.
    pub fn from_pkcs8(
        uri: KeyUri,
        path: &Path,
        pkcs8: Zeroizing<Vec<u8>>,
    ) -> Result<Self, KeyError> {
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|e| {
            let len = pkcs8.len();
            // DER: 0x30, then a one-byte length for documents this small.
            match (pkcs8.first(), pkcs8.get(1)) {
                (Some(0x30), Some(&n)) if n < 0x80 && len < n as usize + 2 => KeyError::Truncated {
                    path: path.to_owned(),
                    len,
                    expected: n as usize + 2,
                },
                _ => KeyError::Corrupt {
                    path: path.to_owned(),
                    len,
                    reason: e.to_string(),
                },
            }
        })?;
        let mut public_key = [0; 32];
        public_key.copy_from_slice(pair.public_key().as_ref());
        Ok(Self {
            uri,
            #[cfg(feature = "fake")]
            pkcs8,
            pair,
            device_id: DeviceId::from_public_key(&public_key),
            public_key,
        })
    }

    /// The PKCS#8 document, for an in-memory store that hands the same key out again.
    #[cfg(feature = "fake")]
    pub fn pkcs8(&self) -> &Zeroizing<Vec<u8>> {
        &self.pkcs8
    }

    /// A fresh key that lives only in memory (tests, fakes).
    pub fn generate_ephemeral() -> Result<Self, KeyError> {
        let path = PathBuf::from("(memory)");
        Self::from_pkcs8(KeyUri::File(path.clone()), &path, generate(&path)?)
    }

    /// The URI the key was opened from; `file://(memory)` for an ephemeral key.
    pub fn uri(&self) -> &KeyUri {
        &self.uri
    }

    /// The device id derived from the public key.
    pub fn device_id(&self) -> DeviceId {
        self.device_id
    }

    /// The raw 32-byte Ed25519 public key.
    pub fn public_key(&self) -> &[u8; 32] {
        &self.public_key
    }

    /// Signs `message` (Ed25519, deterministic).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let mut signature = [0; 64];
        signature.copy_from_slice(self.pair.sign(message).as_ref());
        signature
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("uri", &self.uri.to_string())
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

/// Whether `signature` is `public_key`'s Ed25519 signature of `message`.
pub fn verify(public_key: &[u8; 32], message: &[u8], signature: &[u8]) -> bool {
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(message, signature)
        .is_ok()
}

/// Opens identity keys, making them on first use.
pub trait KeyStore: Send + Sync {
    /// The key at `uri`, created if it does not exist yet.
    fn open_or_create(&self, uri: &KeyUri) -> Result<Identity, KeyError>;
    /// The key at `uri`; an error if it does not exist.
    fn open(&self, uri: &KeyUri) -> Result<Identity, KeyError>;
}

/// Keys as PKCS#8 files with mode 0600.
#[derive(Debug, Default, Clone, Copy)]
pub struct FileKeyStore;

impl KeyStore for FileKeyStore {
    fn open(&self, uri: &KeyUri) -> Result<Identity, KeyError> {
        let KeyUri::File(path) = uri;
        let file = open_nofollow(path).map_err(|source| KeyError::Io {
            op: "open key file",
            path: path.clone(),
            source,
        })?;
        load(uri, path, file)
    }

    fn open_or_create(&self, uri: &KeyUri) -> Result<Identity, KeyError> {
        let KeyUri::File(path) = uri;
        match open_nofollow(path) {
            Ok(file) => load(uri, path, file),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(uri, path),
            Err(source) => Err(KeyError::Io {
                op: "open key file",
                path: path.clone(),
                source,
            }),
        }
    }
}

/// Opens a key file for reading without following a symlink in its place.
fn open_nofollow(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
}

fn load(uri: &KeyUri, path: &Path, mut file: File) -> Result<Identity, KeyError> {
    let io = |op| {
        move |source| KeyError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    };
    let meta = file.metadata().map_err(io("stat key file"))?;
    if !meta.is_file() {
        return Err(KeyError::NotRegular {
            path: path.to_owned(),
        });
    }
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(KeyError::Owner {
            path: path.to_owned(),
            uid: meta.uid(),
            euid,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Insecure {
            path: path.to_owned(),
            mode,
        });
    }
    let mut bytes = Zeroizing::new(Vec::with_capacity(128));
    (&mut file)
        .take(MAX_KEY_FILE)
        .read_to_end(&mut bytes)
        .map_err(io("read key file"))?;
    Identity::from_pkcs8(uri.clone(), path, bytes)
}

/// A new PKCS#8 key. ring's `Document` has no `Drop` that wipes it; it is copied into a
/// zeroizing buffer at once and its own bytes go out of scope here.
fn generate(path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let doc =
        Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyError::Random {
            path: path.to_owned(),
        })?;
    Ok(Zeroizing::new(doc.as_ref().to_vec()))
}

fn create(uri: &KeyUri, path: &Path) -> Result<Identity, KeyError> {
    let io = |op, p: &Path| {
        let p = p.to_owned();
        move |source| KeyError::Io {
            op,
            path: p,
            source,
        }
    };
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io("create key directory", dir))?;
    let pkcs8 = generate(path)?;

    // Write a private temporary file, make it durable, then hard-link it into place: link(2)
    // refuses to replace an existing file, so when two processes race, exactly one key wins and
    // the loser opens the winner's.
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let mut nonce = [0u8; 8];
    ring::rand::SecureRandom::fill(&SystemRandom::new(), &mut nonce).map_err(|_| {
        KeyError::Random {
            path: path.to_owned(),
        }
    })?;
    let nonce = u64::from_le_bytes(nonce);
    let tmp = dir.join(format!(
        ".{file_name}.{}.{nonce:016x}.tmp",
        std::process::id()
    ));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("create temporary key file", &tmp))?;
    let written = file
        .write_all(&pkcs8)
        .and_then(|()| file.sync_all())
        .map_err(io("write temporary key file", &tmp));
    drop(file);
    let linked = written.and_then(|()| match std::fs::hard_link(&tmp, path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(source) => Err(KeyError::Io {
            op: "link key file into place",
            path: path.to_owned(),
            source,
        }),
    });
    let _ = std::fs::remove_file(&tmp);
    if !linked? {
        // Another process made the key first: use it.
        return FileKeyStore.open(uri);
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync key directory", dir))?;
    Identity::from_pkcs8(uri.clone(), path, pkcs8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn key_in(dir: &Path) -> (KeyUri, PathBuf) {
        let path = dir.join("identity.key");
        (KeyUri::file(&path), path)
    }

    #[test]
    fn first_use_creates_a_0600_key_that_reopens_as_the_same_identity() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (uri, path) = key_in(&dir.path().join("state"));
        let made = FileKeyStore.open_or_create(&uri).expect("create");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = FileKeyStore.open_or_create(&uri).expect("reopen");
        assert_eq!(made.device_id(), again.device_id());
        assert_eq!(made.device_id().to_string().len(), 32);
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().expect("parent"))
            .expect("readdir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("identity.key")]);
    }

    #[test]
    fn signatures_verify_and_tampering_is_caught() {
        let id = Identity::generate_ephemeral().expect("key");
        let sig = id.sign(b"heartbeat");
        assert!(verify(id.public_key(), b"heartbeat", &sig));
        assert!(!verify(id.public_key(), b"heartbeaT", &sig));
    }

    #[test]
    fn group_readable_key_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (uri, path) = key_in(dir.path());
        FileKeyStore.open_or_create(&uri).expect("create");
        let before = std::fs::read(&path).expect("read");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = FileKeyStore.open_or_create(&uri).expect_err("0644 key");
        assert!(
            matches!(err, KeyError::Insecure { mode: 0o644, .. }),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert_eq!(
            std::fs::read(&path).expect("read"),
            before,
            "key left untouched"
        );
    }

    #[test]
    fn truncated_key_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (uri, path) = key_in(dir.path());
        FileKeyStore.open_or_create(&uri).expect("create");
        let bytes = std::fs::read(&path).expect("read");
        std::fs::write(&path, &bytes[..40]).expect("truncate");
        let err = FileKeyStore
            .open_or_create(&uri)
            .expect_err("truncated key");
        assert!(
            matches!(err, KeyError::Truncated { len: 40, .. }),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn garbage_key_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (uri, path) = key_in(dir.path());
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .expect("create");
        f.write_all(b"-----BEGIN NONSENSE-----\nnot a key\n")
            .expect("write");
        let err = FileKeyStore.open_or_create(&uri).expect_err("garbage key");
        assert!(matches!(err, KeyError::Corrupt { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn racing_creators_end_with_one_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (uri, _) = key_in(dir.path());
        let barrier = std::sync::Barrier::new(8);
        let ids: Vec<DeviceId> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        FileKeyStore.open_or_create(&uri).expect("open").device_id()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect()
        });
        assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
        assert_eq!(std::fs::read_dir(dir.path()).expect("readdir").count(), 1);
    }

    #[test]
    fn a_symlink_in_place_of_the_key_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (uri, path) = key_in(dir.path());
        let real = dir.path().join("elsewhere.key");
        FileKeyStore
            .open_or_create(&KeyUri::file(&real))
            .expect("make a key");
        std::os::unix::fs::symlink(&real, &path).expect("symlink");
        let err = FileKeyStore.open_or_create(&uri).expect_err("symlink");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn directory_in_place_of_key_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (uri, path) = key_in(dir.path());
        std::fs::create_dir(&path).expect("mkdir");
        let err = FileKeyStore.open_or_create(&uri).expect_err("directory");
        assert!(matches!(err, KeyError::NotRegular { .. }), "{err:?}");
    }

    #[test]
    fn uris_are_parsed_strictly() {
        assert_eq!(
            KeyUri::parse("file:///var/lib/edge-agent/identity.key").expect("ok"),
            KeyUri::file("/var/lib/edge-agent/identity.key")
        );
        for bad in [
            "/var/lib/identity.key",
            "file://relative/key",
            "pkcs11:token=x",
            "file:///a%20b",
            "file:///var/lib/",
        ] {
            assert!(KeyUri::parse(bad).is_err(), "{bad} should be refused");
        }
    }
}
