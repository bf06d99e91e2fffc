//! The owner's requests, answered: the status, the settings (validated against the same files the
//! agent loads, saved in the owner's file, GPU policy applied from the next job), Wi-Fi, logs and
//! reboot. Errors that name the device's paths or programs are logged here and reach the phone
//! only as "see the device's log". The session (pairing state, unpair) is `session`'s.

use std::path::PathBuf;
use std::sync::Arc;

use edge_hal::Hal;
use edge_hal::wifi::Passphrase;
use edge_identity::Identity;
use edge_mobile_bridge::message::{ErrorCode, Request, Response, StatusReport, WifiNetwork};

use super::OwnerStatus;
use crate::gpu::scheduler::SchedulerHandle;
use crate::network::binding::{BindError, Binding};
use crate::version::VERSIONS;

/// What answering the owner needs.
pub(crate) struct Control {
    /// Wi-Fi, power, and the owner's settings' validation.
    pub(crate) hal: Hal,
    /// The device id the status names.
    pub(crate) identity: Arc<Identity>,
    pub(crate) status: Arc<dyn OwnerStatus>,
    /// Where the owner's GPU policy changes go.
    pub(crate) scheduler: SchedulerHandle,
    /// `--config`, to validate a change against the same files the agent loads.
    pub(crate) config_path: Option<PathBuf>,
    /// The working directory relative paths were resolved against.
    pub(crate) cwd: PathBuf,
    pub(crate) state_dir: PathBuf,
    /// The network the box reports to; the owner may bind it.
    pub(crate) binding: Binding,
}

impl Control {
    /// Answers one request of the owner's.
    pub(crate) async fn answer(&self, request: Request) -> Response {
        match request {
            Request::Status => self.status_report(),
            Request::ConfigGet => self.config_get(),
            Request::ConfigSet { key, value } => self.config_set(key, value).await,
            Request::WifiScan => {
                let wifi = self.hal.wifi.clone();
                match edge_tasks::blocking(move || wifi.scan()).await {
                    Ok(networks) => Response::WifiNetworks(
                        networks
                            .into_iter()
                            .take(edge_mobile_bridge::message::MAX_NETWORKS)
                            .map(|n| WifiNetwork {
                                secured: n.security != edge_hal::wifi::Security::Open,
                                signal_dbm: edge_hal::wifi::percent_to_dbm(n.signal_percent),
                                ssid: n.ssid,
                            })
                            .collect(),
                    ),
                    Err(e) => wifi_error(e),
                }
            }
            Request::WifiSet { ssid, passphrase } => {
                let wifi = self.hal.wifi.clone();
                let passphrase = Passphrase::new(passphrase.as_str());
                match edge_tasks::blocking(move || wifi.connect(&ssid, &passphrase)).await {
                    Ok(()) => Response::Ok,
                    Err(e) => wifi_error(e),
                }
            }
            Request::Logs { max_lines } => Response::Logs {
                lines: crate::host::logging::recent(usize::from(max_lines))
                    .into_iter()
                    .map(|mut l| {
                        l.truncate(edge_mobile_bridge::message::MAX_LOG_LINE);
                        l
                    })
                    .collect(),
            },
            Request::Reboot => reboot(self.hal.power.clone()).await,
            Request::Bind {
                hub_url,
                ca_pem,
                owner_token,
            } => self.bind(&hub_url, &ca_pem, &owner_token).await,
            // The session answers these: they change the pairing state, which it holds.
            Request::Unpair | Request::FactoryReset => Response::error(ErrorCode::BadRequest),
        }
    }

    fn status_report(&self) -> Response {
        let (uptime_s, details) = self.status.owner_status();
        Response::Status(StatusReport {
            device_id: self.identity.device_id().to_string(),
            agent_version: VERSIONS.agent.into(),
            uptime_s,
            details_json: details.to_string(),
        })
    }

    fn config_get(&self) -> Response {
        let path = crate::config::owner_file(&self.state_dir);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        Response::Config { toml: text }
    }

    async fn config_set(&self, key: String, value: String) -> Response {
        let (path, cwd, dir) = (
            self.config_path.clone(),
            self.cwd.clone(),
            self.state_dir.clone(),
        );
        let result = edge_tasks::blocking(move || {
            let text = crate::config::set_owner_key(path.as_deref(), &cwd, &dir, &key, &value)
                .map_err(|e| {
                    SetFailed::Invalid(
                        e.problems
                            .iter()
                            .map(|p| format!("{}: {}", p.key.as_deref().unwrap_or(""), p.message))
                            .collect::<Vec<_>>()
                            .join("; "),
                    )
                })?;
            let owner = crate::config::owner_file(&dir);
            crate::host::reserve::write_critical(&dir, || {
                edge_identity::durable::write(&owner, text.as_bytes(), 0o600)
            })
            .map_err(|e| SetFailed::Device(e.to_string()))?;
            // The settings as they now stand, with the owner's file on top.
            crate::config::load(path.as_deref(), &cwd).map_err(|e| SetFailed::Device(e.to_string()))
        })
        .await;
        config_set_response(result, |config| {
            // GPU settings hold from the next job; the network ones at the next start.
            self.scheduler
                .set_policy(crate::gpu::scheduler::Policy::from(&config.gpu));
        })
    }

    /// Binds the box to the owner's network; its tasks restart on the new binding at once.
    async fn bind(&self, hub_url: &str, ca_pem: &str, owner_token: &str) -> Response {
        match self.binding.bind(hub_url, ca_pem, owner_token).await {
            Ok(()) => Response::Ok,
            Err(e @ BindError::SetByConfig) => Response::Error {
                code: ErrorCode::BadRequest,
                message: e.to_string(),
            },
            Err(BindError::Invalid(mut message)) => {
                let mut end = message.len().min(edge_mobile_bridge::message::MAX_SHORT);
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                message.truncate(end);
                Response::Error {
                    code: ErrorCode::InvalidConfig,
                    message,
                }
            }
            Err(BindError::File(e)) => {
                tracing::error!(error = %e, "the owner's network binding could not be saved");
                Response::Error {
                    code: ErrorCode::Internal,
                    message: "the binding could not be saved; the device's log says why".into(),
                }
            }
        }
    }
}

fn wifi_error(e: edge_hal::wifi::WifiError) -> Response {
    match e {
        e @ edge_hal::wifi::WifiError::Invalid { .. } => Response::Error {
            code: ErrorCode::BadRequest,
            message: e.to_string(),
        },
        edge_hal::wifi::WifiError::NotFound { .. } => Response::Error {
            code: ErrorCode::Unsupported,
            message: "this box has no Wi-Fi manager (NetworkManager or wpa_supplicant)".into(),
        },
        e => {
            tracing::error!(error = %e, "Wi-Fi request failed");
            Response::Error {
                code: ErrorCode::Internal,
                message: "the Wi-Fi request failed; see the device's logs".into(),
            }
        }
    }
}

/// Why an owner's setting was not taken.
#[derive(Debug)]
enum SetFailed {
    /// The value is not valid: the owner is told what and where.
    Invalid(String),
    /// The device failed (disk, files): logged here, and the owner told only that it failed,
    /// since the reason names the device's paths.
    Device(String),
}

fn config_set_response(
    result: Result<crate::config::Config, SetFailed>,
    apply: impl FnOnce(&crate::config::Config),
) -> Response {
    match result {
        Ok(config) => {
            apply(&config);
            Response::Ok
        }
        Err(SetFailed::Invalid(message)) => Response::Error {
            code: ErrorCode::InvalidConfig,
            message,
        },
        Err(SetFailed::Device(reason)) => {
            tracing::error!(%reason, "the owner's setting could not be saved");
            Response::Error {
                code: ErrorCode::Internal,
                message: "the setting could not be saved; the device's log says why".into(),
            }
        }
    }
}

/// Asks for a reboot and says whether it was taken. Asking returns once systemd has queued the
/// reboot; the agent is stopped (SIGTERM, drain) only after that, so the owner's answer still goes
/// out. A refusal is logged with its reason and reported without it (the reason names programs and
/// paths, which are the device's business).
async fn reboot(power: Arc<dyn edge_hal::Power>) -> Response {
    match edge_tasks::blocking(move || power.reboot()).await {
        Ok(()) => Response::Ok,
        Err(e) => {
            tracing::error!(error = %e, "the owner's reboot was refused");
            Response::Error {
                code: ErrorCode::Internal,
                message: "the reboot could not be requested; the device's log says why".into(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct RefusingPower;

    impl edge_hal::Power for RefusingPower {
        fn reboot(&self) -> Result<(), edge_hal::power::PowerError> {
            Err(edge_hal::power::PowerError::Command {
                program: "/usr/bin/systemctl".into(),
                reason: "Access denied".into(),
            })
        }
    }

    #[tokio::test]
    async fn a_refused_reboot_is_an_error_for_the_owner_without_the_devices_details() {
        // Before: the reboot ran after an `Ok` reply and its failure was dropped (only the
        // blocking task's join was checked).
        match reboot(Arc::new(RefusingPower)).await {
            Response::Error { code, message } => {
                assert_eq!(code, ErrorCode::Internal);
                assert!(!message.contains("systemctl"), "{message}");
            }
            other => panic!("expected an error, got {other:?}"),
        }
        let fake = Arc::new(edge_hal::fake::FakePower::default());
        assert!(matches!(reboot(fake.clone()).await, Response::Ok));
        assert_eq!(fake.0.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[test]
    fn a_disk_failure_is_not_an_invalid_config_and_its_path_stays_on_the_device() {
        // Before: "cannot save: <path>: <os error>" went to the phone as InvalidConfig.
        let failed = SetFailed::Device(
            "cannot create /var/lib/edge-agent/.owner.toml.1.0.tmp: No space left on device".into(),
        );
        match config_set_response(Err(failed), |_| panic!("nothing applied")) {
            Response::Error { code, message } => {
                assert_eq!(code, ErrorCode::Internal);
                assert!(!message.contains("/var/lib"), "{message}");
            }
            other => panic!("expected an error, got {other:?}"),
        }
        let invalid = SetFailed::Invalid("gpu.max_duty: must be in (0, 1]".into());
        match config_set_response(Err(invalid), |_| panic!("nothing applied")) {
            Response::Error { code, message } => {
                assert_eq!(code, ErrorCode::InvalidConfig);
                assert!(message.contains("gpu.max_duty"), "{message}");
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_fake_power_counts_reboots() {
        let fake = Arc::new(edge_hal::fake::FakePower::default());
        assert!(matches!(reboot(fake.clone()).await, Response::Ok));
        assert_eq!(fake.0.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    /// The status the owner sees, fixed.
    struct FixedStatus;

    impl OwnerStatus for FixedStatus {
        fn owner_status(&self) -> (u64, serde_json::Value) {
            (42, serde_json::json!({"gpu": "lavapipe"}))
        }
    }

    struct Device {
        control: Control,
        wifi: Arc<edge_hal::fake::FakeWifi>,
        power: Arc<edge_hal::fake::FakePower>,
        scheduler: SchedulerHandle,
        _dir: tempfile::TempDir,
    }

    /// A control over `hal::fake`, a real scheduler handle (no job runs) and a temporary state
    /// directory with no config file, so the owner's settings go over the embedded defaults.
    fn a_box() -> Device {
        let dir = tempfile::tempdir().expect("tempdir");
        let wifi = Arc::new(edge_hal::fake::FakeWifi::default());
        let power = Arc::new(edge_hal::fake::FakePower::default());
        let hal = Hal {
            wifi: wifi.clone(),
            power: power.clone(),
            ..Hal::fake()
        };
        let identity = Arc::new(Identity::generate_ephemeral().expect("key"));
        let config = crate::config::from_str(
            &format!(
                "[agent]\nstate_dir = {:?}",
                dir.path().display().to_string()
            ),
            dir.path(),
        )
        .expect("config");
        let (_scheduler, handle) = crate::gpu::scheduler::Scheduler::new(
            crate::gpu::scheduler::SchedulerParts {
                gpu: Err("no GPU in this test".into()),
                policy: crate::gpu::scheduler::Policy::from(&config.gpu),
                identity: identity.clone(),
                thermal: hal.thermal.clone(),
                clock: hal.clock.clone(),
                blobs: edge_jobs::job::BlobStore {
                    dir: dir.path().join("blobs"),
                },
                metrics: Arc::default(),
            },
            crate::gpu::worker::GpuWorker::serving(&dir.path().join("no-worker"), dir.path()),
        );
        // The owner's settings are checked against the config files the agent loads: a file in
        // the temporary directory, so the box's own /etc is never read.
        let main = dir.path().join("config.toml");
        std::fs::write(
            &main,
            format!(
                "[agent]\nstate_dir = {:?}\n",
                dir.path().display().to_string()
            ),
        )
        .expect("config file");
        Device {
            control: Control {
                hal,
                identity,
                status: Arc::new(FixedStatus),
                scheduler: handle.clone(),
                config_path: Some(main),
                cwd: dir.path().to_owned(),
                state_dir: dir.path().to_owned(),
                binding: Binding::open(dir.path(), None).expect("no binding"),
            },
            wifi,
            power,
            scheduler: handle,
            _dir: dir,
        }
    }

    #[tokio::test]
    async fn status_names_this_device_and_carries_the_details() {
        let b = a_box();
        match b.control.answer(Request::Status).await {
            Response::Status(report) => {
                assert_eq!(report.device_id, b.control.identity.device_id().to_string());
                assert_eq!(report.uptime_s, 42);
                assert_eq!(report.agent_version, VERSIONS.agent);
                assert!(
                    report.details_json.contains("lavapipe"),
                    "{}",
                    report.details_json
                );
            }
            other => panic!("expected the status, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn wifi_scan_reports_security_and_signal_on_the_dbm_scale() {
        let b = a_box();
        b.wifi.set_networks(vec![
            edge_hal::wifi::WifiNetwork {
                ssid: "home".into(),
                signal_percent: 100,
                security: edge_hal::wifi::Security::Wpa2Psk,
                in_use: false,
            },
            edge_hal::wifi::WifiNetwork {
                ssid: "cafe".into(),
                signal_percent: 0,
                security: edge_hal::wifi::Security::Open,
                in_use: false,
            },
        ]);
        match b.control.answer(Request::WifiScan).await {
            Response::WifiNetworks(networks) => {
                assert_eq!(networks.len(), 2);
                assert_eq!(
                    (networks[0].ssid.as_str(), networks[0].secured),
                    ("home", true)
                );
                assert_eq!(
                    (networks[1].ssid.as_str(), networks[1].secured),
                    ("cafe", false)
                );
                assert!(networks[0].signal_dbm > networks[1].signal_dbm);
            }
            other => panic!("expected networks, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn wifi_set_connects_and_a_failure_keeps_the_managers_reply_on_the_device() {
        let b = a_box();
        let set = |passphrase: &str| Request::WifiSet {
            ssid: "home".into(),
            passphrase: passphrase.to_owned().into(),
        };
        assert!(matches!(
            b.control.answer(set("correct horse")).await,
            Response::Ok
        ));
        assert_eq!(b.wifi.connects().len(), 1);
        match b.control.answer(set("short")).await {
            Response::Error { code, .. } => assert_eq!(code, ErrorCode::BadRequest),
            other => panic!("a 5-character passphrase was taken: {other:?}"),
        }
        b.wifi.set_failure(Some(
            "Error: Connection activation failed: /org/freedesktop/NM/1",
        ));
        match b.control.answer(set("correct horse")).await {
            Response::Error { code, message } => {
                assert_eq!(code, ErrorCode::Internal);
                assert!(!message.contains("freedesktop"), "{message}");
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_valid_setting_is_saved_and_applied_and_an_invalid_one_named() {
        let b = a_box();
        let set = |value: &str| Request::ConfigSet {
            key: "gpu.max_duty_percent".into(),
            value: value.into(),
        };
        match b.control.answer(set("250")).await {
            Response::Error { code, message } => {
                assert_eq!(code, ErrorCode::InvalidConfig);
                assert!(message.contains("gpu.max_duty_percent"), "{message}");
            }
            other => panic!("250% was taken: {other:?}"),
        }
        assert_eq!(
            b.scheduler.policy().max_duty,
            1.0,
            "an invalid value changed the policy"
        );
        assert!(matches!(b.control.answer(set("40")).await, Response::Ok));
        assert!((b.scheduler.policy().max_duty - 0.4).abs() < 1e-9);
        match b.control.answer(Request::ConfigGet).await {
            Response::Config { toml } => assert!(toml.contains("max_duty_percent"), "{toml}"),
            other => panic!("expected the owner's settings, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn reboot_goes_to_the_power_and_unpair_is_left_to_the_session() {
        let b = a_box();
        assert!(matches!(
            b.control.answer(Request::Reboot).await,
            Response::Ok
        ));
        assert_eq!(b.power.0.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert!(matches!(
            b.control.answer(Request::Unpair).await,
            Response::Error {
                code: ErrorCode::BadRequest,
                ..
            }
        ));
    }
}
