//! Which network the box reports to, and for whom. A fleet's config file may name it (`[network]
//! hub_url`, `ca_cert`, `owner_token`), and then that wins and the owner cannot change it. Else the
//! owner's app binds the box over the authenticated control channel (`Request::Bind`): the binding
//! is checked (an `https://` URL, a CA that parses, a token), kept in `binding.json` (0600, written
//! durably before the reply) and published, and the network's tasks restart on it. A factory reset
//! removes it. An unreadable `binding.json` is set aside: the box runs unbound until the owner binds
//! it again.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use edge_identity::durable;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use zeroize::Zeroizing;

use crate::config::HubConfig;
use crate::network::hub_client::{HubError, tls_config_pem};

/// The owner's binding, in the state directory.
pub(crate) const FILE: &str = "binding.json";

/// Who chose the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SetBy {
    /// The device's config file (`[network] hub_url`).
    Config,
    /// The owner's app (`edgectl bind`), kept in `binding.json`.
    Owner,
}

/// The network the box reports to.
#[derive(Clone)]
pub(crate) struct Hub {
    /// Base URL, `https://host[:port]`, without a trailing slash.
    pub url: String,
    /// The network's CA certificate(s), PEM: the only roots trusted for it.
    pub ca_pem: Vec<u8>,
    /// Where the CA came from, for errors: the config's file, or the owner's binding.
    pub ca_origin: String,
    /// The owner's token on that network.
    pub owner_token: Zeroizing<String>,
    pub set_by: SetBy,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("url", &self.url)
            .field("set_by", &self.set_by)
            .finish_non_exhaustive()
    }
}

/// What `binding.json` holds.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    hub_url: String,
    ca_pem: String,
    owner_token: String,
}

/// Why the owner's binding was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BindError {
    /// The device's config file names the network; only the person who wrote it can change it.
    #[error("this box's network is set in its config file; the owner cannot change it")]
    SetByConfig,
    /// A field is not usable; the text names it and says why (it reaches the owner's app).
    #[error("{0}")]
    Invalid(String),
    /// `binding.json` could not be written.
    #[error(transparent)]
    File(#[from] durable::FileError),
}

/// The binding: the config's hub, or the owner's, published to the network's tasks.
#[derive(Clone)]
pub(crate) struct Binding {
    path: PathBuf,
    state_dir: PathBuf,
    from_config: bool,
    publish: watch::Sender<Option<Arc<Hub>>>,
}

impl Binding {
    /// The config's hub if it names one (its CA file is read and parsed now: an unreadable one, or
    /// one without a certificate, stops the start as a config error), else the owner's binding in `state_dir`, else none.
    pub(crate) fn open(state_dir: &Path, config: Option<&HubConfig>) -> Result<Self, HubError> {
        let path = state_dir.join(FILE);
        let hub = match config {
            Some(hub) => Some(from_config(hub)?),
            None => load(&path),
        };
        Ok(Self {
            path,
            state_dir: state_dir.to_owned(),
            from_config: config.is_some(),
            publish: watch::Sender::new(hub.map(Arc::new)),
        })
    }

    /// The binding now and each change.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Option<Arc<Hub>>> {
        self.publish.subscribe()
    }

    /// The network in force, if any.
    pub(crate) fn current(&self) -> Option<Arc<Hub>> {
        self.publish.borrow().clone()
    }

    /// The owner binds the box: checked, stored durably, then published.
    pub(crate) async fn bind(
        &self,
        hub_url: &str,
        ca_pem: &str,
        owner_token: &str,
    ) -> Result<(), BindError> {
        if self.from_config {
            return Err(BindError::SetByConfig);
        }
        let url = crate::config::https_base_url(hub_url)
            .map_err(|why| BindError::Invalid(format!("hub_url: {why}")))?;
        tls_config_pem(ca_pem.as_bytes(), "ca").map_err(|e| BindError::Invalid(e.to_string()))?;
        if owner_token.trim().is_empty() || owner_token.chars().any(char::is_control) {
            return Err(BindError::Invalid(
                "owner_token: must not be empty or hold control characters".into(),
            ));
        }
        let record = Record {
            hub_url: url.clone(),
            ca_pem: ca_pem.to_owned(),
            owner_token: owner_token.to_owned(),
        };
        let (path, dir) = (self.path.clone(), self.state_dir.clone());
        edge_tasks::blocking(move || {
            crate::host::reserve::write_critical(&dir, || {
                durable::write_json(&path, &record, 0o600)
            })
        })
        .await?;
        tracing::info!(hub = %url, "bound to the owner's network");
        self.publish.send_replace(Some(Arc::new(Hub {
            url,
            ca_pem: ca_pem.as_bytes().to_vec(),
            ca_origin: "the owner's binding".into(),
            owner_token: Zeroizing::new(owner_token.to_owned()),
            set_by: SetBy::Owner,
        })));
        Ok(())
    }

    /// A factory reset: the owner's binding is removed and the network's tasks stop. A hub named
    /// in the config file stays (the reset does not edit the device's config).
    pub(crate) async fn unbind(&self) -> Result<(), durable::FileError> {
        if self.from_config {
            return Ok(());
        }
        let path = self.path.clone();
        edge_tasks::blocking(move || durable::remove(&path)).await?;
        self.publish.send_replace(None);
        tracing::warn!("unbound from the network");
        Ok(())
    }
}

fn from_config(hub: &HubConfig) -> Result<Hub, HubError> {
    let ca_origin = hub.ca_cert.display().to_string();
    let ca_pem = std::fs::read(&hub.ca_cert).map_err(|e| HubError::Ca {
        origin: ca_origin.clone(),
        reason: e.to_string(),
    })?;
    // Parsed now too: a fleet's CA file that holds no certificate stops the start (exit 64).
    tls_config_pem(&ca_pem, &ca_origin)?;
    Ok(Hub {
        url: hub.url.clone(),
        ca_pem,
        ca_origin,
        owner_token: Zeroizing::new(hub.owner_token.clone()),
        set_by: SetBy::Config,
    })
}

/// The owner's binding; none if there is none or it is unreadable (then it is set aside, and the
/// box runs unbound until the owner binds it again: a damaged file never stops the agent).
fn load(path: &Path) -> Option<Hub> {
    let record: Record = match durable::read_json(path) {
        Ok(record) => record?,
        Err(e) if e.op == "parse" => {
            tracing::error!(error = %e, "the network binding is unreadable; it is set aside and the box is unbound until the owner binds it again");
            if let Err(e) = durable::set_aside(path) {
                tracing::error!(error = %e, "cannot set the binding aside");
            }
            return None;
        }
        Err(e) => {
            tracing::error!(error = %e, "the network binding cannot be read; the box runs unbound");
            return None;
        }
    };
    Some(Hub {
        url: record.hub_url,
        ca_pem: record.ca_pem.into_bytes(),
        ca_origin: "the owner's binding".into(),
        owner_token: Zeroizing::new(record.owner_token),
        set_by: SetBy::Owner,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec!["hub.test".into()]).expect("params");
        params.self_signed(&key).expect("cert").pem()
    }

    #[tokio::test]
    async fn the_owners_binding_is_checked_kept_0600_and_read_back_at_the_next_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let binding = Binding::open(dir.path(), None).expect("opens");
        assert!(binding.current().is_none(), "a new box is unbound");
        let changes = binding.subscribe();
        for (url, ca, token, want) in [
            ("http://hub.test", ca_pem(), "t".to_owned(), "hub_url:"),
            (
                "https://hub.test",
                "not a PEM".to_owned(),
                "t".into(),
                "holds no certificate",
            ),
            ("https://hub.test", ca_pem(), " ".into(), "owner_token:"),
        ] {
            let refused = binding.bind(url, &ca, &token).await.expect_err("refused");
            assert!(refused.to_string().contains(want), "{refused} lacks {want}");
        }
        assert!(!changes.has_changed().expect("open"), "nothing published");
        assert!(!dir.path().join("binding.json").exists(), "nothing kept");

        binding
            .bind("https://hub.test:8443/", &ca_pem(), "owner-1")
            .await
            .expect("binds");
        assert!(changes.has_changed().expect("open"));
        let file = dir.path().join("binding.json");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).expect("kept").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = Binding::open(dir.path(), None).expect("opens");
        let hub = again.current().expect("bound after a restart");
        assert_eq!(
            (hub.url.as_str(), hub.owner_token.as_str(), hub.set_by),
            ("https://hub.test:8443", "owner-1", SetBy::Owner)
        );

        again.unbind().await.expect("unbinds");
        assert!(again.current().is_none() && !file.exists());
    }

    #[tokio::test]
    async fn a_hub_in_the_config_file_wins_and_the_owner_cannot_change_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, ca_pem()).expect("ca");
        let config = HubConfig {
            url: "https://fleet.test".into(),
            ca_cert: ca,
            owner_token: "fleet".into(),
        };
        std::fs::write(dir.path().join("empty.pem"), "").expect("empty");
        let empty = HubConfig {
            ca_cert: dir.path().join("empty.pem"),
            ..config.clone()
        };
        let refused = Binding::open(dir.path(), Some(&empty))
            .err()
            .expect("refused at start");
        assert!(
            refused.to_string().contains("holds no certificate"),
            "{refused}"
        );
        let binding = Binding::open(dir.path(), Some(&config)).expect("opens");
        let refused = binding
            .bind("https://other.test", &ca_pem(), "t")
            .await
            .expect_err("refused");
        assert!(matches!(refused, BindError::SetByConfig), "{refused}");
        binding.unbind().await.expect("a reset leaves it");
        let hub = binding.current().expect("still the fleet's");
        assert_eq!(
            (hub.url.as_str(), hub.set_by),
            ("https://fleet.test", SetBy::Config)
        );
    }

    #[test]
    fn an_unreadable_binding_is_set_aside_and_the_box_runs_unbound() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("binding.json"), b"{\"hub_url\": ").expect("torn");
        let binding = Binding::open(dir.path(), None).expect("opens, not a start failure");
        assert!(binding.current().is_none());
        assert!(dir.path().join("binding.json.corrupt").exists());
    }
}
